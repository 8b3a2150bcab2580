//! `gallop export`: every rollup row of a site and range as CSV or NDJSON, one file per
//! granularity (or one stream), with a progress bar on a terminal.

use std::{
    io::{BufWriter, Write},
    path::PathBuf,
};

use clap::{Args, ValueEnum};
use gallop_sink::{ExportRow, Granularity, Reader};

use crate::{
    calendar::LocalTime,
    error::CliError,
    query::resolve_range,
    render::{csv_field, printable},
};

/// How `gallop export` writes rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// CSV with a header line.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

/// Arguments of `gallop export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Site, as sent in events.
    #[arg(long)]
    pub site: String,
    /// Start: YYYY-MM-DD or "YYYY-MM-DD HH:MM:SS", local to --tz.
    #[arg(long)]
    pub from: String,
    /// End: YYYY-MM-DD (that whole day included) or "YYYY-MM-DD HH:MM:SS" (excluded).
    #[arg(long)]
    pub to: String,
    /// IANA time zone of --from and --to.
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// Row format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// Directory to write one file per granularity into (`<site>-minute.csv`, …); without
    /// it, every row goes to standard output as one stream.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

impl ExportArgs {
    /// Checks `--from` and `--to` against the calendar, before anything is asked of
    /// ClickHouse.
    pub fn check(&self) -> Result<(), CliError> {
        LocalTime::parse("--from", &self.from)?;
        LocalTime::parse("--to", &self.to)?;
        Ok(())
    }
}

/// Writes every rollup row of the site whose bucket lies in the range, at minute, hour and
/// day, merged, into files under `--out` or else to `out`; a progress bar on stderr when
/// `progress`. Returns the rows written.
pub async fn export(reader: &Reader, args: &ExportArgs, out: &mut dyn Write, progress: bool) -> Result<u64, CliError> {
    let range = resolve_range(reader, &args.from, &args.to, &args.tz).await?;
    let (dimensions, _) = reader.stored_dimensions(&args.site).await?;
    let mut total = 0;
    for granularity in Granularity::ALL {
        total += reader.export_count(&args.site, granularity, range.from, range.to).await?;
    }
    let bar = if progress { indicatif::ProgressBar::new(total) } else { indicatif::ProgressBar::hidden() };
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows {elapsed} (eta {eta})") {
        bar.set_style(style);
    }
    let mut written = 0u64;
    let mut stream: Box<dyn Write + '_> = Box::new(BufWriter::new(out));
    let mut header_written = false;
    for granularity in Granularity::ALL {
        if let Some(dir) = &args.out {
            std::fs::create_dir_all(dir).map_err(CliError::io(format!("creating {}", dir.display())))?;
            let path = dir.join(file_name(&args.site, granularity, args.format));
            let file = std::fs::File::create(&path).map_err(CliError::io(format!("creating {}", path.display())))?;
            stream = Box::new(BufWriter::new(file));
            header_written = false;
        }
        for dimension in &dimensions {
            let rows = reader.export_rows(&args.site, granularity, range.from, range.to, dimension).await?;
            for row in &rows {
                write_row(&mut stream, args.format, row, &mut header_written)?;
            }
            written += rows.len() as u64;
            bar.inc(rows.len() as u64);
        }
        stream.flush().map_err(CliError::io("writing the export"))?;
    }
    bar.finish_and_clear();
    eprintln!("gallop: exported {written} rows of {}", printable(&args.site));
    Ok(written)
}

/// `<site>-<granularity>.<csv|ndjson>`, the site's characters other than letters, digits,
/// `.` and `-` replaced by `_`.
fn file_name(site: &str, granularity: Granularity, format: ExportFormat) -> String {
    let extension = match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Ndjson => "ndjson",
    };
    let safe: String =
        site.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    format!("{safe}-{}.{extension}", granularity.name())
}

fn write_row(
    out: &mut dyn Write,
    format: ExportFormat,
    row: &ExportRow,
    header_written: &mut bool,
) -> Result<(), CliError> {
    let written = CliError::io("writing the export");
    match format {
        ExportFormat::Ndjson => writeln!(out, "{}", serde_json::to_string(row)?).map_err(written),
        ExportFormat::Csv => {
            if !*header_written {
                writeln!(out, "granularity,bucket,dimension,value,events,visitors,value_sum,value_count")
                    .map_err(CliError::io("writing the export"))?;
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
            )
            .map_err(written)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_keep_only_safe_characters() {
        assert_eq!(file_name("example.com", Granularity::Minute, ExportFormat::Csv), "example.com-minute.csv");
        assert_eq!(file_name("../x y/z", Granularity::Day, ExportFormat::Ndjson), ".._x_y_z-day.ndjson");
    }
}
