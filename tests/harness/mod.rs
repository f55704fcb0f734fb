//! A small fluent harness: build a command line, run the real binary in an isolated home,
//! and assert on its exit code and output. Every run also checks that no registered secret
//! appears in stdout, stderr or the state file.

pub mod bedrock;
pub mod mock;
pub mod redis;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tempfile::TempDir;

pub use mock::{Gate, MockUpstream, Reply};

pub const BIN: &str = env!("CARGO_BIN_EXE_aibridge");

/// Distinct keys long enough for a 4+4 hint (`sk-a...0001`).
pub const K1: &str = "sk-ant-alpha-0000000000000000000001";
pub const K2: &str = "sk-ant-bravo-0000000000000000000002";
pub const K3: &str = "sk-ant-charl-0000000000000000000003";
pub const CALLER: &str = "sk-ant-caller-000000000000000000009";
pub const K4: &str = "sk-ant-delta-0000000000000000000004";
pub const K5: &str = "sk-ant-echo0-0000000000000000000005";

/// A port on 127.0.0.1 that nothing listens on.
pub fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn hint(key: &str) -> String {
    format!("{}...{}", &key[..4], &key[key.len() - 4..])
}

pub struct Test {
    dir: TempDir,
    /// Where `pool` commands look for a server unless the config names a listen address: a
    /// port nothing listens on, so no test finds an `aibridge serve` someone runs on the
    /// default port while the tests run.
    listen: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    secrets: Vec<String>,
}

impl Test {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            listen: Some(format!("127.0.0.1:{}", dead_port())),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            secrets: [K1, K2, K3, K4, K5, CALLER].map(str::to_owned).to_vec(),
        }
    }

    /// Writes `config.toml` and points the binary at it.
    pub fn config(mut self, toml: &str) -> Self {
        if toml.lines().any(|line| line.starts_with("listen")) {
            self.listen = None;
        }
        let path = self.path("config.toml");
        std::fs::write(&path, toml).unwrap();
        self.env("AIBRIDGE_CONFIG", path.to_str().unwrap())
    }

    /// A config with one provider `name` of `kind` at the mock, with `keys`.
    pub fn provider(self, name: &str, kind: &str, mock: &MockUpstream, keys: &[&str]) -> Self {
        let keys: Vec<_> = keys.iter().map(|key| format!("{key:?}")).collect();
        let toml = format!(
            "[providers.{name}]\nkind = \"{kind}\"\nbase_url = \"{}\"\nkeys = [{}]\n",
            mock.url(),
            keys.join(", ")
        );
        self.config(&toml)
    }

    pub fn anthropic(self, mock: &MockUpstream, keys: &[&str]) -> Self {
        self.provider("anthropic", "anthropic", mock, keys)
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn stdin(mut self, input: &str) -> Self {
        self.stdin = Some(input.as_bytes().to_vec());
        self
    }

    pub fn secret(mut self, secret: &str) -> Self {
        self.secrets.push(secret.to_owned());
        self
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// A FIFO at `relative` in this test's home: a file that never ends and opens slowly.
    pub fn fifo(&self, relative: &str) -> PathBuf {
        let path = self.path(relative);
        let made = Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(made.success(), "mkfifo {}", path.display());
        path
    }

    /// Where the binary keeps its state by default in this test's home.
    pub fn state_file(&self) -> PathBuf {
        self.path("state/aibridge/state.json")
    }

    pub fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_file()).unwrap()).unwrap()
    }

    pub fn command(&self) -> Command {
        let mut command = self.bare_command();
        command.args(&self.args);
        command
    }

    /// The binary in this test's home and environment, without the test's arguments.
    fn bare_command(&self) -> Command {
        let mut command = Command::new(BIN);
        self.in_home(&mut command);
        command
    }

    /// Runs `command` in this test's home and environment.
    fn in_home(&self, command: &mut Command) {
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env("XDG_DATA_HOME", self.path("data"))
            .envs(self.listen.iter().map(|listen| ("AIBRIDGE_LISTEN", listen)))
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .current_dir(self.dir.path());
    }

    /// Starts the binary with piped stdout, for tests that read output as it arrives.
    pub fn spawn(&self) -> Child {
        self.command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn run(&self) -> Output {
        self.run_command(self.command())
    }

    /// Runs `command` (another program, such as `script`) in this test's home.
    pub fn run_other(&self, mut command: Command) -> Output {
        self.in_home(&mut command);
        self.run_command(command)
    }

    /// Runs the binary as `aibridge ... | head -1` would: stdout is read up to its first line
    /// (4 KiB at most), then closed while the binary may still be writing. Returns what was
    /// read as stdout.
    pub fn run_closing_stdout_after_first_line(&self) -> Output {
        use std::io::{BufRead, Read};
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap().take(4096));
        stdout.read_line(&mut first).unwrap();
        drop(stdout);
        let output = child.wait_with_output().unwrap();
        let output = Output {
            code: output.status.code().unwrap_or(-1),
            stdout: first,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        self.assert_no_secrets(&output);
        output
    }

    /// Runs the binary with `args` instead of the test's own, in the same home.
    pub fn run_with(&self, args: &[&str]) -> Output {
        let mut command = self.bare_command();
        command.args(args);
        self.run_command(command)
    }

    fn run_command(&self, mut command: Command) -> Output {
        let mut child = command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = &self.stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let output = child.wait_with_output().unwrap();
        let output = Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        self.assert_no_secrets(&output);
        output
    }

    fn assert_no_secrets(&self, output: &Output) {
        let state = std::fs::read_to_string(self.state_file()).unwrap_or_default();
        for secret in &self.secrets {
            for (name, text) in [
                ("stdout", &output.stdout),
                ("stderr", &output.stderr),
                ("state file", &state),
            ] {
                assert!(
                    !text.contains(secret.as_str()),
                    "{name} shows a full key:\n{text}"
                );
            }
        }
    }
}

#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(self, expected: i32) -> Self {
        assert_eq!(
            self.code, expected,
            "exit code\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn success(self) -> Self {
        self.code(0)
    }

    pub fn stdout_is(self, expected: &str) -> Self {
        assert_eq!(self.stdout, expected, "stdout (stderr: {})", self.stderr);
        self
    }

    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{}",
            self.stdout
        );
        self
    }

    /// stderr as lines, for exact attempt reports.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    /// An error is one line on stderr: `error: ...`.
    pub fn one_line_error(self, needle: &str) -> Self {
        let lines = self.stderr_lines();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got:\n{}",
            self.stderr
        );
        assert!(lines[0].starts_with("error: "), "{}", self.stderr);
        self.stderr_has(needle)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}):\n{}", self.stdout))
    }
}

/// A running `aibridge serve`, stopped when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Test {
    /// Starts `aibridge serve` on a free port and waits until it listens.
    pub fn serve(&self) -> Server {
        self.serve_with(&["--listen", "127.0.0.1:0"])
    }

    /// Starts `aibridge serve ARGS` and waits until it listens.
    pub fn serve_with(&self, args: &[&str]) -> Server {
        let mut command = self.bare_command();
        command.arg("serve").args(args);
        self.serve_command(command)
    }

    /// Starts `aibridge serve ARGS` with its open-file soft limit lowered to `limit` (the hard
    /// limit stays), as on a desktop that starts processes at 1,024.
    pub fn serve_with_open_file_limit(&self, limit: u64, args: &[&str]) -> Server {
        let mut command = Command::new("sh");
        self.in_home(&mut command);
        command
            .arg("-c")
            .arg(format!("ulimit -Sn {limit} && exec \"$0\" serve \"$@\""))
            .arg(BIN)
            .args(args);
        self.serve_command(command)
    }

    fn serve_command(&self, mut command: Command) -> Server {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("aibridge listening on ") {
                    let _ = address_tx.send(address.to_owned());
                }
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        let base = match address_rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!("serve did not start:\n{}", stderr.lock().unwrap());
            }
        };
        Server {
            child,
            base,
            stderr,
        }
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The listening address, `host:port`.
    pub fn address(&self) -> std::net::SocketAddr {
        self.base["http://".len()..].parse().unwrap()
    }

    /// A Messages request with an empty JSON body, through the bridge's pool.
    pub fn post_message(&self) -> reqwest::blocking::Response {
        self.post_message_with(&[])
    }

    /// [`Server::post_message`], carrying `headers`.
    pub fn post_message_with(&self, headers: &[(&str, &str)]) -> reqwest::blocking::Response {
        let mut request = client().post(self.url("/anthropic/v1/messages")).body("{}");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().unwrap()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr shows `needle` (logs arrive asynchronously).
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.stderr().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "log never showed {needle:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait(&mut self) -> i32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not exit:\n{}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Server {
    /// `GET /_aibridge/pool`.
    pub fn pool(&self) -> Value {
        client()
            .get(self.url("/_aibridge/pool"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// Whether every key of every provider is available.
    pub fn all_keys_available(&self) -> bool {
        self.pool()["providers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|provider| provider["keys"].as_array().unwrap())
            .all(|key| key["state"] == "available")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    client_giving_up_after(std::time::Duration::from_secs(30))
}

/// A client that gives up, and closes its connection, after `timeout`: a caller who leaves.
pub fn client_giving_up_after(timeout: std::time::Duration) -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .unwrap()
}
