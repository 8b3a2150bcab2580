//! Answers as people and programs read them: aligned tables with control characters
//! escaped, CSV (RFC 4180), Plausible's labels for empty values; and the check of a
//! dimension asked for against what the config writes and what is stored.

use std::{borrow::Cow, fmt::Write as _};

use gallop_sink::{Breakdown, Headline, Leader, TimeRange};
use serde::Serialize;

use crate::error::CliError;

/// What `gallop query` prints for a range.
#[derive(Serialize)]
pub(crate) struct Answer<'a> {
    pub(crate) site: &'a str,
    pub(crate) tz: &'a str,
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
    pub(crate) range: TimeRange,
    pub(crate) headline: Headline,
    pub(crate) breakdown: Option<Breakdown>,
    pub(crate) leaderboard: Option<Vec<Leader>>,
}

/// Whether the stored dimension `dimension` is one `spec` stands for (`props.*` matches any
/// `props.<key>` in its place).
fn matches_spec(spec: &str, dimension: &str) -> bool {
    let (s, d): (Vec<&str>, Vec<&str>) = (spec.split('~').collect(), dimension.split('~').collect());
    s.len() == d.len()
        && s.iter().zip(&d).all(|(s, d)| s == d || (*s == "props.*" && d.len() > 6 && d.starts_with("props.")))
}

/// Refuses a dimension that is neither configured nor stored, listing the known ones.
pub(crate) fn check_dimension(
    flag: &'static str,
    dimension: &str,
    configured: &[String],
    stored: &[String],
) -> Result<(), CliError> {
    if configured.iter().any(|spec| matches_spec(spec, dimension)) || stored.iter().any(|d| d == dimension) {
        return Ok(());
    }
    let mut known: Vec<&str> = configured.iter().chain(stored).map(String::as_str).collect();
    known.sort_unstable();
    known.dedup();
    Err(CliError::UnknownDimension { flag, dimension: dimension.to_owned(), known: known.join(", ") })
}

/// Escapes control characters (a stored value may hold any), so printing cannot move the
/// cursor, clear the screen or break a row.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect(),
    )
}

/// A CSV field (RFC 4180), control characters escaped as in tables.
pub(crate) fn csv_field(text: &str) -> String {
    let text = printable(text);
    if text.contains([',', '"']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.into_owned()
    }
}

/// The label Plausible shows for an empty value of `dimension`.
fn label<'a>(dimension: &str, value: &'a str) -> Cow<'a, str> {
    if value.is_empty() {
        if dimension == "source" || dimension == "session:source" {
            return Cow::Borrowed("Direct / None");
        }
        return Cow::Borrowed("(none)");
    }
    printable(value)
}

pub(crate) fn table(answer: &Answer<'_>) -> String {
    let h = &answer.headline;
    let mut out = format!(
        "{}  {} .. {}  ({})\n\n{:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10}\n{:>10} {:>10} {:>10} {:>10} {:>7.1}% {:>9.0}s {:>10.2}\n",
        printable(answer.site),
        answer.from,
        answer.to,
        answer.tz,
        "visitors",
        "visits",
        "pageviews",
        "events",
        "bounce",
        "duration",
        "views/visit",
        h.visitors,
        h.visits,
        h.pageviews,
        h.events,
        h.bounce_rate,
        h.visit_duration,
        h.views_per_visit,
    );
    for (currency, amount) in &h.revenue {
        let _ = writeln!(out, "revenue {:>10.2} {}", amount, printable(currency));
    }
    if h.value_events > 0 && h.value != 0.0 {
        let _ = writeln!(out, "value   {:>10.2} (events with a value and no currency)", h.value);
    }
    if let Some(breakdown) = &answer.breakdown {
        let dimension = breakdown.dimension.as_str();
        let values: Vec<Cow<'_, str>> = breakdown.rows.iter().map(|r| label(dimension, &r.value)).collect();
        let width = values.iter().map(|v| v.chars().count()).max().unwrap_or(0).max(dimension.chars().count());
        let visits = breakdown.rows.iter().any(|r| r.visits.is_some());
        let _ = write!(out, "\n{:<width$} {:>12} {:>12}", printable(dimension), "visitors", "events");
        out.push_str(if visits { format!(" {:>12}", "visits") } else { String::new() }.as_str());
        let _ = writeln!(out, " {:>14}", "value");
        for (row, value) in breakdown.rows.iter().zip(&values) {
            let _ = write!(out, "{value:<width$} {:>12} {:>12}", row.visitors, row.events);
            if visits {
                let _ = write!(out, " {:>12}", row.visits.unwrap_or(0));
            }
            let _ = writeln!(out, " {:>14.2}", row.value_sum);
        }
    }
    if let Some(leaders) = &answer.leaderboard {
        let values: Vec<Cow<'_, str>> = leaders.iter().map(|l| printable(&l.value)).collect();
        let width = values.iter().map(|v| v.chars().count()).max().unwrap_or(0).max(6);
        let _ = writeln!(out, "\n{:<width$} {:>12} {:>12}", "top", "count", "± error");
        for (leader, value) in leaders.iter().zip(&values) {
            let _ = writeln!(out, "{value:<width$} {:>12} {:>12}", leader.count, leader.error);
        }
    }
    out
}

pub(crate) fn csv(answer: &Answer<'_>) -> String {
    let h = &answer.headline;
    let mut out = String::from(
        "site,from,to,tz,visitors,visits,pageviews,events,bounce_rate,visit_duration,views_per_visit,value\n",
    );
    let _ = writeln!(
        out,
        "{},{},{},{},{},{},{},{},{:.2},{:.1},{:.3},{}",
        csv_field(answer.site),
        csv_field(answer.from),
        csv_field(answer.to),
        csv_field(answer.tz),
        h.visitors,
        h.visits,
        h.pageviews,
        h.events,
        h.bounce_rate,
        h.visit_duration,
        h.views_per_visit,
        h.value
    );
    if !h.revenue.is_empty() {
        out.push_str("\ncurrency,revenue\n");
        for (currency, amount) in &h.revenue {
            let _ = writeln!(out, "{},{amount}", csv_field(currency));
        }
    }
    if let Some(breakdown) = &answer.breakdown {
        let _ = writeln!(out, "\n{},visitors,events,visits,value", csv_field(&breakdown.dimension));
        for row in &breakdown.rows {
            let visits = row.visits.map(|v| v.to_string()).unwrap_or_default();
            let _ =
                writeln!(out, "{},{},{},{visits},{}", csv_field(&row.value), row.visitors, row.events, row.value_sum);
        }
    }
    if let Some(leaders) = &answer.leaderboard {
        out.push_str("\ntop,count,error\n");
        for leader in leaders {
            let _ = writeln!(out, "{},{},{}", csv_field(&leader.value), leader.count, leader.error);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_are_matched_against_specs_and_stored_names() {
        let configured: Vec<String> = ["path", "name~props.*", "props.*", "session:source"].map(String::from).to_vec();
        for (dimension, ok) in [
            ("path", true),
            ("name~props.plan", true),
            ("props.plan", true),
            ("props.", false),
            ("session:source", true),
            ("pth", false),
            ("name~path", false),
        ] {
            assert_eq!(check_dimension("--by", dimension, &configured, &[]).is_ok(), ok, "{dimension}");
        }
        let err = check_dimension("--by", "pth", &configured, &["custom".into()]).expect_err("typo");
        assert_eq!(
            err.to_string(),
            "--by \"pth\" is not a dimension Gallop keeps; known: custom, name~props.*, path, props.*, session:source"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_csv_is_quoted() {
        assert_eq!(printable("/a\u{1b}[2J\nb"), "/a\\u{1b}[2J\\nb");
        assert_eq!(printable("plain"), "plain");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(csv_field("x\ty"), "x\\ty");
        assert_eq!(label("source", ""), "Direct / None");
        assert_eq!(label("path", ""), "(none)");
    }
}
