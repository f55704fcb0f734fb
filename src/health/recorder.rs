//! `serve`'s side of shared health: marks are handed to a background task, so a request
//! never waits on the disk or on Redis, and (through Redis) other processes' marks are
//! applied to this process's pools as they are announced.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::{
    HealthChange, HealthError, HealthStore, RedisHealth, SharedChange, StateFile, StateStore,
};

/// Marks within this window are written to the state file together.
const FILE_DEBOUNCE: Duration = Duration::from_millis(100);
/// How often an idle connection to Redis is checked.
const REDIS_CHECK: Duration = Duration::from_secs(2);
/// The first and the longest pause between attempts to reach Redis again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(5);
/// How many changes wait for Redis to come back at most; the oldest go first.
const MAX_PENDING: usize = 10_000;

/// Where the process's marks go, and whether they get there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStatus {
    /// The state file: shared with processes on this machine.
    Local,
    /// Redis, reachable.
    Ok,
    /// Redis, unreachable: requests go on with this process's own health.
    Degraded,
}

impl SharedStatus {
    fn decode(value: u8) -> Self {
        match value {
            0 => Self::Local,
            1 => Self::Ok,
            _ => Self::Degraded,
        }
    }
}

/// Applies what other processes recorded to this process's pools.
pub trait HealthSink: Send + Sync + 'static {
    /// Changes another process made.
    fn apply(&self, changes: &[SharedChange]);
    /// Every mark the store holds: after reaching it again, and when asked to resync.
    fn restore(&self, shared: &StateFile);
}

enum Message {
    Change(HealthChange),
    /// Answered once everything sent before it is written (or cannot be).
    Flush(oneshot::Sender<()>),
    /// Load every shared mark again (after a reload adds keys).
    Resync,
}

/// The handle the server keeps: cheap to call from any thread.
pub struct HealthRecorder {
    sender: mpsc::UnboundedSender<Message>,
    status: Arc<AtomicU8>,
}

/// The task behind a [`HealthRecorder`], to be spawned once the sink exists.
pub struct RecorderTask {
    store: HealthStore,
    inbox: mpsc::UnboundedReceiver<Message>,
    status: Arc<AtomicU8>,
}

impl HealthRecorder {
    /// A recorder for `store`; `reachable` says whether its first load succeeded.
    pub fn new(store: HealthStore, reachable: bool) -> (Self, RecorderTask) {
        let initial = match (&store, reachable) {
            (HealthStore::File(_), _) => SharedStatus::Local,
            (HealthStore::Redis(_), true) => SharedStatus::Ok,
            (HealthStore::Redis(_), false) => SharedStatus::Degraded,
        };
        let status = Arc::new(AtomicU8::new(initial as u8));
        let (sender, inbox) = mpsc::unbounded_channel();
        let task = RecorderTask {
            store,
            inbox,
            status: status.clone(),
        };
        (Self { sender, status }, task)
    }

    pub fn record(&self, change: HealthChange) {
        // The task lives as long as the server.
        let _ = self.sender.send(Message::Change(change));
    }

    pub fn resync(&self) {
        let _ = self.sender.send(Message::Resync);
    }

    /// Waits until everything recorded so far is written, or found unwritable.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }

    pub fn status(&self) -> SharedStatus {
        SharedStatus::decode(self.status.load(Ordering::Relaxed))
    }
}

impl RecorderTask {
    pub async fn run(self, sink: Arc<dyn HealthSink>) {
        match self.store {
            HealthStore::File(store) => write_file(store, self.inbox, sink).await,
            HealthStore::Redis(redis) => {
                let link = RedisLink {
                    redis: *redis,
                    sink,
                    status: self.status,
                    pending: VecDeque::new(),
                    dropped: 0,
                };
                link.run(self.inbox).await;
            }
        }
    }
}

async fn write_file(
    store: StateStore,
    mut inbox: mpsc::UnboundedReceiver<Message>,
    sink: Arc<dyn HealthSink>,
) {
    let store = HealthStore::File(store);
    while let Some(first) = inbox.recv().await {
        let mut batch = Vec::new();
        let mut flushed = Vec::new();
        let mut resync = false;
        let mut take = |message| match message {
            Message::Change(change) => batch.push(change),
            Message::Flush(done) => flushed.push(done),
            Message::Resync => resync = true,
        };
        let debounce = matches!(first, Message::Change(_));
        take(first);
        if debounce {
            tokio::time::sleep(FILE_DEBOUNCE).await;
        }
        while let Ok(message) = inbox.try_recv() {
            take(message);
        }
        if let Err(error) = store.apply(batch).await {
            tracing::warn!("key marks not saved: {error}");
        }
        if resync {
            match store.load().await {
                Ok(shared) => sink.restore(&shared),
                Err(error) => tracing::warn!("cannot read key marks: {error}"),
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// The process's link to Redis: writes its marks, hears the others', and while Redis is
/// away keeps the marks made meanwhile for when it is back.
struct RedisLink {
    redis: RedisHealth,
    sink: Arc<dyn HealthSink>,
    status: Arc<AtomicU8>,
    pending: VecDeque<HealthChange>,
    /// Changes dropped since the last warning because too many waited.
    dropped: usize,
}

/// Why the link was lost.
type Lost = HealthError;

impl RedisLink {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Message>) {
        let mut retry = RETRY_FIRST;
        loop {
            let lost = match self.connect().await {
                Ok(subscription) => {
                    retry = RETRY_FIRST;
                    match self.serve(subscription, &mut inbox).await {
                        Some(lost) => lost,
                        None => return,
                    }
                }
                Err(lost) => lost,
            };
            self.degrade(&lost);
            if !self.wait(retry, &mut inbox).await {
                return;
            }
            retry = (retry * 2).min(RETRY_MOST);
        }
    }

    /// Subscribes, writes what waited, then loads every shared mark.
    async fn connect(&mut self) -> Result<redis::aio::PubSub, Lost> {
        let subscription = self.redis.subscribe().await?;
        let waited = self.pending.len();
        self.write_pending().await?;
        let shared = self.redis.load().await?;
        self.sink.restore(&shared);
        if self.set_status(SharedStatus::Ok) == SharedStatus::Degraded {
            tracing::info!(
                "shared key health restored through {}; published {waited} marks made meanwhile \
                 and loaded the fleet's",
                self.redis.describe()
            );
        }
        Ok(subscription)
    }

    /// Until the link is lost (`Some`) or the server stops (`None`).
    async fn serve(
        &mut self,
        subscription: redis::aio::PubSub,
        inbox: &mut mpsc::UnboundedReceiver<Message>,
    ) -> Option<Lost> {
        let mut messages = subscription.into_on_message();
        let mut check = tokio::time::interval(REDIS_CHECK);
        check.reset();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Some(self.redis.closed());
                    };
                    if let Some(changes) = self.redis.decode(message.get_payload_bytes()) {
                        self.sink.apply(&changes);
                    }
                }
                received = inbox.recv() => {
                    let first = received?;
                    let (flushed, resync) = self.take(first, inbox);
                    let written = self.write_pending().await;
                    for done in flushed {
                        let _ = done.send(());
                    }
                    if let Err(lost) = written {
                        return Some(lost);
                    }
                    if resync {
                        match self.redis.load().await {
                            Ok(shared) => self.sink.restore(&shared),
                            Err(lost) => return Some(lost),
                        }
                    }
                }
                _ = check.tick() => {
                    if let Err(lost) = self.redis.ping().await {
                        return Some(lost);
                    }
                }
            }
        }
    }

    /// Pauses before the next attempt, keeping the changes that arrive meanwhile. Returns
    /// false when the server stops.
    async fn wait(
        &mut self,
        pause: Duration,
        inbox: &mut mpsc::UnboundedReceiver<Message>,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                received = inbox.recv() => {
                    let Some(first) = received else { return false };
                    // Nothing can be written now: a flush is answered at once.
                    let (flushed, _) = self.take(first, inbox);
                    for done in flushed {
                        let _ = done.send(());
                    }
                }
            }
        }
    }

    /// Queues `first` and whatever else waits. Returns the flushes to answer, and whether
    /// a resync was asked for.
    fn take(
        &mut self,
        first: Message,
        inbox: &mut mpsc::UnboundedReceiver<Message>,
    ) -> (Vec<oneshot::Sender<()>>, bool) {
        let mut flushed = Vec::new();
        let mut resync = false;
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Change(change) => self.queue(change),
                Message::Flush(done) => flushed.push(done),
                Message::Resync => resync = true,
            }
            next = inbox.try_recv().ok();
        }
        (flushed, resync)
    }

    fn queue(&mut self, change: HealthChange) {
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
            if self.dropped == 1 {
                tracing::warn!(
                    "{MAX_PENDING} key marks wait for Redis; dropping the oldest from now on"
                );
            }
        }
        self.pending.push_back(change);
    }

    /// Writes and announces every waiting change; on failure they stay queued.
    async fn write_pending(&mut self) -> Result<(), Lost> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let changes: Vec<_> = self.pending.iter().cloned().collect();
        self.redis
            .apply(&changes, std::time::SystemTime::now())
            .await?;
        self.pending.clear();
        self.dropped = 0;
        Ok(())
    }

    /// One warning when the link goes down, not one per attempt.
    fn degrade(&self, lost: &Lost) {
        if self.set_status(SharedStatus::Degraded) != SharedStatus::Degraded {
            tracing::warn!(
                "shared key health degraded: {lost}; requests go on with this process's own key \
                 health, and marks are kept until Redis is back"
            );
        }
    }

    fn set_status(&self, status: SharedStatus) -> SharedStatus {
        SharedStatus::decode(self.status.swap(status as u8, Ordering::Relaxed))
    }
}
