//! A real `redis-server` (Debian's package) on a free loopback port, for the fleet tests.
//! It keeps nothing on disk and is killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

/// Where `redis-server` is: on PATH, or where Debian puts it.
fn server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path
        .or_else(|| {
            let debian = PathBuf::from("/usr/bin/redis-server");
            debian.is_file().then_some(debian)
        })
        .expect(
            "redis-server is not installed: `apt-get install -y redis-server` (.ci/run does it)",
        )
}

impl Redis {
    pub fn start() -> Self {
        let mut redis = Self {
            child: None,
            port: super::dead_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        redis.launch();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn launch(&mut self) {
        let child = Command::new(server_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "yes", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
        redis::cmd("PING").query::<()>(&mut connection)?;
        Ok(connection)
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Every key with its value (hash fields and values, or the string), for checking what
    /// is stored.
    pub fn dump(&self) -> Vec<(String, String)> {
        let mut connection = self.connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut connection).unwrap();
        keys.into_iter()
            .map(|key| {
                let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection).unwrap();
                let value = match kind.as_str() {
                    "hash" => {
                        let fields: Vec<String> = redis::cmd("HGETALL")
                            .arg(&key)
                            .query(&mut connection)
                            .unwrap();
                        fields.join(" ")
                    }
                    "string" => redis::cmd("GET").arg(&key).query(&mut connection).unwrap(),
                    other => panic!("unexpected {other} at {key}"),
                };
                (key, value)
            })
            .collect()
    }

    /// Runs one Redis command, as a person at `redis-cli` would.
    pub fn command(&self, args: &[&str]) {
        let mut connection = self.connection().unwrap();
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        let _: redis::Value = command.query(&mut connection).unwrap();
    }

    /// How many milliseconds `key` has left to live (-1: no expiry, -2: absent).
    pub fn ttl_ms(&self, key: &str) -> i64 {
        let mut connection = self.connection().unwrap();
        redis::cmd("PTTL").arg(key).query(&mut connection).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
