//! `gallop query`: a site's headline numbers (visitors, visits, bounce rate, duration,
//! revenue per currency), a breakdown and a leaderboard for a time range in any time zone,
//! as a table, JSON or CSV; `--realtime` for the visitors of the last five minutes.
//! `gallop export`: every rollup row of a site and range as CSV or NDJSON.

use std::{borrow::Cow, fmt::Write as _, io::Write as _};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use gallop_config::Config;
use gallop_sink::{Breakdown, ClickHouse, ExportRow, Granularity, Headline, Leader, Reader, SinkError, TimeRange};
use serde::Serialize;

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for people (control characters in values escaped).
    Table,
    /// One JSON document.
    Json,
    /// Comma-separated values (RFC 4180), one section per table.
    Csv,
}

/// Arguments of `gallop query`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// Site, as sent in events.
    #[arg(long)]
    site: String,
    /// Start: YYYY-MM-DD (midnight) or "YYYY-MM-DD HH:MM:SS", local to --tz.
    #[arg(long, required_unless_present = "realtime")]
    from: Option<String>,
    /// End: YYYY-MM-DD (that whole day included) or "YYYY-MM-DD HH:MM:SS" (excluded).
    #[arg(long, required_unless_present = "realtime")]
    to: Option<String>,
    /// IANA time zone of --from and --to, e.g. Europe/Berlin.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Break the numbers down by this dimension (page, source, country, session:entry_page,
    /// name~props.plan…); an unknown one is refused with the list of known ones.
    #[arg(long, value_name = "DIMENSION")]
    by: Option<String>,
    /// Show this leaderboard (referrer, props.<key>…).
    #[arg(long, value_name = "DIMENSION")]
    top: Option<String>,
    /// Rows in the breakdown and leaderboard.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Current visitors: visitors with an event in the last five minutes.
    #[arg(long, conflicts_with_all = ["from", "to", "by", "top"])]
    realtime: bool,
}

#[derive(Serialize)]
struct Answer<'a> {
    site: &'a str,
    tz: &'a str,
    from: &'a str,
    to: &'a str,
    range: TimeRange,
    headline: Headline,
    breakdown: Option<Breakdown>,
    leaderboard: Option<Vec<Leader>>,
}

/// Days in `month` of `year`, or `None` for a month that does not exist.
fn days_in_month(year: i32, month: u32) -> Option<u32> {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    })
}

/// Checks a local time as the user typed it: `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS`, a
/// date the calendar has and a time of day that exists.
fn check_local(flag: &str, text: &str) -> anyhow::Result<()> {
    let bad = |why: &str| anyhow::anyhow!("{flag} {text:?}: {why}");
    let (date, time) = match text.split_once(' ') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let number = |part: &str, len: usize| {
        (part.len() == len && part.bytes().all(|b| b.is_ascii_digit())).then(|| part.parse::<u32>().ok()).flatten()
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts[..] else { return Err(bad("expected YYYY-MM-DD or \"YYYY-MM-DD HH:MM:SS\"")) };
    let (Some(year), Some(month), Some(day)) = (number(y, 4), number(m, 2), number(d, 2)) else {
        return Err(bad("expected YYYY-MM-DD or \"YYYY-MM-DD HH:MM:SS\""));
    };
    let Some(days) = days_in_month(year as i32, month) else { return Err(bad(&format!("there is no month {month}"))) };
    if day == 0 || day > days {
        return Err(bad(&format!("{year:04}-{month:02} has no day {day} (it has {days} days)")));
    }
    if let Some(time) = time {
        let parts: Vec<&str> = time.split(':').collect();
        let [h, mi, s] = parts[..] else { return Err(bad("the time must be HH:MM:SS")) };
        match (number(h, 2), number(mi, 2), number(s, 2)) {
            (Some(h), Some(mi), Some(s)) if h < 24 && mi < 60 && s < 60 => {}
            _ => return Err(bad("the time must be HH:MM:SS within a day")),
        }
    }
    Ok(())
}

/// The day after `date` (`YYYY-MM-DD`), or `None` if it is not a date.
fn next_day(date: &str) -> Option<String> {
    let mut parts = date.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let days = days_in_month(year, month)?;
    if day == 0 || day > days {
        return None;
    }
    let (year, month, day) = match (day == days, month == 12) {
        (false, _) => (year, month, day + 1),
        (true, false) => (year, month + 1, 1),
        (true, true) => (year + 1, 1, 1),
    };
    Some(format!("{year:04}-{month:02}-{day:02}"))
}

/// Whether the stored dimension `dimension` is one `spec` stands for (`props.*` matches any
/// `props.<key>` in its place).
fn matches_spec(spec: &str, dimension: &str) -> bool {
    let (s, d): (Vec<&str>, Vec<&str>) = (spec.split('~').collect(), dimension.split('~').collect());
    s.len() == d.len()
        && s.iter().zip(&d).all(|(s, d)| s == d || (*s == "props.*" && d.len() > 6 && d.starts_with("props.")))
}

/// Refuses a dimension that is neither configured nor stored, listing the known ones.
fn check_dimension(flag: &str, dimension: &str, configured: &[String], stored: &[String]) -> anyhow::Result<()> {
    if configured.iter().any(|spec| matches_spec(spec, dimension)) || stored.iter().any(|d| d == dimension) {
        return Ok(());
    }
    let mut known: Vec<&str> = configured.iter().chain(stored).map(String::as_str).collect();
    known.sort_unstable();
    known.dedup();
    bail!("{flag} {dimension:?} is not a dimension Gallop keeps; known: {}", known.join(", "))
}

/// Escapes control characters (a stored value may hold any), so printing cannot move the
/// cursor, clear the screen or break a row.
fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect(),
    )
}

/// A CSV field (RFC 4180), control characters escaped as in tables.
fn csv_field(text: &str) -> String {
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

/// Runs `gallop query`.
pub(crate) fn run(config: &Config, args: &QueryArgs) -> anyhow::Result<()> {
    let format = if args.json { Format::Json } else { args.format };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the Tokio runtime")?;
    runtime.block_on(async {
        let clickhouse = ClickHouse::connect(&config.clickhouse).await?;
        let reader = Reader::new(clickhouse);
        if args.realtime {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let visitors = reader.current_visitors(&args.site, i64::try_from(now).unwrap_or(i64::MAX)).await?;
            match format {
                Format::Json => println!("{}", serde_json::json!({ "site": args.site, "current_visitors": visitors })),
                Format::Csv => println!("site,current_visitors\n{},{visitors}", csv_field(&args.site)),
                Format::Table => println!("{}  current visitors (last 5 minutes): {visitors}", printable(&args.site)),
            }
            return Ok(());
        }
        let (Some(from), Some(to)) = (args.from.as_deref(), args.to.as_deref()) else {
            bail!("--from and --to are required (or --realtime)");
        };
        check_local("--from", from)?;
        check_local("--to", to)?;
        let range = resolve_range(&reader, from, to, &args.tz).await?;
        if args.by.is_some() || args.top.is_some() {
            let (rollups, boards) = gallop_processor::dimensions(&config.processor)?;
            let (stored_rollups, stored_boards) = reader.stored_dimensions(&args.site).await?;
            if let Some(by) = &args.by {
                check_dimension("--by", by, &rollups, &stored_rollups)?;
            }
            if let Some(top) = &args.top {
                check_dimension("--top", top, &boards, &stored_boards)?;
            }
        }
        let headline = reader.headline(&args.site, range).await?;
        let breakdown = match &args.by {
            Some(dimension) => Some(reader.breakdown(&args.site, range, dimension, args.limit).await?),
            None => None,
        };
        let leaderboard = match &args.top {
            Some(dimension) => Some(reader.leaderboard(&args.site, range, dimension, args.limit).await?),
            None => None,
        };
        let answer = Answer { site: &args.site, tz: &args.tz, from, to, range, headline, breakdown, leaderboard };
        match format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
            Format::Csv => print!("{}", csv(&answer)),
            Format::Table => print!("{}", table(&answer)),
        }
        Ok(())
    })
}

/// `[from, to)` in seconds for local times in `tz`, with messages that show what the user
/// typed: a whole `--to` date is included, a reversed range refused, an unknown zone named.
async fn resolve_range(reader: &Reader, from: &str, to: &str, tz: &str) -> anyhow::Result<TimeRange> {
    let to_local = if to.len() == 10 {
        next_day(to).with_context(|| format!("--to {to:?} is not a date"))?
    } else {
        to.to_owned()
    };
    let epoch = |local: String| async move {
        match reader.local_to_epoch(&local, tz).await {
            Err(SinkError::Invalid { .. }) => {
                bail!("--tz {tz:?} is not a time zone this ClickHouse knows; use an IANA name such as Europe/Berlin or UTC")
            }
            other => Ok(other?),
        }
    };
    let (start, end) = (epoch(from.to_owned()).await?, epoch(to_local).await?);
    if start >= end {
        bail!("--from {from:?} is not before --to {to:?} (a whole --to date is included)");
    }
    TimeRange::new(start, end).with_context(|| format!("--from {from:?} --to {to:?}"))
}

fn table(answer: &Answer<'_>) -> String {
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

fn csv(answer: &Answer<'_>) -> String {
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

/// How `gallop export` writes rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    /// CSV with a header line.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

/// Arguments of `gallop export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// Site, as sent in events.
    #[arg(long)]
    site: String,
    /// Start: YYYY-MM-DD or "YYYY-MM-DD HH:MM:SS", local to --tz.
    #[arg(long)]
    from: String,
    /// End: YYYY-MM-DD (that whole day included) or "YYYY-MM-DD HH:MM:SS" (excluded).
    #[arg(long)]
    to: String,
    /// IANA time zone of --from and --to.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Row format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    format: ExportFormat,
    /// Directory to write one file per granularity into (`<site>-minute.csv`, …); without
    /// it, every row goes to standard output as one stream.
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
}

/// Runs `gallop export`: every rollup row of the site whose bucket lies in the range, at
/// minute, hour and day, merged; a progress bar on a terminal.
pub(crate) fn export(config: &Config, args: &ExportArgs) -> anyhow::Result<()> {
    check_local("--from", &args.from)?;
    check_local("--to", &args.to)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the Tokio runtime")?;
    runtime.block_on(async {
        let reader = Reader::new(ClickHouse::connect(&config.clickhouse).await?);
        let range = resolve_range(&reader, &args.from, &args.to, &args.tz).await?;
        let (dimensions, _) = reader.stored_dimensions(&args.site).await?;
        let mut total = 0;
        for granularity in Granularity::ALL {
            total += reader.export_count(&args.site, granularity, range.from, range.to).await?;
        }
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            indicatif::ProgressBar::new(total)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows {elapsed} (eta {eta})") {
            bar.set_style(style);
        }
        let stdout = std::io::stdout();
        let mut stream: Box<dyn std::io::Write> = Box::new(std::io::BufWriter::new(stdout.lock()));
        let mut header_written = false;
        let mut written = 0u64;
        for granularity in Granularity::ALL {
            if let Some(dir) = &args.out {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let extension = if args.format == ExportFormat::Csv { "csv" } else { "ndjson" };
                let safe: String = args
                    .site
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
                    .collect();
                let path = dir.join(format!("{safe}-{}.{extension}", granularity.name()));
                let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                stream = Box::new(std::io::BufWriter::new(file));
                header_written = false;
            }
            for dimension in &dimensions {
                let rows = reader.export_rows(&args.site, granularity, range.from, range.to, dimension).await?;
                for row in &rows {
                    write_export_row(&mut stream, args.format, row, &mut header_written)?;
                }
                written += rows.len() as u64;
                bar.inc(rows.len() as u64);
            }
            stream.flush().context("writing the export")?;
        }
        bar.finish_and_clear();
        eprintln!("gallop: exported {written} rows of {}", printable(&args.site));
        Ok(())
    })
}

fn write_export_row(
    out: &mut dyn std::io::Write,
    format: ExportFormat,
    row: &ExportRow,
    header_written: &mut bool,
) -> anyhow::Result<()> {
    match format {
        ExportFormat::Ndjson => writeln!(out, "{}", serde_json::to_string(row)?)?,
        ExportFormat::Csv => {
            if !*header_written {
                writeln!(out, "granularity,bucket,dimension,value,events,visitors,value_sum,value_count")?;
                *header_written = true;
            }
            writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                row.granularity,
                row.bucket,
                csv_field(&row.dimension),
                csv_field(&row.value),
                row.events,
                row.visitors,
                row.value_sum,
                row.value_count
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_day_crosses_months_years_and_leap_days() {
        for (date, expect) in [
            ("2026-11-23", Some("2026-11-24")),
            ("2026-11-30", Some("2026-12-01")),
            ("2026-12-31", Some("2027-01-01")),
            ("2028-02-28", Some("2028-02-29")),
            ("2026-02-28", Some("2026-03-01")),
            ("2100-02-28", Some("2100-03-01")),
            ("2026-02-29", None),
            ("2026-13-01", None),
            ("nope", None),
        ] {
            assert_eq!(next_day(date).as_deref(), expect, "{date}");
        }
    }

    #[test]
    fn impossible_dates_are_refused_with_what_was_typed() {
        for (text, expect) in [
            ("2026-02-30", Some("--from \"2026-02-30\": 2026-02 has no day 30 (it has 28 days)")),
            ("2028-02-29", None),
            ("2026-13-01", Some("there is no month 13")),
            ("2026-1-01", Some("expected YYYY-MM-DD")),
            ("2026-01-01 24:00:00", Some("HH:MM:SS within a day")),
            ("2026-01-01 23:59:59", None),
            ("yesterday", Some("expected YYYY-MM-DD")),
        ] {
            let got = check_local("--from", text).err().map(|e| e.to_string());
            match expect {
                None => assert_eq!(got, None, "{text}"),
                Some(want) => assert!(got.as_deref().is_some_and(|g| g.contains(want)), "{text}: {got:?}"),
            }
        }
    }

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
