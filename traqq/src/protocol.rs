//! traqq 0.2.0's wire format (its `server.rs`): one JSON command per line, one JSON
//! response per line, in order.
//!
//! ```text
//! {"cmd":"record","event":{"event":"purchase","ip":"1.2.3.4","amount":99.99}}
//! {"cmd":"query","min":1700000000,"max":1700086400}
//! {"cmd":"query_days","days":7}
//! {"cmd":"find","min":1700000000,"max":1700086400,"metric_type":"add","key":"event","merge":true}
//! → {"success":true} | {"success":true,"data":…} | {"success":false,"error":"…"}
//! ```

use serde::{Deserialize, Serialize};

/// One command line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Record one event.
    Record {
        /// The event object (`event` + properties).
        event: serde_json::Value,
    },
    /// Every metric per day, for the days starting at `min`, `min + 86400`, … up to `max`.
    Query {
        /// First day's start, seconds since the epoch.
        min: i64,
        /// Last day's start at the latest.
        max: i64,
    },
    /// [`Command::Query`] of the last `days` days and today.
    QueryDays {
        /// How many days before today.
        days: i32,
    },
    /// The metrics of one type and pattern, per day or merged.
    Find {
        /// First day's start.
        min: i64,
        /// Last day's start at the latest.
        max: i64,
        /// `bmp`, `add`, `adv` or `top`.
        metric_type: String,
        /// The pattern, in any order of its names (`geo~event`).
        key: String,
        /// `adv`: only the metrics of this value property.
        #[serde(default)]
        add_key: Option<String>,
        /// Merge the days into one result.
        #[serde(default)]
        merge: bool,
    },
}

/// One response line, as traqq writes it (absent fields are left out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the command succeeded.
    pub success: bool,
    /// The answer of a query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// Success without data (`record`).
    pub(crate) fn ok_empty() -> Self {
        Self { success: true, data: None, error: None }
    }

    /// Success with data.
    pub(crate) fn ok(data: serde_json::Value) -> Self {
        Self { success: true, data: Some(data), error: None }
    }

    /// Failure.
    pub(crate) fn err(error: impl Into<String>) -> Self {
        Self { success: false, data: None, error: Some(error.into()) }
    }

    /// The response as one line, newline included.
    pub(crate) fn write_line(&self, out: &mut Vec<u8>) {
        if serde_json::to_writer(&mut *out, self).is_err() {
            // Only a map with non-string keys can fail to serialize; none is ever built.
            out.extend_from_slice(br#"{"success":false,"error":"response could not be encoded"}"#);
        }
        out.push(b'\n');
    }
}

/// Reads one command line; the error is traqq's (`invalid command: …`).
pub(crate) fn parse_command(line: &[u8]) -> Result<Command, String> {
    serde_json::from_slice(line).map_err(|e| format!("invalid command: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(line: &str, expect: Result<Command, &str>) {
        assert_eq!(parse_command(line.as_bytes()), expect.map_err(str::to_owned));
    }

    #[test]
    fn commands_and_errors_read_as_traqq_reads_them() {
        check(r#"{"cmd":"query","min":1,"max":2}"#, Ok(Command::Query { min: 1, max: 2 }));
        check(r#"{"cmd":"query_days","days":3}"#, Ok(Command::QueryDays { days: 3 }));
        check(
            r#"{"cmd":"find","min":1,"max":2,"metric_type":"adv","key":"event","add_key":"amount"}"#,
            Ok(Command::Find {
                min: 1,
                max: 2,
                metric_type: "adv".into(),
                key: "event".into(),
                add_key: Some("amount".into()),
                merge: false,
            }),
        );
        // Errors word for word as traqq 0.2.0's server writes them.
        for line in [
            r#"{"cmd":"delete"}"#,
            r#"{"cmd":"query","min":1}"#,
            "not json",
            r#"{"cmd":"query","min":"1","max":2}"#,
            "[1]",
        ] {
            let traqqs = serde_json::from_str::<traqq::server::Command>(line).expect_err(line);
            assert_eq!(parse_command(line.as_bytes()), Err(format!("invalid command: {traqqs}")), "{line}");
        }
    }

    #[test]
    fn responses_leave_out_absent_fields() {
        let mut out = Vec::new();
        Response::ok_empty().write_line(&mut out);
        Response::err("bad").write_line(&mut out);
        Response::ok(serde_json::json!([])).write_line(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "{\"success\":true}\n{\"success\":false,\"error\":\"bad\"}\n{\"success\":true,\"data\":[]}\n"
        );
    }
}
