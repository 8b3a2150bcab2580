//! What can go wrong between Gallop and ClickHouse, with the input that failed.

/// A sink failure. [`SinkError::is_transient`] tells a retry from a stop.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The server could not be reached, timed out, or answered with an error worth retrying.
    #[error("ClickHouse at {url}: {operation} failed: {reason}")]
    Unavailable {
        /// Server URL.
        url: String,
        /// What was being done (`insert of 1234 rows`, `SELECT version()`…).
        operation: String,
        /// Client or server error text.
        reason: String,
    },
    /// The server refused the request for a reason a retry cannot fix.
    #[error("ClickHouse at {url}: {operation} was rejected: {reason}")]
    Rejected {
        /// Server URL.
        url: String,
        /// What was being done.
        operation: String,
        /// Server error text, with its code.
        reason: String,
    },
    /// The tables do not have the columns this version of Gallop writes.
    #[error("table {table} does not match this Gallop version: {problem}; run `gallop migrate`")]
    SchemaMismatch {
        /// `database.table`.
        table: String,
        /// The first difference found.
        problem: String,
    },
    /// `SELECT version()` returned text that is not a version.
    #[error("cannot parse ClickHouse version {text:?}")]
    Version {
        /// What the server returned.
        text: String,
    },
    /// A stored state or marker could not be read back.
    #[error("cannot read {what} from ClickHouse: {reason}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The write was not attempted (again): this processor no longer owns a partition it
    /// touches, for long enough.
    #[error("insert not attempted: {0}")]
    Fenced(String),
    /// The servers do not form the cluster the config names (an unknown cluster name, a
    /// shard whose replicas do not replicate each other).
    #[error("ClickHouse cluster {cluster}: {problem}")]
    Cluster {
        /// `clickhouse.cluster`.
        cluster: String,
        /// What does not match, naming the server.
        problem: String,
    },
    /// A caller-supplied argument is invalid (a time zone, a range).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which argument.
        what: String,
        /// Why.
        reason: String,
    },
}

impl SinkError {
    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Server error codes (`Code: N` in the response) that are worth retrying: overload, memory
/// and part-count pressure, timeouts, a table being restarted, network trouble between
/// replicas. Every other server error is a rejection.
const TRANSIENT_CODES: &[u32] = &[
    159, // TIMEOUT_EXCEEDED
    164, // READONLY (replica in read-only mode)
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    225, // NO_ZOOKEEPER (a replicated table whose ZooKeeper is gone)
    252, // TOO_MANY_PARTS
    319, // UNKNOWN_STATUS_OF_INSERT
    425, // SYSTEM_ERROR
    999, // KEEPER_EXCEPTION
];

/// Classifies a `clickhouse` crate error for `operation` against `url`.
pub(crate) fn classify(url: &str, operation: impl Into<String>, error: clickhouse::error::Error) -> SinkError {
    use clickhouse::error::Error as E;
    let operation = operation.into();
    let reason = error.to_string();
    let transient = match &error {
        E::BadResponse(text) => server_code(text).is_none_or(|code| TRANSIENT_CODES.contains(&code)),
        E::Network(_) | E::TimedOut | E::Decompression(_) => true,
        _ => false,
    };
    if transient {
        SinkError::Unavailable { url: url.to_owned(), operation, reason }
    } else {
        SinkError::Rejected { url: url.to_owned(), operation, reason }
    }
}

/// The `Code: N` of a ClickHouse error text.
pub(crate) fn server_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_are_read_from_error_text() {
        assert_eq!(server_code("Code: 60, e.displayText() = DB::Exception: Table x doesn't exist"), Some(60));
        assert_eq!(server_code("bad response: Code: 252. DB::Exception: Too many parts"), Some(252));
        assert_eq!(server_code("502 Bad Gateway"), None);
    }

    #[test]
    fn schema_errors_are_rejections_and_overload_is_transient() {
        let url = "http://ch:8123";
        let bad = |text: &str| clickhouse::error::Error::BadResponse(text.to_owned());
        assert!(!classify(url, "insert", bad("Code: 16, e.displayText() = No such column x")).is_transient());
        assert!(!classify(url, "insert", bad("Code: 60, e.displayText() = Table gallop.aggregates doesn't exist"))
            .is_transient());
        assert!(classify(url, "insert", bad("Code: 252, Too many parts")).is_transient());
        assert!(classify(url, "insert", bad("502 Bad Gateway")).is_transient());
        assert!(classify(url, "insert", clickhouse::error::Error::TimedOut).is_transient());
        let text = classify(url, "insert of 3 rows", bad("Code: 16, No such column x")).to_string();
        assert!(
            text.contains("http://ch:8123") && text.contains("insert of 3 rows") && text.contains("Code: 16"),
            "{text}"
        );
    }
}
