//! Record files: the raw event stream of a capture, with the process facts needed to decode it,
//! so `ztrace replay` can run it through the same pipeline later — without root, deterministically
//! (see docs/record-format.md for the layout).
//!
//! Layout, all integers little-endian:
//! ```text
//! header  := MAGIC (8 bytes) | format_version u32 | abi_version u32 | mono_to_unix_ns i64 | payload_cap u32 | flags u32
//! frame*  := kind u8 | length u32 | body[length]
//!   kind 1: one raw ring-buffer record, as the probes wrote it (ABI `abi_version`)
//!   kind 2: a traced process's facts, JSON (pid, parent_pid, service_name, executable_name,
//!           executable_path, command_args, host_name, runtime_name, runtime_version,
//!           container_id, pod_uid; the last four may be absent); a later frame for the same pid
//!           replaces it
//! ```
//! A file cut off mid-frame (the recorder was killed) replays up to the last whole frame.

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::Path,
};

use crate::model::ProcessInfo;

pub const MAGIC: [u8; 8] = *b"ZTRACE\0R";
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
/// No frame is larger than a ring-buffer record or a process description can be.
const MAX_FRAME: u32 = 1 << 20;

const FRAME_RECORD: u8 = 1;
const FRAME_PROCESS: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub abi_version: u32,
    pub mono_to_unix_ns: i64,
    pub payload_cap: u32,
    /// `FLAG_*` bits. Files written before a flag existed have it clear.
    pub flags: u32,
}

/// The recorder captured stdout/stderr writes (`--capture-logs`), so a replay exports the logs
/// signal even when the recording holds no line.
pub const FLAG_CAPTURE_LOGS: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The I/O error itself (`transparent`: as its own message, not once more as the cause).
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("not a ztrace record file (bad magic bytes)")]
    NotARecording,
    #[error(
        "record file format version {found} is not supported: this ztrace reads version {FORMAT_VERSION}; replay it with the ztrace release that recorded it"
    )]
    Version { found: u32 },
    #[error(
        "record file holds kernel events of ABI version {found}, this ztrace decodes version {expected}; replay it with the ztrace release that recorded it"
    )]
    Abi { found: u32, expected: u32 },
    #[error("corrupt frame at byte {offset}: {why}")]
    Corrupt { offset: u64, why: String },
}

/// One frame of a record file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Record(Vec<u8>),
    Process(Box<ProcessInfo>),
}

pub struct Writer<W: Write> {
    out: W,
}

impl Writer<BufWriter<File>> {
    /// Creates (or truncates) the record file, readable by its owner only: it holds raw payload
    /// heads (Authorization and Cookie headers, database passwords, Redis AUTH). A symbolic link
    /// at `path` is refused rather than followed, so a file elsewhere cannot be overwritten
    /// through one planted in a shared folder.
    pub fn create(path: &Path, header: Header) -> Result<Self, RecordError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        // `mode` applies only to a new file: an existing one keeps its bits unless set here.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Writer::new(BufWriter::with_capacity(1 << 20, file), header)
    }
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: Header) -> Result<Self, RecordError> {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&header.abi_version.to_le_bytes());
        h[16..24].copy_from_slice(&header.mono_to_unix_ns.to_le_bytes());
        h[24..28].copy_from_slice(&header.payload_cap.to_le_bytes());
        h[28..32].copy_from_slice(&header.flags.to_le_bytes());
        out.write_all(&h)?;
        Ok(Self { out })
    }

    fn frame(&mut self, kind: u8, body: &[u8]) -> io::Result<()> {
        self.out.write_all(&[kind])?;
        self.out.write_all(&(body.len() as u32).to_le_bytes())?;
        self.out.write_all(body)
    }

    pub fn record(&mut self, raw: &[u8]) -> io::Result<()> {
        self.frame(FRAME_RECORD, raw)
    }

    pub fn process(&mut self, p: &ProcessInfo) -> io::Result<()> {
        let json = serde_json::json!({
            "pid": p.pid,
            "parent_pid": p.parent_pid,
            "service_name": p.service_name,
            "executable_name": p.executable_name,
            "executable_path": p.executable_path,
            "command_args": p.command_args,
            "host_name": p.host_name,
            "runtime_name": p.runtime_name,
            "runtime_version": p.runtime_version,
            "container_id": p.container_id,
            "pod_uid": p.pod_uid,
        });
        self.frame(FRAME_PROCESS, json.to_string().as_bytes())
    }

    /// The output the frames were written to.
    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn process_from_json(body: &[u8]) -> Option<ProcessInfo> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Some(ProcessInfo {
        pid: u32::try_from(v["pid"].as_u64()?).ok()?,
        parent_pid: v["parent_pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
        service_name: s("service_name"),
        executable_name: s("executable_name"),
        executable_path: s("executable_path"),
        command_args: v["command_args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        host_name: s("host_name"),
        // Absent in files recorded before these fields existed: read as empty.
        runtime_name: s("runtime_name"),
        runtime_version: s("runtime_version"),
        container_id: s("container_id"),
        pod_uid: s("pod_uid"),
    })
}

pub struct Reader<R: Read> {
    input: R,
    pub header: Header,
    offset: u64,
    /// Set when the file ended inside a frame.
    pub truncated: bool,
}

impl Reader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        let file = File::open(path)?;
        Reader::new(BufReader::with_capacity(1 << 20, file))
    }
}

/// Reads exactly `buf.len()` bytes; Ok(false) on a clean or partial end of input.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> Result<Self, RecordError> {
        let mut h = [0u8; HEADER_LEN];
        if !read_full(&mut input, &mut h)? || h[..8] != MAGIC {
            return Err(RecordError::NotARecording);
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(RecordError::Version { found: version });
        }
        let abi_version = u32_at(12);
        if abi_version != ztrace_abi::ABI_VERSION {
            return Err(RecordError::Abi {
                found: abi_version,
                expected: ztrace_abi::ABI_VERSION,
            });
        }
        let mut mono = [0u8; 8];
        mono.copy_from_slice(&h[16..24]);
        Ok(Self {
            input,
            header: Header {
                abi_version,
                mono_to_unix_ns: i64::from_le_bytes(mono),
                payload_cap: u32_at(24),
                flags: u32_at(28),
            },
            offset: HEADER_LEN as u64,
            truncated: false,
        })
    }

    /// The next frame; None at the end (check `truncated` for a cut-off file).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, RecordError> {
        let mut head = [0u8; 5];
        match self.input.read(&mut head[..1])? {
            0 => return Ok(None),
            _ => {
                if !read_full(&mut self.input, &mut head[1..])? {
                    self.truncated = true;
                    return Ok(None);
                }
            }
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let corrupt = |why: String| RecordError::Corrupt {
            offset: self.offset,
            why,
        };
        if len > MAX_FRAME {
            return Err(corrupt(format!(
                "frame of {len} bytes is larger than any ztrace writes"
            )));
        }
        let mut body = vec![0u8; len as usize];
        if !read_full(&mut self.input, &mut body)? {
            self.truncated = true;
            return Ok(None);
        }
        let frame = match head[0] {
            FRAME_RECORD => Frame::Record(body),
            FRAME_PROCESS => Frame::Process(Box::new(
                process_from_json(&body)
                    .ok_or_else(|| corrupt("unreadable process frame".into()))?,
            )),
            other => return Err(corrupt(format!("unknown frame kind {other}"))),
        };
        self.offset += 5 + len as u64;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            abi_version: ztrace_abi::ABI_VERSION,
            mono_to_unix_ns: -42,
            payload_cap: 512,
            flags: FLAG_CAPTURE_LOGS,
        }
    }

    #[test]
    fn record_files_are_private_and_never_written_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = ztrace_e2e::temp::TempDir::new("record-perm").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

        let fresh = dir.join("new.zcap");
        drop(Writer::create(&fresh, header()).unwrap());
        assert_eq!(mode(&fresh), 0o600);

        // An existing world-readable file is truncated and made private.
        let old = dir.join("old.zcap");
        std::fs::write(&old, b"secret from before").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Writer::create(&old, header()).unwrap());
        assert_eq!(mode(&old), 0o600);
        assert_eq!(std::fs::metadata(&old).unwrap().len(), HEADER_LEN as u64);

        // A link planted where the file goes is refused; its target stays as it was.
        let target = dir.join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.join("link.zcap");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(Writer::create(&link, header()).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    fn info() -> ProcessInfo {
        ProcessInfo {
            pid: 7,
            parent_pid: Some(1),
            service_name: "svc".into(),
            executable_name: "python3".into(),
            executable_path: "/usr/bin/python3".into(),
            command_args: vec!["python3".into(), "app.py".into()],
            host_name: "h".into(),
            runtime_name: "CPython".into(),
            runtime_version: "3.11".into(),
            container_id: "c0ffee".into(),
            pod_uid: String::new(),
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), header()).unwrap();
        w.process(&info()).unwrap();
        w.record(b"raw-1").unwrap();
        w.record(b"").unwrap();
        w.out
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let mut r = Reader::new(bytes.as_slice()).unwrap();
        assert_eq!(r.header, header());
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::Process(Box::new(info())))
        );
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::Record(b"raw-1".to_vec()))
        );
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Record(Vec::new())));
        assert_eq!(r.next_frame().unwrap(), None);
        assert!(!r.truncated);
    }

    #[test]
    fn cut_off_file_replays_whole_frames() {
        let bytes = sample();
        for cut in HEADER_LEN..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]).unwrap();
            let mut n = 0;
            while r.next_frame().unwrap().is_some() {
                n += 1;
            }
            assert!(n <= 3);
        }
    }

    #[test]
    fn wrong_versions_and_garbage_are_clear_errors() {
        let mut bytes = sample();
        bytes[8] = 9;
        let err = Reader::new(bytes.as_slice()).err().unwrap().to_string();
        assert!(err.contains("format version 9"), "{err}");
        let mut bytes = sample();
        bytes[12] = 99;
        let err = Reader::new(bytes.as_slice()).err().unwrap().to_string();
        assert!(err.contains("ABI version 99"), "{err}");
        assert!(matches!(
            Reader::new(&b"hello world, not a record"[..]),
            Err(RecordError::NotARecording)
        ));
        let mut bytes = sample();
        bytes[HEADER_LEN] = 77;
        let mut r = Reader::new(bytes.as_slice()).unwrap();
        assert!(matches!(r.next_frame(), Err(RecordError::Corrupt { .. })));
    }
}
