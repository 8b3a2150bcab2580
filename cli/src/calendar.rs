//! Local dates and times as people type them (`YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS`),
//! checked against the calendar (the `time` crate's) before ClickHouse is asked to place
//! them in a zone.

use time::{Date, Month, Time};

use crate::error::CliError;

/// A local date, with a time of day or without (then: midnight, or for `--to` the whole
/// day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalTime {
    date: Date,
    time: Option<Time>,
}

impl LocalTime {
    /// Reads `text` as typed for `flag`: the shape, a month and day the calendar has, a
    /// time of day that exists.
    pub(crate) fn parse(flag: &'static str, text: &str) -> Result<Self, CliError> {
        let bad = |reason: String| CliError::BadTime { flag, text: text.to_owned(), reason };
        let shape = || bad("expected YYYY-MM-DD or \"YYYY-MM-DD HH:MM:SS\"".to_owned());
        let (date, time) = match text.split_once(' ') {
            Some((d, t)) => (d, Some(t)),
            None => (text, None),
        };
        let number = |part: &str, len: usize| {
            (part.len() == len && part.bytes().all(|b| b.is_ascii_digit())).then(|| part.parse::<u16>().ok()).flatten()
        };
        let parts: Vec<&str> = date.split('-').collect();
        let [y, m, d] = parts[..] else { return Err(shape()) };
        let (Some(year), Some(month), Some(day)) = (number(y, 4), number(m, 2), number(d, 2)) else {
            return Err(shape());
        };
        let month_of_year = u8::try_from(month)
            .ok()
            .and_then(|m| Month::try_from(m).ok())
            .ok_or_else(|| bad(format!("there is no month {month}")))?;
        let year = i32::from(year);
        let date = u8::try_from(day)
            .ok()
            .and_then(|d| Date::from_calendar_date(year, month_of_year, d).ok())
            .ok_or_else(|| {
                let days = month_of_year.length(year);
                bad(format!("{year:04}-{month:02} has no day {day} (it has {days} days)"))
            })?;
        let time = match time {
            None => None,
            Some(time) => {
                let parts: Vec<&str> = time.split(':').collect();
                let [h, mi, s] = parts[..] else { return Err(bad("the time must be HH:MM:SS".to_owned())) };
                let within_day = || bad("the time must be HH:MM:SS within a day".to_owned());
                let (Some(h), Some(mi), Some(s)) = (number(h, 2), number(mi, 2), number(s, 2)) else {
                    return Err(within_day());
                };
                let hms = |v: u16| u8::try_from(v).ok();
                let (Some(h), Some(mi), Some(s)) = (hms(h), hms(mi), hms(s)) else { return Err(within_day()) };
                Some(Time::from_hms(h, mi, s).map_err(|_| within_day())?)
            }
        };
        Ok(Self { date, time })
    }

    /// The start of this local time, as ClickHouse reads it (`2026-11-23` or `2026-11-23
    /// 10:00:00`).
    pub(crate) fn start(&self) -> String {
        match self.time {
            None => ymd(self.date),
            Some(time) => format!("{} {:02}:{:02}:{:02}", ymd(self.date), time.hour(), time.minute(), time.second()),
        }
    }

    /// The end of a range ending here: a whole date is included (its next day, midnight),
    /// a time is excluded. `None` past the calendar's last day.
    pub(crate) fn end(&self) -> Option<String> {
        match self.time {
            None => self.date.next_day().map(ymd),
            Some(_) => Some(self.start()),
        }
    }
}

fn ymd(date: Date) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_to_date_ends_at_the_next_midnight_across_months_years_and_leap_days() {
        for (to, end) in [
            ("2026-11-23", "2026-11-24"),
            ("2026-11-30", "2026-12-01"),
            ("2026-12-31", "2027-01-01"),
            ("2028-02-28", "2028-02-29"),
            ("2026-02-28", "2026-03-01"),
            ("2100-02-28", "2100-03-01"),
            ("2026-11-23 10:00:00", "2026-11-23 10:00:00"),
        ] {
            let local = LocalTime::parse("--to", to).unwrap_or_else(|e| panic!("{to}: {e}"));
            assert_eq!(local.end().as_deref(), Some(end), "{to}");
        }
        assert_eq!(
            LocalTime::parse("--from", "2026-11-23 07:05:09").map(|l| l.start()).ok().as_deref(),
            Some("2026-11-23 07:05:09")
        );
    }

    #[test]
    fn impossible_dates_are_refused_with_what_was_typed() {
        for (text, expect) in [
            ("2026-02-30", Some("--from \"2026-02-30\": 2026-02 has no day 30 (it has 28 days)")),
            ("2026-02-29", Some("2026-02 has no day 29 (it has 28 days)")),
            ("2028-02-29", None),
            ("2026-04-31", Some("2026-04 has no day 31 (it has 30 days)")),
            ("2026-01-00", Some("2026-01 has no day 0")),
            ("2026-13-01", Some("there is no month 13")),
            ("2026-00-01", Some("there is no month 0")),
            ("2026-1-01", Some("expected YYYY-MM-DD")),
            ("2026-01-01 24:00:00", Some("HH:MM:SS within a day")),
            ("2026-01-01 12:60:00", Some("HH:MM:SS within a day")),
            ("2026-01-01 12:00", Some("the time must be HH:MM:SS")),
            ("2026-01-01 23:59:59", None),
            ("yesterday", Some("expected YYYY-MM-DD")),
            ("nope", Some("expected YYYY-MM-DD")),
        ] {
            let got = LocalTime::parse("--from", text).err().map(|e| e.to_string());
            match expect {
                None => assert_eq!(got, None, "{text}"),
                Some(want) => assert!(got.as_deref().is_some_and(|g| g.contains(want)), "{text}: {got:?}"),
            }
        }
    }
}
