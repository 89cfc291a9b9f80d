//! The PROXY protocol header a load balancer or proxy (HAProxy `send-proxy`, AWS NLB, Envoy,
//! nginx `proxy_protocol on`) puts before the first byte of a connection's traffic to say who the
//! real client was: a text line (version 1) or a binary block (version 2), once per connection.
//!
//! An HTTP/1 or HTTP/2 connection that starts with one is still HTTP/1 or HTTP/2: detection
//! looks past the header, and the parser skips it ([`skip_leading`]), so the first request's
//! stream offset (and with it its TCP sequence number, the cross-host key) is that of its own
//! first byte on both ends of the connection.
//! Load balancers often write the header alone, before the client's first bytes arrive; the
//! assembler keeps it as a prefix that may still become a request (`incomplete`).

use std::net::{IpAddr, SocketAddr};

/// Version 2's 12-byte signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// Version 2's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;

/// What a direction's first bytes hold of a PROXY protocol header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// None: the bytes are something else.
    Absent,
    /// The start of one; more bytes will tell.
    Partial,
    /// A whole header of this many bytes.
    Whole(usize),
}

/// A parser's push to its request stream: when the stream is at its start (`offset` 0) and
/// `data` (`len` bytes moved) begins with a whole header, moves `offset`, `data` and `len` past
/// it (offsets still count its bytes, so the first request starts at its own first byte) and
/// returns the client the header names (`Some(None)`: a header naming none).
pub fn skip_leading(
    offset: &mut u64,
    data: &mut &[u8],
    len: &mut u64,
) -> Option<Option<SocketAddr>> {
    if *offset != 0 {
        return None;
    }
    match proxy_header(data) {
        ProxyHeader::Whole(n) if n as u64 <= *len => {
            let client = proxy_source(&data[..n]);
            *offset = n as u64;
            *data = &data[n..];
            *len -= n as u64;
            Some(client)
        }
        _ => None,
    }
}

/// Reads the PROXY protocol header at the start of `data`, if any.
pub fn proxy_header(data: &[u8]) -> ProxyHeader {
    if data.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(data) && !data.is_empty() {
        // Also a prefix of "PROXY "? No: the signature starts with CR, the text with 'P'.
        return ProxyHeader::Partial;
    }
    if data.starts_with(V2_SIGNATURE) {
        let Some(fixed) = data.get(..V2_FIXED) else {
            return ProxyHeader::Partial;
        };
        // Version 2 in the high nibble; command LOCAL (0) or PROXY (1) in the low one.
        if fixed[12] >> 4 != 2 || fixed[12] & 0x0f > 1 {
            return ProxyHeader::Absent;
        }
        let len = V2_FIXED + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        return if data.len() >= len {
            ProxyHeader::Whole(len)
        } else {
            ProxyHeader::Partial
        };
    }
    const V1: &[u8] = b"PROXY ";
    if data.len() < V1.len() {
        return if !data.is_empty() && V1.starts_with(data) {
            ProxyHeader::Partial
        } else {
            ProxyHeader::Absent
        };
    }
    if !data.starts_with(V1) {
        return ProxyHeader::Absent;
    }
    let line = &data[..data.len().min(V1_MAX)];
    match line.windows(2).position(|w| w == b"\r\n") {
        Some(end) if v1_fields(&line[V1.len()..end]) => ProxyHeader::Whole(end + 2),
        Some(_) => ProxyHeader::Absent,
        // Printable so far and room left: the rest of the line may come.
        None if data.len() < V1_MAX
            && line[V1.len()..]
                .iter()
                .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\r') =>
        {
            ProxyHeader::Partial
        }
        None => ProxyHeader::Absent,
    }
}

/// The client a whole header (as [`proxy_header`] measured it) names: its source address and
/// port; None for `UNKNOWN`, `LOCAL` (the proxy's own health check), other families (UDP, Unix
/// sockets) or fields that do not parse.
pub fn proxy_source(header: &[u8]) -> Option<SocketAddr> {
    if let Some(rest) = header.strip_prefix(V2_SIGNATURE) {
        let (&ver_cmd, &family) = (rest.first()?, rest.get(1)?);
        let body = rest.get(4..)?;
        if ver_cmd != 0x21 {
            return None; // LOCAL: no client
        }
        return match family {
            // TCP over IPv4: src, dst, sport, dport.
            0x11 => {
                let src: [u8; 4] = body.get(..4)?.try_into().ok()?;
                let port = u16::from_be_bytes(body.get(8..10)?.try_into().ok()?);
                Some(SocketAddr::new(IpAddr::from(src), port))
            }
            0x21 => {
                let src: [u8; 16] = body.get(..16)?.try_into().ok()?;
                let port = u16::from_be_bytes(body.get(32..34)?.try_into().ok()?);
                Some(SocketAddr::new(IpAddr::from(src), port))
            }
            _ => None,
        };
    }
    let line = std::str::from_utf8(header.strip_prefix(b"PROXY ")?).ok()?;
    let mut f = line.trim_end_matches("\r\n").split(' ');
    let (proto, src, _dst, sport) = (f.next()?, f.next()?, f.next()?, f.next()?);
    let addr: IpAddr = src.parse().ok()?;
    let family_ok = matches!(
        (proto, addr),
        ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_))
    );
    family_ok.then_some(SocketAddr::new(addr, sport.parse().ok()?))
}

/// Version 1's fields after "PROXY ": `TCP4|TCP6 src dst sport dport`, or `UNKNOWN` and
/// anything.
fn v1_fields(fields: &[u8]) -> bool {
    let mut it = fields.split(|&b| b == b' ');
    match it.next() {
        Some(b"UNKNOWN") => true,
        Some(b"TCP4" | b"TCP6") => {
            let rest: Vec<&[u8]> = it.collect();
            rest.len() == 4
                && rest[..2].iter().all(|a| {
                    !a.is_empty()
                        && a.iter()
                            .all(|&b| b.is_ascii_hexdigit() || b".:".contains(&b))
                })
                && rest[2..]
                    .iter()
                    .all(|p| (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11]);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn version_one() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.2 51234 8080\r\n";
        assert_eq!(proxy_header(h), ProxyHeader::Whole(h.len()));
        let mut with = h.to_vec();
        with.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(proxy_header(&with), ProxyHeader::Whole(h.len()));
        for cut in 1..h.len() {
            assert_eq!(proxy_header(&h[..cut]), ProxyHeader::Partial, "{cut}");
        }
        assert_eq!(proxy_source(h), Some("203.0.113.7:51234".parse().unwrap()));
        let v6 = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
        assert_eq!(proxy_header(v6), ProxyHeader::Whole(v6.len()));
        assert_eq!(proxy_source(v6), Some("[2001:db8::1]:1".parse().unwrap()));
        assert_eq!(proxy_source(b"PROXY UNKNOWN\r\n"), None);
        assert_eq!(proxy_source(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n"), None);
        assert_eq!(proxy_header(b"PROXY UNKNOWN\r\n"), ProxyHeader::Whole(15));
        for no in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 123456\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nGET",
            b"PROXY\r\n",
            b"PROXZ",
            b"",
        ] {
            assert_eq!(
                proxy_header(no),
                ProxyHeader::Absent,
                "{:?}",
                String::from_utf8_lossy(no)
            );
        }
        // Longer than the specification allows, with no line end: not a header.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(V1_MAX + 5, b'1');
        assert_eq!(proxy_header(&long), ProxyHeader::Absent);
    }

    #[test]
    fn version_two() {
        let addrs = [203, 0, 113, 7, 10, 0, 0, 2, 0xc8, 0x22, 0x1f, 0x90];
        let h = v2(&addrs);
        assert_eq!(proxy_header(&h), ProxyHeader::Whole(28));
        assert_eq!(proxy_source(&h), Some("203.0.113.7:51234".parse().unwrap()));
        let mut v6 = [0u8; 36];
        v6[..16].copy_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6[32..34].copy_from_slice(&443u16.to_be_bytes());
        let mut h6 = v2(&v6);
        h6[13] = 0x21;
        assert_eq!(
            proxy_source(&h6),
            Some("[2001:db8::7]:443".parse().unwrap())
        );
        // Cut short: no address, no panic.
        for cut in 0..h.len() {
            let _ = proxy_source(&h[..cut]);
        }
        let mut with = h.clone();
        with.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(proxy_header(&with), ProxyHeader::Whole(28));
        for cut in 1..h.len() {
            assert_eq!(proxy_header(&h[..cut]), ProxyHeader::Partial, "{cut}");
        }
        let mut bad = h.clone();
        bad[12] = 0x31; // version 3
        assert_eq!(proxy_header(&bad), ProxyHeader::Absent);
        let mut local = v2(&[]);
        local[12] = 0x20; // LOCAL: a health check of the proxy itself
        assert_eq!(proxy_header(&local), ProxyHeader::Whole(16));
        assert_eq!(proxy_source(&local), None);
    }
}
