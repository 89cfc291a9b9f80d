//! Scratch directories and files for tests: a fresh directory per test under the temporary
//! directory (`TMPDIR`), removed with everything in it when its guard drops, also when the test
//! fails or panics. The e2e tests and the daemon's unit tests share this one guard; nothing here may
//! outlive the test that made it.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

/// A directory of its own for one test, removed on drop. Derefs to its [`Path`].
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `ztrace-{tag}-{pid}-{n}` in the temporary directory: `n` counts up within this
    /// process and past any directory of that name already there (left by a killed run), so
    /// tests running in parallel, or twice in one process, never share one.
    pub fn new(tag: &str) -> Result<TempDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tmp = std::env::temp_dir();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = tmp.join(format!("ztrace-{tag}-{}-{n}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(TempDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", dir.display()));
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file written into a [`TempDir`] of its own (for a config file a test hands to ztrace):
/// removed with its directory on drop. Derefs to the file's [`Path`].
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    _dir: TempDir,
}

impl TempFile {
    /// Writes `contents` to `name` in a new [`TempDir::new`]`(tag)`.
    pub fn new(tag: &str, name: &str, contents: impl AsRef<[u8]>) -> Result<TempFile> {
        let dir = TempDir::new(tag)?;
        let path = dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(TempFile { path, _dir: dir })
    }
}

impl Deref for TempFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempFile {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for TempFile {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_guard_has_its_own_directory_removed_on_drop_and_on_panic() {
        let a = TempDir::new("temp-test").unwrap();
        let b = TempDir::new("temp-test").unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::create_dir(a.join("sub")).unwrap();
        std::fs::write(a.join("sub/file"), "x").unwrap();
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
        let in_panic = std::thread::spawn(|| {
            let c = TempDir::new("temp-test").unwrap();
            std::fs::write(c.join("file"), "x").unwrap();
            let path = c.path().to_path_buf();
            std::panic::panic_any(path);
        })
        .join()
        .unwrap_err();
        let path = in_panic.downcast::<PathBuf>().unwrap();
        assert!(!path.exists(), "{} is left", path.display());
        assert!(b.is_dir());
        let f = TempFile::new("temp-test", "a.toml", "x = 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&*f).unwrap(), "x = 1\n");
        let (file, dir) = (f.to_path_buf(), f.parent().unwrap().to_path_buf());
        drop(f);
        assert!(!file.exists() && !dir.exists());
    }
}
