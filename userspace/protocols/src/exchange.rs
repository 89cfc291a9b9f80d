//! What a parser found on the wire, per protocol: the typed, protocol-neutral view of one
//! request/response exchange that the assembler hands to the linker and the exporters turn into
//! attributes. This module owns the data only: it must not know attribute names (that is the
//! daemon's `semconv`) nor parse bytes (that is each protocol's module).

/// The HTTP view of one request/response exchange.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HttpExchange {
    pub method: String,
    /// Request target as sent (path plus query).
    pub target: String,
    /// `Host` header, when present.
    pub host: Option<String>,
    /// "1.0", "1.1" (or "2" for gRPC's HTTP/2).
    pub version: &'static str,
    /// None when no response was seen (connection closed, tracer stopped).
    pub status: Option<u16>,
    pub user_agent: Option<String>,
    pub request_body_size: Option<u64>,
    pub response_body_size: Option<u64>,
    /// Carried over TLS (plaintext from the TLS library).
    pub tls: bool,
    /// The client a PROXY protocol header at the connection's start named (a load balancer in
    /// front of the server relays for it): the span's `client.*`, while `network.peer.*` stay
    /// the balancer.
    pub client: Option<std::net::SocketAddr>,
}

/// Database systems ztrace understands on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DbSystem {
    Redis,
    Postgresql,
    Mysql,
}

impl DbSystem {
    /// `db.system.name` per the semantic conventions.
    pub fn name(self) -> &'static str {
        match self {
            DbSystem::Redis => "redis",
            DbSystem::Postgresql => "postgresql",
            DbSystem::Mysql => "mysql",
        }
    }
}

/// The database view of one request/response exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbExchange {
    pub system: DbSystem,
    /// Command or SQL keyword, e.g. "GET", "SELECT".
    pub operation: Option<String>,
    /// Key (Redis) or main table (SQL), when derivable.
    pub collection: Option<String>,
    /// Database name, when the connection's start-up was seen.
    pub namespace: Option<String>,
    /// The statement with literals removed; exported only when the user opts in.
    pub query_text: Option<String>,
    /// Error code (SQLSTATE, MySQL error number, Redis error prefix) and message from the server.
    pub error: Option<(String, String)>,
    pub rows: Option<u64>,
}

/// One gRPC call (an HTTP/2 stream with a gRPC content type).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RpcExchange {
    /// Fully qualified service, e.g. "helloworld.Greeter".
    pub service: String,
    pub method: String,
    pub authority: Option<String>,
    pub http_status: Option<u16>,
    pub grpc_status: Option<i32>,
    pub grpc_message: Option<String>,
    /// The client a PROXY protocol header at the connection's start named, as
    /// [`HttpExchange::client`]: a server span's `client.*`.
    pub client: Option<std::net::SocketAddr>,
}

/// One DNS query and its answer.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DnsExchange {
    pub id: u16,
    pub name: String,
    pub qtype: String,
    /// Response code name (NOERROR, NXDOMAIN, …) once answered.
    pub rcode: Option<String>,
    pub answers: Option<u16>,
}

/// What a span is about, by protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exchange {
    Http(HttpExchange),
    Db(DbExchange),
    Rpc(RpcExchange),
    Dns(DnsExchange),
}
