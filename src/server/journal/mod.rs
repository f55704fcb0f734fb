//! The request log (one JSON line per request) and request dumps (every attempt's request
//! and response, credentials masked), written by one background thread so the request path
//! never waits on disk.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context;
use serde::Serialize;

mod dump;
mod record;

pub use dump::{AttemptDump, dump_failed_attempts, dump_request, http_message};
use record::LineClock;
pub use record::{Outcome, RequestRecord};

enum Entry {
    /// One line of the request log, its newline included.
    Line(Vec<u8>),
    /// Opens the request log again: logrotate moved the old one away.
    Reopen,
    Dump {
        name: String,
        contents: Vec<u8>,
    },
    /// Answered once everything sent before it is written.
    Flush(mpsc::SyncSender<()>),
}

pub struct Journal {
    sender: Option<mpsc::Sender<Entry>>,
    thread: Option<JoinHandle<()>>,
    logging: bool,
    dumping: bool,
    refusals: RefusalBudget,
    /// Writes each line's time; shared by the workers.
    clock: LineClock,
}

/// Refused requests cost a caller nothing to send, so at most [`REFUSALS_LOGGED_PER_SECOND`]
/// of them are logged each second; the rest are counted and said in one line.
#[derive(Default)]
struct RefusalBudget {
    /// The unix second being counted.
    second: AtomicU64,
    logged: AtomicU64,
    /// Refusals not logged since the last summary.
    dropped: AtomicU64,
}

pub const REFUSALS_LOGGED_PER_SECOND: u64 = 100;

impl RefusalBudget {
    fn admit(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.logged.store(0, Ordering::Relaxed);
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(
                    "request log: {dropped} refused requests not logged (at most \
                     {REFUSALS_LOGGED_PER_SECOND} a second are)"
                );
            }
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < REFUSALS_LOGGED_PER_SECOND {
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }
}

impl Journal {
    /// Opens the log (appending) and creates the dump directory; either may be absent.
    pub fn open(request_log: Option<&Path>, dump_dir: Option<&Path>) -> anyhow::Result<Self> {
        if request_log.is_none() && dump_dir.is_none() {
            return Ok(Self {
                sender: None,
                thread: None,
                logging: false,
                dumping: false,
                refusals: RefusalBudget::default(),
                clock: LineClock::default(),
            });
        }
        let log = request_log
            .map(|path| {
                open_log(path)
                    .with_context(|| format!("cannot open request_log {}", path.display()))
            })
            .transpose()?;
        if let Some(dir) = dump_dir {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(dir)
                .with_context(|| format!("cannot create dump_dir {}", dir.display()))?;
        }
        let (sender, receiver) = mpsc::channel();
        let dumping = dump_dir.is_some();
        let dump_dir = dump_dir.map(Path::to_path_buf);
        let log = log.zip(request_log.map(Path::to_path_buf));
        let thread = std::thread::Builder::new()
            .name("aibridge-journal".into())
            .spawn(move || write_entries(receiver, log, dump_dir))
            .context("cannot start the journal thread")?;
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
            logging: request_log.is_some(),
            dumping,
            refusals: RefusalBudget::default(),
            clock: LineClock::default(),
        })
    }

    /// Whether a request the bridge refused is logged: within the second's budget.
    pub fn logs_refusal(&self) -> bool {
        self.logging && self.refusals.admit()
    }

    /// Opens the request log again (on SIGHUP), so a log that logrotate moved away is
    /// written afresh at its path.
    pub fn reopen(&self) {
        if let (true, Some(sender)) = (self.logging, &self.sender) {
            let _ = sender.send(Entry::Reopen);
        }
    }

    pub fn logging(&self) -> bool {
        self.logging
    }

    pub fn dumping(&self) -> bool {
        self.dumping
    }

    pub fn log(&self, record: &RequestRecord) {
        if !self.logging {
            return;
        }
        if let Some(sender) = &self.sender {
            let mut line = record.to_line(&self.clock);
            line.push(b'\n');
            let _ = sender.send(Entry::Line(line));
        }
    }

    pub fn dump(&self, name: String, record: &impl Serialize) {
        if !self.dumping {
            return;
        }
        if let (Some(sender), Ok(contents)) = (&self.sender, serde_json::to_vec_pretty(record)) {
            let _ = sender.send(Entry::Dump { name, contents });
        }
    }

    /// Waits (briefly) until everything sent so far is written.
    pub fn flush(&self) {
        let Some(sender) = &self.sender else { return };
        let (done, written) = mpsc::sync_channel(1);
        if sender.send(Entry::Flush(done)).is_ok() {
            let _ = written.recv_timeout(std::time::Duration::from_secs(5));
        }
    }

    /// Writes what is pending and stops the thread.
    fn close(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Logs and dumps hold prompts and answers: readable by their owner only, and a dump never
/// replaces an earlier file.
fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// The request log, for appending: never through a link someone planted at its path, only
/// a regular file, and private even when it already existed with a looser mode.
fn open_log(path: &Path) -> std::io::Result<File> {
    let mut options = private_file();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let file = options.open(path).map_err(|error| {
        #[cfg(unix)]
        if error.raw_os_error() == Some(libc::ELOOP) {
            return std::io::Error::other("it is a symbolic link, which is not followed");
        }
        error
    })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(file)
}

/// How long the writer rests after the queue ran dry. Lines sent meanwhile are queued
/// without waking it, and go out together in one write: under load, a wake-up and a write
/// every 10 ms rather than one of each per request.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// The next entry. Whenever the queue runs dry the log is flushed, so a line is on disk
/// within [`GATHER`] of its request's end.
fn next_entry(
    receiver: &mpsc::Receiver<Entry>,
    log: Option<&mut BufWriter<File>>,
) -> Option<Entry> {
    if let Ok(entry) = receiver.try_recv() {
        return Some(entry);
    }
    if let Some(log) = log
        && let Err(error) = log.flush()
    {
        tracing::warn!("cannot write to the request log: {error}");
    }
    std::thread::sleep(GATHER);
    receiver.recv().ok()
}

fn write_entries(
    receiver: mpsc::Receiver<Entry>,
    log: Option<(File, PathBuf)>,
    dump_dir: Option<PathBuf>,
) {
    let (log, log_path) = log.unzip();
    let mut log = log.map(BufWriter::new);
    while let Some(entry) = next_entry(&receiver, log.as_mut()) {
        let written = match (entry, &mut log, &dump_dir) {
            (Entry::Line(line), Some(log), _) => log.write_all(&line),
            (Entry::Reopen, Some(current), _) => {
                let path = log_path.as_deref().expect("a log has a path");
                match open_log(path) {
                    Ok(file) => {
                        *current = BufWriter::new(file);
                        Ok(())
                    }
                    Err(error) => Err(std::io::Error::other(format!(
                        "cannot reopen {}, still writing to the file it had open: {error}",
                        path.display()
                    ))),
                }
            }
            (Entry::Dump { name, contents }, _, Some(dir)) => private_file()
                .write(true)
                .create_new(true)
                .open(dir.join(name))
                .and_then(|mut file| file.write_all(&contents)),
            (Entry::Flush(done), log, _) => {
                let flushed = log.as_mut().map_or(Ok(()), Write::flush);
                let _ = done.send(());
                flushed
            }
            _ => Ok(()),
        };
        if let Err(error) = written {
            tracing::warn!("cannot write to the request log or dump directory: {error}");
        }
    }
}
