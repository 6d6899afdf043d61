//! Spreading connections evenly over the workers.
//!
//! Every worker accepts on the same listening socket and the kernel hands a new connection to
//! whichever is waiting first, so a burst of keep-alive connections can all land on one worker
//! while the others idle (measured: all 32 of wrk's connections on one of two workers, run
//! after run). A worker that accepts a connection while another serves fewer hands it over to
//! that one; when the counts are level it keeps it, so a balanced load pays nothing extra.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// The live connection count of every worker, and each worker's inbox for connections handed
/// over to it.
pub(crate) struct Balance {
    live: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handed>]>,
}

/// A connection on its way to another worker, counted there already.
pub(crate) struct Handed {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) remote: SocketAddr,
    /// It came to the TLS listener: the handshake is still to be done.
    pub(crate) tls: bool,
    pub(crate) live: Live,
}

/// One connection in a worker's count; dropping it (when the connection ends) takes it out.
pub(crate) struct Live {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.balance.live[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a newly accepted connection is served.
pub(crate) enum Placed {
    /// By the worker that accepted it.
    Here(Live),
    /// By this other worker, which has fewer connections.
    There(usize, Live),
}

impl Balance {
    /// A balance for `workers` workers, and each worker's inbox, in worker order.
    pub(crate) fn new(workers: usize) -> (Arc<Balance>, Vec<mpsc::UnboundedReceiver<Handed>>) {
        let (inboxes, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let live = (0..workers).map(|_| AtomicUsize::new(0)).collect();
        let balance = Balance {
            live,
            inboxes: Vec::into_boxed_slice(inboxes),
        };
        (Arc::new(balance), receivers)
    }

    /// Counts a connection that `worker` has just accepted, for the worker that should serve
    /// it. The counts are read without a lock: two workers placing at once may both keep
    /// theirs, which the next connections even out.
    pub(crate) fn place(self: &Arc<Self>, worker: usize) -> Placed {
        let here = self.live[worker].load(Ordering::Relaxed);
        let fewest = (0..self.live.len())
            .min_by_key(|&other| self.live[other].load(Ordering::Relaxed))
            .filter(|&other| self.live[other].load(Ordering::Relaxed) < here);
        let serving = fewest.unwrap_or(worker);
        self.live[serving].fetch_add(1, Ordering::Relaxed);
        let live = Live {
            balance: Arc::clone(self),
            worker: serving,
        };
        match fewest {
            Some(other) => Placed::There(other, live),
            None => Placed::Here(live),
        }
    }

    /// Sends a connection to the worker it was placed on. If that worker has already stopped
    /// (shutdown), the connection is closed, as one arriving after the listener closed would be.
    pub(crate) fn hand_over(&self, to: usize, handed: Handed) {
        let _ = self.inboxes[to].send(handed);
    }

    #[cfg(test)]
    fn counts(&self) -> Vec<usize> {
        self.live
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(placed: Placed) -> Live {
        match placed {
            Placed::Here(live) | Placed::There(_, live) => live,
        }
    }

    #[test]
    fn a_burst_on_one_worker_is_spread_over_all() {
        let (balance, _inboxes) = Balance::new(3);
        let mut kept = Vec::new();
        let mut handed_to = Vec::new();
        for _ in 0..9 {
            match balance.place(0) {
                Placed::Here(live) => kept.push(live),
                Placed::There(to, live) => {
                    handed_to.push(to);
                    kept.push(live);
                }
            }
        }
        assert_eq!(balance.counts(), [3, 3, 3]);
        assert_eq!(
            handed_to.len(),
            6,
            "only connections that even the load move"
        );
        assert!(handed_to.iter().all(|&to| to != 0));
    }

    #[test]
    fn level_counts_keep_the_connection_where_it_was_accepted() {
        let (balance, _inboxes) = Balance::new(2);
        let first = keep(balance.place(1));
        assert!(matches!(balance.place(0), Placed::Here(_)));
        drop(first);
        assert_eq!(
            balance.counts(),
            [0, 0],
            "ended connections leave the count"
        );
    }

    #[test]
    fn the_worker_left_with_fewer_after_closes_gets_the_next() {
        let (balance, _inboxes) = Balance::new(2);
        let mut accepted: Vec<Live> = (0..2).map(|_| keep(balance.place(0))).collect();
        assert_eq!(balance.counts(), [1, 1]);
        accepted.retain(|live| live.worker == 0);
        assert!(matches!(balance.place(0), Placed::There(1, _)));
    }

    #[tokio::test]
    async fn a_handed_connection_arrives_counted_and_whole() -> std::io::Result<()> {
        let (balance, mut inboxes) = Balance::new(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let _own = keep(balance.place(0));
        // Worker 0 accepts the next connection too; worker 1 has fewer, so it is handed over.
        let accept_and_hand_over = || -> std::io::Result<usize> {
            let (stream, remote) = listener.accept()?;
            let Placed::There(to, live) = balance.place(0) else {
                panic!("worker 1 has fewer connections");
            };
            balance.hand_over(
                to,
                Handed {
                    stream,
                    remote,
                    tls: false,
                    live,
                },
            );
            Ok(to)
        };

        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let to = accept_and_hand_over()?;
        let handed = inboxes[to].recv().await.expect("handed connection");
        assert_eq!(handed.remote, client.local_addr()?);
        assert_eq!(balance.counts(), [1, 1]);
        drop(handed);
        assert_eq!(balance.counts(), [1, 0]);

        // Handed to a worker that has stopped: closed, and out of the count.
        inboxes.truncate(0);
        let _second = std::net::TcpStream::connect(listener.local_addr()?)?;
        accept_and_hand_over()?;
        assert_eq!(balance.counts(), [1, 0]);
        Ok(())
    }
}
