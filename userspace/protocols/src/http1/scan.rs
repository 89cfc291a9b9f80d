//! A fast path for the common HTTP/1.x response head: a status line and `name: value` lines of
//! plain ASCII, each ended by CRLF. It reads such a head in one pass, eight bytes at a time over
//! header values, and classifies the framing headers as it goes (`Fields::add`); httparse spent
//! four times the instructions on nginx's five-header response, plus a second pass over the
//! headers to classify them.
//!
//! It accepts only a subset of what httparse accepts and answers exactly as the httparse path
//! would on it (a differential test in the parent module checks this over random and mutated
//! heads). Everything else — a partial head, obs-text, a bare LF, a tab or control byte where it
//! does not belong, too many headers — returns `None`, and the caller asks httparse.

use super::{Fields, MAX_HEADERS, Miss};

/// Header-name bytes (RFC 9110 `tchar`), as httparse's `TOKEN_MAP`.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of `w` that is not printable ASCII (below 0x20 or 0x7F and above). The
/// lowest set bit is exact (borrows and carries only run upwards from a flagged byte).
#[inline(always)]
fn unprintable(w: u64) -> u64 {
    let below = w.wrapping_sub(LO * 0x20) & !w;
    let above = w.wrapping_add(LO) | w; // 0x7F + 1 and anything from 0x80 set bit 7
    (below | above) & HI
}

/// The index of the `\r` that ends the header value starting at `i`, when every byte before it
/// is printable ASCII or a tab.
#[inline(always)]
fn value_end(buf: &[u8], mut i: usize) -> Option<usize> {
    loop {
        if let Some(word) = buf.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().ok()?);
            let m = unprintable(w);
            if m == 0 {
                i += 8;
                continue;
            }
            i += (m.trailing_zeros() / 8) as usize;
        } else {
            while buf.get(i).is_some_and(|&b| (0x20..0x7F).contains(&b)) {
                i += 1;
            }
        }
        match *buf.get(i)? {
            b'\r' => return Some(i),
            b'\t' => i += 1,
            _ => return None,
        }
    }
}

/// A whole response head at the start of `buf`: (bytes used, minor version, status code, what
/// its headers say). `None`: not of the plain shape above (or not whole); ask httparse.
pub(super) fn response(buf: &[u8]) -> Option<(usize, u8, u16, Result<Fields<'_>, Miss>)> {
    let line = buf.get(..13)?;
    let version = version(&line[..8])?;
    let [
        b' ',
        h @ b'0'..=b'9',
        t @ b'0'..=b'9',
        o @ b'0'..=b'9',
        b' ',
    ] = line[8..13]
    else {
        return None;
    };
    let status = u16::from(h - b'0') * 100 + u16::from(t - b'0') * 10 + u16::from(o - b'0');
    // The reason phrase: printable ASCII or tabs.
    let i = value_end(buf, 13)?;
    let (n, fields) = headers(buf, crlf(buf, i)?)?;
    Some((n, version, status, fields))
}

/// A whole request head at the start of `buf`: (bytes used, method, target, minor version, what
/// its headers say). The method is upper-case letters, the target printable ASCII; `None`
/// otherwise (or when not whole): ask httparse.
pub(super) fn request(buf: &[u8]) -> Option<super::RequestParts<'_>> {
    let sp = buf.iter().take(16).position(|&b| !b.is_ascii_uppercase())?;
    let method = std::str::from_utf8(&buf[..sp]).ok()?;
    let from = sp + 1;
    let len = buf
        .get(from..)?
        .iter()
        .position(|&b| !(0x21..0x7F).contains(&b))?;
    let target = std::str::from_utf8(&buf[from..from + len]).ok()?;
    let at = from + len;
    if sp == 0 || buf[sp] != b' ' || len == 0 || buf[at] != b' ' {
        return None;
    }
    let version = version(buf.get(at + 1..at + 9)?)?;
    let (n, fields) = headers(buf, crlf(buf, at + 9)?)?;
    Some((n, method, target, version, fields))
}

/// The minor version of `HTTP/1.0` or `HTTP/1.1`.
#[inline(always)]
fn version(v: &[u8]) -> Option<u8> {
    match *v {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', v @ (b'0' | b'1')] => Some(v - b'0'),
        _ => None,
    }
}

/// The index after the CRLF at `i`.
#[inline(always)]
fn crlf(buf: &[u8], i: usize) -> Option<usize> {
    (buf.get(i..i + 2)? == b"\r\n").then_some(i + 2)
}

/// The header lines from `i` through the empty line: (bytes used up to its end, what they say).
fn headers(buf: &[u8], mut i: usize) -> Option<(usize, Result<Fields<'_>, Miss>)> {
    let mut f = Fields::default();
    let mut err = None;
    for _ in 0..=MAX_HEADERS {
        // The empty line ends the head.
        if buf.get(i..i + 2)? == b"\r\n" {
            return Some((i + 2, err.map_or(Ok(f), Err)));
        }
        let name_len = buf[i..].iter().position(|&b| !TCHAR[usize::from(b)])?;
        let name = &buf[i..i + name_len];
        i += name_len;
        if name_len == 0 || buf[i] != b':' {
            return None;
        }
        i += 1;
        while matches!(buf.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        let value_start = i;
        i = value_end(buf, i)?;
        if err.is_none()
            && let Err(e) = f.add(name, &buf[value_start..i])
        {
            err = Some(e);
        }
        i = crlf(buf, i)?;
    }
    None // more headers than httparse is given room for: it says why
}

/// The fast path against httparse: on every head it takes, the same answer.
#[cfg(test)]
mod tests {
    use super::super::{request_httparse, response_httparse};
    use super::*;
    use crate::testutil::Rng;

    /// Checks one head; true when the fast path took it.
    fn same(head: &[u8]) -> bool {
        let Some(fast) = response(head) else {
            return false;
        };
        assert_eq!(
            Ok(fast),
            response_httparse(head),
            "{:?}",
            String::from_utf8_lossy(head)
        );
        true
    }

    /// Checks one request head; true when the fast path took it.
    fn same_request(head: &[u8]) -> bool {
        let Some(fast) = request(head) else {
            return false;
        };
        assert_eq!(
            Ok(fast),
            request_httparse(head),
            "{:?}",
            String::from_utf8_lossy(head)
        );
        true
    }

    const NGINX: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 \
        21:30:00 GMT\r\nContent-Type: application/octet-stream\r\nContent-Length: 2\r\n\
        Connection: keep-alive\r\n\r\nok";

    #[test]
    fn plain_heads_take_the_fast_path() {
        assert!(same(NGINX));
        assert_eq!(response(NGINX).map(|r| r.0), Some(NGINX.len() - 2));
        for head in [
            &b"HTTP/1.0 404 Not Found\r\n\r\n"[..],
            b"HTTP/1.1 204 \r\nX:\r\nY: \t a\tb \t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n", // invalid
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\nA: b\r\n\r\n",              // invalid
        ] {
            assert!(same(head), "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn other_heads_go_to_httparse() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nServer: nginx"[..],     // partial
            b"HTTP/1.1 200 OK\nA: b\n\n",                 // bare LF
            b"HTTP/1.1 200\r\n\r\n",                      // no reason
            b"\r\nHTTP/1.1 200 OK\r\n\r\n",               // leading empty line
            b"HTTP/1.1 200 OK\r\nA: caf\xc3\xa9\r\n\r\n", // obs-text
            b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",          // space before the colon
            b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",     // obs-fold
            b"HTTP/2.0 200 OK\r\n\r\n",
        ] {
            assert!(
                response(head).is_none(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let crowded = |n: usize| {
            let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
            (0..n).for_each(|i| h.extend(format!("X-{i}: {i}\r\n").bytes()));
            h.extend(b"\r\n");
            h
        };
        assert!(same(&crowded(MAX_HEADERS)));
        assert!(response(&crowded(MAX_HEADERS + 1)).is_none());
        assert!(response_httparse(&crowded(MAX_HEADERS + 1)).is_err());
    }

    /// Random heads built from plain and odd pieces, cut anywhere and with bytes replaced by
    /// the ones either parser treats specially: wherever the fast path answers, it agrees.
    #[test]
    fn random_and_mutated_heads_agree_with_httparse() {
        let lines: [&[u8]; 14] = [
            b"Content-Length: 12\r\n",
            b"content-length:7 \r\n",
            b"Content-Length: 1, 1\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"transfer-encoding: chunked, gzip\r\n",
            b"Connection: close\r\n",
            b"Connection: Keep-Alive\r\n",
            b"Server: nginx/1.22.1\r\n",
            b"Date: Fri, 04 Dec 2026 21:30:00 GMT\r\n",
            b"X-Long-Header-Value: abcdefghijklmnopqrstuvwxyz0123456789\t~!\r\n",
            b"E:\r\n",
            b"Expect: 100-continue\r\n",
            b"Host: a.example:8080\r\n",
            b"%$#!*: v\r\n",
        ];
        let starts: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.0 302 Found elsewhere\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n",
            b"HTTP/1.1 999 \t\r\n",
        ];
        let odd = b"\r\n\t :\x00\x7f\x80\xffaZ0,";
        let mut rng = Rng(0x5eed);
        // 200,000 heads from one of `firsts` and up to 7 of `lines`, some bytes replaced, some
        // cut; how many `agree` took the fast path, of how many.
        let mut run = |firsts: &[&[u8]], agree: fn(&[u8]) -> bool| {
            let (mut fast, mut total) = (0, 0);
            for _ in 0..200_000 {
                let mut head = firsts[rng.below(firsts.len())].to_vec();
                for _ in 0..rng.below(8) {
                    head.extend_from_slice(lines[rng.below(lines.len())]);
                }
                head.extend_from_slice(b"\r\nbody");
                for _ in 0..rng.below(3) {
                    let at = rng.below(head.len());
                    head[at] = match rng.below(3) {
                        0 => rng.below(256) as u8,
                        _ => odd[rng.below(odd.len())],
                    };
                }
                if rng.below(4) == 0 {
                    head.truncate(rng.below(head.len() + 1));
                }
                total += 1;
                fast += usize::from(agree(&head));
            }
            (fast, total)
        };
        let (fast, total) = run(&starts, same);
        // Most heads are plain: the test exercises the fast path, not only the fallback.
        assert!(fast * 3 > total, "{fast} of {total} took the fast path");
        let request_lines: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\n",
            b"POST /a/b?c=d&e=%20f HTTP/1.0\r\n",
            b"DELETE http://h:1/x HTTP/1.1\r\n",
            b"get /lower HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
        ];
        let (fast, total) = run(&request_lines, same_request);
        // (A fifth have a lower-case method, which only httparse takes.)
        assert!(
            fast * 4 > total,
            "{fast} of {total} requests took the fast path"
        );
    }

    #[test]
    fn plain_requests_take_the_fast_path_and_others_go_to_httparse() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18099\r\n\r\n"[..],
            b"POST /x?y=1 HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
            b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", // invalid
        ] {
            assert!(same_request(head), "{:?}", String::from_utf8_lossy(head));
        }
        for head in [
            &b"get / HTTP/1.1\r\n\r\n"[..], // a method httparse takes, not us
            b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", // obs-text in the target
            b"GET  / HTTP/1.1\r\n\r\n",     // two spaces
            b"GET / HTTP/1.1\nHost: a\n\n", // bare LF
            b"GET / HTTP/1.1\r\nHost: a\r\n", // partial
            b"\r\nGET / HTTP/1.1\r\n\r\n",  // leading empty line
        ] {
            assert!(
                request(head).is_none(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
