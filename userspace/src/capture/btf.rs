//! Kernel struct layout discovery from the running kernel's BTF.
//!
//! This module owns reading `/sys/kernel/btf/vmlinux` and turning it into the member byte
//! offsets the eBPF probes need ([`ztrace_abi::KernelOffsets`]), so the probes never depend on
//! one kernel build's layout. It is a small, self-contained, bounds-checked BTF parser (format:
//! the kernel's `Documentation/bpf/btf.rst`); it decodes only what offset lookup needs, and
//! malformed input yields [`BtfError`], never a panic.

use std::collections::HashMap;
use ztrace_abi::{KernelOffsets, OFFSET_UNKNOWN};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const MAGIC: u16 = 0xeb9f;
/// Bound on typedef/array chains and anonymous-member nesting (guards cyclic garbage).
const MAX_DEPTH: u32 = 32;
/// Bound on members visited by one lookup (guards exponential fan-out in garbage).
const MAX_STEPS: u32 = 1 << 20;

// BTF kinds used by name; the others appear as bare numbers in `extra_len`.
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FLOAT: u32 = 16;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {VMLINUX}: {0} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read(#[source] std::io::Error),
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("struct `{0}` has no member `{1}`")]
    NoMember(String, String),
    #[error("member `{0}.{1}` is not a struct or union, cannot look inside it")]
    NotComposite(String, String),
    #[error("member `{0}.{1}` is a bitfield not aligned to a byte")]
    Bitfield(String, String),
    #[error("member `{0}.{1}` is {2} bytes, the probes expect {3}")]
    SizeMismatch(String, String, u32, u32),
}

type Res<T> = Result<T, BtfError>;

fn malformed<T>(msg: impl Into<String>) -> Res<T> {
    Err(BtfError::Malformed(msg.into()))
}

fn or_bad<T>(v: Option<T>, msg: &str) -> Res<T> {
    v.map_or_else(|| malformed(msg), Ok)
}

/// Parsed BTF: the raw bytes plus an index of type records and of struct/union names.
pub struct Btf {
    data: Vec<u8>,
    str_start: usize,
    str_end: usize,
    /// Byte position of each type record; index = type id (entry 0, void, is unused).
    types: Vec<usize>,
    /// Struct/union name → type id (first definition wins).
    structs: HashMap<String, u32>,
}

/// One decoded `btf_type` header; `size_type` is `size` or `type`, depending on the kind.
#[derive(Clone, Copy)]
struct Ty {
    id: u32,
    pos: usize,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_type: u32,
}

/// A member found by a lookup: bit offset (from the struct the lookup started in), bitfield
/// width (0 if not a bitfield) and type id.
#[derive(Clone, Copy)]
struct Member {
    bit_off: u64,
    bits: u32,
    ty: u32,
}

fn rd32(data: &[u8], pos: usize) -> Res<u32> {
    match data.get(pos..pos.saturating_add(4)) {
        Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        None => malformed(format!("read past the end at byte {pos}")),
    }
}

/// Bytes of kind-specific data after a `btf_type` header.
fn extra_len(kind: u32, vlen: usize) -> Res<usize> {
    Ok(match kind {
        INT | 14 | 17 => 4,                        // INT, VAR, DECL_TAG
        ARRAY => 12,                               // btf_array
        STRUCT | UNION | 15 | ENUM64 => 12 * vlen, // members, DATASEC vars, enum64 values
        ENUM | 13 => 8 * vlen,                     // enum values, FUNC_PROTO params
        PTR | 7 | TYPEDEF | VOLATILE | CONST | RESTRICT | 12 | FLOAT | TYPE_TAG => 0,
        _ => return malformed(format!("unknown type kind {kind}")),
    })
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Self::from_vec(std::fs::read(VMLINUX).map_err(BtfError::Read)?)
    }

    /// Parses a raw (little-endian) BTF blob.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        Self::from_vec(data.to_vec())
    }

    fn from_vec(data: Vec<u8>) -> Res<Btf> {
        match data.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]])) {
            Some(MAGIC) if data.get(2) == Some(&1) => {}
            Some(MAGIC) => return malformed("unsupported version"),
            Some(m) if m == MAGIC.swap_bytes() => return malformed("big-endian BTF"),
            _ => return malformed("bad magic"),
        }
        let hdr = |i: usize| rd32(&data, 4 + 4 * i).map(u64::from);
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (hdr(0)?, hdr(1)?, hdr(2)?, hdr(3)?, hdr(4)?);
        let section = |off: u64, len: u64| match hdr_len + off + len <= data.len() as u64 {
            true if hdr_len >= 24 => Ok(((hdr_len + off) as usize, (hdr_len + off + len) as usize)),
            _ => malformed("section out of bounds"),
        };
        let (mut pos, type_end) = section(type_off, type_len)?;
        let (str_start, str_end) = section(str_off, str_len)?;
        if str_len == 0 || data[str_start] != 0 {
            return malformed("string section must start with an empty string");
        }
        let structs = HashMap::new();
        let mut btf = Btf {
            data,
            str_start,
            str_end,
            types: vec![0],
            structs,
        };
        while pos < type_end {
            let id = btf.types.len() as u32;
            btf.types.push(pos);
            let t = btf.ty(id)?;
            pos += 12 + extra_len(t.kind, t.vlen)?;
            if pos > type_end {
                return malformed(format!("type {id} truncated"));
            }
            let name_off = rd32(&btf.data, t.pos)?;
            if matches!(t.kind, STRUCT | UNION) && name_off != 0 {
                let Ok(name) = std::str::from_utf8(btf.name(name_off)?) else {
                    return malformed(format!("type {id} name is not UTF-8"));
                };
                btf.structs.entry(name.to_owned()).or_insert(id);
            }
        }
        Ok(btf)
    }

    /// Byte offset of `path` (dot-separated, e.g. "__sk_common.skc_daddr") inside struct
    /// `struct_name`. Members of anonymous structs/unions are found transparently (as in C);
    /// typedefs and qualifiers are resolved when descending a path.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let m = self.walk(struct_name, path)?;
        if m.bit_off % 8 != 0 || m.bits % 8 != 0 {
            return Err(BtfError::Bitfield(struct_name.into(), path.into()));
        }
        u32::try_from(m.bit_off / 8).or_else(|_| malformed("member offset overflows"))
    }

    /// Size in bytes of the member's type (resolving typedefs etc.); a byte-aligned bitfield's
    /// width in bytes.
    pub fn member_size(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let m = self.walk(struct_name, path)?;
        if m.bits == 0 {
            return self.size_of(m.ty);
        }
        if m.bit_off % 8 != 0 || m.bits % 8 != 0 {
            return Err(BtfError::Bitfield(struct_name.into(), path.into()));
        }
        Ok(m.bits / 8)
    }

    fn ty(&self, id: u32) -> Res<Ty> {
        let pos = self.types.get(id as usize).filter(|_| id != 0);
        let pos = *or_bad(pos, "bad type id")?;
        let (info, size_type) = (self.rd(pos + 4)?, self.rd(pos + 8)?);
        Ok(Ty {
            id,
            pos,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 != 0,
            size_type,
        })
    }

    fn name(&self, off: u32) -> Res<&[u8]> {
        let range = self.str_start.saturating_add(off as usize)..self.str_end;
        let rest = self.data.get(range).unwrap_or(&[]);
        let len = or_bad(rest.iter().position(|&b| b == 0), "bad string offset")?;
        Ok(&rest[..len])
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Res<Ty> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_type,
                _ => return Ok(t),
            }
        }
        malformed(format!("type chain at {id} too long"))
    }

    fn size_of(&self, mut id: u32) -> Res<u32> {
        let mut count = 1u32;
        for _ in 0..MAX_DEPTH {
            let t = self.resolve(id)?;
            let size = match t.kind {
                INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT => t.size_type,
                PTR => size_of::<usize>() as u32,
                ARRAY => {
                    count = or_bad(count.checked_mul(self.rd(t.pos + 20)?), "array too big")?;
                    id = self.rd(t.pos + 12)?;
                    continue;
                }
                k => return malformed(format!("type {} (kind {k}) has no size", t.id)),
            };
            return or_bad(count.checked_mul(size), "array too big");
        }
        malformed("array nesting too deep")
    }

    /// Finds member `name` of struct/union `t`, looking inside anonymous members.
    fn find(&self, t: Ty, name: &[u8], depth: u32, steps: &mut u32) -> Res<Option<Member>> {
        if depth > MAX_DEPTH {
            return malformed("anonymous members nested too deeply");
        }
        for i in 0..t.vlen {
            *steps = or_bad(steps.checked_sub(1), "too many members")?;
            let p = t.pos + 12 + 12 * i;
            let (name_off, ty, off) = (self.rd(p)?, self.rd(p + 4)?, self.rd(p + 8)?);
            let member_name = self.name(name_off)?;
            if member_name == name {
                return Ok(Some(self.member(t.kind_flag, ty, off)?));
            }
            if member_name.is_empty() {
                let inner = self.resolve(ty)?;
                if matches!(inner.kind, STRUCT | UNION)
                    && let Some(mut m) = self.find(inner, name, depth + 1, steps)?
                {
                    m.bit_off += u64::from(if t.kind_flag { off & 0xff_ffff } else { off });
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }

    /// Decodes a member's offset and bitfield width; without kind_flag a bitfield is encoded
    /// in the member's int type instead.
    fn member(&self, kind_flag: bool, ty: u32, off: u32) -> Res<Member> {
        if kind_flag {
            let (bit_off, bits) = (u64::from(off & 0xff_ffff), off >> 24);
            return Ok(Member { bit_off, bits, ty });
        }
        let (t, mut bit_off, mut bits) = (self.ty(ty)?, u64::from(off), 0);
        if t.kind == INT {
            let enc = self.rd(t.pos + 12)?;
            if enc & 0xff != t.size_type.wrapping_mul(8) || enc & 0xff_0000 != 0 {
                (bits, bit_off) = (enc & 0xff, bit_off + u64::from((enc >> 16) & 0xff));
            }
        }
        Ok(Member { bit_off, bits, ty })
    }

    fn rd(&self, pos: usize) -> Res<u32> {
        rd32(&self.data, pos)
    }

    /// Resolves a dot-separated member path inside a named struct/union.
    fn walk(&self, struct_name: &str, path: &str) -> Res<Member> {
        let no_struct = || BtfError::NoStruct(struct_name.into());
        let no_member = || BtfError::NoMember(struct_name.into(), path.into());
        let mut t = self.ty(*self.structs.get(struct_name).ok_or_else(no_struct)?)?;
        let (mut bit_off, mut last, mut steps) = (0, None::<Member>, MAX_STEPS);
        for (i, comp) in path.split('.').enumerate() {
            if let Some(m) = last {
                t = self.resolve(m.ty)?;
                if !matches!(t.kind, STRUCT | UNION) {
                    let prefix = path.split('.').take(i).collect::<Vec<_>>().join(".");
                    return Err(BtfError::NotComposite(struct_name.into(), prefix));
                }
            }
            let found = match comp {
                "" => None,
                _ => self.find(t, comp.as_bytes(), 0, &mut steps)?,
            };
            let m = found.ok_or_else(no_member)?;
            (bit_off, last) = (bit_off + m.bit_off, Some(m));
        }
        let m = last.ok_or_else(no_member)?;
        Ok(Member { bit_off, ..m })
    }
}

/// Offset of `s.p`, checking its size; `optional` members that are missing or bitfields
/// yield [`OFFSET_UNKNOWN`].
fn field(btf: &Btf, s: &str, p: &str, size: Option<u32>, optional: bool) -> Res<u32> {
    let m = match btf.walk(s, p) {
        Err(BtfError::NoMember(..)) if optional => return Ok(OFFSET_UNKNOWN),
        r => r?,
    };
    if m.bits != 0 && optional {
        return Ok(OFFSET_UNKNOWN);
    } else if m.bits != 0 {
        return Err(BtfError::Bitfield(s.into(), p.into()));
    }
    if let Some(want) = size {
        let got = btf.size_of(m.ty)?;
        if got != want {
            return Err(BtfError::SizeMismatch(s.into(), p.into(), got, want));
        }
    }
    btf.member_offset(s, p)
}

/// Fills every field of [`KernelOffsets`] from BTF.
pub fn resolve_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let req = |s, p, size| field(btf, s, p, size, false);
    let opt = |s, p, size| field(btf, s, p, Some(size), true);
    let mut o = KernelOffsets {
        task_files: req("task_struct", "files", None)?,
        task_tgid: req("task_struct", "tgid", Some(4))?,
        task_signal: req("task_struct", "signal", None)?,
        signal_live: req("signal_struct", "live", Some(4))?,
        files_fdt: req("files_struct", "fdt", None)?,
        fdt_max_fds: req("fdtable", "max_fds", Some(4))?,
        fdt_fd: req("fdtable", "fd", None)?,
        file_f_inode: req("file", "f_inode", None)?,
        file_private_data: req("file", "private_data", None)?,
        inode_i_mode: req("inode", "i_mode", Some(2))?,
        socket_sk: req("socket", "sk", None)?,
        sk_family: req("sock", "__sk_common.skc_family", Some(2))?,
        sk_num: req("sock", "__sk_common.skc_num", Some(2))?,
        sk_dport: req("sock", "__sk_common.skc_dport", Some(2))?,
        sk_rcv_saddr: req("sock", "__sk_common.skc_rcv_saddr", Some(4))?,
        sk_daddr: req("sock", "__sk_common.skc_daddr", Some(4))?,
        sk_v6_rcv_saddr: opt("sock", "__sk_common.skc_v6_rcv_saddr", 16)?,
        sk_v6_daddr: opt("sock", "__sk_common.skc_v6_daddr", 16)?,
        sk_protocol: opt("sock", "sk_protocol", 2)?,
        sk_state: opt("sock", "__sk_common.skc_state", 1)?,
        tcp_write_seq: req("tcp_sock", "write_seq", Some(4))?,
        tcp_copied_seq: req("tcp_sock", "copied_seq", Some(4))?,
        regs_nr: regs(btf, 0)?,
        regs_arg0: regs(btf, 1)?,
        regs_arg1: regs(btf, 2)?,
        regs_arg2: regs(btf, 3)?,
        sk_head: OFFSET_UNKNOWN,
        regs_head: OFFSET_UNKNOWN,
    };
    o.sk_head = ztrace_abi::common_window(
        &[
            (o.sk_daddr, 4),
            (o.sk_rcv_saddr, 4),
            (o.sk_dport, 2),
            (o.sk_num, 2),
            (o.sk_family, 2),
        ],
        ztrace_abi::SOCK_HEAD_BYTES,
    );
    o.regs_head = ztrace_abi::common_window(
        &[
            (o.regs_nr, 8),
            (o.regs_arg0, 8),
            (o.regs_arg1, 8),
            (o.regs_arg2, 8),
        ],
        ztrace_abi::REGS_HEAD_BYTES,
    );
    Ok(o)
}

/// `struct pt_regs` members of the syscall number (`i` = 0) and arguments 0..=2 (`i` = 1..=3),
/// optional: without them ztrace falls back to syscall tracepoints.
fn regs(btf: &Btf, i: usize) -> Res<u32> {
    #[cfg(target_arch = "x86_64")]
    const NAMES: [&str; 4] = ["orig_ax", "di", "si", "dx"];
    #[cfg(not(target_arch = "x86_64"))]
    const NAMES: [&str; 4] = ["", "", "", ""];
    if NAMES[i].is_empty() {
        return Ok(OFFSET_UNKNOWN);
    }
    field(btf, "pt_regs", NAMES[i], Some(8), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND_FLAG: u32 = 1 << 7; // bit 31 of info once shifted by 24

    /// Minimal BTF writer for hand-built blobs.
    #[derive(Default)]
    struct Builder {
        types: Vec<u32>,
        strs: Vec<u8>,
    }

    impl Builder {
        fn s(&mut self, name: &str) -> u32 {
            let off = (self.strs.len() + 1) as u32;
            self.strs.extend(name.bytes().chain([0]));
            if name.is_empty() { 0 } else { off }
        }
        /// A type header followed by `extra` words of kind-specific data.
        fn ty(&mut self, name: &str, kind: u32, vlen: u32, size_type: u32, extra: &[u32]) {
            let n = self.s(name);
            self.types.extend([n, kind << 24 | vlen, size_type]);
            self.types.extend(extra);
        }
        fn composite(&mut self, name: &str, kind: u32, size: u32, members: &[(&str, u32, u32)]) {
            self.ty(name, kind, members.len() as u32, size, &[]);
            for &(name, ty, off) in members {
                let n = self.s(name);
                self.types.extend([n, ty, off]);
            }
        }
        fn finish(self) -> Vec<u8> {
            let (tl, sl) = (self.types.len() as u32 * 4, self.strs.len() as u32 + 1);
            let words = [0xeb9f_u32 | 1 << 16, 24, 0, tl, tl, sl]
                .into_iter()
                .chain(self.types);
            let bytes = words.flat_map(u32::to_le_bytes).chain([0]);
            bytes.chain(self.strs).collect()
        }
    }

    /// `struct common` mimics `sock_common` (an anonymous struct in an anonymous union);
    /// `struct outer` has kind_flag bitfields and a const-qualified struct member; `struct old`
    /// has bitfields encoded the pre-kind_flag way (in the int type).
    #[rustfmt::skip]
    fn sample() -> Vec<u8> {
        let mut b = Builder::default();
        b.ty("unsigned int", INT, 0, 4, &[32]); // 1
        b.ty("unsigned short", INT, 0, 2, &[16]); // 2
        b.ty("u16", TYPEDEF, 0, 2, &[]); // 3
        b.composite("", STRUCT, 8, &[("daddr", 1, 0), ("rcv_saddr", 1, 32)]); // 4
        b.composite("", UNION, 8, &[("", 4, 0), ("addrpair", 1, 0)]); // 5
        b.composite("common", STRUCT, 28, &[("", 5, 0), ("family", 3, 64), ("dport", 2, 80),
            ("v6", 9, 96)]); // 6
        b.ty("", CONST, 0, 6, &[]); // 7
        b.ty("", ARRAY, 0, 0, &[14, 1, 4]); // 8: u16[2][4]
        b.ty("in6", TYPEDEF, 0, 8, &[]); // 9
        b.composite("outer", STRUCT | KIND_FLAG, 36, &[("hdr", 7, 0), ("flags", 1, 3 << 24 | 224),
            ("proto", 1, 8 << 24 | 232), ("tail", 2, 256)]); // 10
        b.ty("", INT, 0, 4, &[8 << 16 | 8]); // 11: 8 bits at bit 8
        b.ty("", INT, 0, 4, &[3]); // 12: 3 bits
        b.composite("old", STRUCT, 8, &[("proto", 11, 0), ("odd", 12, 32)]); // 13
        b.ty("", ARRAY, 0, 0, &[3, 1, 2]); // 14: u16[2]
        b.finish()
    }

    /// (struct, path, offset or error text, size or error text)
    #[rustfmt::skip]
    const CASES: &[(&str, &str, &str, &str)] = &[
        ("common", "family", "8", "2"), ("common", "v6", "12", "16"),
        ("common", "daddr", "0", "4"), ("common", "rcv_saddr", "4", "4"),
        ("common", "addrpair", "0", "4"), ("outer", "hdr.rcv_saddr", "4", "4"),
        ("outer", "hdr.dport", "10", "2"), ("outer", "tail", "32", "2"),
        ("outer", "flags", "is a bitfield not aligned", "is a bitfield not aligned"),
        ("outer", "proto", "29", "1"), ("old", "proto", "1", "1"),
        ("old", "odd", "`old.odd` is a bitfield not aligned", "is a bitfield not aligned"),
        ("outer", "nope", "struct `outer` has no member `nope`", "no member"),
        ("outer", "", "no member ``", "no member"),
        ("outer", "hdr.", "no member `hdr.`", "no member"),
        ("nope", "x", "BTF has no struct `nope`", "no struct"),
        ("outer", "tail.x", "`outer.tail` is not a struct", "not a struct"),
    ];

    fn text(r: Result<u32, BtfError>) -> String {
        r.map_or_else(|e| e.to_string(), |v| v.to_string())
    }

    #[test]
    fn one_read_covers_fields_only_when_they_fit() {
        use ztrace_abi::common_window;
        assert_eq!(common_window(&[(4, 4), (0, 4), (16, 2)], 24), 0);
        assert_eq!(common_window(&[(8, 8), (0, 8)], 16), 0);
        assert_eq!(common_window(&[(8, 8), (0, 8)], 15), OFFSET_UNKNOWN);
        assert_eq!(common_window(&[(100, 8), (120, 8)], 32), 100);
        assert_eq!(
            common_window(&[(0, 4), (OFFSET_UNKNOWN, 4)], 24),
            OFFSET_UNKNOWN
        );
    }

    #[test]
    fn hand_built_blob() {
        let btf = Btf::parse(&sample()).unwrap();
        let ok = |got: &str, want: &str| got == want || want.len() > 2 && got.contains(want);
        for &(s, p, off, size) in CASES {
            let (got_off, got_size) = (text(btf.member_offset(s, p)), text(btf.member_size(s, p)));
            assert!(ok(&got_off, off), "{s}.{p}: offset {got_off}");
            assert!(ok(&got_size, size), "{s}.{p}: size {got_size}");
        }
        let field = |p, size, optional| text(field(&btf, "outer", p, size, optional));
        assert_eq!(field("proto", Some(2), true), OFFSET_UNKNOWN.to_string());
        assert_eq!(field("nope", Some(2), true), OFFSET_UNKNOWN.to_string());
        assert!(field("proto", None, false).contains("bitfield"));
        assert_eq!(
            field("tail", Some(4), false),
            "member `outer.tail` is 2 bytes, the probes expect 4"
        );
    }

    #[test]
    fn anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("common", "daddr").unwrap(), 0);
        assert_eq!(btf.member_offset("common", "rcv_saddr").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "hdr.rcv_saddr").unwrap(), 4);
        assert_eq!(btf.member_size("outer", "hdr.rcv_saddr").unwrap(), 4);
    }

    #[test]
    fn garbage_never_panics() {
        let good = sample();
        for n in 0..good.len() {
            if let Ok(btf) = Btf::parse(&good[..n]) {
                let _ = btf.member_offset("outer", "hdr.rcv_saddr");
            }
        }
        assert!(text(Btf::parse(&[0xeb, 0x9f, 1, 0]).map(|_| 0)).contains("big-endian"));
        assert!(Btf::parse(&[]).is_err() && Btf::parse(&[0x9f, 0xeb, 1, 0]).is_err());
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            let mut blob = good.clone();
            for _ in 0..1 + seed % 4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed >> 8) as usize % blob.len();
                blob[i] = seed as u8;
            }
            let Ok(btf) = Btf::parse(&blob) else { continue };
            for &(s, p, ..) in CASES {
                let _ = (btf.member_offset(s, p), btf.member_size(s, p));
            }
            let _ = resolve_offsets(&btf);
        }
    }

    #[test]
    fn running_kernel() {
        let btf = match Btf::from_sys_fs() {
            Err(BtfError::Read(e)) => return eprintln!("skipped: {e}"),
            r => r.unwrap(),
        };
        let o = resolve_offsets(&btf).unwrap();
        let mut required = o;
        (
            required.sk_v6_rcv_saddr,
            required.sk_v6_daddr,
            required.sk_protocol,
            required.regs_head,
        ) = (0, 0, 0, 0);
        // `struct sock_common` begins with addresses, ports and family on every architecture.
        assert_eq!(o.sk_head, o.sk_daddr.min(o.sk_rcv_saddr));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(o.regs_head, o.regs_arg2, "dx, si, di, orig_ax are adjacent");
        assert!(
            !format!("{required:?}").contains(&OFFSET_UNKNOWN.to_string()),
            "{o:?}"
        );
        assert!(o.sk_family < 64 && o.sk_num < 64 && o.sk_dport < 64 && o.sk_daddr < 64);
        assert!(o.task_tgid < 1 << 16 && o.tcp_write_seq < 1 << 16);
        assert_ne!(o.tcp_copied_seq, o.tcp_write_seq);
        let skc_daddr = btf.member_offset("sock_common", "skc_daddr");
        assert_eq!(skc_daddr.unwrap(), o.sk_daddr);
        assert_eq!(btf.member_size("sock", "__sk_common.skc_daddr").unwrap(), 4);
        let raw = std::fs::read(VMLINUX).unwrap();
        assert!(Btf::parse(&raw[..raw.len() / 2]).is_err());
    }
}
