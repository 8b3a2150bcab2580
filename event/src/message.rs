//! Broker message encoding: NDJSON, one record per line.

use crate::record::{EventRecord, FORMAT_VERSION};

/// A record in a message that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The line is not a JSON record of the expected shape.
    #[error("record {index}: {source}")]
    Json {
        /// Zero-based line index in the message.
        index: usize,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// The record declares a format version this build does not read.
    #[error("record {index}: unsupported format version {version} (this build reads {FORMAT_VERSION})")]
    Version {
        /// Zero-based line index in the message.
        index: usize,
        /// The version found.
        version: u8,
    },
}

/// Why a record of a message of either format could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// A line of an NDJSON message.
    #[error(transparent)]
    Line(#[from] DecodeError),
    /// A compact block (refused whole).
    #[error(transparent)]
    Block(#[from] crate::block::BlockError),
}

/// Every record of a message, NDJSON or compact block (told by its first bytes), owned: for
/// tools and tests (the processor reads either without copying strings).
pub fn decode_records(payload: &[u8]) -> Vec<Result<EventRecord, MessageError>> {
    match crate::block::MessageFormat::of(payload) {
        crate::block::MessageFormat::Ndjson => decode_message(payload).map(|r| r.map_err(MessageError::from)).collect(),
        crate::block::MessageFormat::Block(_) => match crate::block::decode_block(payload) {
            Ok(events) => events.iter().map(|e| Ok(e.to_record())).collect(),
            Err(e) => vec![Err(e.into())],
        },
    }
}

/// Appends `record` to `out` as one NDJSON line.
pub fn encode_into(record: &EventRecord, out: &mut Vec<u8>) {
    // Serializing plain strings, numbers and a string map into a Vec cannot fail.
    #[allow(clippy::expect_used)]
    serde_json::to_writer(&mut *out, record).expect("EventRecord serializes infallibly");
    out.push(b'\n');
}

/// Decodes every record of a message; a bad line yields an error and decoding goes on.
pub fn decode_message(payload: &[u8]) -> impl Iterator<Item = Result<EventRecord, DecodeError>> + '_ {
    non_blank_lines(payload).map(|(index, line)| {
        let record: EventRecord = serde_json::from_slice(line).map_err(|source| DecodeError::Json { index, source })?;
        check_version(index, record.v)?;
        Ok(record)
    })
}

/// The lines of a message that hold a record, numbered from 0.
pub(crate) fn non_blank_lines(payload: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    payload.split(|&b| b == b'\n').filter(|line| !line.iter().all(u8::is_ascii_whitespace)).enumerate()
}

/// Refuses records of a format version this build does not read.
pub(crate) fn check_version(index: usize, version: u8) -> Result<(), DecodeError> {
    if version == FORMAT_VERSION {
        Ok(())
    } else {
        Err(DecodeError::Version { index, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(site: &str) -> EventRecord {
        let mut r = EventRecord::new();
        r.site = site.into();
        r.id = "id-1".into();
        r.ts = 1_795_000_000_000;
        r.name = "pageview".into();
        r.path = "/pricing".into();
        r.visitor = u64::MAX;
        r.props.insert("plan".into(), "pro".into());
        r.value = Some(12.5);
        r
    }

    #[test]
    fn round_trips_several_records() {
        let records = [sample("a.com"), sample("b.com")];
        let mut buf = Vec::new();
        for r in &records {
            encode_into(r, &mut buf);
        }
        let decoded: Vec<_> = decode_message(&buf).collect::<Result<_, _>>().expect("decodes");
        assert_eq!(decoded, records);
    }

    #[test]
    fn values_decode_to_the_very_f64_written() {
        // Shortest representations of 17 significant digits; without serde_json's
        // float_roundtrip one in five came back 1 ULP off (found by fuzzing).
        for value in [210_622.603_170_053_01, 0.1 + 0.2, 1e-7 / 3.0, f64::from_bits(0x4109_b5b4_d3d7_d21d)] {
            let mut record = sample("a.test");
            record.value = Some(value);
            let mut payload = Vec::new();
            encode_into(&record, &mut payload);
            let back = decode_message(&payload).next().expect("one line").expect("decodes");
            assert_eq!(back.value.map(f64::to_bits), Some(value.to_bits()), "{value:e}");
            let view = crate::decode_message_view(&payload).next().expect("one line").expect("decodes");
            assert_eq!(crate::EventFields::value(&view).map(f64::to_bits), Some(value.to_bits()), "{value:e} (view)");
        }
    }

    #[test]
    fn empty_fields_are_left_out() {
        let mut buf = Vec::new();
        encode_into(&sample("a.com"), &mut buf);
        let text = String::from_utf8(buf).expect("utf8");
        assert!(!text.contains("utm_source"), "{text}");
        assert!(!text.contains("interactive"), "{text}");
        assert!(text.contains("\"v\":1"), "{text}");
    }

    #[test]
    fn a_bad_line_does_not_stop_the_rest() {
        let mut buf = Vec::new();
        encode_into(&sample("a.com"), &mut buf);
        buf.extend_from_slice(b"{not json\n{\"v\":9,\"site\":\"x\"}\n");
        encode_into(&sample("c.com"), &mut buf);
        let results: Vec<_> = decode_message(&buf).collect();
        assert_eq!(results.len(), 4);
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(DecodeError::Json { index: 1, .. })));
        assert!(matches!(results[2], Err(DecodeError::Version { index: 2, version: 9 })));
        assert_eq!(results[3].as_ref().map(|r| r.site.as_str()).ok(), Some("c.com"));
    }
}
