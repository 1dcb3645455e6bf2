//! ClickHouse over its HTTP interface: `INSERT INTO <table> FORMAT JSONEachRow`, one JSON
//! object per row (`timestamp`, `message`, the fields; ClickHouse's "HTTP Interface" and
//! "JSONEachRow" format docs). gzip request bodies are accepted (`Content-Encoding: gzip`).
//!
//! An INSERT of one request is one block: when a row cannot be parsed ClickHouse stores none
//! of the request and names the row (`Code: 27. ... (at row 3)`), answering 400 or 500 by
//! version. So a row ClickHouse cannot parse (the error codes it counts as parse errors) goes to
//! the dead-letter file and the rest is sent again at once; other errors follow the shared
//! rules by HTTP status (404 for a missing table, 401/403 for credentials: refused; 5xx such
//! as too many parts or memory: retried).

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::event::Event;
use crate::sink::auth::Auth;
use crate::sink::http::{HttpProtocol, HttpSink, HttpSinkSpec, SinkContext};
use crate::sink::isolate::{Attempt, send_isolating};
use crate::sink::retry::classify_status;
use crate::sink::{BoxFuture, Outcome, Sink};

/// ClickHouse's parse errors: CANNOT_PARSE_TEXT, CANNOT_PARSE_ESCAPE_SEQUENCE,
/// CANNOT_PARSE_QUOTED_STRING, CANNOT_PARSE_INPUT_ASSERTION_FAILED, CANNOT_PARSE_DATE,
/// CANNOT_PARSE_DATETIME, TYPE_MISMATCH, ARGUMENT_OUT_OF_BOUND, CANNOT_PARSE_NUMBER,
/// INCORRECT_DATA (an unknown field, when not skipped), CANNOT_READ_ARRAY_FROM_TEXT,
/// TOO_LARGE_STRING_SIZE, VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE,
/// CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN, CANNOT_PARSE_UUID.
const PARSE_ERRORS: &[u32] = &[
    6, 25, 26, 27, 38, 41, 53, 69, 72, 117, 130, 131, 321, 349, 376,
];

/// A ClickHouse sink's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClickHouseSpec {
    /// The URL with the INSERT query and its settings.
    pub http: HttpSinkSpec,
    /// `db.table`, as written in the query.
    pub table: String,
    pub auth: Auth,
}

/// The INSERT query for `table` (`name` or `db.name`, each part a plain identifier).
pub fn insert_query(table: &str) -> Result<String, String> {
    let parts: Vec<&str> = table.split('.').collect();
    let plain = |p: &&str| {
        let mut chars = p.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if parts.len() > 2 || !parts.iter().all(plain) {
        return Err(format!(
            "`{table}`: a table is `name` or `database.name`, letters, digits and _"
        ));
    }
    let quoted: Vec<String> = parts.iter().map(|p| format!("`{p}`")).collect();
    Ok(format!(
        "INSERT INTO {} FORMAT JSONEachRow",
        quoted.join(".")
    ))
}

#[derive(Debug)]
pub struct JsonEachRow {
    auth: Auth,
}

impl HttpProtocol for JsonEachRow {
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn encode(&self, events: &[&Event], body: &mut Vec<u8>) {
        for event in events {
            event.write_json(body);
            body.push(b'\n');
        }
    }

    fn authorization(&self, token: &str) -> String {
        self.auth.header(token)
    }
}

/// An error answer: its code and the row it names (1-based), from the body's
/// `Code: N. ... (at row R)` or the `X-ClickHouse-Exception-Code` header.
fn parse_error(headers: &HeaderMap, body: &[u8]) -> (Option<u32>, Option<usize>) {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let code = text
        .trim_start()
        .strip_prefix("Code: ")
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .or_else(|| {
            headers
                .get("x-clickhouse-exception-code")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
        });
    let row = text.find("(at row ").and_then(|at| {
        text[at + 8..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    });
    (code, row)
}

fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], bytes: u64) -> Attempt {
    if status.is_success() {
        return Attempt::Done(Outcome::Delivered { bytes });
    }
    let (code, row) = parse_error(headers, body);
    let reason = || {
        format!(
            "{status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)]).trim()
        )
    };
    match (code, row) {
        (Some(code), Some(row)) if PARSE_ERRORS.contains(&code) && row >= 1 => Attempt::RefuseOne {
            index: row - 1,
            status: status.as_u16().to_string(),
            reason: reason(),
        },
        // A parse error without its row: the request as a whole cannot be stored.
        (Some(code), None) if PARSE_ERRORS.contains(&code) => Attempt::Done(Outcome::Rejected {
            status: status.as_u16().to_string(),
            reason: reason(),
        }),
        _ => Attempt::Done(classify_status(status, headers, body, bytes)),
    }
}

/// The ClickHouse sink.
#[derive(Debug)]
pub struct ClickHouse {
    http: HttpSink<JsonEachRow>,
}

impl ClickHouse {
    pub fn new(spec: &ClickHouseSpec, ctx: &SinkContext) -> Result<Self, String> {
        let protocol = JsonEachRow {
            auth: spec.auth.clone(),
        };
        Ok(Self {
            http: HttpSink::new(protocol, spec.http.clone(), ctx)?,
        })
    }

    async fn attempt(&self, events: Vec<&Event>) -> Attempt {
        let mut body = Vec::with_capacity(events.iter().map(|e| e.size_hint()).sum());
        self.http.protocol().encode(&events, &mut body);
        let bytes = body.len() as u64;
        match self
            .http
            .post(
                self.http.url(),
                "application/x-ndjson",
                body,
                self.http.gzip(),
            )
            .await
        {
            Ok(r) => classify(r.status, &r.headers, &r.body, bytes),
            Err(outcome) => Attempt::Done(outcome),
        }
    }
}

impl Sink for ClickHouse {
    fn send<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, Outcome> {
        Box::pin(send_isolating(events, move |subset| self.attempt(subset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert_eq!(
            insert_query("logs.app_1").unwrap(),
            "INSERT INTO `logs`.`app_1` FORMAT JSONEachRow"
        );
        assert_eq!(
            insert_query("t").unwrap(),
            "INSERT INTO `t` FORMAT JSONEachRow"
        );
        assert!(insert_query("a.b.c").is_err());
        assert!(insert_query("t; DROP TABLE x").is_err());
        assert!(insert_query("`t`").is_err());
    }

    #[test]
    fn error_answers() {
        let h = HeaderMap::new();
        // As ClickHouse 18.16 (Debian 12) answers.
        let parse = b"Code: 41, e.displayText() = DB::Exception: Cannot read DateTime: unexpected word: (while read the value of key timestamp): (at row 2)\n, e.what() = DB::Exception\n";
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &h, parse, 5),
            Attempt::RefuseOne { index: 1, .. }
        ));
        // Newer versions: `Code: 117. DB::Exception: ...`.
        let unknown = b"Code: 117. DB::Exception: Unknown field found while parsing JSONEachRow format: zzz: (at row 1)\n: While executing ParallelParsingBlockInputFormat. (INCORRECT_DATA)";
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, &h, unknown, 5),
            Attempt::RefuseOne { index: 0, .. }
        ));
        let missing = b"Code: 60, e.displayText() = DB::Exception: Table default.nope doesn't exist., e.what() = DB::Exception\n";
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, &h, missing, 5),
            Attempt::Done(Outcome::Rejected { .. })
        ));
        let parts = b"Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)";
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, &h, parts, 5),
            Attempt::Done(Outcome::Retry { .. })
        ));
        assert!(matches!(
            classify(StatusCode::OK, &h, b"", 5),
            Attempt::Done(Outcome::Delivered { bytes: 5 })
        ));
    }
}
