//! A timeout moved on every request without touching the timer wheel.

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// A connection's wait limit (for the next head, or for an answer), moved later on every
/// request and reached only now and then. Moving it records the new time only; the timer keeps
/// its earlier one, and when that fires it is moved on to the recorded time if that has not
/// come yet. Resetting a tokio timer per request cost a lock and two timer-wheel updates.
pub(crate) struct Deadline {
    timer: Pin<Box<Sleep>>,
    at: Instant,
}

impl Deadline {
    pub(crate) fn new(at: Instant) -> Deadline {
        Deadline {
            timer: Box::pin(tokio::time::sleep_until(at)),
            at,
        }
    }

    /// Moves the deadline to `at`.
    pub(crate) fn set(&mut self, at: Instant) {
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
        self.at = at;
    }

    /// Resolves once the deadline has passed.
    pub(crate) async fn passed(&mut self) {
        loop {
            self.timer.as_mut().await;
            if self.timer.deadline() >= self.at {
                return;
            }
            let at = self.at;
            self.timer.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_moved_deadline_is_kept_and_an_unmoved_one_passes() {
        let start = Instant::now();
        let mut deadline = Deadline::new(start + Duration::from_secs(10));
        // Moved later twice before the first time comes: it passes at the last one.
        tokio::time::advance(Duration::from_secs(4)).await;
        deadline.set(start + Duration::from_secs(14));
        tokio::time::advance(Duration::from_secs(4)).await;
        deadline.set(start + Duration::from_secs(18));
        deadline.passed().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(18));

        // Moved earlier: it passes at the earlier time.
        deadline.set(Instant::now() + Duration::from_secs(30));
        deadline.set(Instant::now() + Duration::from_secs(5));
        let before = Instant::now();
        deadline.passed().await;
        assert_eq!(Instant::now() - before, Duration::from_secs(5));
    }
}
