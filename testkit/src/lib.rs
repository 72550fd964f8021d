//! Test harness shared by the module's, the client's and the benchmark's tests:
//! starts `redis-server` processes with the fencelock module loaded, on free
//! loopback ports, each in its own temporary directory, and kills them on drop.
//!
//! Everything here panics on failure: it is test code, and a clear panic is
//! the clearest test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod clock;
pub mod cluster;
pub mod family;
pub mod fixtures;
pub mod history;
pub mod hostile;
pub mod linearizable;
pub mod lock;
pub mod register;
pub mod replication;
pub mod retry;
pub mod sentinel;
pub mod timing;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use timing::{until_conclusive, EXPIRY_SLACK, PATIENCE};

/// The path of the module's shared library: `$FENCELOCK_MODULE`, or the
/// release build, or the debug build of this workspace (the Makefile builds
/// the release one before the tests run).
pub fn module_path() -> PathBuf {
    find_module_path().unwrap_or_else(|| {
        panic!(
            "libfencelock.so not found under {}/target; run `cargo build --release -p fencelock` (make test does)",
            workspace_root().display()
        )
    })
}

/// [`module_path`] without the panic: `None` when no build is found (for
/// callers that report the problem their own way, like the benchmark).
pub fn find_module_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FENCELOCK_MODULE") {
        return Some(PathBuf::from(p));
    }
    let root = workspace_root();
    ["release", "debug"]
        .into_iter()
        .map(|profile| root.join("target").join(profile).join("libfencelock.so"))
        .find(|p| p.exists())
}

/// The workspace's top folder (where the module's Cargo.toml is).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A loopback port that nothing listens on now. Ports are handed out from a
/// per-process range (offset by the process id) so that parallel test
/// processes do not race for the same one; cluster bus ports (+10000) are
/// checked too.
pub fn free_port() -> u16 {
    let _ = NEXT_PORT.compare_exchange(
        0,
        20000 + (std::process::id() % 400) as u16 * 50,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let mut p = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        if p >= 40000 {
            NEXT_PORT.store(20000, Ordering::SeqCst);
            p = 20000;
        }
        if port_is_free(p) && port_is_free(p + 10000) {
            return p;
        }
    }
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// How to start a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Load the fencelock module (default true).
    pub module: bool,
    /// Extra `--name value` arguments (config directives).
    pub args: Vec<(String, String)>,
    /// Extra environment variables of the server process (kept across
    /// restarts), e.g. a shifted wall clock from [`clock::ClockStep`].
    pub env: Vec<(String, String)>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            module: true,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// Adds a config directive, e.g. `.arg("appendonly", "yes")`.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.args.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets an environment variable of the server process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Starts a server in a new temporary directory.
    pub fn start(self) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("fencelock-test-")
            .tempdir()
            .expect("tempdir");
        Server::spawn(self, free_port(), Dir::Owned(dir))
    }
}

enum Dir {
    Owned(tempfile::TempDir),
}

impl Dir {
    fn path(&self) -> &Path {
        match self {
            Dir::Owned(d) => d.path(),
        }
    }
}

/// A running `redis-server` on 127.0.0.1, killed (SIGKILL) on drop.
pub struct Server {
    /// The port it listens on.
    pub port: u16,
    config: ServerConfig,
    dir: Dir,
    child: Option<Child>,
}

impl Server {
    /// Starts a server with the module loaded, persistence off.
    pub fn start() -> Server {
        ServerConfig::default().start()
    }

    /// A config to customise before `start()`.
    pub fn config() -> ServerConfig {
        ServerConfig::default()
    }

    fn spawn(config: ServerConfig, port: u16, dir: Dir) -> Server {
        let mut s = Server {
            port,
            config,
            dir,
            child: None,
        };
        s.launch();
        s
    }

    fn command_line(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--port".into(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--enable-debug-command".into(),
            "yes".into(),
            "--logfile".into(),
            "redis.log".into(),
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
            // Full resyncs start at once instead of after Redis's default
            // 5 s wait for more replicas.
            "--repl-diskless-sync-delay".into(),
            "0".into(),
        ];
        if self.config.module {
            a.push("--loadmodule".into());
            a.push(module_path().display().to_string());
        }
        for (k, v) in &self.config.args {
            a.push(format!("--{k}"));
            a.push(v.clone());
        }
        a
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(self.command_line())
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed? make test runs scripts/setup.sh)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "redis-server on port {} exited at start ({status}); log:\n{}",
                        self.port,
                        self.log()
                    );
                }
            }
            if let Ok(mut c) = self
                .client()
                .get_connection_with_timeout(Duration::from_millis(500))
            {
                // Answers PING once the dataset is loaded (LOADING before that).
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server on port {} did not answer within {PATIENCE:?}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's working directory (RDB, AOF, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// A new synchronous connection (RESP2).
    pub fn conn(&self) -> redis::Connection {
        let c = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(10))
            .expect("connect");
        // Longer than any wait a test asks the server for (`WAIT` for
        // replicas, blocking commands) so that the server's answer decides.
        c.set_read_timeout(Some(PATIENCE + Duration::from_secs(30)))
            .expect("timeout");
        c
    }

    /// A new synchronous RESP3 connection.
    pub fn conn_resp3(&self) -> redis::Connection {
        let url = format!("redis://127.0.0.1:{}/?protocol=resp3", self.port);
        redis::Client::open(url)
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(10))
            .expect("connect")
    }

    /// A raw TCP stream to the server, for tests that need to control the
    /// socket itself (e.g. disconnect a blocked client).
    pub fn raw_stream(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("run redis-cli")
    }

    /// Runs `redis-cli` and returns its standard output, trimmed.
    pub fn cli_stdout(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Feeds `input` to `redis-cli -p <port>` on standard input.
    pub fn cli_stdin(&self, input: &str) -> String {
        let mut child = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run redis-cli");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid();
        if pid != 0 {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// `kill -9`: the server dies at once, without saving.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process freezes (connections stay open, nothing answers).
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Stops the server the polite way (`SHUTDOWN NOSAVE` or `SAVE`) and waits.
    pub fn shutdown(&mut self, save: bool) {
        let mode = if save { "SAVE" } else { "NOSAVE" };
        let _ = self.cli(&["SHUTDOWN", mode]);
        if let Some(mut c) = self.child.take() {
            // A saving shutdown writes the whole dataset first.
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again, same port, same directory, same config
    /// (after `kill9` or `shutdown`), and waits until it has loaded.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        // The port may linger for a moment after a kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_is_free(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.launch();
    }

    /// Changes the config used by the next `restart`.
    pub fn set_arg(&mut self, name: &str, value: &str) {
        self.config.args.retain(|(k, _)| k != name);
        self.config.args.push((name.to_string(), value.to_string()));
    }

    /// Makes this server a replica of `master` and waits until the link is up
    /// and the initial sync is done.
    pub fn replicate_from(&self, master: &Server) {
        let mut c = self.conn();
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(master.port)
            .query(&mut c)
            .expect("replicaof");
        self.wait_replication_link();
    }

    /// Waits until `INFO replication` says `master_link_status:up`.
    pub fn wait_replication_link(&self) {
        let deadline = Instant::now() + PATIENCE;
        let mut c = self.conn();
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut c)
                .expect("info");
            if info.contains("master_link_status:up") && !info.contains("master_sync_in_progress:1")
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("replication link did not come up: {info}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Resume first in case a test left it stopped.
            self.resume_pid(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Server {
    fn resume_pid(&self, pid: u32) {
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(pid.to_string())
            .status();
    }
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `timeout`
/// with `what` in the message.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads one field of an `INFO` section (`field:value` line) as text.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::to_string)
    })
}

/// Reads one integer field of `INFO <section>` from the server.
pub fn info_int(conn: &mut redis::Connection, section: &str, field: &str) -> i64 {
    let info: String = redis::cmd("INFO").arg(section).query(conn).expect("INFO");
    info_field(&info, field)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO {section} has no integer field {field}:\n{info}"))
}

/// Wall-clock Unix time in milliseconds (the clock the module's absolute
/// deadlines use).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// `DBSIZE` of the selected database.
pub fn dbsize(conn: &mut impl redis::ConnectionLike) -> i64 {
    redis::cmd("DBSIZE").query(conn).expect("DBSIZE")
}

/// Waits until a server with `appendonly yes` has its AOF on and no AOF
/// rewrite running or scheduled (a replica turns its AOF off during a sync
/// and rewrites it afterwards; until then a crash loses what it received).
pub fn wait_aof_settled(conn: &mut redis::Connection) {
    wait_for("the AOF rewrite to finish", PATIENCE, || {
        let busy = info_int(conn, "persistence", "aof_rewrite_in_progress")
            + info_int(conn, "persistence", "aof_rewrite_scheduled");
        (busy == 0 && info_int(conn, "persistence", "aof_enabled") == 1).then_some(())
    });
}
