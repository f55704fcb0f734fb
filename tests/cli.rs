//! The command line itself: help, version, usage errors, commands still to come.

use crate::harness::Test;

#[test]
fn help_lists_every_subcommand() {
    let output = Test::new().args(["--help"]).run().success();
    for command in ["serve", "probe-keys", "send", "pool"] {
        assert!(
            output.stdout.contains(command),
            "{command} missing:\n{}",
            output.stdout
        );
    }
    assert!(!output.stdout.contains("generate"), "hidden command shown");
    Test::new()
        .args(["pool", "--help"])
        .run()
        .success()
        .stdout_has("status");
}

#[test]
fn version_prints_the_crate_version() {
    Test::new()
        .args(["--version"])
        .run()
        .success()
        .stdout_is(&format!("aibridge {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn bad_flags_exit_2() {
    Test::new()
        .args(["send", "--bogus"])
        .run()
        .code(2)
        .stderr_has("--bogus");
    Test::new()
        .args(["send", "--wait", "soon"])
        .run()
        .code(2)
        .stderr_has("soon");
    Test::new()
        .args(["send", "-H", "no-colon"])
        .run()
        .code(2)
        .stderr_has("expected 'Name: value'");
    Test::new()
        .args(["send", "-X", "BAD METHOD"])
        .run()
        .code(2)
        .stderr_has("invalid HTTP method");
    Test::new().args(["frobnicate"]).run().code(2);
    Test::new()
        .args(["probe-keys", "--concurrency", "0"])
        .run()
        .code(2)
        .stderr_has("--concurrency");
    Test::new().args(["pool"]).run().code(2);
}

#[test]
fn bad_config_is_one_line_with_position() {
    Test::new()
        .config("[providers.anthropic]\nkeys = [\"sk-ant-one-000000000000000000\"\n")
        .args(["send"])
        .run()
        .code(2)
        .one_line_error("config.toml:2:");
    Test::new()
        .config("[providers.anthropic]\nkind = \"gemini\"\n")
        .args(["send"])
        .run()
        .code(2)
        .one_line_error("gemini");
    Test::new()
        .config("[providers.anthropic]\ndefault_cooldown = \"forever\"\n")
        .args(["send"])
        .run()
        .code(2)
        .one_line_error("providers.anthropic.default_cooldown: invalid value: string, expected");
}

#[test]
fn bad_keys_in_config_name_the_index_never_the_key() {
    Test::new()
        .config("[providers.anthropic]\nkeys = [\"sk-ant-secret-000000000000000001\", \"sk-ant-secret-000000000000000001\"]\n")
        .secret("sk-ant-secret-000000000000000001")
        .args(["send"])
        .run()
        .code(2)
        .one_line_error("key #2 duplicates key #1");
    Test::new()
        .config("[providers.anthropic]\nkeys_file = \"missing-keys.txt\"\n")
        .args(["send"])
        .run()
        .code(2)
        .one_line_error("keys_file: cannot read");
}

#[test]
fn missing_config_file_is_an_error() {
    Test::new()
        .env("AIBRIDGE_CONFIG", "/nonexistent/aibridge.toml")
        .args(["send"])
        .run()
        .code(2)
        .one_line_error("cannot read config file /nonexistent/aibridge.toml");
}

#[test]
fn send_help_lists_every_exit_code_the_readme_lists() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("### Exit codes of `send`")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .unwrap();
    let codes: Vec<&str> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|row| row.split(' ').next())
        .filter(|code| code.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(codes, ["0", "1", "2", "3", "4", "5"]);
    let help = Test::new().args(["send", "--help"]).run().success().stdout;
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for code in codes {
        assert!(
            help.contains(&format!("{code} ")),
            "send --help lacks exit code {code}"
        );
    }
    assert!(
        help.contains("5 upstream unreachable, timed out, or the answer broke off"),
        "{help}"
    );
}
