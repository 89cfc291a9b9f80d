//! Secrets stay home with default settings, as root: real servers (a Python HTTP server that
//! sets a cookie, redis-server with a password, PostgreSQL with cleartext password
//! authentication, MariaDB with a password user) and real clients (curl, redis-cli, psql,
//! mariadb) carry an Authorization header, a Cookie and a Set-Cookie, credential query
//! parameters, database passwords, Redis AUTH, passwords on command lines and database errors
//! that quote a value. Two ztraces watch them at once: one exporting every signal over OTLP to
//! a receiver in this process with `RUST_LOG=trace`, one printing spans to the terminal. No
//! secret may appear in any span, metric or log record received, nor in either ztrace's stdout
//! or stderr. So that the test cannot pass by seeing nothing, it also checks that every
//! protocol produced spans and that the database errors were seen (by their codes).
//!
//! HTTP/2 and gRPC too: curl over h2c (prior knowledge) to an nginx that sets a cookie, with an
//! Authorization header, a Cookie and credential query parameters; a Python `grpcio` client
//! sending `authorization` and `cookie` metadata to a `grpcio` server whose failing method's
//! `grpc-message` trailer quotes a value (`duplicate key …@example.com`).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use ztrace_e2e::{
    harness::{
        Proc, free_port, nginx_template, privileged_or_skip, run_ok, spawn_app, spawn_nginx,
        spawn_ztrace_env,
    },
    receiver::ReceivedSpan,
    temp::TempDir,
};

const AUTHORIZATION: &str = "authz-secret-7f3a";
const COOKIE: &str = "cookie-secret-91c2";
const SET_COOKIE: &str = "setcookie-secret-44d1";
const QUERY: [(&str, &str); 5] = [
    ("X-Amz-Signature", "amzsig-secret-1b"),
    ("X-Amz-Credential", "amzcred-secret-2c"),
    ("access_token", "acctok-secret-3d"),
    ("api_key", "apikey-secret-4e"),
    ("code", "oauthcode-secret-5f"),
];
const PG_PASSWORD: &str = "pgpass-secret-6a";
const PG_LITERAL: &str = "pglit-secret-7b";
const MY_PASSWORD: &str = "mypass-secret-8c";
const MY_LITERAL: &str = "mylit-secret-9d";
const REDIS_PASSWORD: &str = "redispass-secret-0e";
const REDIS_ARGUMENT: &str = "redisarg-secret-1f";
const H2_AUTHORIZATION: &str = "h2authz-secret-2a";
const H2_COOKIE: &str = "h2cookie-secret-3b";
const H2_SET_COOKIE: &str = "h2setcookie-secret-4c";
const H2_TOKEN: &str = "h2token-secret-5d";
const GRPC_AUTHORIZATION: &str = "grpcauthz-secret-6e";
const GRPC_COOKIE: &str = "grpccookie-secret-7f";
const GRPC_LITERAL: &str = "grpclit-secret-8a";

fn secrets() -> Vec<&'static str> {
    let mut all = vec![
        AUTHORIZATION,
        COOKIE,
        SET_COOKIE,
        PG_PASSWORD,
        PG_LITERAL,
        MY_PASSWORD,
        MY_LITERAL,
        REDIS_PASSWORD,
        REDIS_ARGUMENT,
        H2_AUTHORIZATION,
        H2_COOKIE,
        H2_SET_COOKIE,
        H2_TOKEN,
        GRPC_AUTHORIZATION,
        GRPC_COOKIE,
        GRPC_LITERAL,
    ];
    all.extend(QUERY.iter().map(|(_, v)| *v));
    all
}

/// Answers every GET with a session cookie.
const HTTP_SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Set-Cookie", "sid=" + sys.argv[1] + "; HttpOnly")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("PORT", s.server_address[1], flush=True)
s.serve_forever()
"#;

/// nginx serving HTTP/2 in clear (h2c, prior knowledge), answering with a session cookie: its
/// site, in `harness::nginx_template`.
const H2_NGINX: &str = r#"    server {
        listen 127.0.0.1:{{PORT}} http2;
        location / {
            add_header Set-Cookie "sid={{SET_COOKIE}}; HttpOnly";
            return 200 "ok";
        }
    }"#;

/// A gRPC server (no generated code): `shop.Users/Get` answers, `shop.Users/Create` fails with
/// ALREADY_EXISTS and a message that quotes the value (argv[1]).
const GRPC_SERVER: &str = r#"
import sys, grpc
from concurrent import futures
literal = sys.argv[1]
def get(request, context):
    return b"ok"
def create(request, context):
    context.abort(grpc.StatusCode.ALREADY_EXISTS, "duplicate key " + literal + "@example.com")
handlers = grpc.method_handlers_generic_handler("shop.Users", {
    "Get": grpc.unary_unary_rpc_method_handler(get),
    "Create": grpc.unary_unary_rpc_method_handler(create),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handlers,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print("PORT", port, flush=True)
server.wait_for_termination()
"#;

/// Its client: both calls with `authorization` and `cookie` metadata (argv: port, token, cookie).
const GRPC_CLIENT: &str = r#"
import sys, time, grpc
port, token, cookie = sys.argv[1:4]
metadata = [("authorization", "Bearer " + token), ("cookie", "sid=" + cookie)]
with grpc.insecure_channel("127.0.0.1:" + port) as channel:
    assert channel.unary_unary("/shop.Users/Get")(b"id=1", metadata=metadata, timeout=10) == b"ok"
    try:
        channel.unary_unary("/shop.Users/Create")(b"alice", metadata=metadata, timeout=10)
        sys.exit("Create did not fail")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.ALREADY_EXISTS, e.code()
time.sleep(0.2)
"#;

fn scratch(owner: &str) -> Result<TempDir> {
    let dir = TempDir::new(&format!("secrets-{owner}"))?;
    run_ok(Command::new("chown").args([owner]).arg(dir.path()))?;
    Ok(dir)
}

fn as_user(user: &str, cmd: &str) -> Command {
    let mut c = Command::new("su");
    c.args([user, "-s", "/bin/sh", "-c", cmd]);
    c
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..300 {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not start")
}

/// PostgreSQL with cleartext password authentication (the password crosses the wire as is).
struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    pid: u32,
}

impl Postgres {
    fn start() -> Result<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL server (apt-get install postgresql)")?
            .flatten()
            .map(|e| e.path().join("bin"))
            .max()
            .context("no PostgreSQL version installed")?;
        let dir = scratch("postgres")?;
        let data = dir.join("data");
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PG_PASSWORD)?;
        run_ok(Command::new("chown").arg("postgres").arg(&pwfile))?;
        run_ok(&mut as_user(
            "postgres",
            &format!(
                "{}/initdb -D {} --auth=password --pwfile={} -U postgres",
                bin.display(),
                data.display(),
                pwfile.display()
            ),
        ))?;
        let port = free_port()?;
        run_ok(&mut as_user(
            "postgres",
            &format!(
                "{}/pg_ctl -D {} -w -l {}/log -o '-p {port} -k {} -c listen_addresses=127.0.0.1' start",
                bin.display(),
                data.display(),
                dir.display(),
                dir.display()
            ),
        ))?;
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))?
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid")?;
        Ok(Postgres {
            bin,
            dir,
            port,
            pid,
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_user(
            "postgres",
            &format!(
                "{}/pg_ctl -D {}/data -m immediate stop",
                self.bin.display(),
                self.dir.display()
            ),
        )
        .output();
    }
}

/// MariaDB with a user `app` identified by a password.
struct MariaDb {
    server: Proc,
    dir: TempDir,
    port: u16,
    pid: u32,
}

impl MariaDb {
    fn start() -> Result<MariaDb> {
        let dir = scratch("mysql")?;
        let data = dir.join("data");
        run_ok(
            Command::new("mariadb-install-db")
                .args(["--user=mysql", "--auth-root-authentication-method=normal"])
                .arg(format!("--datadir={}", data.display())),
        )
        .context("MariaDB server (apt-get install mariadb-server)")?;
        let port = free_port()?;
        let pid_file = dir.join("pid");
        let server = as_user(
            "mysql",
            &format!(
                "exec mariadbd --datadir={} --port={port} --bind-address=127.0.0.1 --socket={}/sock --pid-file={} --log-error={}/err",
                data.display(),
                dir.display(),
                pid_file.display(),
                dir.display()
            ),
        )
        .stderr(Stdio::null())
        .spawn()?;
        let mut db = MariaDb {
            server: Proc::new(server),
            dir,
            port,
            pid: 0,
        };
        wait_for("mariadbd", || {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .map(|pid| db.pid = pid)
                .is_some()
        })?;
        let sock = db.dir.join("sock");
        let setup = format!(
            "DROP USER IF EXISTS ''@'localhost'; \
             CREATE USER 'app'@'localhost' IDENTIFIED BY '{MY_PASSWORD}'; \
             CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY '{MY_PASSWORD}'; \
             GRANT ALL ON *.* TO 'app'@'localhost'; GRANT ALL ON *.* TO 'app'@'127.0.0.1'; \
             CREATE DATABASE shop; CREATE TABLE shop.users (email VARCHAR(64) PRIMARY KEY);"
        );
        wait_for("mariadb socket", || {
            Command::new("mariadb")
                .arg(format!("--socket={}", sock.display()))
                .args(["-u", "root", "-e", "SELECT 1"])
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
        run_ok(
            Command::new("mariadb")
                .arg(format!("--socket={}", sock.display()))
                .args(["-u", "root", "-e", &setup]),
        )?;
        Ok(db)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.server.signal(libc::SIGTERM);
        let _ = self.server.wait_exit(Duration::from_secs(20));
    }
}

/// redis-server with `--requirepass` (the password on its command line too).
fn start_redis() -> Result<(Proc, u16)> {
    let port = free_port()?;
    let server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--requirepass", REDIS_PASSWORD])
        .stdout(Stdio::null())
        .spawn()
        .context("redis-server (apt-get install redis-server)")?;
    let server = Proc::new(server);
    wait_for("redis-server", || {
        Command::new("redis-cli")
            .args(["-p", &port.to_string(), "--no-auth-warning"])
            .args(["-a", REDIS_PASSWORD, "PING"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    })?;
    Ok((server, port))
}

/// The traced clients: each carries secrets on the wire and on its command line. `h2` is the
/// h2c nginx, `grpc` the gRPC server, `grpc_client` the client script's path.
fn client_script(
    (http, redis, pg, my): (u16, u16, u16, u16),
    (h2, grpc): (u16, u16),
    grpc_client: &std::path::Path,
) -> String {
    let query: Vec<String> = QUERY.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let pg_url = format!("postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{pg}/postgres");
    [
        "sleep 6".to_string(),
        format!(
            "curl -s -o /dev/null -H 'Authorization: Bearer {AUTHORIZATION}' \
             -H 'Cookie: sid={COOKIE}' 'http://127.0.0.1:{http}/download?page=2&{query}'"
        ),
        format!("redis-cli -p {redis} --no-auth-warning -a {REDIS_PASSWORD} SET greeting hello"),
        format!(
            "redis-cli -p {redis} --no-auth-warning -a {REDIS_PASSWORD} NOSUCHCMD {REDIS_ARGUMENT}"
        ),
        format!(
            "psql '{pg_url}' -v ON_ERROR_STOP=0 -c 'select 1' -c \"select '{PG_LITERAL}'::int\""
        ),
        format!(
            "mariadb -h 127.0.0.1 -P {my} -u app -p{MY_PASSWORD} --force -e \
             \"INSERT INTO shop.users VALUES ('{MY_LITERAL}@example.com'); \
             INSERT INTO shop.users VALUES ('{MY_LITERAL}@example.com')\""
        ),
        format!(
            "curl -s -o /dev/null --http2-prior-knowledge -H 'Authorization: Bearer {H2_AUTHORIZATION}' \
             -H 'Cookie: sid={H2_COOKIE}' 'http://127.0.0.1:{h2}/orders?page=2&access_token={H2_TOKEN}'"
        ),
        format!(
            "python3 {} {grpc} {GRPC_AUTHORIZATION} {GRPC_COOKIE}",
            grpc_client.display()
        ),
        "sleep 1".to_string(),
    ]
    .map(|c| format!("{c} >/dev/null 2>&1"))
    .join("; ")
        + "; true"
}

/// The secrets `text` holds, as text or as a Rust `Debug` byte list (`[104, 117, …]`, how a
/// logged `&[u8]` payload looks).
fn leaks(what: &str, text: &str) -> Vec<String> {
    secrets()
        .into_iter()
        .filter(|s| {
            let bytes = format!("{:?}", s.as_bytes());
            text.contains(s) || text.contains(&bytes[1..bytes.len() - 1])
        })
        .map(|s| format!("{s} in {what}"))
        .collect()
}

fn has(spans: &[ReceivedSpan], system_or_method: &str) -> bool {
    spans.iter().any(|s| {
        s.attr_str("db.system.name").as_deref() == Some(system_or_method)
            || s.attr_str("http.request.method").as_deref() == Some(system_or_method)
    })
}

fn error_code(spans: &[ReceivedSpan], code: &str) -> bool {
    spans
        .iter()
        .any(|s| s.attr_str("db.response.status_code").as_deref() == Some(code))
}

#[test]
fn no_secret_leaves_with_default_settings() -> Result<()> {
    if !privileged_or_skip("no_secret_leaves_with_default_settings") {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let receiver = rt.block_on(ztrace_e2e::receiver::Receiver::start())?;
    let (http, http_port) = spawn_app({
        let mut c = Command::new("python3");
        c.args(["-c", HTTP_SERVER, SET_COOKIE]);
        c
    })?;
    let (redis, redis_port) = start_redis()?;
    let pg = Postgres::start()?;
    let my = MariaDb::start()?;
    let h2_dir = TempDir::new("secrets-h2")?;
    let template = nginx_template(&h2_dir, H2_NGINX)?;
    let h2 = spawn_nginx(&template, &h2_dir, &[("SET_COOKIE", H2_SET_COOKIE.into())])?;
    let (grpc, grpc_port) = spawn_app({
        let mut c = Command::new("python3");
        c.args(["-c", GRPC_SERVER, GRPC_LITERAL]);
        c
    })
    .context("python3 with grpcio (pip install grpcio)")?;
    let grpc_client = h2_dir.join("grpc_client.py");
    std::fs::write(&grpc_client, GRPC_CLIENT)?;
    let script = client_script(
        (http_port, redis_port, pg.port, my.port),
        (h2.port, grpc_port),
        &grpc_client,
    );
    let mut clients = Proc::new(Command::new("bash").args(["-c", &script]).spawn()?);
    let pids = [
        http.pid(),
        redis.pid(),
        pg.pid,
        my.pid,
        h2.master.pid(),
        grpc.pid(),
        clients.pid(),
    ]
    .map(|p| p.to_string())
    .join(",");
    let common = ["--pid".to_string(), pids, "--duration".into(), "60s".into()];
    let mut exporting = common.to_vec();
    exporting.extend(["--otlp-endpoint".into(), receiver.endpoint()]);
    let mut otlp = spawn_ztrace_env(&exporting, &[("RUST_LOG", "info,ztrace=trace")])?;
    let mut console = spawn_ztrace_env(&common, &[("RUST_LOG", "info")])?;
    otlp.wait_stderr("process(es)", Duration::from_secs(60))?;
    console.wait_stderr("process(es)", Duration::from_secs(60))?;
    let code = clients.wait_exit(Duration::from_secs(90));
    ensure!(code == Some(0), "client script exited with {code:?}");
    std::thread::sleep(Duration::from_millis(1500));
    for z in [&otlp, &console] {
        z.signal(libc::SIGINT);
    }
    for (name, z) in [("OTLP ztrace", &mut otlp), ("console ztrace", &mut console)] {
        let code = z.wait_exit(Duration::from_secs(30));
        ensure!(
            code == Some(0),
            "{name} exited with {code:?}:\n{}",
            z.stderr_text()
        );
    }
    let spans = rt.block_on(receiver.wait_for_spans(8, Duration::from_secs(10)));
    let signals = format!(
        "{:?}\n{:?}\n{:?}",
        receiver.requests(),
        receiver.metrics_requests(),
        receiver.logs_requests()
    );
    drop((http, redis, pg, my, h2, grpc));

    // Not vacuous: every protocol was seen, and so were the errors that quote values.
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    for what in ["GET", "redis", "postgresql", "mysql"] {
        ensure!(has(&spans, what), "no {what} span among {names:?}");
    }
    for code in ["22P02", "1062", "ERR"] {
        ensure!(error_code(&spans, code), "no error {code} among {names:?}");
    }
    // HTTP/2 in both processes (curl and nginx) with the answer, gRPC on both sides with the
    // failing call's status.
    let h2_answered = spans
        .iter()
        .filter(|s| {
            s.attr_str("network.protocol.version").as_deref() == Some("2")
                && s.attr_int("http.response.status_code") == Some(200)
        })
        .count();
    ensure!(
        h2_answered >= 2,
        "{h2_answered} answered HTTP/2 spans among {names:?}"
    );
    for method in ["Get", "Create"] {
        let calls = spans
            .iter()
            .filter(|s| {
                s.attr_str("rpc.system").as_deref() == Some("grpc")
                    && s.attr_str("rpc.method").as_deref() == Some(method)
            })
            .collect::<Vec<_>>();
        ensure!(
            calls.len() >= 2,
            "{} gRPC {method} spans among {names:?}",
            calls.len()
        );
        if method == "Create" {
            ensure!(
                calls
                    .iter()
                    .all(|s| s.attr_int("rpc.grpc.status_code") == Some(6)),
                "Create must fail with ALREADY_EXISTS"
            );
        }
    }
    ensure!(
        !receiver.metrics_requests().is_empty(),
        "no metrics were exported"
    );
    let console_out = console.stdout_text();
    ensure!(
        console_out.contains("GET") && console_out.contains("INSERT"),
        "console printed no spans:\n{console_out}"
    );
    let otlp_err = otlp.stderr_text();
    ensure!(
        otlp_err.contains("DataEvent"),
        "trace logging showed no events"
    );

    let mut found = leaks("exported signals", &signals);
    found.extend(leaks("the OTLP ztrace's stdout", &otlp.stdout_text()));
    found.extend(leaks(
        "the OTLP ztrace's stderr (RUST_LOG=trace)",
        &otlp_err,
    ));
    found.extend(leaks("the console ztrace's stdout", &console_out));
    found.extend(leaks("the console ztrace's stderr", &console.stderr_text()));
    if !found.is_empty() {
        bail!("secrets left ztrace:\n{}", found.join("\n"));
    }
    Ok(())
}
