//! Per-stream state: what is known of each client-initiated stream until its response or reset.

use std::collections::BTreeMap;

use crate::Dir;

use super::*;

/// Most streams tracked at once; past that the oldest (lowest id) is dropped with a `Reset`.
pub const MAX_STREAMS: usize = 1024;

#[derive(Default)]
pub(super) struct Stream {
    /// The first request HEADERS was seen (later ones are trailers).
    pub(super) req_seen: bool,
    pub(super) req_emitted: bool,
    pub(super) resp_start: Option<u64>,
    pub(super) head: H2Response,
}

impl Stream {
    /// Something was told or is known about it: worth an ending event.
    pub(super) fn known(&self) -> bool {
        self.req_emitted || self.head.status.is_some() || self.head.grpc_status.is_some()
    }
}

#[derive(Default)]
pub(super) struct Streams {
    pub(super) map: BTreeMap<u32, Stream>,
    /// Highest stream id tracked so far: lower ids not in `map` are closed.
    pub(super) max_id: u32,
}

impl Streams {
    /// The stream `id` (odd), opened if new; `None` if it is closed. `at`/`dir` locate the
    /// frame, for the eviction of the oldest stream when full.
    pub(super) fn open(
        &mut self,
        id: u32,
        dir: Dir,
        at: u64,
        out: &mut Vec<H2Event>,
    ) -> Option<&mut Stream> {
        if !self.map.contains_key(&id) {
            if id <= self.max_id {
                return None;
            }
            if self.map.len() >= MAX_STREAMS
                && let Some((stream, s)) = self.map.pop_first()
                && s.known()
            {
                let error_code = UNKNOWN_ERROR;
                out.push(H2Event::Reset {
                    stream,
                    dir,
                    end: at,
                    error_code,
                });
            }
            self.max_id = id;
        }
        Some(self.map.entry(id).or_default())
    }

    pub(super) fn request(
        &mut self,
        id: u32,
        start: u64,
        f: Option<Fields>,
        out: &mut Vec<H2Event>,
    ) {
        let Some(s) = self.open(id, Dir::Request, start, out) else {
            return;
        };
        if std::mem::replace(&mut s.req_seen, true) {
            return; // request trailers
        }
        let Some(f) = f else { return };
        let Some(method) = f.method else { return };
        s.req_emitted = true;
        let head = H2Request {
            method,
            path: f.path.unwrap_or_default(),
            authority: f.authority.or(f.host),
            scheme: f.scheme,
            content_type: f.content_type,
            traceparent: f.traceparent,
            tracestate: f.tracestate,
            user_agent: f.user_agent,
        };
        out.push(H2Event::Request {
            stream: id,
            start,
            head,
        });
    }

    /// A response header block `[start, end)`, decoded into `f` (or not).
    pub(super) fn response(
        &mut self,
        id: u32,
        (start, end): (u64, u64),
        end_stream: bool,
        f: Option<Fields>,
        out: &mut Vec<H2Event>,
    ) {
        let Some(s) = self.open(id, Dir::Response, start, out) else {
            return;
        };
        s.resp_start.get_or_insert(start);
        if let Some(f) = f
            && !f.status.is_some_and(|c| (100..200).contains(&c))
        {
            if f.status.is_some() {
                s.head.status = f.status;
                s.head.content_type = f.content_type;
            }
            if f.grpc_status.is_some() {
                s.head.grpc_status = f.grpc_status;
            }
            if f.grpc_message.is_some() {
                s.head.grpc_message = f.grpc_message;
            }
        }
        if end_stream {
            self.finish(id, start, end, out);
        }
    }

    /// The response of `id` ended with the frame `[start, end)`.
    pub(super) fn finish(&mut self, id: u32, start: u64, end: u64, out: &mut Vec<H2Event>) {
        if let Some(s) = self.map.remove(&id)
            && s.known()
        {
            out.push(H2Event::Response {
                stream: id,
                start: s.resp_start.unwrap_or(start),
                end,
                head: s.head,
            });
        }
    }

    pub(super) fn reset(
        &mut self,
        id: u32,
        dir: Dir,
        end: u64,
        error_code: u32,
        out: &mut Vec<H2Event>,
    ) {
        if let Some(s) = self.map.remove(&id)
            && s.known()
        {
            out.push(H2Event::Reset {
                stream: id,
                dir,
                end,
                error_code,
            });
        }
    }

    /// Reset every stream above `last` (a GOAWAY's last stream id; 0 for all of them).
    pub(super) fn reset_above(
        &mut self,
        last: u32,
        end: u64,
        error_code: u32,
        out: &mut Vec<H2Event>,
    ) {
        let gone = self.map.split_off(&last.saturating_add(1));
        for (stream, s) in gone {
            if s.known() {
                let dir = Dir::Response;
                out.push(H2Event::Reset {
                    stream,
                    dir,
                    end,
                    error_code,
                });
            }
        }
    }
}
