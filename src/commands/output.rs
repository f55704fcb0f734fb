//! Terminal output shared by the commands: stdout writes that report a closed pipe (see
//! `main`), and progress bars shown only on a terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use crate::table::Table;

/// Writes `text` to stdout. A reader that has gone shows as an error whose cause is a broken
/// pipe, which `main` takes for success; `println!` would panic instead.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// A progress bar on stderr, or `None` when stderr is not a terminal or output is JSON.
pub fn progress_bar(length: usize, wanted: bool) -> Option<ProgressBar> {
    if !wanted || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(length as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} probing keys {bar:30} {pos}/{len} {elapsed}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

/// `41s`, `2m 5s`: whole seconds, the way durations read in a table.
pub fn seconds(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// `3m 12s ago` for an RFC 3339 time, `-` when there is none.
pub fn ago(time: Option<&str>) -> String {
    let Some(at) = time.and_then(|text| humantime::parse_rfc3339_weak(text).ok()) else {
        return "-".to_owned();
    };
    match std::time::SystemTime::now().duration_since(at) {
        Ok(elapsed) if elapsed.as_secs() > 0 => format!("{} ago", seconds(elapsed.as_secs())),
        _ => "just now".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_and_trims_line_ends() {
        let mut table = Table::new(&["PROVIDER", "KEY", "VERDICT"]);
        table.row(vec![
            "anthropic".into(),
            "sk-a...efgh".into(),
            "valid".into(),
        ]);
        table.row(vec!["openai".into(), "sk-b...wxyz".into(), String::new()]);
        assert_eq!(
            table.render(),
            "PROVIDER   KEY          VERDICT\nanthropic  sk-a...efgh  valid\nopenai     sk-b...wxyz\n"
        );
    }

    #[test]
    fn durations_and_ages() {
        assert_eq!(seconds(41), "41s");
        assert_eq!(seconds(125), "2m 5s");
        assert_eq!(ago(None), "-");
        let past = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() - Duration::from_secs(75),
        );
        assert_eq!(ago(Some(&past.to_string())), "1m 15s ago");
    }
}
