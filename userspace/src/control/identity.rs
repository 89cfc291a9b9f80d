//! The agent's instance uid: a UUID v7 made once and kept in the state directory, so the server
//! sees the same agent across restarts of ztrace. When the directory cannot be written, the uid
//! lives for this run only (said once in the log).

use std::path::Path;

/// The file in the state directory.
const FILE: &str = "opamp-instance-uid";

/// The uid stored in `dir`, or a new one (stored there when possible).
pub fn load_or_create(dir: &Path, now_unix_ms: u64) -> [u8; 16] {
    let path = dir.join(FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some(uid) = parse_hex(text.trim())
    {
        return uid;
    }
    let uid = uuid_v7(now_unix_ms, rand::random());
    let hex: String = uid.iter().map(|b| format!("{b:02x}")).collect();
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, hex + "\n")) {
        log::warn!(
            "OpAMP: cannot keep the instance uid in {}: {e}; this run uses a new one (set opamp.state_dir to a writable directory)",
            path.display()
        );
    }
    uid
}

/// Stores a uid the server assigned.
pub fn store(dir: &Path, uid: &[u8; 16]) {
    let hex: String = uid.iter().map(|b| format!("{b:02x}")).collect();
    if let Err(e) = std::fs::write(dir.join(FILE), hex + "\n") {
        log::warn!("OpAMP: cannot store the instance uid the server assigned: {e}");
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
        let dir = std::env::temp_dir().join(format!("ztrace-uid-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = load_or_create(&dir, 1);
        let b = load_or_create(&dir, 2);
        assert_eq!(a, b);
        store(&dir, &[3; 16]);
        assert_eq!(load_or_create(&dir, 3), [3; 16]);
        assert_eq!(parse_hex("zz"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
