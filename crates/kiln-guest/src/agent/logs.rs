//! The captured output of a supervised process: a bounded in-memory ring that readers can
//! follow.
//!
//! Positions are absolute byte offsets since the process was started, so a follower that falls
//! behind by more than the ring holds simply resumes at the oldest byte still held, instead of
//! receiving garbled data.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

/// How much output is kept per process.
pub const LOG_CAPACITY: usize = 1024 * 1024;

/// A bounded log with change notification.
#[derive(Debug)]
pub struct LogRing {
    state: Mutex<RingState>,
    changed: watch::Sender<()>,
}

#[derive(Debug)]
struct RingState {
    buf: VecDeque<u8>,
    /// Absolute offset of `buf[0]`.
    start: u64,
    capacity: usize,
    closed: bool,
}

/// What [`LogRing::read`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The bytes read; empty when the reader is at the end.
    pub data: Bytes,
    /// The offset to read from next.
    pub next: u64,
    /// No more output will ever be appended.
    pub closed: bool,
}

impl LogRing {
    /// An empty log holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> LogRing {
        LogRing {
            state: Mutex::new(RingState {
                buf: VecDeque::new(),
                start: 0,
                capacity,
                closed: false,
            }),
            changed: watch::channel(()).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RingState> {
        // The state stays consistent across a panic (each method finishes its edits before
        // anything can panic), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends output, dropping the oldest bytes beyond the capacity.
    pub fn append(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        {
            let mut state = self.lock();
            let keep = data.len().min(state.capacity);
            let skipped = data.len() - keep;
            state.start += skipped as u64;
            state.buf.extend(&data[skipped..]);
            let excess = state.buf.len().saturating_sub(state.capacity);
            state.buf.drain(..excess);
            state.start += excess as u64;
        }
        self.changed.send_replace(());
    }

    /// Marks the log as finished: followers end once they have read everything.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.send_replace(());
    }

    /// The offset of the oldest byte still held.
    pub fn start(&self) -> u64 {
        self.lock().start
    }

    /// The offset just past the newest byte.
    pub fn end(&self) -> u64 {
        let state = self.lock();
        state.start + state.buf.len() as u64
    }

    /// Reads at most `max` bytes from `offset` (or from the oldest byte held, if `offset` has
    /// been dropped already).
    pub fn read(&self, offset: u64, max: usize) -> LogChunk {
        let state = self.lock();
        let end = state.start + state.buf.len() as u64;
        let from = offset.clamp(state.start, end);
        let len = usize::try_from(end - from).unwrap_or(usize::MAX).min(max);
        let first = usize::try_from(from - state.start).unwrap_or(0);
        let data: Vec<u8> = state.buf.range(first..first + len).copied().collect();
        LogChunk {
            data: Bytes::from(data),
            next: from + len as u64,
            closed: state.closed,
        }
    }

    /// A receiver that wakes on every append and on close.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_bytes() {
        let ring = LogRing::new(8);
        ring.append(b"hello ");
        ring.append(b"world");
        let chunk = ring.read(0, 100);
        assert_eq!(&chunk.data[..], b"lo world");
        assert_eq!((chunk.next, chunk.closed), (11, false));
        assert_eq!((ring.start(), ring.end()), (3, 11));

        // A reader at the end gets nothing until more arrives.
        assert!(ring.read(11, 100).data.is_empty());
        ring.append(b"0123456789abc");
        let chunk = ring.read(11, 4);
        // Offsets 11..16 were dropped: the reader resumes at the oldest byte held.
        assert_eq!(&chunk.data[..], b"5678");
        assert_eq!(chunk.next, 20);
        ring.close();
        assert!(ring.read(24, 4).closed);
    }

    #[tokio::test]
    async fn followers_are_woken() {
        let ring = std::sync::Arc::new(LogRing::new(64));
        let mut rx = ring.subscribe();
        let writer = ring.clone();
        tokio::spawn(async move { writer.append(b"line\n") });
        rx.changed().await.expect("sender alive");
        assert_eq!(&ring.read(0, 64).data[..], b"line\n");
    }
}
