//! PostgreSQL and MariaDB end to end, as root: real servers from Debian in private data
//! directories, their real CLI clients, both sides traced. Asserts database spans per the
//! conventions (system, operation, table, namespace, sanitised query text, server errors) and
//! client → server links — including PostgreSQL's fork-per-connection backends.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use ztrace_e2e::{
    harness::{free_port, privileged_or_skip, run_ok, trace_server_and_clients},
    receiver::{ReceivedSpan, Receiver},
    temp::TempDir,
};

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn scratch(owner: &str) -> Result<TempDir> {
    let dir = TempDir::new(owner)?;
    run_ok(Command::new("chown").args([owner]).arg(dir.path()))?;
    Ok(dir)
}

/// Checks what both databases must show, for `system` served by `server_pid`.
fn check(spans: &[ReceivedSpan], server_pid: u32, system: &str, error_code: &str) -> Result<()> {
    let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap_or(-1) as u32;
    let db: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.attr_str("db.system.name").as_deref() == Some(system))
        .collect();
    let servers: Vec<&&ReceivedSpan> = db
        .iter()
        .filter(|s| s.span.kind == SpanKind::Server as i32)
        .collect();
    let clients: Vec<&&ReceivedSpan> = db
        .iter()
        .filter(|s| s.span.kind == SpanKind::Client as i32)
        .collect();
    let find = |side: &[&&ReceivedSpan], op: &str, table: &str| -> Result<ReceivedSpan> {
        side.iter()
            .find(|s| {
                s.attr_str("db.operation.name").as_deref() == Some(op)
                    && s.attr_str("db.collection.name")
                        .is_some_and(|c| c.ends_with(table))
            })
            .map(|s| (**s).clone())
            .with_context(|| {
                format!(
                    "no {op} {table} span among {:?}",
                    side.iter().map(|s| &s.span.name).collect::<Vec<_>>()
                )
            })
    };
    for side in [&servers, &clients] {
        let select = find(side, "SELECT", "items")?;
        let text = select.attr_str("db.query.text").unwrap_or_default();
        ensure!(
            text.contains("where id = ?") && !text.contains("secret"),
            "query text not sanitised: {text}"
        );
        let insert = find(side, "INSERT", "items")?;
        ensure!(
            !insert
                .attr_str("db.query.text")
                .unwrap_or_default()
                .contains("secret"),
            "literal leaked"
        );
        let failed = find(side, "SELECT", "nope")?;
        ensure!(
            failed.span.status.as_ref().map(|s| s.code) == Some(StatusCode::Error as i32),
            "error not reflected"
        );
        ensure!(
            failed.attr_str("db.response.status_code").as_deref() == Some(error_code),
            "{:?}",
            failed.attr_str("db.response.status_code")
        );
    }
    // Every server-side span descends from the client span that sent its statement.
    for s in &servers {
        ensure!(pid(s) != 0);
        let parent = clients
            .iter()
            .find(|c| c.span.span_id == s.span.parent_span_id)
            .with_context(|| format!("server span {} has no client parent", s.span.name))?;
        ensure!(parent.span.trace_id == s.span.trace_id && parent.span.name == s.span.name);
    }
    ensure!(
        servers.iter().any(|s| pid(s) != server_pid) || system == "mysql",
        "PostgreSQL statements run in forked backends"
    );
    Ok(())
}

#[test]
fn postgresql_statements_become_linked_database_spans() -> Result<()> {
    if !privileged_or_skip("postgresql_statements_become_linked_database_spans") {
        return Ok(());
    }
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server (apt-get install postgresql)")?
        .flatten()
        .map(|e| e.path().join("bin"))
        .max()
        .context("no PostgreSQL version installed")?;
    let dir = scratch("postgres")?;
    let data = dir.join("data");
    let as_postgres = |cmd: String| {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", &cmd]);
        c
    };
    run_ok(&mut as_postgres(format!(
        "{}/initdb -D {} --auth=trust -U postgres",
        bin.display(),
        data.display()
    )))?;
    let port = free_port()?;
    run_ok(&mut as_postgres(format!(
        "{}/pg_ctl -D {} -w -l {}/log -o '-p {port} -k {} -c listen_addresses=127.0.0.1' start",
        bin.display(),
        data.display(),
        dir.display(),
        dir.display()
    )))?;
    let stop = || {
        let _ = as_postgres(format!(
            "{}/pg_ctl -D {} -m immediate stop",
            bin.display(),
            data.display()
        ))
        .output();
    };
    let result = (|| {
        let postmaster: u32 = std::fs::read_to_string(data.join("postmaster.pid"))?
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid")?;
        let psql =
            format!("psql -v ON_ERROR_STOP=0 -h 127.0.0.1 -p {port} -U postgres -d postgres");
        let script = format!(
            "sleep 3; {psql} -c 'create table items(id int, name text)' \
             -c \"insert into items values (1, 'secret')\" -c 'select * from items where id = 1' \
             -c 'select * from nope' >/dev/null 2>&1; true"
        );
        let rt = runtime()?;
        let receiver = rt.block_on(Receiver::start())?;
        let spans =
            trace_server_and_clients(&rt, &receiver, postmaster, &script, &["--db-query-text"], 8)?;
        check(&spans, postmaster, "postgresql", "42P01")?;
        let namespaced = spans
            .iter()
            .any(|s| s.attr_str("db.namespace").as_deref() == Some("postgres"));
        ensure!(namespaced, "db.namespace missing");
        Ok(())
    })();
    stop();
    result
}

#[test]
fn mariadb_statements_become_linked_database_spans() -> Result<()> {
    if !privileged_or_skip("mariadb_statements_become_linked_database_spans") {
        return Ok(());
    }
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
    let server = Command::new("su")
        .args(["mysql", "-s", "/bin/sh", "-c"])
        .arg(format!(
            "exec mariadbd --datadir={} --port={port} --bind-address=127.0.0.1 --socket={}/sock --pid-file={} --skip-grant-tables --log-error={}/err",
            data.display(),
            dir.display(),
            pid_file.display(),
            dir.display()
        ))
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut server = ztrace_e2e::harness::Proc::new(server);
    let result = (|| {
        let mariadbd = ztrace_e2e::harness::wait_pid_file(&pid_file, "mariadbd")?;
        let client = format!("mariadb -h 127.0.0.1 -P {port} -u root --force -e");
        let script = format!(
            "sleep 3; {client} \"create database shop; create table shop.items(id int, name text); \
             insert into shop.items values (1, 'secret'); select * from shop.items where id = 1; \
             select * from shop.nope\" >/dev/null 2>&1; true"
        );
        let rt = runtime()?;
        let receiver = rt.block_on(Receiver::start())?;
        let spans =
            trace_server_and_clients(&rt, &receiver, mariadbd, &script, &["--db-query-text"], 10)?;
        check(&spans, mariadbd, "mysql", "1146")
    })();
    server.signal(libc::SIGTERM);
    let _ = server.wait_exit(Duration::from_secs(20));
    result
}
