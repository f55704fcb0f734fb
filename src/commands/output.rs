//! Terminal output shared by the commands: aligned tables, and progress bars shown only on a
//! terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A plain table: columns padded to their widest cell, two spaces apart.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|header| (*header).to_owned()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            text.push_str(line.join("  ").trim_end());
            text.push('\n');
        }
        text
    }
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
