//! Accepting connections and spreading them over the workers.
//!
//! Workers that each accept on the shared socket do not share the load: the first to wake
//! takes every connection queued at that moment, so a client that opens 16 connections at
//! once gets all 16 served by one worker, and keep-alive connections stay where they
//! landed. So one task accepts, and hands each connection to the worker with the fewest
//! open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;

use super::shedding::Shedding;

/// A connection on its way to the worker that serves it.
pub struct Accepted {
    pub stream: std::net::TcpStream,
    /// Counts the connection as open on its worker until dropped.
    pub open: OpenConnection,
    /// Counts the connection against its client's address until dropped.
    pub address: Option<AddressSlot>,
}

/// Open connections per client address, so one client cannot take every descriptor.
#[derive(Debug)]
pub struct AddressCap {
    /// The most connections one address may hold; 0 = no cap.
    limit: usize,
    cap_loopback: bool,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressCap {
    pub fn new(limit: usize, cap_loopback: bool) -> Self {
        Self {
            limit,
            cap_loopback,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `address`: `Ok(None)` when the address is not
    /// capped, `Err(())` when it holds its limit already.
    pub fn admit(&'static self, address: IpAddr) -> Result<Option<AddressSlot>, ()> {
        if self.limit == 0 || (address.is_loopback() && !self.cap_loopback) {
            return Ok(None);
        }
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= self.limit {
            return Err(());
        }
        *count += 1;
        Ok(Some(AddressSlot { cap: self, address }))
    }
}

/// One connection counted against its client's address; dropping it gives the slot back.
#[derive(Debug)]
pub struct AddressSlot {
    cap: &'static AddressCap,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .cap
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            // Gone once unused, so addresses that come and go cannot grow the map.
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// Open connections per worker.
#[derive(Debug)]
pub struct Balancer {
    open: Box<[AtomicUsize]>,
    /// Connections closed at once because `max_connections` were open.
    refused: AtomicU64,
    /// Where the next search starts, so ties go round the workers in turn.
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(workers: usize) -> Self {
        Self {
            open: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            refused: AtomicU64::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// Of the workers `serving` accepts, the one with the fewest open connections, counted
    /// as serving one more; `None` when it accepts none.
    pub fn assign(&'static self, serving: impl Fn(usize) -> bool) -> Option<OpenConnection> {
        let workers = self.open.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % workers;
        let worker = (start..start + workers)
            .map(|turn| turn % workers)
            .filter(|&worker| serving(worker))
            .min_by_key(|&worker| self.open[worker].load(Ordering::Relaxed))?;
        self.open[worker].fetch_add(1, Ordering::Relaxed);
        Some(OpenConnection {
            balancer: self,
            worker,
        })
    }

    /// Open connections per worker, for `/metrics`.
    pub fn open_connections(&self) -> impl Iterator<Item = usize> + '_ {
        self.open.iter().map(|open| open.load(Ordering::Relaxed))
    }

    /// Connections refused so far, for `/metrics`.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
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
/// Past `cap` open connections the oldest one still waiting for a whole request is closed
/// to make room (see [`Shedding`]); with none, or past its address's cap, a new connection is
/// closed at once, so the descriptors left serve the connections already open.
pub async fn hand_out_connections(
    listener: TcpListener,
    balancer: &'static Balancer,
    addresses: &'static AddressCap,
    shedding: &'static Shedding,
    workers: Vec<UnboundedSender<Accepted>>,
    cap: usize,
) {
    let mut workers: Vec<Option<_>> = workers.into_iter().map(Some).collect();
    loop {
        let Some((stream, peer)) = accept(&listener).await else {
            continue;
        };
        let address = match addresses.admit(peer) {
            Ok(slot)
                if balancer.open_connections().sum::<usize>() < cap || shedding.make_room() =>
            {
                slot
            }
            _ => {
                balancer.refused.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                continue;
            }
        };
        if hand_over(stream, address, balancer, &mut workers).is_none() {
            tracing::error!("every worker has stopped; no longer accepting connections");
            return;
        }
    }
}

/// The next connection and its client's address, ready to be registered with a worker's
/// runtime.
async fn accept(listener: &TcpListener) -> Option<(std::net::TcpStream, IpAddr)> {
    let (stream, peer) = match listener.accept().await {
        Ok(accepted) => accepted,
        Err(error) => {
            pause_after_accept_error(&error).await;
            return None;
        }
    };
    // Small answers must not wait on Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let stream = stream
        .into_std()
        .inspect_err(|error| tracing::warn!("cannot hand over a connection: {error}"))
        .ok()?;
    Some((stream, peer.ip()))
}

/// Sends `stream` to the least busy worker still serving. A worker whose inbox has closed
/// is passed over from then on; `None` when no worker is left.
fn hand_over(
    mut stream: std::net::TcpStream,
    mut address: Option<AddressSlot>,
    balancer: &'static Balancer,
    workers: &mut [Option<UnboundedSender<Accepted>>],
) -> Option<()> {
    loop {
        let open = balancer.assign(|worker| workers[worker].is_some())?;
        let worker = open.worker();
        let inbox = workers[worker].as_ref()?;
        match inbox.send(Accepted {
            stream,
            open,
            address,
        }) {
            Ok(()) => return Some(()),
            Err(returned) => {
                tracing::error!("worker {worker} has stopped; the others take its share");
                workers[worker] = None;
                stream = returned.0.stream;
                address = returned.0.address;
            }
        }
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

    fn assign(balancer: &'static Balancer) -> OpenConnection {
        balancer.assign(|_| true).unwrap()
    }

    #[test]
    fn connections_opened_together_are_spread_evenly() {
        let balancer = balancer(2);
        let connections: Vec<_> = (0..16).map(|_| assign(balancer)).collect();
        assert_eq!(open(balancer), [8, 8]);
        drop(connections);
        assert_eq!(open(balancer), [0, 0]);
    }

    #[test]
    fn a_new_connection_goes_to_the_least_busy_worker() {
        let balancer = balancer(3);
        let mut connections: Vec<_> = (0..6).map(|_| assign(balancer)).collect();
        assert_eq!(open(balancer), [2, 2, 2]);
        // Worker 1 loses both of its connections; the next two go there.
        connections.retain(|connection| connection.worker() != 1);
        assert_eq!(open(balancer), [2, 0, 2]);
        let refill = [assign(balancer), assign(balancer)];
        assert!(refill.iter().all(|connection| connection.worker() == 1));
        assert_eq!(open(balancer), [2, 2, 2]);
    }

    #[test]
    fn ties_go_round_the_workers() {
        let balancer = balancer(3);
        let workers: Vec<usize> = (0..3).map(|_| assign(balancer).worker()).collect();
        // Each connection closes at once, so every pick is a three-way tie.
        assert_eq!(workers, [0, 1, 2]);
    }

    #[test]
    fn an_address_holds_at_most_its_cap_and_loopback_is_exempt_unless_asked() {
        let cap: &'static AddressCap = Box::leak(Box::new(AddressCap::new(2, false)));
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let slots = [cap.admit(remote).unwrap(), cap.admit(remote).unwrap()];
        assert!(cap.admit(remote).is_err(), "a third is refused");
        assert!(cap.admit("192.0.2.8".parse().unwrap()).unwrap().is_some());
        for _ in 0..5 {
            assert!(cap.admit("127.0.0.1".parse().unwrap()).unwrap().is_none());
        }
        drop(slots);
        assert!(
            cap.admit(remote).unwrap().is_some(),
            "closed ones give slots back"
        );
        assert_eq!(
            cap.open.lock().unwrap().len(),
            0,
            "unused addresses are forgotten"
        );

        let strict: &'static AddressCap = Box::leak(Box::new(AddressCap::new(1, true)));
        let _held = strict.admit("::1".parse().unwrap()).unwrap();
        assert!(strict.admit("::1".parse().unwrap()).is_err());
        let none: &'static AddressCap = Box::leak(Box::new(AddressCap::new(0, true)));
        assert!(none.admit(remote).unwrap().is_none(), "0 = no cap");
    }

    #[test]
    fn stopped_workers_are_passed_over() {
        let balancer = balancer(3);
        let serving = |worker| worker != 1;
        let connections: Vec<_> = (0..4).map(|_| balancer.assign(serving).unwrap()).collect();
        assert_eq!(open(balancer), [2, 0, 2]);
        assert!(balancer.assign(|_| false).is_none());
        drop(connections);
        assert_eq!(open(balancer), [0, 0, 0]);
    }

    #[tokio::test]
    async fn a_stopped_worker_loses_its_share_and_nothing_is_dropped() {
        let balancer = balancer(2);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stopped, _) = tokio::sync::mpsc::unbounded_channel();
        let (serving, mut inbox) = tokio::sync::mpsc::unbounded_channel();
        let addresses = Box::leak(Box::new(AddressCap::new(0, false)));
        tokio::spawn(hand_out_connections(
            listener,
            balancer,
            addresses,
            Box::leak(Box::new(Shedding::new(usize::MAX))),
            vec![stopped, serving],
            usize::MAX,
        ));
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(address).unwrap())
            .collect();
        let mut received = Vec::new();
        for _ in &clients {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), inbox.recv());
            let accepted = next.await.expect("a connection was lost").unwrap();
            assert_eq!(accepted.open.worker(), 1);
            received.push(accepted);
        }
        assert_eq!(open(balancer), [0, 3]);
    }
}
