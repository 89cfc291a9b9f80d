// TEMPORARY STUB (replaced by the real parser)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir { Request, Response }
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RequestHead { pub method: String, pub target: String, pub version: u8, pub host: Option<String>, pub user_agent: Option<String>, pub traceparent: Option<String>, pub content_length: Option<u64>, pub chunked: bool, pub expect_continue: bool, pub connection_close: bool }
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ResponseHead { pub status: u16, pub version: u8, pub content_length: Option<u64>, pub chunked: bool, pub connection_close: bool }
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Http1Event { Request { start: u64, head: RequestHead }, RequestComplete { start: u64, end: u64, body_len: u64 }, Response { start: u64, head: ResponseHead, interim: bool }, ResponseComplete { start: u64, end: u64, body_len: u64 }, Desync { dir: Dir, offset: u64 } }
#[derive(Default)]
pub struct Http1Conn {}
impl Http1Conn { pub fn new() -> Self { Self{} } pub fn push(&mut self, _dir: Dir, _data: &[u8], _len: u64, _out: &mut Vec<Http1Event>) {} pub fn close(&mut self, _out: &mut Vec<Http1Event>) {} }
pub fn looks_like_request(_d: &[u8]) -> bool { false }
pub fn looks_like_response(_d: &[u8]) -> bool { false }
