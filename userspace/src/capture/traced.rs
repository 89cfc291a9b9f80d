//! The traced set as userspace writes it: the probes' `TRACED` array (a byte of
//! `ztrace_abi::traced` flags per TGID, 0 = not traced), mapped into this process.
//!
//! Why a mapping and not map updates: an update writes a whole 8-byte entry, i.e. the bytes of
//! eight TGIDs, and the probes store single bytes of the same entries at any time (a forked
//! child, an exit, the OpenSSL flag). A read-modify-write of the entry through the bpf syscall
//! would undo a byte a probe stored in between. Through the mapping every store here is an
//! atomic operation on one byte, the same granularity as the probes' stores, so no writer can
//! undo another's byte. Mapping happens at start-up, before the seccomp filter; the stores
//! themselves are no syscalls.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData};
use ztrace_abi::traced;

pub struct TracedSet {
    bytes: NonNull<AtomicU8>,
    /// Keeps the map's descriptor for as long as the mapping lives (None: anonymous memory, for
    /// tests).
    _map: Option<MapData>,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it lives as long as the
// value.
unsafe impl Send for TracedSet {}

impl TracedSet {
    /// Maps the `TRACED` map (an array created with `BPF_F_MMAPABLE`).
    pub fn new(map: Map) -> Result<Self> {
        let Map::Array(map) = map else {
            bail!("map TRACED is not an array");
        };
        let info = map.info().context("reading map TRACED's description")?;
        let size = info.max_entries() as usize * info.value_size() as usize;
        if info.value_size() != traced::PER_WORD || size != traced::BYTES {
            bail!(
                "map TRACED has {} entries of {} bytes, not {} of {}",
                info.max_entries(),
                info.value_size(),
                traced::WORDS,
                traced::PER_WORD
            );
        }
        // SAFETY: a fresh shared mapping of the map's memory; nothing else is placed there.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mapping map TRACED into memory (kernels before 5.5 cannot)");
        }
        Ok(Self {
            bytes: NonNull::new(ptr.cast()).context("mmap returned a null mapping")?,
            _map: Some(map),
        })
    }

    /// The same layout in anonymous memory, for tests that need no kernel.
    #[cfg(test)]
    fn anonymous() -> Self {
        // SAFETY: a fresh private mapping.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                traced::BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Self {
            bytes: NonNull::new(ptr.cast()).unwrap(),
            _map: None,
        }
    }

    fn byte(&self, tgid: u32) -> Option<&AtomicU8> {
        // SAFETY: inside the mapping (checked), which lives as long as `self`.
        ((tgid as usize) < traced::BYTES).then(|| unsafe { self.bytes.add(tgid as usize).as_ref() })
    }

    /// The flags of `tgid` (0: not traced).
    #[cfg(test)]
    fn get(&self, tgid: u32) -> u8 {
        self.byte(tgid).map_or(0, |b| b.load(Ordering::Relaxed))
    }

    /// Adds `tgid` (keeping flags it already has, e.g. `TLS` from a probe).
    pub fn add(&self, tgid: u32) {
        if let Some(b) = self.byte(tgid) {
            b.fetch_or(traced::YES, Ordering::Relaxed);
        }
    }

    /// Replaces the flags of `tgid` if it is traced; false when it is not (it exited, and its
    /// PID may belong to an unrelated process by now, which must not become traced).
    pub fn update(&self, tgid: u32, flags: u8) -> bool {
        let Some(b) = self.byte(tgid) else {
            return false;
        };
        b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            (old != 0).then_some(flags)
        })
        .is_ok()
    }

    /// Removes `tgid` (a process userspace found dead whose exit the kernel did not see).
    pub fn remove(&self, tgid: u32) {
        if let Some(b) = self.byte(tgid) {
            b.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for TracedSet {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of that size; no reference to it outlives `self`.
        unsafe { libc::munmap(self.bytes.as_ptr().cast(), traced::BYTES) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_of_a_tgid_is_where_the_probes_read_it() {
        // The probes read entry `word`, shifted right by `shift` (little-endian); userspace
        // writes byte `tgid` of the mapping. Same byte, and no other TGID's.
        let set = TracedSet::anonymous();
        for tgid in [0u32, 1, 7, 8, 9, 63, 64, 32_767, 32_768, 4_194_303] {
            set.add(tgid);
            let (word, shift) = traced::slot(tgid);
            // SAFETY: entry `word` < WORDS of the mapping.
            let entry = unsafe { set.bytes.cast::<u64>().add(word as usize).read() };
            assert_eq!((entry >> shift) as u8, traced::YES, "{tgid}");
            assert_eq!(
                entry & !(0xff << shift),
                0,
                "{tgid}: a neighbour's byte was set"
            );
            for other in tgid.saturating_sub(9)..tgid.saturating_add(9) {
                assert_eq!(set.get(other) != 0, other == tgid, "{tgid} vs {other}");
            }
            set.remove(tgid);
            assert_eq!(set.get(tgid), 0);
        }
        assert_eq!(traced::BYTES, 1 << 22, "every TGID up to PID_MAX_LIMIT");
        assert_eq!(set.get(4_194_304), 0, "past the end: not traced, no fault");
        set.add(4_194_304);
        assert!(!set.update(4_194_304, traced::YES));
    }

    #[test]
    fn flags_change_only_for_a_process_still_traced() {
        let set = TracedSet::anonymous();
        // Exited (byte cleared by the kernel): an update must not trace the PID's next owner.
        assert!(!set.update(4242, traced::YES | traced::TLS));
        assert_eq!(set.get(4242), 0);
        set.add(4242);
        assert!(set.update(4242, traced::YES | traced::TLS));
        assert_eq!(set.get(4242), traced::YES | traced::TLS);
        // Adding again keeps the TLS flag a probe may have set meanwhile.
        set.add(4242);
        assert_eq!(set.get(4242), traced::YES | traced::TLS);
        assert!(set.update(4242, traced::YES));
        assert_eq!(set.get(4242), traced::YES);
    }
}
