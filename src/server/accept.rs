//! Accepting connections and spreading them over the workers.
//!
//! Workers that each accept on the shared socket do not share the load: the first to wake
//! takes every connection queued at that moment, so a client that opens 16 connections at
//! once gets all 16 served by one worker, and keep-alive connections stay where they
//! landed. So one task accepts, and hands each connection to the worker with the fewest
//! open.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;

/// A connection on its way to the worker that serves it.
pub struct Accepted {
    pub stream: std::net::TcpStream,
    /// Counts the connection as open on its worker until dropped.
    pub open: OpenConnection,
}

/// Open connections per worker.
#[derive(Debug)]
pub struct Balancer {
    open: Box<[AtomicUsize]>,
    /// Where the next search starts, so ties go round the workers in turn.
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(workers: usize) -> Self {
        Self {
            open: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The worker with the fewest open connections, counted as serving one more.
    pub fn assign(&'static self) -> OpenConnection {
        let workers = self.open.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % workers;
        let worker = (start..start + workers)
            .map(|turn| turn % workers)
            .min_by_key(|&worker| self.open[worker].load(Ordering::Relaxed))
            .expect("there is at least one worker");
        self.open[worker].fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            balancer: self,
            worker,
        }
    }

    /// Open connections per worker, for `/metrics`.
    pub fn open_connections(&self) -> impl Iterator<Item = usize> + '_ {
        self.open.iter().map(|open| open.load(Ordering::Relaxed))
    }
}

/// One open connection of one worker; dropping it closes the count.
#[derive(Debug)]
pub struct OpenConnection {
    balancer: &'static Balancer,
    worker: usize,
}

impl OpenConnection {
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.balancer.open[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts until dropped (which closes the socket), handing each connection to a worker.
pub async fn hand_out_connections(
    listener: TcpListener,
    balancer: &'static Balancer,
    workers: Vec<UnboundedSender<Accepted>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                pause_after_accept_error(&error).await;
                continue;
            }
        };
        // Small answers must not wait on Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        // The worker registers it with its own runtime.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!("cannot hand over a connection: {error}");
                continue;
            }
        };
        let open = balancer.assign();
        // A worker that has stopped drops the connection, and with it the count.
        let _ = workers[open.worker()].send(Accepted { stream, open });
    }
}

/// Out of file descriptors and the like: accepting again at once would spin.
async fn pause_after_accept_error(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) {
        return;
    }
    tracing::error!("cannot accept a connection: {error}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(workers: usize) -> &'static Balancer {
        Box::leak(Box::new(Balancer::new(workers)))
    }

    fn open(balancer: &Balancer) -> Vec<usize> {
        balancer.open_connections().collect()
    }

    #[test]
    fn connections_opened_together_are_spread_evenly() {
        let balancer = balancer(2);
        let connections: Vec<_> = (0..16).map(|_| balancer.assign()).collect();
        assert_eq!(open(balancer), [8, 8]);
        drop(connections);
        assert_eq!(open(balancer), [0, 0]);
    }

    #[test]
    fn a_new_connection_goes_to_the_least_busy_worker() {
        let balancer = balancer(3);
        let mut connections: Vec<_> = (0..6).map(|_| balancer.assign()).collect();
        assert_eq!(open(balancer), [2, 2, 2]);
        // Worker 1 loses both of its connections; the next two go there.
        connections.retain(|connection| connection.worker() != 1);
        assert_eq!(open(balancer), [2, 0, 2]);
        let refill = [balancer.assign(), balancer.assign()];
        assert!(refill.iter().all(|connection| connection.worker() == 1));
        assert_eq!(open(balancer), [2, 2, 2]);
    }

    #[test]
    fn ties_go_round_the_workers() {
        let balancer = balancer(3);
        let workers: Vec<usize> = (0..3).map(|_| balancer.assign().worker()).collect();
        // Each connection closes at once, so every pick is a three-way tie.
        assert_eq!(workers, [0, 1, 2]);
    }
}
