//! Slow and idle clients. A new connection may not take longer than
//! `client_first_byte_timeout` to send its first byte (10,000 silent sockets would otherwise
//! hold 10,000 descriptors for two minutes), nor longer than `client_timeout` to send a
//! request's headers once it has started to, nor sit idle between requests longer than
//! `client_idle_timeout`. A connection whose answer is streaming is none of these. Request
//! bodies that stall are the proxy's to time out.
//!
//! hyper's own header timer also runs while a keep-alive connection waits for its next
//! request, so it cannot tell the two limits apart. Here each connection notes its activity
//! as bytes move: a read while no request is in flight starts the clock on a request's head,
//! and hyper handing over the request stops it. Noting costs a copy of a coarse clock that
//! each worker advances on its timer tick, so I/O reads no clock of its own.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::shedding::Shedding;

/// The two limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The longest a request's headers may take once they have started to arrive.
    pub headers: Duration,
    /// The longest a connection may sit with no request and no byte either way.
    pub idle: Duration,
    /// The longest a new connection may take to send its first byte.
    pub first_byte: Duration,
}

/// Milliseconds since the worker started, advanced on its timer tick.
#[derive(Debug)]
pub struct CoarseClock {
    started: Instant,
    now_ms: AtomicU64,
}

impl CoarseClock {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            now_ms: AtomicU64::new(0),
        }
    }

    /// Reads the real clock into the coarse one.
    pub fn tick(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.now_ms.store(now, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// The real time on this clock, for the watchdog: the coarse one may lag a tick.
    fn exact_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The instant that is `ms` on this clock.
    fn instant_at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }
}

const NO_HEAD: u64 = u64::MAX;

/// What one connection is doing.
#[derive(Debug)]
pub struct Activity {
    clock: Arc<CoarseClock>,
    /// Requests hyper has handed over and not yet seen answered.
    in_flight: AtomicUsize,
    /// When a byte last moved either way.
    last_ms: AtomicU64,
    /// When the first byte of a request's head arrived; `NO_HEAD` when none is arriving.
    head_since_ms: AtomicU64,
    /// No byte has arrived yet.
    silent: AtomicBool,
    /// hyper has handed over a request: the connection is no longer shed to make room.
    sent_a_request: AtomicBool,
    /// Bytes of the unfinished head charged to the process's head budget.
    charged: AtomicUsize,
    shedding: &'static Shedding,
    /// The task serving the connection, for closing it to make room.
    task: OnceLock<tokio::task::AbortHandle>,
    /// The task enforcing the limits, stopped with the connection: while it sleeps it would
    /// hold the connection's task (a few KB) for up to a quarter of the shortest limit.
    watchdog: OnceLock<tokio::task::AbortHandle>,
    closed_for_room: AtomicBool,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Silent,
    SlowHeaders,
    Idle,
}

impl Activity {
    pub fn new(clock: Arc<CoarseClock>, shedding: &'static Shedding) -> Arc<Self> {
        let now = clock.now_ms();
        Arc::new(Self {
            clock,
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(now),
            head_since_ms: AtomicU64::new(NO_HEAD),
            silent: AtomicBool::new(true),
            sent_a_request: AtomicBool::new(false),
            charged: AtomicUsize::new(0),
            shedding,
            task: OnceLock::new(),
            watchdog: OnceLock::new(),
            closed_for_room: AtomicBool::new(false),
        })
    }

    /// `bytes` arrived. A head's first read is free; the reads after it are charged to the
    /// head budget (see [`super::shedding`]).
    fn read(self: &Arc<Self>, bytes: usize) {
        let now = self.clock.now_ms();
        self.silent.store(false, Ordering::Relaxed);
        self.last_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            if self.head_since_ms.load(Ordering::Relaxed) == NO_HEAD {
                self.head_since_ms.store(now, Ordering::Relaxed);
            } else {
                self.shedding.charge(self, bytes);
            }
        }
    }

    #[cfg(test)]
    pub fn read_bytes(self: &Arc<Self>, bytes: usize) {
        self.read(bytes);
    }

    /// Adds `bytes` to the connection's charge; returns the charge before.
    pub(super) fn add_charge(&self, bytes: usize) -> usize {
        self.charged.fetch_add(bytes, Ordering::Relaxed)
    }

    pub(super) fn charged(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    /// Gives the head's charge back to the budget.
    pub(super) fn release_head(&self) {
        let charged = self.charged.swap(0, Ordering::Relaxed);
        if charged > 0 {
            self.shedding.release(charged);
        }
    }

    pub(super) fn has_sent_a_request(&self) -> bool {
        self.sent_a_request.load(Ordering::Relaxed)
    }

    /// The task serving this connection, once spawned.
    pub fn serve_in(&self, task: tokio::task::AbortHandle) {
        let _ = self.task.set(task);
    }

    /// The task enforcing the connection's limits, once spawned.
    pub fn watched_by(&self, watchdog: tokio::task::AbortHandle) {
        let _ = self.watchdog.set(watchdog);
    }

    /// Closes the connection to make room for another.
    pub(super) fn close_for_room(&self) {
        self.closed_for_room.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }

    #[cfg(test)]
    pub fn is_closed_for_room(&self) -> bool {
        self.closed_for_room.load(Ordering::Relaxed)
    }

    fn wrote(&self) {
        self.last_ms.store(self.clock.now_ms(), Ordering::Relaxed);
    }

    /// hyper handed a request over: its head is complete. Done when the guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(NO_HEAD, Ordering::Relaxed);
        self.sent_a_request.store(true, Ordering::Relaxed);
        self.release_head();
        InFlight(self.clone())
    }

    /// When the connection is next due to be closed, if nothing moves: `None` while a
    /// request is in flight.
    fn deadline_ms(&self, limits: ClientLimits) -> Option<(u64, Closed)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let head = self.head_since_ms.load(Ordering::Relaxed);
        if self.silent.load(Ordering::Relaxed) {
            // Nothing was written before the first read: `last_ms` is when it opened.
            let opened = self.last_ms.load(Ordering::Relaxed);
            return Some((
                opened + limits.first_byte.as_millis() as u64,
                Closed::Silent,
            ));
        }
        Some(if head == NO_HEAD {
            let last = self.last_ms.load(Ordering::Relaxed);
            (last + limits.idle.as_millis() as u64, Closed::Idle)
        } else {
            (
                head + limits.headers.as_millis() as u64,
                Closed::SlowHeaders,
            )
        })
    }
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

/// An answer's body that keeps its request in flight until hyper has sent it all or dropped
/// it: a connection whose answer is still streaming is neither idle nor slow, however long
/// the upstream pauses or the client's flow-control frames take (only `stream_idle_timeout`
/// ends a stream, with the provider's error event).
pub struct InFlightBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl InFlightBody {
    pub fn new(body: axum::body::Body, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl http_body::Body for InFlightBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.wrote();
    }
}

/// Resolves when the connection has gone past one of its limits, or with `None` once
/// `serving` (the connection's task) has ended. A head that starts while this sleeps moves
/// its deadline closer without waking it (waking it would cost every request), so it looks
/// again every quarter of the shorter limit: a limit holds to within a quarter of itself.
pub async fn past_limits(
    activity: &Activity,
    limits: ClientLimits,
    serving: &tokio::task::AbortHandle,
) -> Option<Closed> {
    let shortest = limits.headers.min(limits.idle).min(limits.first_byte);
    let recheck = (shortest / 4).as_millis() as u64;
    loop {
        if serving.is_finished() {
            return None;
        }
        let now = activity.clock.exact_ms();
        let next = match activity.deadline_ms(limits) {
            Some((due, why)) if due <= now => return Some(why),
            Some((due, _)) => due.min(now + recheck),
            None => now + recheck,
        };
        let at = activity.clock.instant_at(next);
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

/// A client connection that notes its activity.
#[derive(Debug)]
pub struct Tracked<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    pub fn new(io: T, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn note_written(&self, result: &Poll<std::io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(written)) if *written > 0) {
            self.activity.wrote();
        }
    }
}

/// The connection has closed: its head's charge and its watchdog go with it.
impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        self.activity.release_head();
        if let Some(watchdog) = self.activity.watchdog.get() {
            watchdog.abort();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.activity.read(read);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, data);
        this.note_written(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, buffers);
        this.note_written(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Raises the open-file soft limit to the hard one (desktops often start at 1,024), and
/// returns the soft limit in force. Each client connection may also hold an upstream one.
#[cfg(unix)]
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> u64 {
    u64::MAX
}

/// Descriptors kept for what is not a client connection: the listener, logs, the state file.
const RESERVED_DESCRIPTORS: u64 = 64;

/// How many client connections to serve at most: `max_connections`, or fewer where the
/// open-file limit would not hold each with an upstream connection beside it.
pub fn connection_cap(max_connections: usize, open_file_limit: u64) -> usize {
    let room = open_file_limit.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ClientLimits {
        ClientLimits {
            headers: Duration::from_secs(60),
            idle: Duration::from_secs(120),
            first_byte: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_silent_new_connection_is_due_after_the_first_byte_limit() {
        let activity = activity_at(1_000);
        assert_eq!(
            activity.deadline_ms(limits()),
            Some((6_000, Closed::Silent))
        );
        set(&activity, 2_000);
        activity.read(1);
        assert_eq!(
            activity.deadline_ms(limits()),
            Some((62_000, Closed::SlowHeaders)),
            "once a byte came, the head has client_timeout"
        );
    }

    fn activity_at(ms: u64) -> Arc<Activity> {
        let clock = Arc::new(CoarseClock::new());
        clock.now_ms.store(ms, Ordering::Relaxed);
        Activity::new(clock, Box::leak(Box::new(Shedding::new(usize::MAX))))
    }

    fn set(activity: &Activity, ms: u64) {
        activity.clock.now_ms.store(ms, Ordering::Relaxed);
    }

    #[test]
    fn an_idle_connection_is_due_after_the_idle_limit() {
        let activity = activity_at(1_000);
        activity.silent.store(false, Ordering::Relaxed);
        assert_eq!(
            activity.deadline_ms(limits()),
            Some((121_000, Closed::Idle))
        );
        set(&activity, 5_000);
        activity.wrote();
        assert_eq!(
            activity.deadline_ms(limits()),
            Some((125_000, Closed::Idle))
        );
    }

    #[test]
    fn a_head_that_started_is_due_after_the_header_limit() {
        let activity = activity_at(1_000);
        set(&activity, 2_000);
        activity.read(1);
        set(&activity, 30_000);
        activity.read(1);
        assert_eq!(
            activity.deadline_ms(limits()),
            Some((62_000, Closed::SlowHeaders)),
            "from the head's first byte, not its last"
        );
        let request = activity.request();
        assert_eq!(activity.deadline_ms(limits()), None, "a request in flight");
        activity.read(1);
        drop(request);
        set(&activity, 40_000);
        activity.wrote();
        assert_eq!(
            activity.deadline_ms(limits()),
            Some((160_000, Closed::Idle)),
            "the answer's bytes reset the idle clock"
        );
    }

    #[test]
    fn the_cap_leaves_room_for_upstream_connections() {
        assert_eq!(connection_cap(10_000, 1_024), 480);
        assert_eq!(connection_cap(10_000, 1_048_576), 10_000);
        assert_eq!(connection_cap(10_000, 10), 0);
    }
}
