//! Differential tests of the direct reads (`known.rs`) against the semantic-convention walk
//! every output uses (`semconv::attributes::span_attributes`), on random spans: each known key
//! alone, and whole programs run with the direct reads and again with the walk only.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU64;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::key::{self, ALL, Known};
use super::known::{self, Own};
use super::value::Value;
use super::*;
use crate::config::{Rules, Signal, StatementGroup};
use crate::model::{
    DbExchange, DbSystem, DnsExchange, Exchange, RpcExchange, Span, SpanKind, SpanStatus,
};
use crate::semconv::attributes::{AttrValue, addr_text, span_attributes};
use crate::testkit::server_span;

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn maybe<T>(rng: &mut StdRng, v: T) -> Option<T> {
    rng.random_bool(0.7).then_some(v)
}

const ADDRS: [IpAddr; 5] = [
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 168, 100, 254)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0002)), // ::ffff:10.0.0.2
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
];

/// A span with random fields where the attributes depend on them.
fn random_span(rng: &mut StdRng) -> Span {
    let mut s = server_span();
    s.kind = *pick(rng, &[SpanKind::Server, SpanKind::Client]);
    s.tid = *pick(rng, &[0, 1240]);
    s.local.addr = *pick(rng, &ADDRS);
    s.peer.addr = *pick(rng, &ADDRS);
    s.local.port = *pick(rng, &[8080, 443, 0]);
    s.peer.port = *pick(rng, &[51234, 80]);
    s.clock_skew_ns = pick(rng, &[None, Some(1500), Some(u64::MAX)]).and_then(NonZeroU64::new);
    s.status = pick(
        rng,
        &[
            SpanStatus::Unset,
            SpanStatus::Error(String::new()),
            SpanStatus::Error("connection reset".into()),
        ],
    )
    .clone();
    let targets = [
        "/api/orders?limit=10",
        "/healthz",
        "/a#frag?x",
        "/a?b#c",
        "/login?user=bob&password=hunter2&api_key=x",
        "/q?",
        "/",
        "",
        "*",
        "http://shop.example:8080/cart?id=1",
        "HTTPS://user:pw@h/x#y",
        "http://h",
        "ftp://h/x",
        "/abcdefgh?x",
        "/abcdefghijklmno#x",
        "/abcdefg",
        "/a/very/long/path/that/goes/on/and/on/for/more/than/sixty/four/bytes/x?token=t",
        "/a/very/long/path/that/goes/on/and/on/for/more/than/sixty/four/bytes/and/has/none",
        "/ünïcödé/päth?q=ü",
    ];
    let hosts = [
        "shop.example:8080",
        "shop.example",
        "[::1]:8443",
        "[::1]",
        "::1",
        " padded.example ",
        "h:",
        ":80",
        "h:notaport",
        "h:+80",
        "h:99999",
        "",
    ];
    match rng.random_range(0..8) {
        0 => {
            s.exchange = Exchange::Db(DbExchange {
                system: DbSystem::Postgresql,
                operation: Some("SELECT".into()),
                collection: maybe(rng, "orders".into()),
                namespace: None,
                query_text: None,
                error: maybe(rng, ("42P01".into(), "no table".into())),
                rows: Some(3),
            })
        }
        1 => {
            let proxied = std::net::SocketAddr::new(*pick(rng, &ADDRS), 40_001);
            s.exchange = Exchange::Rpc(RpcExchange {
                service: "helloworld.Greeter".into(),
                method: "SayHello".into(),
                authority: None,
                http_status: Some(200),
                grpc_status: maybe(rng, 0),
                grpc_message: None,
                client: maybe(rng, proxied),
            })
        }
        2 => {
            s.exchange = Exchange::Dns(DnsExchange {
                name: "example.com".into(),
                qtype: "A".into(),
                ..DnsExchange::default()
            })
        }
        _ => {
            let Exchange::Http(h) = &mut s.exchange else {
                unreachable!()
            };
            h.method = pick(rng, &["GET", "POST", "BREW", "", "get"]).to_string();
            h.target = pick(rng, &targets).to_string();
            let host = pick(rng, &hosts).to_string();
            h.host = maybe(rng, host);
            h.version = *pick(rng, &["1.1", "1.0", "2", "HTTP/1.1", " 1.1 ", ""]);
            let status = *pick(rng, &[200, 404, 503]);
            h.status = maybe(rng, status);
            h.user_agent = maybe(rng, "curl/8.5.0".into());
            let size = *pick(rng, &[0, 17, u64::MAX]);
            h.request_body_size = maybe(rng, size);
            h.response_body_size = maybe(rng, 512);
            h.tls = rng.random_bool(0.5);
            let proxied = std::net::SocketAddr::new(*pick(rng, &ADDRS), 40_001);
            h.client = maybe(rng, proxied);
        }
    }
    s
}

fn own_value(v: Own<'_>) -> Value<'_> {
    match v {
        Own::Str(s) => Value::Str(s),
        Own::Int(i) => Value::Int(i),
        Own::Addr(a) => Value::Str(Cow::Owned(addr_text(a))),
    }
}

fn walk_value<'a>(attrs: &'a [(&str, AttrValue<'_>)], key: &str) -> Value<'a> {
    match attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v) {
        None => Value::Nil,
        Some(AttrValue::Str(s)) => Value::Str(Cow::Borrowed(s)),
        Some(AttrValue::Int(i)) => Value::Int(*i),
        Some(other) => panic!("{key}: unexpected {other:?}"),
    }
}

/// Every known key of every random span reads as the walk says (or is left to the walk).
#[test]
fn direct_reads_equal_the_walk() {
    let mut rng = StdRng::seed_from_u64(19);
    let mut direct = 0;
    for _ in 0..20_000 {
        let span = random_span(&mut rng);
        let attrs = span_attributes(&span);
        for (k, key) in ALL {
            match known::read(&span, k) {
                Some(v) => {
                    direct += 1;
                    let v = v.map_or(Value::Nil, own_value);
                    assert_eq!(v, walk_value(&attrs, key), "{key} of {span:?}");
                }
                None => assert!(
                    span.http().is_none()
                        || (k == Known::UrlScheme && span.kind == SpanKind::Client),
                    "{key} not read directly from {span:?}"
                ),
            }
        }
    }
    assert!(direct > 100_000, "{direct}");
}

/// One `span` statement group of `statements` (also the bench's program).
pub(super) fn rules(statements: &[&str]) -> Rules {
    Rules {
        statements: vec![(
            Signal::Traces,
            StatementGroup {
                context: "span".into(),
                conditions: Vec::new(),
                statements: statements.iter().map(|s| s.to_string()).collect(),
                error_mode: None,
                origin: "test".into(),
            },
        )],
        ..Rules::default()
    }
}

/// Statements that read known keys (and write some of them, so later reads see the writes).
const STATEMENTS: [&str; 16] = [
    r#"set(attributes["route"], attributes["url.path"])"#,
    r#"set(name, Concat([attributes["http.request.method"], attributes["url.path"]], " ")) where attributes["http.response.status_code"] >= 400"#,
    r#"replace_pattern(attributes["url.path"], "^/api/v[0-9]+/", "/api/")"#,
    r#"set(attributes["health"], true) where attributes["url.path"] == "/healthz""#,
    r#"delete_key(attributes, "user_agent.original")"#,
    r#"delete_key(attributes, "server.address") where attributes["network.type"] == "ipv6""#,
    r#"set(attributes["peer"], Concat([attributes["client.address"], attributes["network.peer.address"], String(attributes["server.port"])], "|"))"#,
    r#"set(attributes["q"], attributes["url.query"]) where attributes["url.scheme"] == "https""#,
    r#"set(attributes["err"], attributes["error.type"]) where attributes["thread.id"] != nil"#,
    r#"set(attributes["v"], attributes["network.protocol.version"]) where IsMatch(attributes["http.request.method_original"], "^B")"#,
    r#"set(attributes["url.path"], "/x") where attributes["http.request.body.size"] > 10"#,
    r#"set(attributes["sizes"], [attributes["http.response.body.size"], attributes["ztrace.link.clock_skew_ns"]])"#,
    r#"set(attributes["transport"], attributes["network.transport"]) where attributes["url.path"] != "/""#,
    r#"set(attributes["server"], attributes["server.address"]) where attributes["client.port"] == 51234"#,
    r#"delete_key(attributes, "url.path") where attributes["db.system.name"] != nil"#,
    r#"set(attributes["after"], attributes["url.path"])"#,
];

/// Random programs of those statements, with and without the direct reads, on random spans:
/// the same spans come out.
#[test]
fn programs_with_direct_reads_equal_programs_without() {
    let mut rng = StdRng::seed_from_u64(20);
    for _ in 0..300 {
        let n = rng.random_range(1..=6);
        let program: Vec<&str> = (0..n).map(|_| *pick(&mut rng, &STATEMENTS)).collect();
        let rules = rules(&program);
        let mut fast = Program::compile(&rules).unwrap();
        key::WALK_ONLY.with(|w| w.set(true));
        let mut walk = Program::compile(&rules).unwrap();
        key::WALK_ONLY.with(|w| w.set(false));
        let spans: Vec<Span> = (0..40).map(|_| random_span(&mut rng)).collect();
        let mut a = spans.clone();
        fast.spans(&mut a, &|_| &[]);
        let mut b = spans;
        walk.spans(&mut b, &|_| &[]);
        assert_eq!(a, b, "{program:#?}");
        assert_eq!(fast.stats, walk.stats);
    }
}

/// Statements of the fast path's forms (and a few that are not, so programs mix them),
/// reading and writing known keys, other keys, the name and fields.
const FAST: [&str; 26] = [
    r#"set(attributes["deployment.environment"], "prod")"#,
    r#"delete_key(attributes, "user_agent.original")"#,
    r#"set(attributes["slow"], true) where duration > 500000000"#,
    r#"replace_pattern(attributes["url.path"], "^/api/v[0-9]+/", "/api/")"#,
    r#"set(name, "health") where attributes["url.path"] == "/healthz""#,
    r#"set(attributes["x"], "a") where name == "GET" and kind == 2"#,
    r#"set(attributes["x"], 3) where attributes["http.response.status_code"] >= 400"#,
    r#"set(attributes["x"], nil)"#,
    r#"set(attributes["y"], attributes["x"])"#,
    r#"set(attributes["url.path"], "/x") where duration >= 12300000"#,
    r#"delete_key(attributes, "url.path") where not (status.code == 0)"#,
    r#"delete_key(attributes, "x")"#,
    r#"delete_key(attributes, "server.address") where attributes["network.type"] == "ipv6""#,
    r#"replace_pattern(attributes["url.path"], "^/(a)", "/b$1")"#,
    r#"replace_pattern(attributes["x"], "a", "z", SHA256)"#,
    r#"replace_pattern(attributes["user_agent.original"], "curl/(.*)", "$1")"#,
    r#"set(attributes["k"], kind) where kind.string == "Server" or status.message != """#,
    r#"set(attributes["n"], name) where attributes["url.path"] != attributes["x"]"#,
    r#"set(attributes["s"], attributes["client.address"]) where end_time_unix_nano > start_time_unix_nano"#,
    r#"set(attributes["m"], attributes["http.request.method"]) where attributes["thread.id"] == 1240"#,
    r#"set(name, "n") where attributes["url.scheme"] == "https""#,
    r#"set(attributes["x"], "a") where IsMatch(attributes["url.path"], "^/(healthz|api)")"#,
    r#"delete_key(attributes, "url.path") where IsMatch(attributes["server.port"], "80$") or IsMatch(name, "^h")"#,
    // Not of the fast path's forms: the whole program takes the generic path.
    r#"set(attributes["h"], SHA256(name))"#,
    r#"set(status.code, 2) where attributes["url.path"] == "/healthz""#,
    r#"set(attributes["r"], resource.attributes["service.name"])"#,
];

/// Group conditions and filters for the fast path's differential test.
const FAST_CONDITIONS: [&str; 6] = [
    r#"attributes["url.path"] == "/healthz""#,
    r#"duration > 1000"#,
    r#"name == "GET""#,
    r#"attributes["x"] == "a""#,
    r#"attributes["http.response.status_code"] == 404"#,
    r#"IsMatch(attributes["x"], "^a")"#,
];

/// Random programs (groups with and without conditions, filters) on random spans (some with
/// edits and names already), with and without the fast path (`fast.rs`): the same spans come
/// out, with the same counters.
#[test]
fn programs_on_the_fast_path_equal_the_generic_path() {
    use crate::config::FilterList;
    use crate::model::{AttrEdits, AttrVal};
    let mut rng = StdRng::seed_from_u64(21);
    let (mut programs, mut answered, mut spans_run) = (0, 0, 0);
    for _ in 0..600 {
        let mut rules = Rules::default();
        for g in 0..rng.random_range(1..=3) {
            let n = rng.random_range(0..=6);
            let conditions = (0..rng.random_range(0..=2))
                .map(|_| pick(&mut rng, &FAST_CONDITIONS).to_string())
                .collect();
            // Mostly statements of the fast path's forms.
            let statements = (0..n)
                .map(|_| {
                    let end = FAST.len() - usize::from(rng.random_bool(0.9)) * 3;
                    pick(&mut rng, &FAST[..end]).to_string()
                })
                .collect();
            rules.statements.push((
                Signal::Traces,
                StatementGroup {
                    context: "span".into(),
                    conditions,
                    statements,
                    error_mode: None,
                    origin: format!("group {g}"),
                },
            ));
        }
        if rng.random_bool(0.4) {
            rules.filters.push(FilterList {
                signal: Signal::Traces,
                context: "span".into(),
                conditions: vec![pick(&mut rng, &FAST_CONDITIONS).to_string()],
                origin: "filter".into(),
            });
        }
        let mut fast = Program::compile(&rules).unwrap();
        super::fast::OFF.with(|w| w.set(true));
        let mut generic = Program::compile(&rules).unwrap();
        super::fast::OFF.with(|w| w.set(false));
        assert!(!generic.has_fast());
        programs += usize::from(fast.has_fast());
        let spans: Vec<Span> = (0..40)
            .map(|_| {
                let mut s = random_span(&mut rng);
                s.name = (*pick(&mut rng, &["GET", "health", "n"])).into();
                if rng.random_bool(0.1) {
                    let mut e = AttrEdits::default();
                    e.put("x", Some(AttrVal::Str("a".into())));
                    s.edits = Some(Box::new(e));
                }
                s
            })
            .collect();
        spans_run += spans.len();
        answered += spans.iter().filter(|s| fast.fast_answers(s)).count();
        let mut a = spans.clone();
        fast.spans(&mut a, &|_| &[]);
        let mut b = spans;
        generic.spans(&mut b, &|_| &[]);
        assert_eq!(a, b, "{rules:#?}");
        assert_eq!(fast.stats, generic.stats, "{rules:#?}");
    }
    // Both paths are exercised: most programs have a fast form, and it answers many spans (not
    // those of other exchanges, client spans reading `url.path`, unwritten keys not known).
    println!("fast path: {programs} programs of 600, {answered} of {spans_run} spans");
    assert!(
        programs > 300,
        "{programs} programs of 600 on the fast path"
    );
    assert!(answered > spans_run / 10, "{answered} of {spans_run} spans");
}
