//! `aibridge generate`: shell completions and man pages, rendered from the clap definition
//! so they cannot drift from it (a test compares them with the checked-in copies).

use std::borrow::Cow;
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
    // `aibridge help` has no page of its own, so no page names one.
    let mut command = without_help_subcommands(Cli::command());
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
    let described = command
        .clone()
        .name(name.to_owned())
        .override_usage(synopsis(command));
    pages.push((
        Path::new("man").join(format!("{name}.1")),
        man_page(described, name).context("cannot render man page")?,
    ));
    for sub in command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
    {
        render_page(sub, &format!("{name}-{}", sub.get_name()), pages)?;
    }
    Ok(())
}

fn without_help_subcommands(command: clap::Command) -> clap::Command {
    command
        .disable_help_subcommand(true)
        .mut_subcommands(without_help_subcommands)
}

/// clap_mangen's sections, with EXIT STATUS, ENVIRONMENT and FILES before VERSION.
fn man_page(command: clap::Command, name: &str) -> std::io::Result<Vec<u8>> {
    let environment = environment(&command);
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if command.get_arguments().any(|arg| !arg.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if command.get_subcommands().any(|sub| !sub.is_hide_set()) {
        man.render_subcommands_section(&mut page)?;
    }
    let mut roff = roff::Roff::new();
    definitions(&mut roff, "EXIT STATUS", exit_codes(name));
    definitions(&mut roff, "ENVIRONMENT", environment);
    definitions(&mut roff, "FILES", borrowed(&FILES));
    roff.to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// A section of terms, each with its explanation.
fn definitions(roff: &mut roff::Roff, heading: &str, terms: Definitions) {
    if terms.is_empty() {
        return;
    }
    roff.control("SH", [heading]);
    for (term, explanation) in terms {
        roff.control("TP", []);
        roff.text([roff::bold(term.into_owned())]);
        roff.text([roff::roman(explanation.into_owned())]);
    }
}

type Definitions = Vec<(Cow<'static, str>, Cow<'static, str>)>;

/// What each page's command exits with (the codes of `crate::exit`).
fn exit_codes(name: &str) -> Definitions {
    let codes: &[(&str, &str)] = match name {
        "aibridge" => &[
            ("0", "success"),
            (
                "1",
                "the upstream answered an error that is not the key's fault, or a check failed (a key is not valid, a provider has no available key)",
            ),
            ("2", "usage or config error"),
            ("3", "send: every key is cooling"),
            ("4", "send: every key is disabled"),
            (
                "5",
                "send: the upstream could not be reached, did not answer in time, or the answer broke off mid-way",
            ),
        ],
        "aibridge-serve" => &[
            (
                "0",
                "stopped by SIGINT or SIGTERM, after in-flight requests finished (up to 30 s)",
            ),
            (
                "2",
                "usage or config error, or the listen address cannot be used",
            ),
        ],
        "aibridge-send" => &[
            ("0", "the upstream answered 2xx"),
            (
                "1",
                "the upstream answered another status that is not the key's fault (the body is still printed)",
            ),
            (
                "2",
                "usage or config error (bad flags, bad config, unknown or disabled provider, no keys)",
            ),
            ("3", "every key is cooling (stderr says when to retry)"),
            ("4", "every key is disabled"),
            (
                "5",
                "the upstream could not be reached, did not answer in time, or the answer broke off mid-way",
            ),
        ],
        "aibridge-probe-keys" => &[
            ("0", "every key is valid"),
            ("1", "some key is not"),
            ("2", "usage or config error"),
        ],
        "aibridge-pool" | "aibridge-pool-status" => &[
            (
                "0",
                "every provider with keys has an available one (and --watch ended by Ctrl-C)",
            ),
            ("1", "some provider with keys has none available"),
            ("2", "usage or config error"),
        ],
        _ => &[
            ("0", "success"),
            ("2", "usage or config error, or the server refused"),
        ],
    };
    borrowed(codes)
}

/// The variables the command's flags read, then those the configuration reads.
fn environment(command: &clap::Command) -> Definitions {
    let mut variables: Definitions = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set())
        .filter_map(|arg| {
            let variable = arg.get_env()?.to_string_lossy().into_owned();
            let flag = arg.get_long()?;
            Some((Cow::Owned(variable), Cow::Owned(format!("as --{flag}"))))
        })
        .collect();
    variables.extend(borrowed(&CONFIG_ENVIRONMENT));
    variables
}

const CONFIG_ENVIRONMENT: [(&str, &str); 5] = [
    (
        "AIBRIDGE_<NAME>_KEYS",
        "keys for provider NAME, comma- or newline-separated (NAME upper-cased, - as _), added to its configured keys",
    ),
    (
        "AIBRIDGE_<NAME>_BASE_URL",
        "the URL of provider NAME, over its configured one",
    ),
    (
        "AIBRIDGE_ACCESS_TOKENS",
        "serve: the access tokens clients must present, comma-separated",
    ),
    (
        "AIBRIDGE_REDIS_PREFIX",
        "namespaces every Redis key and channel (default aibridge)",
    ),
    (
        "RUST_LOG",
        "log filter, over -v and -q (tracing's EnvFilter syntax)",
    ),
];

const FILES: [(&str, &str); 3] = [
    (
        "~/.config/aibridge/config.toml",
        "the configuration, when it exists and neither --config nor AIBRIDGE_CONFIG names another ($XDG_CONFIG_HOME/aibridge/config.toml)",
    ),
    (
        "~/.local/state/aibridge/state.json",
        "key marks between runs, unless state_file, --state-file or a Redis store says otherwise ($XDG_STATE_HOME/aibridge/state.json)",
    ),
    (
        "keys_file",
        "a provider's keys, one per line (# comments), at the path its config names; at most 1 MiB",
    ),
];

fn borrowed(pairs: &[(&'static str, &'static str)]) -> Definitions {
    pairs
        .iter()
        .map(|(term, meaning)| (Cow::Borrowed(*term), Cow::Borrowed(*meaning)))
        .collect()
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

    #[test]
    fn every_page_has_exit_status_environment_and_files_and_names_no_missing_page() {
        let pages = man_pages().unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|(path, _)| path.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        for (path, page) in &pages {
            let page = String::from_utf8_lossy(page);
            for section in [".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH FILES"] {
                assert!(page.contains(section), "{} lacks {section}", path.display());
            }
            assert!(page.contains("AIBRIDGE_CONFIG"), "{}", path.display());
            // Every page named as `aibridge-x(1)` is one of the pages.
            for named in page.split("aibridge\\-").skip(1) {
                let Some((rest, _)) = named.split_once("(1)") else {
                    continue;
                };
                let name = format!("aibridge-{}", rest.replace("\\-", "-"));
                assert!(names.contains(&name), "{} names {name}(1)", path.display());
            }
        }
        let send = &pages
            .iter()
            .find(|(path, _)| path.ends_with("aibridge-send.1"))
            .unwrap()
            .1;
        let send = String::from_utf8_lossy(send);
        assert!(send.contains("AIBRIDGE_PROVIDER") && send.contains("broke off"));
    }
}
