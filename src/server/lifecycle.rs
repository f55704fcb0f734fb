//! The server's start and end: the banner, the signals it handles, and waiting for the
//! workers to finish.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use super::{AppState, Bridge, SHUTDOWN_GRACE};

/// Waits for every worker to finish its requests, up to the grace period.
pub fn wait_for_workers(
    results: &std::sync::mpsc::Receiver<anyhow::Result<()>>,
    workers: usize,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    for _ in 0..workers {
        match results.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!(
                    "requests still running after {}s; stopping anyway",
                    SHUTDOWN_GRACE.as_secs()
                );
                break;
            }
        }
    }
    Ok(())
}

/// The signals `serve` handles.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn watch() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }

    /// Reloads on SIGHUP; returns on SIGINT or SIGTERM.
    pub async fn wait_for_stop(mut self, app: &AppState) {
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => return,
                _ = self.terminate.recv() => return,
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration");
                    app.reload();
                }
            }
        }
    }
}

/// The URL alone on stdout, so a script that starts `serve` on port 0 can read the port;
/// the banner, a table of the providers, on stderr.
pub fn print_banner(address: SocketAddr, bridge: &Bridge) {
    use std::io::Write;
    let mut table = crate::table::Table::new(&[]);
    for upstream in bridge.upstreams.values() {
        let keys = match upstream.pool.len() {
            0 if upstream.expects_keys => "no keys yet (its key list is empty)".to_owned(),
            0 => "no keys (callers bring their own)".to_owned(),
            1 => "1 key".to_owned(),
            count => format!("{count} keys"),
        };
        let enabled = if upstream.enabled {
            "enabled"
        } else {
            "disabled"
        };
        table.row(vec![
            upstream.name.to_string(),
            upstream.kind.to_string(),
            upstream.base_url.clone(),
            keys,
            enabled.to_owned(),
        ]);
    }
    let mut banner = format!("aibridge listening on http://{address}\n");
    for line in table.render().lines().filter(|line| !line.is_empty()) {
        banner.push_str(&format!("  {line}\n"));
    }
    eprint!("{banner}");
    // Last, so a script that has read the URL has the banner too. A closed stdout is the
    // script's business: the server serves on.
    let _ = writeln!(std::io::stdout(), "http://{address}");
}
