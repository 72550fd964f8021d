//! A `redis-sentinel` process for the fault tests: it watches one master
//! under the name `m` (quorum 1, down after 1 s, failover timeout 5 s) from
//! its own temporary directory on a free loopback port, and is killed on
//! drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, info_field, wait_for, Server, PATIENCE};

/// The name Sentinel knows the master by.
pub const MASTER_NAME: &str = "m";

/// A running `redis-sentinel` on 127.0.0.1.
pub struct Sentinel {
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Sentinel {
    /// Starts a sentinel that monitors `master` and waits until it answers
    /// and knows `replicas` replicas of it (start it after the replicas are
    /// attached: Sentinel learns them from the master's `INFO`).
    pub fn start(master: &Server, replicas: usize) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("fencelock-sentinel-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let conf = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             protected-mode no\n\
             daemonize no\n\
             dir {dir}\n\
             logfile sentinel.log\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {mport} 1\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.path().display(),
            mport = master.port,
        );
        // Sentinel rewrites its config file: it must be writable.
        let path = dir.path().join("sentinel.conf");
        std::fs::write(&path, conf).expect("write sentinel.conf");
        let child = Command::new("redis-sentinel")
            .arg(&path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-sentinel (scripts/setup.sh installs it)");
        let s = Sentinel {
            port,
            dir,
            child: Some(child),
        };
        wait_for("sentinel to answer", PATIENCE, || {
            let mut c = s.try_conn()?;
            redis::cmd("PING").query::<String>(&mut c).ok()
        });
        wait_for("sentinel to know the master's replicas", PATIENCE, || {
            (s.replicas().len() >= replicas).then_some(())
        });
        s
    }

    /// Its working directory (config and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    fn try_conn(&self) -> Option<redis::Connection> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(c)
    }

    /// A connection to the sentinel.
    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("connect to sentinel")
    }

    /// The port of the master Sentinel names for `m` now.
    pub fn master_port(&self) -> Option<u16> {
        let mut c = self.try_conn()?;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query(&mut c)
            .ok()?;
        addr.get(1)?.parse().ok()
    }

    /// Ports of the replicas Sentinel knows for `m` (with their flags).
    pub fn replicas(&self) -> Vec<(u16, String)> {
        let Some(mut c) = self.try_conn() else {
            return Vec::new();
        };
        let list: Vec<Vec<String>> = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(MASTER_NAME)
            .query(&mut c)
            .unwrap_or_default();
        list.iter()
            .filter_map(|fields| {
                let get = |name: &str| {
                    fields
                        .chunks(2)
                        .find(|kv| kv.first().map(String::as_str) == Some(name))
                        .and_then(|kv| kv.get(1).cloned())
                };
                Some((get("port")?.parse().ok()?, get("flags")?))
            })
            .collect()
    }

    /// `SENTINEL FAILOVER m`, asked again (every 200 ms, for at most
    /// [`PATIENCE`]) while Sentinel answers that it cannot start one yet.
    pub fn failover(&self) {
        let mut last = String::new();
        let until = Instant::now() + PATIENCE;
        while Instant::now() < until {
            let mut c = self.conn();
            match redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(MASTER_NAME)
                .query::<()>(&mut c)
            {
                Ok(()) => return,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("SENTINEL FAILOVER refused: {last}; log:\n{}", self.log());
    }

    /// Waits until Sentinel names `server` as the master of `m` and that
    /// server says it is a master.
    pub fn wait_master(&self, server: &Server, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.master_port() == Some(server.port) {
                let role = server
                    .client()
                    .get_connection_with_timeout(Duration::from_secs(1))
                    .ok()
                    .and_then(|mut c| {
                        redis::cmd("INFO")
                            .arg("replication")
                            .query::<String>(&mut c)
                            .ok()
                    })
                    .and_then(|info| info_field(&info, "role"));
                if role.as_deref() == Some("master") {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "sentinel did not fail over to port {} within {timeout:?} (names {:?}); log:\n{}",
                    server.port,
                    self.master_port(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
