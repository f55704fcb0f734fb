//! Log output: tracing to stderr, filtered by `-v`/`-q`, or by `RUST_LOG` when set.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `without_marks`: mark lines are left out (a command that prints each attempt's mark).
pub fn init(verbose: u8, quiet: bool, without_marks: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let directives = if without_marks {
        format!("{level},{}=warn", crate::failover::MARKS_TARGET)
    } else {
        level.to_owned()
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}
