//! A mock Amazon Bedrock (`tests/bedrock/mock_bedrock.py`) that checks every signature with
//! botocore, and real AWS clients (boto3, the Anthropic Bedrock client) run from the
//! virtual environment `.ci/setup` makes.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use tempfile::TempDir;

/// Pooled credentials: access key ids are not secret, but the secrets and tokens are.
pub const AKID1: &str = "AKIAMOCKALPHA0000001";
pub const SECRET1: &str = "mock/secret+alpha/0000000000000000000001";
pub const AKID2: &str = "ASIAMOCKBRAVO0000002";
pub const SECRET2: &str = "mock/secret+bravo/0000000000000000000002";
pub const TOKEN2: &str = "IQoJmock/session+token/bravo000000000000000002==";
pub const API_KEY: &str = "ABSKmockapikeycharlie00000000000000000000003";
/// What callers sign with: never forwarded, never shown.
pub const CALLER_AKID: &str = "AKIACALLER0000000009";
pub const CALLER_SECRET: &str = "caller/secret+0000000000000000000000000009";

/// Every secret above, for output scans.
pub const MOCK_SECRETS: [&str; 5] = [SECRET1, SECRET2, TOKEN2, API_KEY, CALLER_SECRET];

pub const MODEL: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
pub const OTHER_MODEL: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";

/// The pool as a config line: the first credential in us-east-1, the second (with a
/// session token) in the provider's region.
pub fn pooled_keys() -> String {
    format!("\"{AKID1}:{SECRET1}@us-east-1\", \"{AKID2}:{SECRET2}:{TOKEN2}\"")
}

/// The Python of the test environment; `.ci/setup` makes it.
pub fn python() -> PathBuf {
    let path = std::env::var_os("AIBRIDGE_TEST_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run .ci/setup (it installs boto3 and anthropic[bedrock])",
        path.display()
    );
    path
}

pub struct MockBedrock {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl MockBedrock {
    /// Starts the mock with every credential known and `replies` by credential id.
    pub fn start(replies: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = json!({
            "credentials": {
                AKID1: {"secret": SECRET1},
                AKID2: {"secret": SECRET2, "token": TOKEN2},
            },
            "api_keys": [API_KEY],
            "replies": replies,
        });
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/bedrock/mock_bedrock.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(&config_path)
            .arg(dir.path().join("log.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the mock prints its port");
        Self { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request the mock received, in order.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Which credential each request was signed with (`null`: refused).
    pub fn signers(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|request| request["who"].as_str().unwrap_or("refused").to_owned())
            .collect()
    }
}

impl Drop for MockBedrock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client script printed and how it ended.
#[derive(Debug)]
pub struct ClientRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ClientRun {
    /// The last stdout line, as JSON, from a client that ended well.
    pub fn json(&self) -> Value {
        assert_eq!(
            self.code, 0,
            "the client failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        let last = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|_| {
            panic!(
                "the client printed no JSON:\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs a Python client `script` with `BRIDGE` set to the bridge's Bedrock base URL.
pub fn run_client(script: &str, bridge: &str, env: &[(&str, &str)]) -> ClientRun {
    let mut command = Command::new(python());
    command
        .arg("-c")
        .arg(script)
        .env("BRIDGE", bridge)
        // The client's own credentials: dummies the bridge must ignore.
        .env("AWS_ACCESS_KEY_ID", CALLER_AKID)
        .env("AWS_SECRET_ACCESS_KEY", CALLER_SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_RETRY_MODE", "standard");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    ClientRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Claude Code as `.ci/setup` installs it, else on the PATH; `None` when it is absent.
pub fn claude_code() -> Option<PathBuf> {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/claude-code/node_modules/.bin/claude");
    if local.exists() {
        return Some(local);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("claude"))
        .find(|path| path.is_file())
}
