//! ztrace's memory allocator: mimalloc, tuned to return freed memory promptly.
//!
//! The pipeline allocates small objects on the capture thread (exchanges, spans) and frees many
//! of them on the export thread. With glibc's malloc that pattern cost about a fifth of ztrace's
//! CPU with nginx saturated (`perf record` on the daemon: `_int_malloc`, `malloc_consolidate`,
//! `_int_free`, `unlink_chunk`); mimalloc's thread-local free lists cost a fraction of it. Its
//! defaults keep freed pages committed for a second (`purge_delay` 1000 ms), which took peak RSS
//! from ~52 MiB to 74–85 MiB at that rate; purging at once, committing arenas on demand and no
//! transparent huge pages keep it where glibc was (46–51 MiB).

use std::os::raw::{c_int, c_long};

use libmimalloc_sys as mi;

/// Positions of two options in mimalloc v3's `mi_option_e` (the -sys crate does not export them
/// as constants), each with its default in that version (`src/options.c`): [`tune`] changes an
/// option only while it still reads that default, so a newer mimalloc whose order moved (or a
/// `MIMALLOC_*` environment setting) is left alone rather than a wrong option being set; the
/// unit test fails on such a version.
const ARENA_EAGER_COMMIT: (c_int, c_long) = (4, 2);
const PURGE_DELAY: (c_int, c_long) = (15, 1000);

/// Sets ztrace's allocator options; call first thing in `main`. Returns whether all took.
pub fn tune() -> bool {
    // mimalloc asks for transparent huge pages on its arenas, and the first arena exists before
    // `main`: each 2 MiB page it touches is resident whole (peak RSS ~60 instead of ~50 MiB
    // with nginx saturated). Turning THP off for the process covers that arena too.
    // SAFETY: prctl with integer arguments only.
    let mut all = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } == 0;
    for (option, default) in [ARENA_EAGER_COMMIT, PURGE_DELAY] {
        // SAFETY: plain reads and writes of mimalloc's option table, valid for any index
        // below `_mi_option_last` (both are).
        unsafe {
            if mi::mi_option_get(option) == default {
                mi::mi_option_set(option, 0);
            } else {
                all = false;
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_where_mimalloc_documents_them() {
        // SAFETY: as in `tune`.
        let read = |o: c_int| unsafe { mi::mi_option_get(o) };
        assert_eq!(read(ARENA_EAGER_COMMIT.0), ARENA_EAGER_COMMIT.1);
        assert_eq!(read(PURGE_DELAY.0), PURGE_DELAY.1);
        assert!(tune());
        assert_eq!(read(ARENA_EAGER_COMMIT.0), 0);
        assert_eq!(read(PURGE_DELAY.0), 0);
    }
}
