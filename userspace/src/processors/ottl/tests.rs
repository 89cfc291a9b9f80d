//! Table-driven tests. Statements and conditions are taken from the Collector's `transform` and
//! `filter` processor documentation (README examples), with attribute names adapted to what
//! ztrace's spans carry where the example's names do not exist here.

use std::borrow::Cow;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::*;
use crate::config::{ErrorMode, FilterList, Rules, Signal, StatementGroup};
use crate::model::{Span, SpanStatus};
use crate::semconv::attributes::{AttrValue, redact_query_with, span_attributes};
use crate::testkit::{client_span, server_span};

fn group(signal: Signal, context: &str, statements: &[&str]) -> Rules {
    Rules {
        statements: vec![(
            signal,
            StatementGroup {
                context: context.into(),
                conditions: Vec::new(),
                statements: statements.iter().map(|s| s.to_string()).collect(),
                error_mode: None,
                origin: "`transform.trace_statements[0]` in t.toml".into(),
            },
        )],
        ..Rules::default()
    }
}

fn filter(signal: Signal, context: &str, conditions: &[&str]) -> Rules {
    Rules {
        filters: vec![FilterList {
            signal,
            context: context.into(),
            conditions: conditions.iter().map(|s| s.to_string()).collect(),
            origin: format!("`filter.x.{context}` in t.toml"),
        }],
        ..Rules::default()
    }
}

const RESOURCE: [(&str, AttrValue<'static>); 2] = [
    ("service.name", AttrValue::Str(Cow::Borrowed("shop"))),
    ("host.name", AttrValue::Str(Cow::Borrowed("localhost"))),
];

/// Runs `rules` on `span`; None when dropped.
fn run(rules: &Rules, span: Span) -> Option<Span> {
    let mut p = Program::compile(rules).unwrap_or_else(|e| panic!("{e}"));
    let mut spans = vec![span];
    p.spans(&mut spans, &|_| &RESOURCE[..]);
    spans.pop()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span_attributes(span)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| match v {
            AttrValue::Str(s) => s.into_owned(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Double(d) => d.0.to_string(),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::StrArray(a) => a.join("|"),
        })
}

/// Transform examples on a server span (`GET /api/orders?limit=10`, status 200,
/// `user_agent.original = curl/8.5.0`): statements → (attribute, expected value or absent).
#[test]
fn span_transforms_from_the_collector_docs() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, Option<&'a str>)]);
    let cases: &[Case<'_>] = &[
        (
            &[r#"set(attributes["test"], "pass")"#],
            &[("test", Some("pass"))],
        ),
        (
            &[r#"set(attributes["test"], "pass") where name == "GET""#],
            &[("test", Some("pass"))],
        ),
        (
            &[r#"set(attributes["test"], "pass") where name == "POST""#],
            &[("test", None)],
        ),
        (
            &[r#"delete_key(attributes, "user_agent.original")"#],
            &[
                ("user_agent.original", None),
                ("url.path", Some("/api/orders")),
            ],
        ),
        (
            &[r#"delete_matching_keys(attributes, "^(client|network)\\..*")"#],
            &[
                ("client.address", None),
                ("network.peer.port", None),
                ("url.path", Some("/api/orders")),
            ],
        ),
        (
            &[r#"keep_keys(attributes, ["http.request.method", "url.path"])"#],
            &[
                ("http.request.method", Some("GET")),
                ("url.path", Some("/api/orders")),
                ("url.query", None),
                ("thread.id", None),
            ],
        ),
        (
            &[r#"replace_pattern(attributes["url.path"], "^/api/([a-z]+)", "/v2/$1")"#],
            &[("url.path", Some("/v2/orders"))],
        ),
        (
            &[r#"replace_all_patterns(attributes, "value", "curl/[0-9.]+", "****")"#],
            &[
                ("user_agent.original", Some("****")),
                ("url.path", Some("/api/orders")),
            ],
        ),
        (
            &[r#"replace_all_patterns(attributes, "key", "^url\\.", "http.url_")"#],
            &[("url.path", None), ("http.url_path", Some("/api/orders"))],
        ),
        (
            &[r#"replace_pattern(attributes["user_agent.original"], "curl/(.*)", "$1", SHA256)"#],
            &[(
                "user_agent.original",
                Some("9d93a25eee02c976820c569d7f2169b8099f4b02bba9d116c96f81122eee95e1"),
            )],
        ),
        (
            &[r#"truncate_all(attributes, 4)"#],
            &[
                ("url.path", Some("/api")),
                ("user_agent.original", Some("curl")),
                ("http.response.status_code", Some("200")),
            ],
        ),
        (
            &[r#"limit(attributes, 2, ["url.path"])"#],
            &[
                ("url.path", Some("/api/orders")),
                ("http.request.method", Some("GET")),
                ("url.query", None),
            ],
        ),
        (
            &[r#"set(attributes["hash"], SHA256("abc"))"#],
            &[(
                "hash",
                Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            )],
        ),
        (
            &[
                r#"set(attributes["where"], Concat([attributes["server.address"], attributes["server.port"]], ":"))"#,
            ],
            &[("where", Some("shop.example:8080"))],
        ),
        (
            &[r#"set(attributes["first"], Split(attributes["url.path"], "/")[1])"#],
            &[("first", Some("api"))],
        ),
        (
            &[
                r#"set(attributes["code"], Int("42"))"#,
                r#"set(attributes["port"], String(attributes["server.port"]))"#,
            ],
            &[("code", Some("42")), ("port", Some("8080"))],
        ),
        (
            &[
                r#"set(attributes["slow"], true) where duration > 10000000 and kind == SPAN_KIND_SERVER"#,
            ],
            &[("slow", Some("true"))],
        ),
        (
            &[
                r#"set(attributes["ok"], "yes") where IsMatch(attributes["url.path"], "^/api/.*") and not (status.code == STATUS_CODE_ERROR)"#,
            ],
            &[("ok", Some("yes"))],
        ),
        (
            &[
                r#"set(attributes["svc"], resource.attributes["service.name"]) where resource.attributes["host.name"] == "localhost""#,
            ],
            &[("svc", Some("shop"))],
        ),
        (
            &[r#"set(attributes["n"], attributes["http.response.status_code"] * 2 + 1)"#],
            &[("n", Some("401"))],
        ),
        (
            &[r#"set(attributes["missing"], "x") where attributes["nope"] != nil"#],
            &[("missing", None)],
        ),
        (
            // Later statements see what earlier ones wrote.
            &[
                r#"set(attributes["a"], "1")"#,
                r#"set(attributes["b"], attributes["a"])"#,
                r#"delete_key(attributes, "a")"#,
            ],
            &[("a", None), ("b", Some("1"))],
        ),
        (
            &[r#"set(span.attributes["prefixed"], span.name)"#],
            &[("prefixed", Some("GET"))],
        ),
    ];
    for (statements, want) in cases {
        let out = run(&group(Signal::Traces, "span", statements), server_span()).unwrap();
        for (key, value) in *want {
            assert_eq!(
                attr(&out, key).as_deref(),
                *value,
                "{statements:?}: attributes[{key:?}]"
            );
        }
    }
}

#[test]
fn span_fields_are_set() {
    let out = run(
        &group(
            Signal::Traces,
            "span",
            &[
                r#"set(name, "orders") where attributes["url.path"] == "/api/orders""#,
                r#"set(status.code, STATUS_CODE_ERROR) where attributes["http.response.status_code"] == 200"#,
                r#"set(status.message, "flagged")"#,
            ],
        ),
        server_span(),
    )
    .unwrap();
    assert_eq!(out.name, "orders");
    assert_eq!(out.status, SpanStatus::Error("flagged".into()));
}

/// Filter examples: condition → is the server span dropped?
#[test]
fn span_filters_from_the_collector_docs() {
    let cases: &[(&str, bool)] = &[
        (r#"attributes["url.path"] == "/api/orders""#, true),
        (r#"attributes["url.path"] == "/healthz""#, false),
        (r#"resource.attributes["host.name"] == "localhost""#, true),
        (r#"name == "app_1""#, false),
        (r#"kind == SPAN_KIND_INTERNAL"#, false),
        (
            r#"kind == SPAN_KIND_SERVER and attributes["http.request.method"] == "GET""#,
            true,
        ),
        (
            r#"IsMatch(attributes["user_agent.original"], "^curl/")"#,
            true,
        ),
        (
            r#"attributes["http.response.status_code"] >= 500 or status.code == STATUS_CODE_ERROR"#,
            false,
        ),
        (r#"not IsMatch(name, "GET")"#, false),
        (r#"attributes["nope"] == nil"#, true),
        (r#"attributes["server.port"] == 8080.0"#, true),
        (r#"attributes["server.port"] == "8080""#, false),
        (
            r#"(attributes["http.response.status_code"] + 1) > 200"#,
            true,
        ),
        (
            r#"(name == "POST" or name == "GET") and (kind == SPAN_KIND_SERVER)"#,
            true,
        ),
    ];
    for (cond, dropped) in cases {
        let out = run(&filter(Signal::Traces, "span", &[cond]), server_span());
        assert_eq!(out.is_none(), *dropped, "{cond}");
    }
    // A client span's url.full is readable (and already redacted by the code).
    let out = run(
        &filter(
            Signal::Traces,
            "span",
            &[r#"IsMatch(attributes["url.full"], "^http://")"#],
        ),
        client_span(),
    );
    assert!(out.is_none());
}

/// Compile errors name the statement and the column.
#[test]
fn errors_name_statement_and_column() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"set(attributes["a"] "b")"#,
            "column 21",
            "expected `,` or `)`",
        ),
        (
            r#"set(attributes["a"], "b") where"#,
            "column 32",
            "expected",
        ),
        (
            r#"sett(attributes["a"], "b")"#,
            "column 1",
            "the editor `sett` is not supported",
        ),
        (
            r#"set(attributes["a"], Lower("b"))"#,
            "column 22",
            "the converter `Lower` is not supported",
        ),
        (r#"set(kind, 2)"#, "column 5", "`kind` cannot be set"),
        (
            r#"set(resource.attributes["a"], "b")"#,
            "column 5",
            "cannot be set",
        ),
        (
            r#"set(attributes["a"], "b") where colour == "red""#,
            "column 33",
            "unknown path `colour`",
        ),
        (
            r#"replace_pattern(attributes["a"], "(", "x")"#,
            "column 34",
            "invalid regular expression",
        ),
        (
            r#"set(attributes["a"], SPAN_KIND_SIDEWAYS)"#,
            "column 22",
            "unknown enum",
        ),
        (
            r#"set(attributes["a"])"#,
            "column 1",
            "needs the argument `value`",
        ),
        (
            r#"set(attributes["a"], "unterminated)"#,
            "column 36",
            "closing",
        ),
    ];
    for (statement, column, message) in cases {
        let e = Program::compile(&group(Signal::Traces, "span", &[statement]))
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("`transform.trace_statements[0]` in t.toml statement 1, ")
                && e.contains(column)
                && e.contains(message)
                && e.ends_with(statement),
            "{statement}: {e}"
        );
    }
    let e = Program::compile(&group(Signal::Traces, "spanevent", &["set(name, \"x\")"]))
        .unwrap_err()
        .0;
    assert!(
        e.contains("the context `spanevent` is not supported"),
        "{e}"
    );
}

#[test]
fn error_modes() {
    // Int("x") is nil; nil * 2 is an error at run time.
    let statement = r#"set(attributes["n"], Int(attributes["url.path"]) * 2)"#;
    let mut rules = group(
        Signal::Traces,
        "span",
        &[statement, r#"set(attributes["after"], "yes")"#],
    );
    assert!(
        run(&rules, server_span()).is_none(),
        "propagate drops the span"
    );
    rules.transform_error_mode = ErrorMode::Ignore;
    let out = run(&rules, server_span()).unwrap();
    assert_eq!(
        attr(&out, "after").as_deref(),
        Some("yes"),
        "ignore runs on"
    );
    let mut p = Program::compile(&rules).unwrap();
    let mut spans = vec![server_span(), server_span()];
    p.spans(&mut spans, &|_| &[]);
    assert_eq!((spans.len(), p.stats.errors), (2, 2));
}

fn gauge(name: &str, points: &[(&str, i64)]) -> Metric {
    Metric {
        name: name.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: points
                .iter()
                .map(|(label, v)| NumberDataPoint {
                    attributes: vec![kv("my_label", label)],
                    value: Some(number_data_point::Value::AsInt(*v)),
                    ..Default::default()
                })
                .collect(),
        })),
        ..Default::default()
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

fn metrics_request() -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "shop")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    gauge("my.metric", &[("abc123", 1), ("other", 2)]),
                    gauge("drop.me", &[("x", 3)]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn datapoint_rules_from_the_collector_docs() {
    let mut rules = filter(
        Signal::Metrics,
        "datapoint",
        &[
            r#"metric.name == "my.metric" and attributes["my_label"] == "abc123""#,
            r#"metric.name == "drop.me""#,
        ],
    );
    rules.statements = group(
        Signal::Metrics,
        "datapoint",
        &[
            r#"set(attributes["svc"], resource.attributes["service.name"])"#,
            r#"set(metric.description, "Sum") where metric.type == METRIC_DATA_TYPE_GAUGE"#,
            r#"set(value_int, value_int * 10)"#,
        ],
    )
    .statements;
    let mut p = Program::compile(&rules).unwrap();
    let mut req = metrics_request();
    p.metrics(&mut req);
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    assert_eq!(metrics.len(), 1, "a metric left without points is removed");
    assert_eq!(metrics[0].description, "Sum");
    let Some(Data::Gauge(g)) = &metrics[0].data else {
        panic!()
    };
    assert_eq!(g.data_points.len(), 1);
    let point = &g.data_points[0];
    assert_eq!(point.value, Some(number_data_point::Value::AsInt(20)));
    assert!(point.attributes.contains(&kv("svc", "shop")));
    assert_eq!(p.stats.points_dropped, 2);
}

#[test]
fn log_rules_from_the_collector_docs() {
    let record = |body: &str, severity: i32| LogRecord {
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.into())),
        }),
        severity_number: severity,
        ..Default::default()
    };
    let mut req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    record("user logged in password=hunter2", 9),
                    record("debug noise", 5),
                    record("GET /healthz", 9),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut rules = filter(
        Signal::Logs,
        "log_record",
        &[
            r#"severity_number < SEVERITY_NUMBER_WARN and IsMatch(body, ".*healthz.*")"#,
            r#"severity_number < SEVERITY_NUMBER_INFO"#,
        ],
    );
    rules.statements = group(
        Signal::Logs,
        "log",
        &[
            r#"replace_pattern(body, "password=[^ ]*", "password=***")"#,
            r#"set(severity_text, "INFO") where severity_number == SEVERITY_NUMBER_INFO"#,
        ],
    )
    .statements;
    let mut p = Program::compile(&rules).unwrap();
    p.logs(&mut req);
    let records = &req.resource_logs[0].scope_logs[0].log_records;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].body.as_ref().unwrap().value,
        Some(any_value::Value::StringValue(
            "user logged in password=***".into()
        ))
    );
    assert_eq!(records[0].severity_text, "INFO");
}

/// The default redaction, run as rules on unredacted values, redacts exactly what the code does.
#[test]
fn default_rules_redact_what_the_code_redacts() {
    let queries = [
        "limit=10",
        "token=abc&page=2",
        "Access_Token=abc&API-KEY=k&q=x",
        "x=1&password=p&sig=s",
        "code=1&codes=2&session_id=3",
        "mytoken=1&tokens=2",
    ];
    let extra = vec!["sessiontoken".to_string()];
    let rules = group(Signal::Traces, "span", &[]);
    let mut rules = rules;
    rules.statements[0].1.statements = defaults::redaction_statements(&extra);
    for q in queries {
        let mut span = server_span();
        span.edits = Some(Box::default());
        let raw = format!("{q}&Session-Token=t");
        span.edits.as_mut().unwrap().put(
            "url.query",
            Some(crate::model::AttrVal::Str(raw.clone().into())),
        );
        let full = format!("http://user:pw@shop.example:8080/a?{raw}#frag");
        span.edits
            .as_mut()
            .unwrap()
            .put("url.full", Some(crate::model::AttrVal::Str(full.into())));
        let out = run(&rules, span).unwrap();
        let code = redact_query_with(&raw, &extra);
        assert_eq!(attr(&out, "url.query").unwrap(), code, "{raw}");
        assert_eq!(
            attr(&out, "url.full").unwrap(),
            format!("http://shop.example:8080/a?{code}#frag"),
            "{raw}"
        );
    }
    let text = defaults::redaction_toml(&extra);
    let file = crate::config::ConfigFile::parse(&text, std::path::Path::new("d.toml")).unwrap();
    let back = crate::config::resolve_rules(Some(&file)).unwrap();
    assert_eq!(
        back.statements[0].1.statements,
        defaults::redaction_statements(&extra)
    );
    Program::compile(&back).unwrap();
}
