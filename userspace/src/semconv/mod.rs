//! Semantic conventions: what a span, metric or log record says (names, status, attributes,
//! Resource), apart from how it is sent. A leaf: it imports only `model` and `config`.

pub mod attributes;
pub mod names;
pub mod resource;
pub mod status;
