//! The agent's instance uid: a UUID v7 made once and kept in the state directory, so the server
//! sees the same agent across restarts of ztrace. When the directory cannot be written, the uid
//! lives for this run only (said once in the log).
//!
//! The file is opened (created) once at start-up, before the seccomp filter forbids opening
//! files for writing; a uid the server assigns later is written through that descriptor.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// The file in the state directory.
const FILE: &str = "opamp-instance-uid";

/// The uid in force and the file that keeps it.
#[derive(Debug)]
pub struct Kept {
    pub uid: [u8; 16],
    file: Option<File>,
    path: PathBuf,
}

impl Kept {
    /// The uid stored in `dir`, or a new one (stored there when possible).
    pub fn open(dir: &Path, now_unix_ms: u64) -> Kept {
        let path = dir.join(FILE);
        let file = std::fs::create_dir_all(dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        });
        let (stored, file) = match file {
            Ok(mut f) => {
                let mut text = String::new();
                let _ = f.read_to_string(&mut text);
                (parse_hex(text.trim()), Some(f))
            }
            Err(e) => {
                // A read-only state directory may still hold a uid.
                let stored = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| parse_hex(t.trim()));
                if stored.is_none() {
                    log::warn!(
                        "OpAMP: cannot keep the instance uid in {}: {e}; this run uses a new one (set opamp.state_dir to a writable directory)",
                        path.display()
                    );
                }
                (stored, None)
            }
        };
        let mut kept = Kept {
            uid: stored.unwrap_or_else(|| uuid_v7(now_unix_ms, rand::random())),
            file,
            path,
        };
        if stored.is_none() {
            let uid = kept.uid;
            kept.store(&uid);
        }
        kept
    }

    /// Stores a uid the server assigned (or a new one).
    pub fn store(&mut self, uid: &[u8; 16]) {
        self.uid = *uid;
        let Some(file) = &self.file else {
            return;
        };
        let hex: String = uid.iter().map(|b| format!("{b:02x}")).collect();
        if let Err(e) = file
            .set_len(0)
            .and_then(|()| file.write_all_at((hex + "\n").as_bytes(), 0))
        {
            log::warn!(
                "OpAMP: cannot store the instance uid in {}: {e}",
                self.path.display()
            );
        }
    }
}

fn parse_hex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// RFC 9562 UUID version 7: 48 bits of Unix milliseconds, version, 74 random bits, variant.
fn uuid_v7(unix_ms: u64, random: [u8; 10]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    b[6..].copy_from_slice(&random);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_layout() {
        let u = uuid_v7(0x0190_a4c2_b3d4, [0xff; 10]);
        assert_eq!(&u[..6], &[0x01, 0x90, 0xa4, 0xc2, 0xb3, 0xd4]);
        assert_eq!(u[6] >> 4, 7, "version");
        assert_eq!(u[8] >> 6, 0b10, "variant");
    }

    #[test]
    fn kept_across_restarts() {
        let dir = ztrace_e2e::temp::TempDir::new("uid-test").unwrap();
        let a = Kept::open(&dir, 1).uid;
        let b = Kept::open(&dir, 2).uid;
        assert_eq!(a, b);
        Kept::open(&dir, 3).store(&[3; 16]);
        assert_eq!(Kept::open(&dir, 4).uid, [3; 16]);
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert_eq!(
            text,
            "03".repeat(16) + "\n",
            "the longer uid before is overwritten whole"
        );
        assert_eq!(parse_hex("zz"), None);
    }
}
