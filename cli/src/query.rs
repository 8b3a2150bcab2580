//! `gallop query`: a site's headline numbers (visitors, visits, bounce rate, duration,
//! revenue per currency), a breakdown and a leaderboard for a range of local time in any
//! zone, as a table, JSON or CSV; `--realtime` for the visitors of the last five minutes.

use std::io::Write;

use clap::{Args, ValueEnum};
use gallop_config::Config;
use gallop_sink::{Reader, SinkError, TimeRange};

use crate::{
    calendar::LocalTime,
    error::CliError,
    render::{check_dimension, csv, csv_field, printable, table, Answer},
};

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people (control characters in values escaped).
    Table,
    /// One JSON document.
    Json,
    /// Comma-separated values (RFC 4180), one section per table.
    Csv,
}

/// Arguments of `gallop query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Site, as sent in events.
    #[arg(long)]
    pub site: String,
    /// Start: YYYY-MM-DD (midnight) or "YYYY-MM-DD HH:MM:SS", local to --tz.
    #[arg(long, required_unless_present = "realtime")]
    pub from: Option<String>,
    /// End: YYYY-MM-DD (that whole day included) or "YYYY-MM-DD HH:MM:SS" (excluded).
    #[arg(long, required_unless_present = "realtime")]
    pub to: Option<String>,
    /// IANA time zone of --from and --to, e.g. Europe/Berlin.
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// Break the numbers down by this dimension (page, source, country, session:entry_page,
    /// name~props.plan…); an unknown one is refused with the list of known ones.
    #[arg(long, value_name = "DIMENSION")]
    pub by: Option<String>,
    /// Show this leaderboard (referrer, props.<key>…).
    #[arg(long, value_name = "DIMENSION")]
    pub top: Option<String>,
    /// Rows in the breakdown and leaderboard.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Current visitors: visitors with an event in the last five minutes.
    #[arg(long, conflicts_with_all = ["from", "to", "by", "top"])]
    pub realtime: bool,
}

impl QueryArgs {
    /// Checks `--from` and `--to` against the calendar, before anything is asked of
    /// ClickHouse.
    pub fn check(&self) -> Result<(), CliError> {
        if let Some(from) = &self.from {
            LocalTime::parse("--from", from)?;
        }
        if let Some(to) = &self.to {
            LocalTime::parse("--to", to)?;
        }
        Ok(())
    }
}

/// Answers `args` from `reader` (dimensions checked against `config`'s rollups and what is
/// stored) and writes the answer to `out`; `now` (seconds since the epoch) places
/// `--realtime`'s five minutes.
pub async fn query(
    config: &Config,
    reader: &Reader,
    args: &QueryArgs,
    now: i64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let format = if args.json { Format::Json } else { args.format };
    let written = CliError::io("writing the answer");
    if args.realtime {
        let visitors = reader.current_visitors(&args.site, now).await?;
        let text = match format {
            Format::Json => format!("{}\n", serde_json::json!({ "site": args.site, "current_visitors": visitors })),
            Format::Csv => format!("site,current_visitors\n{},{visitors}\n", csv_field(&args.site)),
            Format::Table => format!("{}  current visitors (last 5 minutes): {visitors}\n", printable(&args.site)),
        };
        return out.write_all(text.as_bytes()).map_err(written);
    }
    let (Some(from), Some(to)) = (args.from.as_deref(), args.to.as_deref()) else {
        return Err(CliError::NoRange);
    };
    let range = resolve_range(reader, from, to, &args.tz).await?;
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
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&answer)? + "\n",
        Format::Csv => csv(&answer),
        Format::Table => table(&answer),
    };
    out.write_all(text.as_bytes()).map_err(written)
}

/// `[from, to)` in seconds for local times in `tz`, with messages that show what the user
/// typed: each checked against the calendar first, a whole `--to` date included, a
/// reversed range refused, an unknown zone named.
pub(crate) async fn resolve_range(reader: &Reader, from: &str, to: &str, tz: &str) -> Result<TimeRange, CliError> {
    let start = LocalTime::parse("--from", from)?.start();
    let end = LocalTime::parse("--to", to)?.end().ok_or_else(|| CliError::BadTime {
        flag: "--to",
        text: to.to_owned(),
        reason: "the last day the calendar has".to_owned(),
    })?;
    let epoch = |local: String| async move {
        match reader.local_to_epoch(&local, tz).await {
            Err(SinkError::Invalid { .. }) => Err(CliError::UnknownZone(tz.to_owned())),
            other => Ok(other?),
        }
    };
    let (start, end) = (epoch(start).await?, epoch(end).await?);
    if start >= end {
        return Err(CliError::EmptyRange { from: from.to_owned(), to: to.to_owned() });
    }
    TimeRange::new(start, end).map_err(|source| CliError::Range {
        from: from.to_owned(),
        to: to.to_owned(),
        source: Box::new(source),
    })
}
