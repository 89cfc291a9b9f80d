//! The header fields ztrace keeps from a decoded header block.

/// Longest string kept from a header value (longer ones are cut).
pub const MAX_FIELD: usize = 4096;

/// The fields of one header block that events carry.
#[derive(Default)]
pub(super) struct Fields {
    pub(super) method: Option<String>,
    pub(super) path: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) host: Option<String>,
    pub(super) scheme: Option<String>,
    pub(super) content_type: Option<String>,
    pub(super) traceparent: Option<String>,
    /// Every tracestate field, joined with commas (W3C Trace Context: one list).
    pub(super) tracestate: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) status: Option<u16>,
    pub(super) grpc_status: Option<i32>,
    pub(super) grpc_message: Option<String>,
}

/// `v` as text: invalid UTF-8 replaced, cut at [`MAX_FIELD`] bytes.
pub(super) fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(&v[..v.len().min(MAX_FIELD)]).into_owned()
}

pub(super) fn number<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    let v = v.trim_ascii();
    match v.iter().all(u8::is_ascii_digit) {
        true => std::str::from_utf8(v).ok()?.parse().ok(),
        false => None,
    }
}

/// `%XX` escapes decoded (gRPC's percent-encoding of grpc-message).
pub(super) fn percent_decoded(v: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let v = &v[..v.len().min(3 * MAX_FIELD)];
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match (
            v[i],
            v.get(i + 1).and_then(|&b| hex(b)),
            v.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    text(&out)
}

impl Fields {
    pub(super) fn field(&mut self, name: &[u8], value: &[u8]) {
        let slot = match name {
            b":method" => &mut self.method,
            b":path" => &mut self.path,
            b":authority" => &mut self.authority,
            b"host" => &mut self.host,
            b":scheme" => &mut self.scheme,
            b"content-type" => &mut self.content_type,
            b"traceparent" => &mut self.traceparent,
            b"tracestate" => {
                match &mut self.tracestate {
                    None => self.tracestate = Some(text(value)),
                    Some(joined) if joined.len() + value.len() < MAX_FIELD => {
                        joined.push(',');
                        joined.push_str(&text(value));
                    }
                    Some(_) => {}
                }
                return;
            }
            b"user-agent" => &mut self.user_agent,
            b":status" if self.status.is_none() && value.len() == 3 => {
                self.status = number(value);
                return;
            }
            b"grpc-status" if self.grpc_status.is_none() => {
                self.grpc_status = number(value);
                return;
            }
            b"grpc-message" if self.grpc_message.is_none() => {
                self.grpc_message = Some(percent_decoded(value));
                return;
            }
            _ => return,
        };
        if slot.is_none() {
            *slot = Some(text(value));
        }
    }
}
