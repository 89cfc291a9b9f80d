//! Start-up of the live daemon, before any thread exists: everything that needs a system call
//! the seccomp allow-list refuses afterwards — loading every probe program, creating the record
//! file, opening the OpAMP instance uid's file — then the allow-list itself. The daemon's loop
//! (`live.rs`) starts from what this leaves.

use std::path::Path;

use anyhow::Result;

use super::record_sink::RecordSink;
use crate::capture::{Capture, CaptureOptions};

/// Loads the probes (`opts`), creates the record file (`record`, in record mode), opens the
/// OpAMP uid's file (`control`), then installs the seccomp allow-list (unless `--no-seccomp`).
/// Call it before any thread starts.
pub(super) fn start(
    opts: &CaptureOptions,
    record: Option<&Path>,
    mono_to_unix: i128,
    control: Option<&mut crate::control::Start>,
    seccomp: bool,
) -> Result<(Capture, Option<RecordSink>)> {
    let record = match record {
        Some(path) => Some(RecordSink::create(path, mono_to_unix, opts)?),
        None => None,
    };
    let capture = Capture::load(opts)?;
    // Loading parsed the kernel's BTF (tens of MiB of short-lived allocations): give the freed
    // heap back instead of carrying it as resident memory for the whole run.
    // SAFETY: plain libc call, no pointers involved.
    unsafe { libc::malloc_trim(0) };
    if let Some(control) = control {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        control.keep_identity(now.map_or(0, |d| d.as_millis() as u64));
    }
    // Before any thread starts and before a byte of captured data, a peer's message, a
    // collector's answer or an ELF file is parsed.
    if seccomp {
        let n = crate::capture::seccomp::install().map_err(|e| {
            anyhow::anyhow!(
                "installing the seccomp allow-list failed: {e} (--no-seccomp runs without it)"
            )
        })?;
        log::info!(
            "seccomp: allow-list of {n} system calls; any other fails with EPERM (--no-seccomp turns it off)"
        );
    } else {
        log::warn!(
            "seccomp: off (--no-seccomp): a compromised ztrace could exec, ptrace, load BPF programs …"
        );
    }
    Ok((capture, record))
}

#[cfg(test)]
mod tests {
    use crate::control::identity::Kept;

    const CHILD: &str = "runtime::startup::tests::uid_store_under_the_filter";

    /// A uid the OpAMP server assigns after start-up goes through the file opened before the
    /// filter (which refuses opening files for writing): checked in a child process.
    #[test]
    fn a_uid_assigned_later_is_stored_under_the_filter() {
        let dir = ztrace_e2e::temp::TempDir::new("uid-seccomp").unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                CHILD,
            ])
            .env("ZTRACE_UID_DIR", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        let stored = std::fs::read_to_string(dir.join("opamp-instance-uid")).unwrap();
        assert_eq!(stored, "05".repeat(16) + "\n");
    }

    #[test]
    #[ignore = "run in a child process by the test above"]
    fn uid_store_under_the_filter() {
        let Some(dir) = std::env::var_os("ZTRACE_UID_DIR") else {
            return;
        };
        let mut kept = Kept::open(std::path::Path::new(&dir), 1);
        crate::capture::seccomp::install().unwrap();
        // Opening anew for writing is refused now; the descriptor held is what stores.
        let again = std::fs::OpenOptions::new()
            .write(true)
            .open(std::path::Path::new(&dir).join("opamp-instance-uid"));
        assert_eq!(
            again.err().and_then(|e| e.raw_os_error()),
            Some(libc::EPERM)
        );
        kept.store(&[5; 16]);
    }
}
