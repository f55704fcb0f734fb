//! `aibridge generate`: shell completions and man pages, rendered from the clap definition
//! so they cannot drift from it (a test compares them with the checked-in copies).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs};

pub fn run(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    for (relative, contents) in render_all()? {
        let path = args.dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Every generated file, by path relative to the repository root.
pub fn render_all() -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = completions();
    files.extend(man_pages()?);
    Ok(files)
}

fn completions() -> Vec<(PathBuf, Vec<u8>)> {
    [
        Shell::Bash,
        Shell::Zsh,
        Shell::Fish,
        Shell::Elvish,
        Shell::PowerShell,
    ]
    .into_iter()
    .map(|shell| {
        let mut command = without_hidden_commands(Cli::command());
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "aibridge", &mut script);
        let name = match shell {
            Shell::Bash => "aibridge.bash",
            Shell::Zsh => "_aibridge",
            Shell::Fish => "aibridge.fish",
            Shell::Elvish => "aibridge.elv",
            _ => "_aibridge.ps1",
        };
        (Path::new("completions").join(name), script)
    })
    .collect()
}

/// The command line as users see it: shells complete no hidden subcommand (`generate`).
fn without_hidden_commands(full: clap::Command) -> clap::Command {
    let mut visible = clap::Command::new(full.get_name().to_owned())
        .propagate_version(full.is_propagate_version_set())
        .args(full.get_arguments().cloned())
        .subcommands(
            full.get_subcommands()
                .filter(|sub| !sub.is_hide_set())
                .cloned(),
        );
    if let Some(version) = full.get_version() {
        visible = visible.version(version.to_owned());
    }
    if let Some(about) = full.get_about() {
        visible = visible.about(about.clone());
    }
    visible
}

/// A synopsis with each option's value placeholder (`--config <FILE>`), which clap_mangen's
/// own leaves out.
fn synopsis(command: &clap::Command) -> String {
    let mut parts = vec![
        command
            .get_bin_name()
            .unwrap_or_else(|| command.get_name())
            .to_owned(),
    ];
    let options = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && !arg.is_positional());
    for arg in options {
        let names = match (arg.get_short(), arg.get_long()) {
            (Some(short), Some(long)) => format!("-{short}|--{long}"),
            (None, Some(long)) => format!("--{long}"),
            (Some(short), None) => format!("-{short}"),
            (None, None) => continue,
        };
        let value = match arg.get_value_names() {
            Some(values) if arg.get_action().takes_values() => format!(" <{}>", values.join("> <")),
            _ => String::new(),
        };
        let repeats = matches!(
            arg.get_action(),
            clap::ArgAction::Append | clap::ArgAction::Count
        );
        let repeats = if repeats { "..." } else { "" };
        parts.push(if arg.is_required_set() {
            format!("{names}{value}")
        } else {
            format!("[{names}{value}]{repeats}")
        });
    }
    for arg in command.get_positionals().filter(|arg| !arg.is_hide_set()) {
        let value = arg
            .get_value_names()
            .map_or_else(|| arg.get_id().to_string(), |names| names.join(" "));
        parts.push(if arg.is_required_set() {
            format!("<{value}>")
        } else {
            format!("[{value}]")
        });
    }
    if command.has_subcommands() {
        parts.push("<COMMAND>".to_owned());
    }
    parts.join(" ")
}

/// One page for the tool and one per visible subcommand (`aibridge-pool-status.1`, ...).
fn man_pages() -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut command = Cli::command();
    command.build();
    let mut pages = Vec::new();
    render_page(&command, "aibridge", &mut pages)?;
    Ok(pages)
}

fn render_page(
    command: &clap::Command,
    name: &str,
    pages: &mut Vec<(PathBuf, Vec<u8>)>,
) -> anyhow::Result<()> {
    let mut page = Vec::new();
    let described = command
        .clone()
        .name(name.to_owned())
        .override_usage(synopsis(command));
    clap_mangen::Man::new(described)
        .render(&mut page)
        .context("cannot render man page")?;
    pages.push((Path::new("man").join(format!("{name}.1")), page));
    for sub in command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
    {
        render_page(sub, &format!("{name}-{}", sub.get_name()), pages)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when `completions/` or `man/` no longer match the CLI.
    /// Fix with: cargo run -- generate
    #[test]
    fn checked_in_files_are_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut stale = Vec::new();
        for (relative, contents) in render_all().unwrap() {
            if std::fs::read(root.join(&relative)).ok().as_deref() != Some(contents.as_slice()) {
                stale.push(relative.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "stale generated files (run `cargo run -- generate`): {stale:?}"
        );
    }

    #[test]
    fn one_man_page_per_subcommand() {
        let names: Vec<_> = man_pages()
            .unwrap()
            .into_iter()
            .map(|(path, _)| path.display().to_string())
            .collect();
        for expected in [
            "man/aibridge.1",
            "man/aibridge-serve.1",
            "man/aibridge-probe-keys.1",
            "man/aibridge-send.1",
            "man/aibridge-pool.1",
            "man/aibridge-pool-status.1",
        ] {
            assert!(
                names.contains(&expected.to_owned()),
                "{expected} missing from {names:?}"
            );
        }
        assert!(!names.iter().any(|name| name.contains("generate")));
    }
}
