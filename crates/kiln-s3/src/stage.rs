//! One stage of an upload's pipeline: a step run over blocks, in order, on the blocking pool.
//!
//! A stage holds a blocking thread only while blocks wait for it. A worker drains the queue and
//! returns its thread when the queue runs dry; the next block starts a new one. So a client
//! that trickles its body costs no thread between its packets, and many slow uploads cannot
//! take over the blocking pool the rest of the node depends on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// What a stage does to each block, with its state.
pub(crate) type Step<S, B> = fn(&mut S, &B) -> std::io::Result<()>;

/// A serial stage over blocks of type `B`, carrying state `S` from block to block.
pub(crate) struct Stage<S, B> {
    shared: Arc<Shared<S, B>>,
}

struct Shared<S, B> {
    inner: Mutex<Inner<S, B>>,
    /// Signalled whenever the worker takes a block, stops or fails. Only the stage's owner
    /// waits on it, one call at a time, so `notify_one`'s stored permit never loses a wake-up.
    changed: Notify,
    step: Step<S, B>,
    capacity: usize,
}

struct Inner<S, B> {
    queue: VecDeque<B>,
    /// With the stage while no worker runs; the worker carries it meanwhile.
    state: Option<S>,
    running: bool,
    /// Set once a step failed; its error is answered once, later calls get a generic one.
    failed: bool,
    error: Option<std::io::Error>,
}

impl<S, B> Inner<S, B> {
    fn failure(&mut self) -> Option<std::io::Error> {
        self.failed.then(|| {
            self.error
                .take()
                .unwrap_or_else(|| std::io::Error::other("an earlier block failed"))
        })
    }
}

impl<S: Send + 'static, B: Send + 'static> Stage<S, B> {
    /// A stage starting from `state`, queueing at most `capacity` blocks.
    pub(crate) fn new(state: S, step: Step<S, B>, capacity: usize) -> Stage<S, B> {
        Stage {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    queue: VecDeque::new(),
                    state: Some(state),
                    running: false,
                    failed: false,
                    error: None,
                }),
                changed: Notify::new(),
                step,
                capacity,
            }),
        }
    }

    /// Queues a block, waiting while the queue is full; answers the step's error once one has
    /// failed (later blocks are then dropped).
    pub(crate) async fn push(&mut self, block: B) -> std::io::Result<()> {
        let mut block = Some(block);
        loop {
            {
                let mut inner = self.shared.lock();
                if let Some(e) = inner.failure() {
                    return Err(e);
                }
                if inner.queue.len() < self.shared.capacity
                    && let Some(block) = block.take()
                {
                    inner.queue.push_back(block);
                    if !inner.running {
                        inner.running = true;
                        let shared = Arc::clone(&self.shared);
                        tokio::task::spawn_blocking(move || shared.drain());
                    }
                    return Ok(());
                }
            }
            self.shared.changed.notified().await;
        }
    }

    /// Waits until every queued block has been through the step, and answers the state.
    pub(crate) async fn finish(self) -> std::io::Result<S> {
        loop {
            {
                let mut inner = self.shared.lock();
                if let Some(e) = inner.failure() {
                    return Err(e);
                }
                if !inner.running && inner.queue.is_empty() {
                    return inner
                        .state
                        .take()
                        .ok_or_else(|| std::io::Error::other("the stage has no state"));
                }
            }
            self.shared.changed.notified().await;
        }
    }
}

#[cfg(test)]
impl<S, B> Stage<S, B> {
    /// Whether a worker holds a thread.
    fn running(&self) -> bool {
        self.shared.lock().running
    }
}

impl<S, B> Drop for Stage<S, B> {
    /// An abandoned stage drops its queue, so its worker stops after the block in hand.
    fn drop(&mut self) {
        self.shared.lock().queue.clear();
    }
}

impl<S, B> Shared<S, B> {
    fn lock(&self) -> MutexGuard<'_, Inner<S, B>> {
        // The step runs outside the lock, so a poisoned lock still guards consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The worker: runs the step over queued blocks until the queue is empty or a step fails.
    fn drain(&self) {
        let Some(mut state) = self.lock().state.take() else {
            return; // only a running worker takes the state, and there is one at a time
        };
        // A step that panics fails the stage instead of leaving it "running" for ever.
        let on_panic = FailOnPanic(self);
        loop {
            let block = {
                let mut inner = self.lock();
                match inner.queue.pop_front() {
                    Some(block) => block,
                    None => {
                        inner.state = Some(state);
                        inner.running = false;
                        drop(inner);
                        self.changed.notify_one();
                        std::mem::forget(on_panic);
                        return;
                    }
                }
            };
            self.changed.notify_one();
            if let Err(e) = (self.step)(&mut state, &block) {
                std::mem::forget(on_panic);
                self.fail(e);
                return;
            }
        }
    }

    fn fail(&self, error: std::io::Error) {
        let mut inner = self.lock();
        inner.failed = true;
        inner.error = Some(error);
        inner.queue.clear();
        inner.running = false;
        drop(inner);
        self.changed.notify_one();
    }
}

/// Fails its stage when dropped, which only happens while a step unwinds.
struct FailOnPanic<'a, S, B>(&'a Shared<S, B>);

impl<S, B> Drop for FailOnPanic<'_, S, B> {
    fn drop(&mut self) {
        self.0.fail(std::io::Error::other("a body worker panicked"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(seen: &mut Vec<u32>, block: &u32) -> std::io::Result<()> {
        seen.push(*block);
        Ok(())
    }

    fn fail_on_three(seen: &mut Vec<u32>, block: &u32) -> std::io::Result<()> {
        if *block == 3 {
            return Err(std::io::Error::other("three"));
        }
        append(seen, block)
    }

    #[tokio::test]
    async fn blocks_go_through_in_order_across_idle_gaps() {
        let mut stage = Stage::new(Vec::new(), append, 2);
        for block in 0..50 {
            stage.push(block).await.expect("push");
            if block % 7 == 0 {
                // A client pausing: the worker runs dry and gives its thread back.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                assert!(!stage.running(), "an idle stage holds no thread");
            }
        }
        assert_eq!(
            stage.finish().await.expect("finish"),
            (0..50).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_failed_step_is_reported_and_stops_the_stage() {
        let mut stage = Stage::new(Vec::new(), fail_on_three, 64);
        let mut pushed = Ok(());
        for block in 0..10 {
            pushed = stage.push(block).await;
            if pushed.is_err() {
                break;
            }
        }
        let outcome = match pushed {
            Err(e) => Err(e),
            Ok(()) => stage.finish().await.map(|_| ()),
        };
        assert_eq!(outcome.expect_err("failed").to_string(), "three");
    }

    fn panic_on_two(seen: &mut Vec<u32>, block: &u32) -> std::io::Result<()> {
        assert_ne!(*block, 2, "a step that panics");
        append(seen, block)
    }

    #[tokio::test]
    async fn a_step_that_panics_fails_the_stage_instead_of_hanging_it() {
        let mut stage = Stage::new(Vec::new(), panic_on_two, 64);
        for block in 0..3 {
            stage.push(block).await.expect("queued before the panic");
        }
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), stage.finish())
            .await
            .expect("finish answers");
        assert_eq!(
            outcome.expect_err("failed").to_string(),
            "a body worker panicked"
        );
    }
}
