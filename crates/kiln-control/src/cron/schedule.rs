//! Cron expressions read in a time zone: parsing with errors that name the wrong field, and
//! the slots they produce.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// Why a schedule or time zone was refused: the request field at fault and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ScheduleError {
    /// `schedule` or `timezone`.
    pub field: &'static str,
    /// What is wrong, naming the cron field.
    pub detail: String,
}

/// Field names and ranges of a 5-field expression; a 6-field one has seconds first.
const FIELDS: [(&str, &str); 6] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L or W"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT, # or L"),
];

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).build()
}

impl Schedule {
    /// Parses `expr` (5 fields, or 6 with seconds first, or an `@daily`-style alias) to be
    /// read in IANA time zone `timezone`.
    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let tz: Tz = timezone.parse().map_err(|_| ScheduleError {
            field: "timezone",
            detail: format!(
                "`{timezone}` is not an IANA time zone: use a name such as `UTC` or `Europe/Berlin`"
            ),
        })?;
        let expr = expr.trim();
        let cron = parser().parse(expr).map_err(|err| ScheduleError {
            field: "schedule",
            detail: explain(expr, &err),
        })?;
        let schedule = Schedule { cron, tz };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(ScheduleError {
                field: "schedule",
                detail: format!(
                    "`{expr}` never matches a real date: check day-of-month against month"
                ),
            });
        }
        Ok(schedule)
    }

    /// The latest slot at or before `now`.
    pub fn latest_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&now.with_timezone(&self.tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first slot after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&now.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Says which field of a refused expression is wrong, by parsing each field alone.
fn explain(expr: &str, err: &croner::errors::CronError) -> String {
    if expr.starts_with('@') {
        return format!(
            "`{expr}` is not a known alias: use @yearly, @monthly, @weekly, @daily or @hourly"
        );
    }
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let fields = match parts.len() {
        5 => &FIELDS[1..],
        6 => &FIELDS[..],
        n => {
            return format!(
                "a schedule has 5 fields (minute hour day-of-month month day-of-week), or 6 with \
                 seconds first; `{expr}` has {n}"
            );
        }
    };
    for (i, part) in parts.iter().enumerate() {
        let probe: Vec<&str> = (0..parts.len())
            .map(|j| if j == i { *part } else { "*" })
            .collect();
        if parser().parse(&probe.join(" ")).is_err() {
            let (name, range) = fields[i];
            return format!("the {name} field `{part}` is invalid: it takes {range}, with * , - /");
        }
    }
    format!("`{expr}` is not a valid schedule: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(expr: &str, timezone: &str) -> ScheduleError {
        match Schedule::parse(expr, timezone) {
            Ok(_) => panic!("`{expr}` in {timezone} should be refused"),
            Err(e) => e,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("timestamp")
    }

    #[test]
    fn errors_name_the_wrong_field() {
        let err = refused("*/5 25 * * *", "UTC");
        assert_eq!(err.field, "schedule");
        assert!(err.detail.contains("hour field `25`"), "{}", err.detail);
        let err = refused("75 * * * * *", "UTC");
        assert!(err.detail.contains("second field"), "{}", err.detail);
        let err = refused("0 0 * FOO *", "UTC");
        assert!(err.detail.contains("month field `FOO`"), "{}", err.detail);
        let err = refused("* * *", "UTC");
        assert!(err.detail.contains("has 3"), "{}", err.detail);
        let err = refused("@sometimes", "UTC");
        assert!(err.detail.contains("alias"), "{}", err.detail);
        let err = refused("0 0 31 2 *", "UTC");
        assert!(err.detail.contains("never matches"), "{}", err.detail);
        let err = refused("* * * * *", "Mars/Olympus");
        assert_eq!(err.field, "timezone");
    }

    #[test]
    fn slots_follow_the_time_zone() {
        let daily = Schedule::parse("0 9 * * *", "Europe/Berlin").expect("valid");
        // 09:00 in Berlin is 08:00 UTC in winter.
        assert_eq!(
            daily.next_after(at("2026-12-04T07:00:00Z")),
            Some(at("2026-12-04T08:00:00Z"))
        );
        assert_eq!(
            daily.latest_due(at("2026-12-04T07:00:00Z")),
            Some(at("2026-12-03T08:00:00Z"))
        );
        let utc = Schedule::parse("@daily", "UTC").expect("alias");
        assert_eq!(
            utc.next_after(at("2026-12-04T07:00:00Z")),
            Some(at("2026-12-05T00:00:00Z"))
        );
    }

    #[test]
    fn seconds_schedules_and_the_latest_missed_slot() {
        let every_two = Schedule::parse("*/2 * * * * *", "UTC").expect("valid");
        assert_eq!(
            every_two.latest_due(at("2026-12-04T07:00:03.500Z")),
            Some(at("2026-12-04T07:00:02Z"))
        );
        // After a long outage only the latest slot is due, not every one missed.
        let five = Schedule::parse("*/5 * * * *", "UTC").expect("valid");
        assert_eq!(
            five.latest_due(at("2026-12-04T10:07:00Z")),
            Some(at("2026-12-04T10:05:00Z"))
        );
    }
}
