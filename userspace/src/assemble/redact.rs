//! What leaves the assembler of an exchange's sensitive parts. Database servers quote values in
//! their error messages (MySQL `Duplicate entry 'alice@example.com' for key 'email'`, PostgreSQL
//! `Key (email)=(alice@example.com) already exists`, Redis echoing a command's arguments), so by
//! default an error keeps its code and gets a generic message derived from that code alone;
//! query parameters and headers named in the configured list are redacted. It owns these
//! decisions only; the built-in query-parameter list lives with the URL attributes in `semconv`.

use ztrace_protocols::{
    exchange::Exchange,
    parser::{Step, Update},
};

use crate::semconv::attributes::{REDACTED, redact_query_with};

/// The assembler's privacy settings (see `config::Privacy`); everything off by default.
#[derive(Clone, Debug, Default)]
pub struct Redaction {
    /// Keep (sanitised) database query text.
    pub db_query_text: bool,
    /// Keep database servers' error messages verbatim.
    pub db_error_text: bool,
    /// Extra query parameters / headers to redact, folded (ASCII lowercase, no `-`, `_`).
    pub names: Vec<String>,
}

impl Redaction {
    /// Takes out of `step` what may not leave.
    pub(super) fn apply(&self, step: &mut Step) {
        match step {
            Step::Request { exchange, .. } => self.request(exchange),
            Step::Update { update, .. } | Step::End { update, .. } => self.update(update),
            Step::Abort { .. } | Step::Desync(_) => {}
        }
    }

    fn request(&self, exchange: &mut Exchange) {
        match exchange {
            Exchange::Db(db) if !self.db_query_text => db.query_text = None,
            Exchange::Http(http) if !self.names.is_empty() => {
                if let Some((path, query)) = http.target.split_once('?')
                    && let redacted = redact_query_with(query, &self.names)
                    && redacted != query
                {
                    http.target = format!("{path}?{redacted}");
                }
                if self.names.iter().any(|n| n == "useragent") {
                    http.user_agent = http.user_agent.as_ref().map(|_| REDACTED.to_string());
                }
            }
            _ => {}
        }
    }

    fn update(&self, update: &mut Update) {
        if let Update::Db {
            error: Some((code, message)),
            ..
        } = update
            && !self.db_error_text
        {
            *message = generic_db_error(code).to_string();
        }
    }
}

/// A message for a database error code that says what kind of error it was and quotes nothing:
/// PostgreSQL's condition names and SQLSTATE classes, MySQL's common error numbers. Redis
/// error prefixes (`WRONGTYPE`, `NOAUTH`) say it themselves: empty.
pub fn generic_db_error(code: &str) -> &'static str {
    let sqlstate = code.len() == 5
        && code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        && code.bytes().any(|b| b.is_ascii_digit());
    if sqlstate {
        return sqlstate_message(code);
    }
    match code.parse::<u16>() {
        Ok(n) => mysql_message(n),
        Err(_) => "",
    }
}

fn sqlstate_message(code: &str) -> &'static str {
    match code {
        "23505" => "unique_violation",
        "23503" => "foreign_key_violation",
        "23502" => "not_null_violation",
        "23514" => "check_violation",
        "42601" => "syntax_error",
        "42P01" => "undefined_table",
        "42703" => "undefined_column",
        "42501" => "insufficient_privilege",
        "28P01" => "invalid_password",
        "40001" => "serialization_failure",
        "40P01" => "deadlock_detected",
        "57014" => "query_canceled",
        "22P02" => "invalid_text_representation",
        "22001" => "string_data_right_truncation",
        "3D000" => "invalid_catalog_name",
        _ => match &code[..2] {
            "01" => "warning",
            "02" => "no data",
            "08" => "connection exception",
            "0A" => "feature not supported",
            "21" => "cardinality violation",
            "22" => "data exception",
            "23" => "integrity constraint violation",
            "24" => "invalid cursor state",
            "25" => "invalid transaction state",
            "26" => "invalid SQL statement name",
            "28" => "invalid authorization specification",
            "2B" | "2D" | "3B" => "invalid transaction state",
            "34" => "invalid cursor name",
            "3D" => "invalid catalog name",
            "3F" => "invalid schema name",
            "40" => "transaction rollback",
            "42" => "syntax error or access rule violation",
            "44" => "with check option violation",
            "53" => "insufficient resources",
            "54" => "program limit exceeded",
            "55" => "object not in prerequisite state",
            "57" => "operator intervention",
            "58" => "system error",
            "XX" => "internal error",
            _ => "error",
        },
    }
}

fn mysql_message(n: u16) -> &'static str {
    match n {
        1044 | 1045 | 1142 | 1143 => "access denied",
        1048 => "column cannot be null",
        1049 => "unknown database",
        1050 => "table already exists",
        1054 => "unknown column",
        1062 => "duplicate entry",
        1064 => "syntax error",
        1146 => "table does not exist",
        1205 => "lock wait timeout exceeded",
        1213 => "deadlock found",
        1264 => "out of range value",
        1366 => "incorrect value",
        1406 => "data too long",
        1451 | 1452 => "foreign key constraint fails",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ztrace_protocols::exchange::{DbExchange, DbSystem, HttpExchange};

    fn db_end(code: &str, message: &str) -> Step {
        Step::End {
            key: None,
            end: 10,
            update: Update::Db {
                error: Some((code.into(), message.into())),
                rows: None,
            },
        }
    }

    fn error_of(step: &Step) -> (String, String) {
        match step {
            Step::End {
                update: Update::Db { error: Some(e), .. },
                ..
            } => e.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn database_errors_lose_their_literals_by_default() {
        let cases = [
            (
                "1062",
                "Duplicate entry 'alice@example.com' for key 'email'",
                "duplicate entry",
            ),
            (
                "23505",
                "duplicate key value violates unique constraint \"users_email_key\"",
                "unique_violation",
            ),
            (
                "22P05",
                "invalid input syntax for type integer: \"s3cr3t\"",
                "data exception",
            ),
            ("ERR", "ERR unknown command 's3cr3t', with args", ""),
            ("MOVED", "MOVED 3999 10.0.0.1:6381", ""),
            ("9999", "Some 'value'", "error"),
        ];
        let off = Redaction::default();
        for (code, message, want) in cases {
            let mut step = db_end(code, message);
            off.apply(&mut step);
            assert_eq!(error_of(&step), (code.to_string(), want.to_string()));
        }
        let on = Redaction {
            db_error_text: true,
            ..Redaction::default()
        };
        let mut step = db_end("1062", "Duplicate entry 'alice@example.com'");
        on.apply(&mut step);
        assert_eq!(error_of(&step).1, "Duplicate entry 'alice@example.com'");
    }

    #[test]
    fn configured_names_are_redacted() {
        let request = |target: &str| Step::Request {
            key: None,
            start: 0,
            exchange: Exchange::Http(HttpExchange {
                method: "GET".into(),
                target: target.into(),
                user_agent: Some("curl/8 s3cr3t".into()),
                ..HttpExchange::default()
            }),
            context: None,
        };
        let http = |step: &Step| match step {
            Step::Request {
                exchange: Exchange::Http(h),
                ..
            } => (h.target.clone(), h.user_agent.clone()),
            other => panic!("{other:?}"),
        };
        let r = Redaction {
            names: vec!["sessiontoken".into(), "useragent".into()],
            ..Redaction::default()
        };
        let mut step = request("/a?page=2&Session-Token=s3cr3t&access_token=t0k");
        r.apply(&mut step);
        assert_eq!(
            http(&step),
            (
                "/a?page=2&Session-Token=REDACTED&access_token=REDACTED".into(),
                Some("REDACTED".into())
            )
        );
        // Nothing configured: the target is left for the built-in list at export.
        let mut step = request("/a?Session-Token=s3cr3t");
        Redaction::default().apply(&mut step);
        assert_eq!(http(&step).0, "/a?Session-Token=s3cr3t");
    }

    #[test]
    fn query_text_dropped_unless_asked_for() {
        let request = || Step::Request {
            key: None,
            start: 0,
            exchange: Exchange::Db(DbExchange {
                system: DbSystem::Mysql,
                operation: Some("SELECT".into()),
                collection: None,
                namespace: None,
                query_text: Some("SELECT ? FROM t".into()),
                error: None,
                rows: None,
            }),
            context: None,
        };
        let text = |step: &Step| match step {
            Step::Request {
                exchange: Exchange::Db(d),
                ..
            } => d.query_text.clone(),
            other => panic!("{other:?}"),
        };
        let mut step = request();
        Redaction::default().apply(&mut step);
        assert_eq!(text(&step), None);
        let mut step = request();
        Redaction {
            db_query_text: true,
            ..Redaction::default()
        }
        .apply(&mut step);
        assert_eq!(text(&step).as_deref(), Some("SELECT ? FROM t"));
    }
}
