//! Writes key marks made by the server to the state file in the background, debounced, so
//! `send` and a restarted `serve` see them without the request path waiting on disk.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::state::{Observation, StateStore};

/// Marks within this window are written together.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub enum StateChange {
    Observed(Observation),
    Cleared {
        provider: Option<String>,
        fingerprint: Option<String>,
    },
}

enum Message {
    Change(StateChange),
    /// Answered once everything sent before it is written.
    Flush(oneshot::Sender<()>),
}

pub struct StateSync {
    sender: mpsc::UnboundedSender<Message>,
    _task: JoinHandle<()>,
}

impl StateSync {
    pub fn start(store: StateStore) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_batches(store, receiver));
        Self {
            sender,
            _task: task,
        }
    }

    pub fn record(&self, change: StateChange) {
        // The writer lives as long as the server.
        let _ = self.sender.send(Message::Change(change));
    }

    /// Waits until everything recorded so far is written.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }
}

async fn write_batches(store: StateStore, mut receiver: mpsc::UnboundedReceiver<Message>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = Vec::new();
        let mut flushed = Vec::new();
        match first {
            Message::Change(change) => {
                batch.push(change);
                tokio::time::sleep(DEBOUNCE).await;
            }
            Message::Flush(done) => flushed.push(done),
        }
        while let Ok(message) = receiver.try_recv() {
            match message {
                Message::Change(change) => batch.push(change),
                Message::Flush(done) => flushed.push(done),
            }
        }
        write_batch(&store, batch).await;
        for done in flushed {
            let _ = done.send(());
        }
    }
}

async fn write_batch(store: &StateStore, batch: Vec<StateChange>) {
    if batch.is_empty() {
        return;
    }
    let store = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        store.update(|state| {
            for change in &batch {
                match change {
                    StateChange::Observed(seen) => state.observe(seen),
                    StateChange::Cleared {
                        provider,
                        fingerprint,
                    } => {
                        state.clear(
                            provider.as_deref(),
                            fingerprint.as_deref(),
                            std::time::SystemTime::now(),
                        );
                    }
                }
            }
        })
    })
    .await;
    match written {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!("key marks not saved: {error}"),
        Err(error) => tracing::warn!("key marks not saved: {error}"),
    }
}
