//! The traced set as userspace writes it: the probes' `TRACED` array (a byte of
//! `ztrace_abi::traced` flags per TGID, 0 = not traced), mapped into this process.
//!
//! Why a mapping and not map updates: an update writes a whole 8-byte entry, i.e. the bytes of
//! eight TGIDs, and the probes store single bytes of the same entries at any time (a forked
//! child, an exit, the OpenSSL flag). A read-modify-write of the entry through the bpf syscall
//! would undo a byte a probe stored in between. Through the mapping every store here is an
//! atomic operation on one byte, the same granularity as the probes' stores, so no writer can
//! undo another's byte. The stores are no syscalls; mapping a piece of the map (see `CHUNK`) is
//! an `mmap`, which the seccomp allow-list has.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData};
use ztrace_abi::traced;

/// The map is mapped in pieces of this size, each when a TGID in it is first written: mapping a
/// BPF array maps all its pages at once, and the whole of it (4 MiB, for every PID Linux allows)
/// would count in ztrace's resident memory though a host's PIDs (`pid_max`, 32,768 by default)
/// mostly fit the first piece. A multiple of every page size Linux has.
const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = traced::BYTES / CHUNK;

pub struct TracedSet {
    /// The map (None: anonymous memory, for tests).
    map: Option<MapData>,
    chunks: Vec<Option<NonNull<AtomicU8>>>,
}

// SAFETY: the mappings are shared memory accessed only through atomics; they live as long as
// the value.
unsafe impl Send for TracedSet {}

impl TracedSet {
    /// Takes the `TRACED` map (an array created with `BPF_F_MMAPABLE`).
    pub fn new(map: Map) -> Result<Self> {
        let Map::Array(map) = map else {
            bail!("map TRACED is not an array");
        };
        let info = map.info().context("reading map TRACED's description")?;
        if info.value_size() != traced::PER_WORD || info.max_entries() != traced::WORDS {
            bail!(
                "map TRACED has {} entries of {} bytes, not {} of {}",
                info.max_entries(),
                info.value_size(),
                traced::WORDS,
                traced::PER_WORD
            );
        }
        let mut set = Self {
            map: Some(map),
            chunks: vec![None; CHUNKS],
        };
        // The first piece now: a kernel that cannot map BPF arrays says so at start-up.
        set.chunk(0)?;
        Ok(set)
    }

    /// The same layout in anonymous memory, for tests that need no kernel.
    #[cfg(test)]
    fn anonymous() -> Self {
        Self {
            map: None,
            chunks: vec![None; CHUNKS],
        }
    }

    /// Piece `index` of the map, mapped on first use.
    fn chunk(&mut self, index: usize) -> Result<NonNull<AtomicU8>> {
        if let Some(ptr) = self.chunks[index] {
            return Ok(ptr);
        }
        let (flags, fd) = match &self.map {
            Some(map) => (libc::MAP_SHARED, map.fd().as_fd().as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a fresh mapping of piece `index` of the map's memory (inside it: the map has
        // `traced::BYTES`, checked in `new`); nothing else is placed there.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHUNK,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                if fd < 0 {
                    0
                } else {
                    (index * CHUNK) as libc::off_t
                },
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mapping map TRACED into memory (kernels before 5.5 cannot)");
        }
        let ptr = NonNull::new(ptr.cast()).context("mmap returned a null mapping")?;
        self.chunks[index] = Some(ptr);
        Ok(ptr)
    }

    /// The byte of `tgid`; None beyond the largest PID Linux allows.
    fn byte(&mut self, tgid: u32) -> Result<Option<&AtomicU8>> {
        let tgid = tgid as usize;
        if tgid >= traced::BYTES {
            return Ok(None);
        }
        let chunk = self.chunk(tgid / CHUNK)?;
        // SAFETY: inside the piece's mapping, which lives as long as `self`.
        Ok(Some(unsafe { chunk.add(tgid % CHUNK).as_ref() }))
    }

    /// The flags of `tgid` (0: not traced).
    #[cfg(test)]
    fn get(&mut self, tgid: u32) -> u8 {
        self.byte(tgid)
            .unwrap()
            .map_or(0, |b| b.load(Ordering::Relaxed))
    }

    /// Adds `tgid` (keeping flags it already has, e.g. `TLS` from a probe). False beyond the
    /// largest PID Linux allows.
    pub fn add(&mut self, tgid: u32) -> Result<bool> {
        Ok(self
            .byte(tgid)?
            .map(|b| b.fetch_or(traced::YES, Ordering::Relaxed))
            .is_some())
    }

    /// Replaces the flags of `tgid` if it is traced; false when it is not (it exited, and its
    /// PID may belong to an unrelated process by now, which must not become traced).
    pub fn update(&mut self, tgid: u32, flags: u8) -> Result<bool> {
        let Some(b) = self.byte(tgid)? else {
            return Ok(false);
        };
        Ok(b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            (old != 0).then_some(flags)
        })
        .is_ok())
    }

    /// Whether the kernel traces each of `tgids` (a reconcile's question, see `lineage.rs`). A
    /// piece of the map not mapped yet is mapped only for this read and unmapped after, so
    /// asking about PIDs all over a large `pid_max` leaves ztrace's resident memory as it was.
    pub fn traced_of(&mut self, tgids: &[u32]) -> Result<Vec<bool>> {
        let mapped: Vec<bool> = self.chunks.iter().map(Option::is_some).collect();
        let out = tgids
            .iter()
            .map(|&t| {
                Ok(self
                    .byte(t)?
                    .is_some_and(|b| b.load(Ordering::Relaxed) != 0))
            })
            .collect();
        for (index, was) in mapped.into_iter().enumerate() {
            if !was && let Some(ptr) = self.chunks[index].take() {
                // SAFETY: a mapping made in `chunk` for this read; no reference to it is left.
                unsafe { libc::munmap(ptr.as_ptr().cast(), CHUNK) };
            }
        }
        out
    }

    /// Removes `tgid` (a process userspace found dead whose exit the kernel did not see).
    pub fn remove(&mut self, tgid: u32) -> Result<()> {
        if let Some(b) = self.byte(tgid)? {
            b.store(0, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Drop for TracedSet {
    fn drop(&mut self) {
        for ptr in self.chunks.iter().flatten() {
            // SAFETY: a mapping made in `chunk`, of that size; no reference to it outlives
            // `self`.
            unsafe { libc::munmap(ptr.as_ptr().cast(), CHUNK) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_of_a_tgid_is_where_the_probes_read_it() {
        // The probes read entry `word`, shifted right by `shift` (little-endian); userspace
        // writes byte `tgid` of the mapping. Same byte, and no other TGID's.
        let mut set = TracedSet::anonymous();
        for tgid in [0u32, 1, 7, 8, 9, 63, 64, 32_767, 32_768, 4_194_303] {
            assert!(set.add(tgid).unwrap());
            let (word, shift) = traced::slot(tgid);
            let word = word as usize * 8;
            // SAFETY: entry `word` of the map, inside its piece (a piece holds whole entries).
            let entry = unsafe {
                set.chunk(word / CHUNK)
                    .unwrap()
                    .add(word % CHUNK)
                    .cast::<u64>()
                    .read()
            };
            assert_eq!((entry >> shift) as u8, traced::YES, "{tgid}");
            assert_eq!(
                entry & !(0xff << shift),
                0,
                "{tgid}: a neighbour's byte was set"
            );
            for other in tgid.saturating_sub(9)..tgid.saturating_add(9) {
                assert_eq!(set.get(other) != 0, other == tgid, "{tgid} vs {other}");
            }
            set.remove(tgid).unwrap();
            assert_eq!(set.get(tgid), 0);
        }
        assert_eq!(traced::BYTES, 1 << 22, "every TGID up to PID_MAX_LIMIT");
        assert_eq!(set.get(4_194_304), 0, "past the end: not traced, no fault");
        assert!(!set.add(4_194_304).unwrap());
        assert!(!set.update(4_194_304, traced::YES).unwrap());
        // Only the pieces written were mapped.
        assert_eq!(set.chunks.iter().flatten().count(), 2);
    }

    #[test]
    fn reading_many_maps_no_piece_for_good() {
        let mut set = TracedSet::anonymous();
        set.add(5).unwrap();
        let far = 3 * CHUNK as u32 + 1;
        assert_eq!(
            set.traced_of(&[5, 6, far, 4_194_304]).unwrap(),
            vec![true, false, false, false]
        );
        // Piece 0 was mapped by the add and stays; piece 3 was mapped for the read only.
        assert_eq!(set.chunks.iter().flatten().count(), 1);
        assert_eq!(set.get(5), traced::YES);
    }

    #[test]
    fn flags_change_only_for_a_process_still_traced() {
        let mut set = TracedSet::anonymous();
        // Exited (byte cleared by the kernel): an update must not trace the PID's next owner.
        assert!(!set.update(4242, traced::YES | traced::TLS).unwrap());
        assert_eq!(set.get(4242), 0);
        set.add(4242).unwrap();
        assert!(set.update(4242, traced::YES | traced::TLS).unwrap());
        assert_eq!(set.get(4242), traced::YES | traced::TLS);
        // Adding again keeps the TLS flag a probe may have set meanwhile.
        set.add(4242).unwrap();
        assert_eq!(set.get(4242), traced::YES | traced::TLS);
        assert!(set.update(4242, traced::YES).unwrap());
        assert_eq!(set.get(4242), traced::YES);
    }
}
