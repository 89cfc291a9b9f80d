//! Bounded reads of ELF files ztrace probes: the file offsets of exported functions (where
//! uprobes go) and marker strings of TLS stacks built into an executable. Everything is read in
//! chunks of at most [`CHUNK`] bytes through one open file: a 100 MB `node` costs a 1 MiB
//! buffer, never a copy of the file. Only 64-bit little-endian ELF is understood (what the
//! probes run on); anything else has no symbols here.

use std::{fs::File, io, os::unix::fs::FileExt};

/// Largest buffer any scan here holds.
pub const CHUNK: usize = 1 << 20;
/// Most section headers read (real files have tens).
const MAX_SECTIONS: usize = 4096;
/// Most program headers read.
const MAX_SEGMENTS: usize = 256;

const SHT_DYNSYM: u32 = 11;
const SHT_DYNAMIC: u32 = 6;
const DT_NEEDED: u64 = 1;
/// Most of a dynamic string table read to name the libraries a file needs.
const MAX_DYNSTR: u64 = 4 << 20;
const PT_LOAD: u32 = 1;
const STT_FUNC: u8 = 2;
const SYM_SIZE: usize = 24;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Calls `f(chunk_offset, chunk)` over `len` bytes of `file` from `start`, in chunks of at most
/// [`CHUNK`] bytes that overlap by `overlap` bytes (so a match up to `overlap + 1` long is never
/// split), until `f` returns false.
fn chunks(
    file: &File,
    start: u64,
    len: u64,
    overlap: usize,
    step_multiple: usize,
    mut f: impl FnMut(u64, &[u8]) -> bool,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let step = ((CHUNK - overlap) / step_multiple * step_multiple) as u64;
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        let got = read_full(file, &mut buf[..n], start + at)?;
        if !f(at, &buf[..got]) || got < n {
            break;
        }
        at += step;
    }
    Ok(())
}

/// Reads as much of `buf` as the file has from `offset`.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A 64-bit little-endian ELF file's header and section headers.
struct Sections {
    ehdr: Vec<u8>,
    headers: Vec<u8>,
    entsize: usize,
    count: usize,
}

impl Sections {
    /// None for anything but a 64-bit little-endian ELF file with sane section headers.
    fn read(file: &File) -> io::Result<Option<Self>> {
        let ehdr = read_at(file, 0, 64)?;
        // 64-bit (class 2), little-endian (data 1).
        if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
            return Ok(None);
        }
        let (shoff, entsize, count) = (
            u64_at(&ehdr, 0x28),
            u16_at(&ehdr, 0x3a) as usize,
            u16_at(&ehdr, 0x3c) as usize,
        );
        if entsize < 64 || count > MAX_SECTIONS {
            return Ok(None);
        }
        let headers = read_at(file, shoff, entsize * count)?;
        Ok(Some(Sections {
            ehdr,
            headers,
            entsize,
            count,
        }))
    }

    fn get(&self, i: usize) -> &[u8] {
        &self.headers[i * self.entsize..i * self.entsize + 64]
    }

    /// The first section of type `kind` and the string table its `sh_link` names: (its offset,
    /// size), (the table's offset, size).
    fn with_strings(&self, kind: u32) -> Option<((u64, u64), (u64, u64))> {
        let s = (0..self.count)
            .map(|i| self.get(i))
            .find(|s| u32_at(s, 4) == kind)?;
        let link = u32_at(s, 0x28) as usize;
        if link >= self.count {
            return None;
        }
        let strtab = self.get(link);
        Some((
            (u64_at(s, 0x18), u64_at(s, 0x20)),
            (u64_at(strtab, 0x18), u64_at(strtab, 0x20)),
        ))
    }
}

/// Whether `file` names a library starting with `prefix` (e.g. `libssl.so`) among those the
/// dynamic loader must map for it (`DT_NEEDED`). False for a static or unreadable file.
pub fn needs_library(file: &File, prefix: &[u8]) -> io::Result<bool> {
    let Some(((dyn_off, dyn_size), (str_off, str_size))) =
        Sections::read(file)?.and_then(|s| s.with_strings(SHT_DYNAMIC))
    else {
        return Ok(false);
    };
    let strings = read_at(file, str_off, str_size.min(MAX_DYNSTR) as usize)?;
    let mut needs = false;
    chunks(file, dyn_off, dyn_size, 0, 16, |_, chunk| {
        for entry in chunk.chunks_exact(16) {
            if u64_at(entry, 0) != DT_NEEDED {
                continue;
            }
            let at = u64_at(entry, 8) as usize;
            if strings
                .get(at..)
                .is_some_and(|name| name.starts_with(prefix))
            {
                needs = true;
            }
        }
        !needs
    })?;
    Ok(needs)
}

/// File offsets of the functions among `names` that `file` exports (its dynamic symbol
/// table), in the order of `names`; absent ones are left out.
pub fn exported_functions(
    file: &File,
    names: &[&'static str],
) -> io::Result<Vec<(&'static str, u64)>> {
    let Some(sections) = Sections::read(file)? else {
        return Ok(Vec::new());
    };
    let ehdr = &sections.ehdr;
    let (phoff, phentsize, phnum) = (
        u64_at(ehdr, 0x20),
        u16_at(ehdr, 0x36) as usize,
        u16_at(ehdr, 0x38) as usize,
    );
    if phentsize < 56 || phnum > MAX_SEGMENTS {
        return Ok(Vec::new());
    }
    let Some(((sym_off, sym_size), (str_off, str_size))) = sections.with_strings(SHT_DYNSYM) else {
        return Ok(Vec::new());
    };

    // Pass 1: where each wanted name sits in the string table: every "NAME\0", also inside a
    // longer string (linkers share tails: "malloc" may be the end of "__libc_malloc"). A symbol
    // whose name starts at such an offset is named exactly NAME.
    let longest = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut name_at: Vec<(u32, &'static str)> = Vec::new();
    let patterns: Vec<Vec<u8>> = names
        .iter()
        .map(|n| [n.as_bytes(), &[0u8][..]].concat())
        .collect();
    chunks(file, str_off, str_size, longest + 1, 1, |at, chunk| {
        for (pattern, name) in patterns.iter().zip(names) {
            for hit in memchr::memmem::find_iter(chunk, pattern) {
                let offset = (at + hit as u64) as u32;
                if !name_at.contains(&(offset, *name)) {
                    name_at.push((offset, name));
                }
            }
        }
        true
    })?;
    if name_at.is_empty() {
        return Ok(Vec::new());
    }
    // Pass 2: the defined functions whose name is one of those.
    let mut found: Vec<(&'static str, u64)> = Vec::new();
    chunks(file, sym_off, sym_size, 0, SYM_SIZE, |_, chunk| {
        for sym in chunk.chunks_exact(SYM_SIZE) {
            let (name, info, shndx, value) =
                (u32_at(sym, 0), sym[4], u16_at(sym, 6), u64_at(sym, 8));
            if info & 0xf != STT_FUNC || shndx == 0 || value == 0 {
                continue;
            }
            if let Some(&(_, n)) = name_at.iter().find(|(at, _)| *at == name)
                && !found.iter().any(|(f, _)| *f == n)
            {
                found.push((n, value));
            }
        }
        found.len() < names.len()
    })?;
    // Virtual addresses → file offsets, through the loadable segments.
    let phdrs = read_at(file, phoff, phentsize * phnum)?;
    let loads: Vec<(u64, u64, u64)> = (0..phnum)
        .map(|i| &phdrs[i * phentsize..i * phentsize + 56])
        .filter(|p| u32_at(p, 0) == PT_LOAD)
        .map(|p| (u64_at(p, 8), u64_at(p, 0x10), u64_at(p, 0x20)))
        .collect();
    let mut out: Vec<(&'static str, u64)> = names
        .iter()
        .filter_map(|n| {
            let (_, vaddr) = found.iter().find(|(f, _)| f == n)?;
            let (offset, start, _) = loads
                .iter()
                .find(|(_, start, size)| (*start..start + size).contains(vaddr))?;
            Some((*n, vaddr - start + offset))
        })
        .collect();
    out.dedup();
    Ok(out)
}

/// The first of `markers` (in their order) that occurs in the first `limit` bytes of `file`.
pub fn first_marker<T: Copy>(
    file: &File,
    markers: &[(&[u8], T)],
    limit: u64,
) -> io::Result<Option<T>> {
    let longest = markers.iter().map(|(m, _)| m.len()).max().unwrap_or(1);
    let mut best: Option<usize> = None;
    chunks(file, 0, limit, longest - 1, 1, |_, chunk| {
        for (i, (marker, _)) in markers.iter().enumerate() {
            if best.is_some_and(|b| b <= i) {
                break;
            }
            if memchr::memmem::find(chunk, marker).is_some() {
                best = Some(i);
            }
        }
        best != Some(0)
    })?;
    Ok(best.map(|i| markers[i].1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` in a file of a scratch directory (removed when the guard drops), opened.
    fn temp(name: &str, bytes: &[u8]) -> (ztrace_e2e::temp::TempDir, File) {
        let dir = ztrace_e2e::temp::TempDir::new("elf").unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        (dir, file)
    }

    #[test]
    fn a_marker_split_across_chunks_is_found_and_order_decides() {
        let mut bytes = vec![b'x'; CHUNK * 2 + 10];
        // Straddles the first chunk boundary.
        bytes[CHUNK - 3..CHUNK + 5].copy_from_slice(b"rustls!!");
        bytes[CHUNK * 2..CHUNK * 2 + 5].copy_from_slice(b"crypt");
        let (_dir, file) = temp("markers", &bytes);
        let markers: &[(&[u8], u8)] = &[(b"crypto/tls.", 1), (b"rustls", 2), (b"xxxx", 3)];
        assert_eq!(first_marker(&file, markers, u64::MAX).unwrap(), Some(2));
        assert_eq!(first_marker(&file, &markers[..1], u64::MAX).unwrap(), None);
        // Past the limit: not seen.
        assert_eq!(
            first_marker(&file, &markers[1..2], (CHUNK - 4) as u64).unwrap(),
            None
        );
    }

    #[test]
    fn needed_libraries_are_read_from_the_dynamic_section() {
        let me = File::open("/proc/self/exe").unwrap();
        // This test binary is linked against libc (and not against libssl).
        assert!(needs_library(&me, b"libc.so").unwrap());
        assert!(!needs_library(&me, b"libssl.so").unwrap());
        // Not an ELF file: needs nothing.
        let (_dir, file) = temp("not-elf", &[b'#'; 80]);
        assert!(!needs_library(&file, b"libc.so").unwrap());
    }

    #[test]
    fn exported_functions_match_the_symbol_table() {
        // This test binary's libc exports `malloc`; compare with the dynamic loader's view: the
        // offset we compute, mapped at the library's base, is where `dlsym` finds it.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = maps
            .lines()
            .find(|l| l.contains("/libc.so.6") || l.contains("/libc-"))
            .expect("libc mapped");
        let path = &libc[libc.find('/').unwrap()..];
        let file = File::open(path).unwrap();
        let found = exported_functions(&file, &["malloc", "no_such_function_here"]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let (name, offset) = found[0];
        assert_eq!(name, "malloc");
        let base = maps
            .lines()
            .filter(|l| l.ends_with(path))
            .find_map(|l| {
                let mut f = l.split_whitespace();
                let range = f.next()?;
                let file_off = u64::from_str_radix(f.nth(1)?, 16).ok()?;
                let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
                (file_off == 0).then_some(start)
            })
            .unwrap();
        // SAFETY: dlsym with a NUL-terminated name.
        let addr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()) } as u64;
        assert_eq!(base + offset, addr);
        // Not an ELF file: no symbols, no error.
        let (_dir, junk) = temp("junk", &[0u8; 128]);
        assert!(exported_functions(&junk, &["malloc"]).unwrap().is_empty());
    }
}
