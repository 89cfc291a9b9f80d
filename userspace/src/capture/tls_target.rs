//! Where a process's OpenSSL is, for the uprobes: the libssl it maps, or its own executable when
//! that exports `SSL_read`/`SSL_write` (Node.js builds OpenSSL in and exports it for native
//! add-ons); otherwise which TLS stack ztrace cannot probe, so it is reported, not skipped.
//!
//! Race-free: a library is opened once, through `/proc/PID/map_files/START-END` (the mapping's
//! own file, whatever its path says now, in whatever mount namespace), and kept only if its
//! device and inode are the ones `/proc/PID/maps` lists; an executable through `/proc/PID/exe`.
//! The uprobes go on that open file (`/proc/self/fd/N`), at offsets read from it: no path is
//! resolved again. Paths in `/proc/PID/maps` may hold spaces: only the first five fields are
//! split off.
//!
//! Off the capture loop: executables are read in bounded chunks (`elf`) on a worker thread
//! ([`Inspector`]), and what a file holds is cached by (device, inode, size, mtime), so the
//! hundredth exec of the same binary reads nothing.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError},
};

use super::elf;

/// OpenSSL functions probed, as their names in the symbol table.
pub const OPENSSL_FUNCTIONS: [&str; 4] = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"];

/// TLS stacks ztrace does not decode, recognised by marker strings in an executable.
const UNCOVERED_TLS: &[(&[u8], &str)] = &[
    (b"crypto/tls.", "Go crypto/tls"),
    (b"rustls", "rustls"),
    (b"BoringSSL", "BoringSSL (statically linked)"),
    (
        b"OpenSSL 3.",
        "OpenSSL (statically linked, no exported symbols)",
    ),
    (
        b"OpenSSL 1.",
        "OpenSSL (statically linked, no exported symbols)",
    ),
];
/// How much of an executable is searched for those markers.
const TLS_SCAN_BYTES: u64 = 256 << 20;
/// Files whose contents the cache remembers; past that it starts afresh.
const CACHE_FILES: usize = 1024;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Device as `/proc/PID/maps` shows it (major, minor).
    pub dev: (u32, u32),
    pub inode: u64,
    /// Everything after the inode: may contain spaces; " (deleted)" when unlinked.
    pub path: String,
}

/// Parses a `/proc/PID/maps` line: `start-end perms offset major:minor inode   path`.
pub fn parse_mapping(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut field = || {
        let t = rest.trim_start_matches(' ');
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        f
    };
    let (range, _perms, _offset, dev, inode) = (field(), field(), field(), field(), field());
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        dev: (
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        path: rest.trim_start_matches(' ').to_string(),
    })
}

/// The first mapping of a shared libssl in `maps`.
pub fn libssl_mapping(maps: &str) -> Option<Mapping> {
    maps.lines().filter_map(parse_mapping).find(|m| {
        m.inode != 0
            && m.path.starts_with('/')
            && m.path
                .rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with("libssl.so"))
    })
}

/// Opens the file behind `m` in process `pid`, through its `map_files` entry, and checks that it
/// is the file `maps` named (device and inode): the one open ztrace reads and probes.
pub fn open_mapping(pid: u32, m: &Mapping) -> io::Result<File> {
    let file = File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end))?;
    let meta = file.metadata()?;
    let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
    if dev != m.dev || meta.ino() != m.inode {
        return Err(io::Error::other(format!(
            "{} changed under us (device {}:{} inode {}, maps says {}:{} inode {})",
            m.path,
            dev.0,
            dev.1,
            meta.ino(),
            m.dev.0,
            m.dev.1,
            m.inode
        )));
    }
    Ok(file)
}

/// A file to put the OpenSSL uprobes on.
#[derive(Debug)]
pub struct ProbeFile {
    pub file: File,
    /// For messages: the path the process knows it by.
    pub shown: PathBuf,
    /// (device, inode): one file is probed once, whatever path reached it.
    pub id: (u64, u64),
    /// Probed functions present, with their file offsets.
    pub functions: Vec<(&'static str, u64)>,
    /// The process's executable (not a shared library).
    pub executable: bool,
}

impl ProbeFile {
    /// The path the kernel attaches to: our own descriptor, not a name that could be swapped.
    pub fn attach_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// What ztrace can do about a process's TLS.
#[derive(Debug)]
pub enum TlsTarget {
    /// OpenSSL to probe (a libssl, or the executable exporting it).
    Probe(ProbeFile),
    /// A TLS stack inside the executable that ztrace cannot see into.
    Uncovered(&'static str),
    /// Neither (or the process is gone).
    Nothing,
}

/// What one file holds, as far as TLS goes.
#[derive(Debug, Clone, Default)]
struct Contents {
    functions: Vec<(&'static str, u64)>,
    uncovered: Option<&'static str>,
}

/// (device, inode, size, mtime s, mtime ns): a rewritten file is a new key.
type FileKey = (u64, u64, u64, i64, i64);

/// What files hold, by [`FileKey`]; bounded by [`CACHE_FILES`].
#[derive(Default)]
pub struct Cache {
    files: HashMap<FileKey, Contents>,
    /// Files read so far (cache misses): a test's view of the cost.
    pub reads: u64,
}

impl Cache {
    fn contents(&mut self, file: &File, executable: bool) -> io::Result<(FileKey, Contents)> {
        let m = file.metadata()?;
        let key = (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec());
        if let Some(c) = self.files.get(&key) {
            return Ok((key, c.clone()));
        }
        self.reads += 1;
        let functions = elf::exported_functions(file, &OPENSSL_FUNCTIONS)?;
        let has_pair = ["SSL_read", "SSL_write"]
            .iter()
            .all(|n| functions.iter().any(|(f, _)| f == n));
        // An executable that needs libssl (DT_NEEDED) carries OpenSSL's version strings too
        // (`openssl`, `curl`), but its OpenSSL is the library, which the dynamic loader maps
        // after the exec: inspected before that, it is undecided (a handshake asks again), not
        // a statically linked OpenSSL never to be probed.
        let uncovered = if executable
            && !has_pair
            && !elf::needs_library(file, b"libssl.so").unwrap_or(false)
        {
            elf::first_marker(file, UNCOVERED_TLS, TLS_SCAN_BYTES)?
        } else {
            None
        };
        let c = Contents {
            functions: if has_pair || !executable {
                functions
            } else {
                Vec::new()
            },
            uncovered,
        };
        if self.files.len() >= CACHE_FILES {
            self.files.clear();
        }
        self.files.insert(key, c.clone());
        Ok((key, c))
    }

    /// Where `pid`'s OpenSSL is (see the module doc).
    pub fn inspect(&mut self, pid: u32) -> io::Result<TlsTarget> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        if let Some(m) = libssl_mapping(&maps) {
            let file = open_mapping(pid, &m)?;
            let (key, c) = self.contents(&file, false)?;
            if c.functions.is_empty() {
                return Err(io::Error::other(format!(
                    "{}: no SSL_read/SSL_write in its symbol table",
                    m.path
                )));
            }
            return Ok(TlsTarget::Probe(ProbeFile {
                file,
                shown: PathBuf::from(m.path),
                id: (key.0, key.1),
                functions: c.functions,
                executable: false,
            }));
        }
        let file = File::open(format!("/proc/{pid}/exe"))?;
        let (key, c) = self.contents(&file, true)?;
        if !c.functions.is_empty() {
            let shown = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            return Ok(TlsTarget::Probe(ProbeFile {
                file,
                shown,
                id: (key.0, key.1),
                functions: c.functions,
                executable: true,
            }));
        }
        Ok(c.uncovered.map_or(TlsTarget::Nothing, TlsTarget::Uncovered))
    }
}

/// Inspects processes on a worker thread: the capture loop asks ([`Inspector::ask`]) and picks
/// answers up when it comes round ([`Inspector::answers`]); it never waits on a file.
pub struct Inspector {
    ask: SyncSender<u32>,
    answers: Receiver<(u32, io::Result<TlsTarget>)>,
    /// Requests refused because the worker was this far behind.
    pub refused: u64,
}

/// Requests the worker may have queued.
const QUEUE: usize = 4096;

impl Inspector {
    pub fn start() -> io::Result<Inspector> {
        let (ask, asked) = std::sync::mpsc::sync_channel::<u32>(QUEUE);
        let (answer, answers) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("ztrace-tls-inspect".into())
            .spawn(move || {
                let mut cache = Cache::default();
                for pid in asked {
                    if answer.send((pid, cache.inspect(pid))).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Inspector {
            ask,
            answers,
            refused: 0,
        })
    }

    /// Asks where `pid`'s OpenSSL is; false when the worker is too far behind (counted).
    pub fn ask(&mut self, pid: u32) -> bool {
        match self.ask.try_send(pid) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.refused += 1;
                false
            }
        }
    }

    /// Answers ready now.
    pub fn answers(&mut self) -> Vec<(u32, io::Result<TlsTarget>)> {
        let mut out = Vec::new();
        loop {
            match self.answers.try_recv() {
                Ok(a) => out.push(a),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_with_spaces_in_the_path_parse_whole() {
        let line = "7f1c2a000000-7f1c2a0a0000 r-xp 00020000 fd:01 1234567                    /opt/my app/lib/libssl.so.3 (deleted)";
        let m = parse_mapping(line).unwrap();
        assert_eq!(m.start, 0x7f1c2a000000);
        assert_eq!(m.end, 0x7f1c2a0a0000);
        assert_eq!(m.dev, (0xfd, 1));
        assert_eq!(m.inode, 1234567);
        assert_eq!(m.path, "/opt/my app/lib/libssl.so.3 (deleted)");
        // The old reader took the sixth whitespace-separated field: "/opt/my".
        assert_eq!(line.split_whitespace().nth(5), Some("/opt/my"));
        assert_eq!(libssl_mapping(line).unwrap(), m);
        assert!(libssl_mapping("00400000-00401000 r-xp 00000000 00:00 0 [vdso]").is_none());
        assert!(parse_mapping("garbage").is_none());
    }

    /// A copy of this test binary's libc under a path with spaces, loaded with dlopen: the
    /// mapping is found, opened through map_files and checked by device and inode. The old code
    /// split the path at the space and opened "/proc/PID/root/tmp/…/with": no such file, as the
    /// test makes its own fresh directory (whatever else the temporary directory holds).
    #[test]
    fn a_library_under_a_path_with_spaces_is_opened_through_map_files() {
        let dir = ztrace_e2e::temp::TempDir::new("maps").unwrap();
        let spaced = dir.join("with spaces");
        std::fs::create_dir(&spaced).unwrap();
        // A library named like libssl: any ELF shared object serves; libz is small and
        // has no constructors that mind being loaded twice.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let src = maps
            .lines()
            .filter_map(parse_mapping)
            .find(|m| m.path.contains("/libgcc_s.so") || m.path.contains("/libm.so"))
            .expect("a shared library mapped");
        let lib = spaced.join("libssl.so.3");
        std::fs::copy(&src.path, &lib).unwrap();
        let c = std::ffi::CString::new(lib.to_str().unwrap()).unwrap();
        // SAFETY: dlopen of a copy of a library this process already runs.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen {}", lib.display());
        let pid = std::process::id();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let m = libssl_mapping(&maps).expect("the copy is mapped");
        assert_eq!(m.path, lib.to_str().unwrap());
        let old_path = format!(
            "/proc/{pid}/root{}",
            maps.lines()
                .find(|l| l.contains("libssl.so.3"))
                .and_then(|l| l.split_whitespace().nth(5))
                .unwrap()
        );
        assert!(File::open(&old_path).is_err(), "{old_path}");
        let file = open_mapping(pid, &m).expect("opened through map_files");
        assert_eq!(file.metadata().unwrap().ino(), m.inode);
        // A mapping that names another inode is refused.
        let wrong = Mapping {
            inode: m.inode + 1,
            ..m.clone()
        };
        assert!(open_mapping(pid, &wrong).is_err());
    }

    #[test]
    fn a_second_exec_of_the_same_binary_reads_nothing() {
        let spawn = || {
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap()
        };
        let (mut a, mut b) = (spawn(), spawn());
        let mut cache = Cache::default();
        let first = cache.inspect(a.id()).unwrap();
        assert_eq!(cache.reads, 1);
        let second = cache.inspect(b.id()).unwrap();
        assert_eq!(cache.reads, 1, "cached by device, inode, size and mtime");
        assert!(matches!(first, TlsTarget::Nothing), "{first:?}");
        assert!(matches!(second, TlsTarget::Nothing), "{second:?}");
        for c in [&mut a, &mut b] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Peak memory of this process (VmHWM), in bytes.
    fn peak_rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }

    /// A 200 MiB executable without markers is scanned whole in a bounded buffer: the peak
    /// memory grows by far less than the file (the old scan read up to 256 MiB into memory).
    #[test]
    fn scanning_a_large_executable_keeps_memory_bounded() {
        let dir = ztrace_e2e::temp::TempDir::new("big-exe").unwrap();
        let path = dir.join("big-exe");
        let file = File::create(&path).unwrap();
        // Sparse: no disk used; reads return zeros.
        file.set_len(200 << 20).unwrap();
        drop(file);
        let before = peak_rss();
        let file = File::open(&path).unwrap();
        let mut cache = Cache::default();
        let (_, c) = cache.contents(&file, true).unwrap();
        let grown = peak_rss().saturating_sub(before);
        assert!(c.uncovered.is_none() && c.functions.is_empty());
        assert!(grown < 32 << 20, "peak memory grew by {grown} bytes");
    }
}
