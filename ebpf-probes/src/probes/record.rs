//! The data record every payload probe emits (socket syscalls, the socket layer, OpenSSL):
//! built in a per-CPU scratch slot, its payload head copied from user memory (a buffer or an
//! iovec array), submitted to the ring buffer at its real length.

use aya_ebpf::helpers::{bpf_probe_read_user, bpf_probe_read_user_buf};
use ztrace_abi::{DataEvent, MAX_PAYLOAD, SockTuple, counter, kind};

use crate::{
    kernel::sock_tuple,
    maps::{DataBuf, SCRATCH, SyscallArgs, config, count, header, submit},
};

/// Most iovecs a vectored syscall's capture walks (HTTP/2 and nginx split frames and headers
/// across several).
const MAX_IOV: u64 = 32;

/// Copies `len` (≤ MAX_PAYLOAD) user bytes from `src` to `dst[offset..]` (offset < MAX_PAYLOAD);
/// returns the bytes copied (0 on a fault, counted).
#[inline(always)]
fn copy_user(src: u64, len: u64, offset: u64, dst: &mut [u8; 2 * MAX_PAYLOAD]) -> u64 {
    let offset = (offset as usize) & (MAX_PAYLOAD - 1);
    let len = (len as usize) & (2 * MAX_PAYLOAD - 1);
    if len == 0 || len > MAX_PAYLOAD {
        return 0;
    }
    let Some(window) = dst.get_mut(offset..offset + len) else {
        return 0;
    };
    // SAFETY: fault-tolerant user read into our scratch buffer, bounds checked above.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, window) }.is_err() {
        count(counter::READ_FAILED);
        return 0;
    }
    len as u64
}

#[inline(always)]
pub fn emit_data(args: &SyscallArgs, bytes: u64, sock_id: u64) -> Option<()> {
    let buf = scratch()?;
    // Socket 0: a stdout/stderr write (see `on_enter`), which has no tuple.
    let kind = if args.sock == 0 {
        buf.event.tuple = SockTuple::default();
        kind::STDIO
    } else {
        buf.event.tuple = sock_tuple(&config().offsets, args.sock)?;
        kind::DATA
    };
    emit_prepared(buf, header(kind), args, bytes, sock_id)
}

/// The per-CPU record under construction.
#[inline(always)]
pub fn scratch() -> Option<&'static mut DataBuf> {
    let buf = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs (programs do not
    // nest on a CPU for these hooks).
    Some(unsafe { &mut *buf })
}

/// Completes and submits the record in `buf`, whose tuple the caller has filled in.
#[inline(always)]
pub fn emit_prepared(
    buf: &mut DataBuf,
    header: ztrace_abi::EventHeader,
    args: &SyscallArgs,
    bytes: u64,
    sock_id: u64,
) -> Option<()> {
    prepare(buf, header, args, bytes, sock_id);
    submit_buf(buf)
}

/// Submits the record completed in `buf` at its real length.
#[inline(always)]
pub fn submit_buf(buf: &DataBuf) -> Option<()> {
    let n = (buf.event.cap_len as usize).min(MAX_PAYLOAD);
    let total = core::mem::size_of::<DataEvent>() + n;
    // SAFETY: DataBuf is repr(C) with the event first and the payload right after it.
    let bytes = unsafe {
        core::slice::from_raw_parts(buf as *const _ as *const u8, core::mem::size_of_val(buf))
    };
    submit::<[u8]>(bytes.get(..total)?);
    Some(())
}

/// Completes the record in `buf` (all but the tuple) and copies the payload head into it.
#[inline(always)]
pub fn prepare(
    buf: &mut DataBuf,
    header: ztrace_abi::EventHeader,
    args: &SyscallArgs,
    bytes: u64,
    sock_id: u64,
) {
    let cfg = config();
    let e = &mut buf.event;
    e.header = header;
    e.sock_id = sock_id;
    e.enter_ns = args.enter_ns;
    e.bytes = bytes;
    e.fd = args.fd;
    e.seq = args.seq;
    e.cap_len = 0;
    e.syscall = args.syscall;
    e.direction = args.direction;
    e.has_seq = args.has_seq;
    e._pad = 0;
    let cap = bytes.min(cfg.payload_cap as u64).min(MAX_PAYLOAD as u64);
    let mut n: u64 = 0;
    if args.buf == 0 {
        // Bytes moved by a path whose buffer we cannot see: counted, not captured.
    } else if args.vectored == 0 {
        n = copy_user(args.buf, cap, 0, &mut buf.payload);
    } else {
        // Walk the iovecs until the cap: a message's head may be spread over several. Two
        // `struct iovec`s (base, len) per read where the array has two more: each helper call
        // costs ~100 ns here, and a writev of a head and a body (nginx) then takes one. One
        // copy call site, as the verifier of older kernels (6.1) tracks its bounds.
        let mut next: Option<[u64; 2]> = None;
        for i in 0..MAX_IOV {
            if i >= args.iovcnt as u64 || n >= cap {
                break;
            }
            let [base, len] = match next.take() {
                Some(iov) => iov,
                None => {
                    let iov = args.buf + i * 16;
                    // SAFETY: user pointers read through the fault-tolerant helper, within the
                    // array (two reads only where it has two more entries).
                    if i + 1 < args.iovcnt as u64 {
                        let Ok([b0, l0, b1, l1]) =
                            (unsafe { bpf_probe_read_user(iov as *const [u64; 4]) })
                        else {
                            break;
                        };
                        next = Some([b1, l1]);
                        [b0, l0]
                    } else {
                        let Ok(one) = (unsafe { bpf_probe_read_user(iov as *const [u64; 2]) })
                        else {
                            break;
                        };
                        one
                    }
                }
            };
            let want = len.min(cap - n);
            let got = copy_user(base, want, n, &mut buf.payload);
            n += got;
            if got < want {
                break;
            }
        }
    }
    let n = (n as usize).min(MAX_PAYLOAD);
    buf.event.cap_len = n as u32;
}
