//! What the scheduler remembers between passes: each job's parsed schedule and the first slot
//! after the one it last handled, so a pass over jobs that are not due costs a comparison each
//! instead of a parse and a search through the calendar.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use kiln_store::CronJobRecord;

use super::Schedule;

/// Per-job memory, keyed by job id.
#[derive(Default)]
pub(crate) struct Plan {
    jobs: HashMap<String, Planned>,
}

struct Planned {
    /// The expression and zone `schedule` was parsed from: an edited job is parsed again.
    expr: String,
    timezone: String,
    /// `None` when the stored schedule no longer parses (already logged once).
    schedule: Option<Schedule>,
    /// The `last_slot` that `next` was worked out from.
    after: DateTime<Utc>,
    /// The first slot after `after`; `None` when there is none.
    next: Option<DateTime<Utc>>,
}

impl Planned {
    fn new(job: &CronJobRecord) -> Planned {
        let schedule = match Schedule::parse(&job.schedule, &job.timezone) {
            Ok(schedule) => Some(schedule),
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "stored schedule no longer parses");
                None
            }
        };
        let next = schedule.as_ref().and_then(|s| s.next_after(job.last_slot));
        Planned {
            expr: job.schedule.clone(),
            timezone: job.timezone.clone(),
            schedule,
            after: job.last_slot,
            next,
        }
    }

    fn describes(&self, job: &CronJobRecord) -> bool {
        self.expr == job.schedule && self.timezone == job.timezone
    }
}

impl Plan {
    /// The job's latest slot at or before `now`, if it has not been handled yet. After
    /// downtime that is the latest missed slot alone.
    pub(crate) fn due_slot(
        &mut self,
        job: &CronJobRecord,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let planned = match self.jobs.get_mut(&job.id) {
            Some(planned) if planned.describes(job) => planned,
            _ => self
                .jobs
                .entry(job.id.clone())
                .insert_entry(Planned::new(job))
                .into_mut(),
        };
        let schedule = planned.schedule.as_ref()?;
        if planned.after != job.last_slot {
            planned.after = job.last_slot;
            planned.next = schedule.next_after(job.last_slot);
        }
        if planned.next? > now {
            return None;
        }
        schedule
            .latest_due(now)
            .filter(|slot| *slot > job.last_slot)
    }

    /// Forgets jobs that are gone.
    pub(crate) fn keep_only<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        let ids: HashSet<&str> = ids.into_iter().collect();
        self.jobs.retain(|id, _| ids.contains(id.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, schedule: &str, last_slot: DateTime<Utc>) -> CronJobRecord {
        CronJobRecord {
            id: id.to_owned(),
            org_id: "org".to_owned(),
            app_id: "app".to_owned(),
            name: id.to_owned(),
            schedule: schedule.to_owned(),
            timezone: "UTC".to_owned(),
            cmd: vec!["true".to_owned()],
            allow_overlap: false,
            timeout_s: 60,
            last_slot,
            created_at: last_slot,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("a valid test time")
            .with_timezone(&Utc)
    }

    /// What the plan must always agree with: parse and search from scratch.
    fn fresh(job: &CronJobRecord, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        Schedule::parse(&job.schedule, &job.timezone)
            .ok()?
            .latest_due(now)
            .filter(|slot| *slot > job.last_slot)
    }

    #[test]
    fn agrees_with_a_fresh_parse_pass_after_pass() {
        let mut plan = Plan::default();
        let mut record = job("j1", "*/5 * * * *", at("2026-01-01T00:00:00Z"));
        let mut now = at("2026-01-01T00:00:00Z");
        let mut claimed = Vec::new();
        // Every 40 s for an hour, claiming each due slot as the scheduler does.
        while now < at("2026-01-01T01:00:00Z") {
            let due = plan.due_slot(&record, now);
            assert_eq!(due, fresh(&record, now), "at {now}");
            if let Some(slot) = due {
                claimed.push(slot);
                record.last_slot = slot;
            }
            now += chrono::Duration::seconds(40);
        }
        assert_eq!(claimed.len(), 11, "00:05 through 00:55: {claimed:?}");
        assert_eq!(claimed[0], at("2026-01-01T00:05:00Z"));
    }

    #[test]
    fn downtime_yields_only_the_latest_missed_slot() {
        let mut plan = Plan::default();
        let record = job("j1", "* * * * *", at("2026-01-01T00:00:00Z"));
        assert_eq!(
            plan.due_slot(&record, at("2026-01-01T03:17:30Z")),
            Some(at("2026-01-01T03:17:00Z"))
        );
    }

    #[test]
    fn an_edited_schedule_is_parsed_again() {
        let mut plan = Plan::default();
        let mut record = job("j1", "0 0 1 1 *", at("2026-01-01T00:00:00Z"));
        let now = at("2026-01-01T00:10:30Z");
        assert_eq!(plan.due_slot(&record, now), None);
        record.schedule = "*/10 * * * *".to_owned();
        assert_eq!(
            plan.due_slot(&record, now),
            Some(at("2026-01-01T00:10:00Z"))
        );
        record.timezone = "Asia/Kolkata".to_owned(); // +05:30: the slots move by half an hour
        record.schedule = "0 * * * *".to_owned();
        assert_eq!(plan.due_slot(&record, now), None);
        assert_eq!(
            plan.due_slot(&record, at("2026-01-01T00:31:00Z")),
            Some(at("2026-01-01T00:30:00Z"))
        );
    }

    #[test]
    fn a_schedule_that_no_longer_parses_is_never_due_and_jobs_that_go_are_forgotten() {
        let mut plan = Plan::default();
        let broken = job("broken", "61 * * * *", at("2026-01-01T00:00:00Z"));
        let fine = job("fine", "* * * * *", at("2026-01-01T00:00:00Z"));
        let now = at("2026-01-01T05:00:00Z");
        assert_eq!(plan.due_slot(&broken, now), None);
        assert!(plan.due_slot(&fine, now).is_some());
        plan.keep_only(["fine"]);
        assert_eq!(plan.jobs.len(), 1);
        assert!(plan.jobs.contains_key("fine"));
    }
}
