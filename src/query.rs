//! `gallop query`: a site's headline numbers, a breakdown and a leaderboard for a time range
//! in any time zone, as a table or JSON.

use anyhow::Context as _;
use clap::Args;
use gallop_config::Config;
use gallop_sink::{Breakdown, ClickHouse, Headline, Leader, Reader, TimeRange};
use serde::Serialize;

/// Arguments of `gallop query`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// Site, as sent in events.
    #[arg(long)]
    site: String,
    /// Start: YYYY-MM-DD (midnight) or "YYYY-MM-DD HH:MM:SS", local to --tz.
    #[arg(long)]
    from: String,
    /// End: YYYY-MM-DD (that whole day included) or "YYYY-MM-DD HH:MM:SS" (excluded).
    #[arg(long)]
    to: String,
    /// IANA time zone of --from and --to, e.g. Europe/Berlin.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Break the numbers down by this dimension (path, source, country, name~props.plan…).
    #[arg(long, value_name = "DIMENSION")]
    by: Option<String>,
    /// Show this leaderboard (referrer, props.<key>…).
    #[arg(long, value_name = "DIMENSION")]
    top: Option<String>,
    /// Rows in the breakdown and leaderboard.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
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

/// The day after `date` (`YYYY-MM-DD`), or `None` if it is not a date.
fn next_day(date: &str) -> Option<String> {
    let mut parts = date.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
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

/// Runs `gallop query`.
pub(crate) fn run(config: &Config, args: &QueryArgs) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the Tokio runtime")?;
    runtime.block_on(async {
        let clickhouse = ClickHouse::connect(&config.clickhouse).await?;
        let reader = Reader::new(clickhouse);
        let from = reader.local_to_epoch(&args.from, &args.tz).await?;
        let to_local = if args.to.len() == 10 {
            next_day(&args.to).with_context(|| format!("--to {:?} is not a date", args.to))?
        } else {
            args.to.clone()
        };
        let to = reader.local_to_epoch(&to_local, &args.tz).await?;
        let range = TimeRange::new(from, to).with_context(|| format!("--from {:?} --to {:?}", args.from, args.to))?;
        let headline = reader.headline(&args.site, range).await?;
        let breakdown = match &args.by {
            Some(dimension) => Some(reader.breakdown(&args.site, range, dimension, args.limit).await?),
            None => None,
        };
        let leaderboard = match &args.top {
            Some(dimension) => Some(reader.leaderboard(&args.site, range, dimension, args.limit).await?),
            None => None,
        };
        let answer = Answer {
            site: &args.site,
            tz: &args.tz,
            from: &args.from,
            to: &args.to,
            range,
            headline,
            breakdown,
            leaderboard,
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            print!("{}", table(&answer));
        }
        Ok(())
    })
}

fn table(answer: &Answer<'_>) -> String {
    let mut out = format!(
        "{}  {} .. {}  ({})\n\n{:>12} {:>12} {:>12} {:>14}\n{:>12} {:>12} {:>12} {:>14.2}\n",
        answer.site,
        answer.from,
        answer.to,
        answer.tz,
        "visitors",
        "pageviews",
        "events",
        "value",
        answer.headline.visitors,
        answer.headline.pageviews,
        answer.headline.events,
        answer.headline.value
    );
    if let Some(breakdown) = &answer.breakdown {
        let width =
            breakdown.rows.iter().map(|r| r.value.chars().count()).max().unwrap_or(0).max(breakdown.dimension.len());
        out.push_str(&format!(
            "\n{:<width$} {:>12} {:>12} {:>14}\n",
            breakdown.dimension, "visitors", "events", "value"
        ));
        for row in &breakdown.rows {
            let value = if row.value.is_empty() { "(none)" } else { &row.value };
            out.push_str(&format!("{value:<width$} {:>12} {:>12} {:>14.2}\n", row.visitors, row.events, row.value_sum));
        }
    }
    if let Some(leaders) = &answer.leaderboard {
        let width = leaders.iter().map(|l| l.value.chars().count()).max().unwrap_or(0).max(6);
        out.push_str(&format!("\n{:<width$} {:>12} {:>12}\n", "top", "count", "± error"));
        for leader in leaders {
            out.push_str(&format!("{:<width$} {:>12} {:>12}\n", leader.value, leader.count, leader.error));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::next_day;

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
}
