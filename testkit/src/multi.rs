//! Multi-process topologies for the fault tests: a Redis Cluster built with
//! `redis-cli --cluster create`, and a `redis-sentinel` watching a master.
//! Every process runs on 127.0.0.1 in its own temporary directory and is
//! killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, info_field, wait_for, Server};

/// A Redis Cluster on loopback, the module loaded on every node.
pub struct Cluster {
    /// All nodes, in creation order (masters first, then replicas, as
    /// `redis-cli --cluster create` assigns them).
    pub nodes: Vec<Server>,
}

impl Cluster {
    /// Starts `masters` masters with `replicas` replicas each and waits until
    /// every node reports `cluster_state:ok` and every replica is in sync.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        let nodes: Vec<Server> = (0..masters * (1 + replicas))
            .map(|_| {
                Server::config()
                    .arg("cluster-enabled", "yes")
                    .arg("cluster-config-file", "nodes.conf")
                    .arg("cluster-node-timeout", "2000")
                    .arg("cluster-replica-validity-factor", "0")
                    .start()
            })
            .collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster { nodes };
        cluster.wait_healthy();
        cluster
    }

    /// Waits until every running node says `cluster_state:ok`, knows every
    /// node, and every replica's link to its master is up.
    pub fn wait_healthy(&self) {
        let n = self.nodes.len();
        wait_for("a healthy cluster", Duration::from_secs(60), || {
            self.nodes
                .iter()
                .all(|node| {
                    let Ok(mut c) = node
                        .client()
                        .get_connection_with_timeout(Duration::from_secs(1))
                    else {
                        return false;
                    };
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query(&mut c)
                        .unwrap_or_default();
                    let nodes: String = redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query(&mut c)
                        .unwrap_or_default();
                    let repl: String = redis::cmd("INFO")
                        .arg("replication")
                        .query(&mut c)
                        .unwrap_or_default();
                    let replica_ok = !repl.contains("role:slave")
                        || (repl.contains("master_link_status:up")
                            && !repl.contains("master_sync_in_progress:1"));
                    info.contains("cluster_state:ok")
                        && nodes
                            .lines()
                            .filter(|l| !l.contains("fail") && !l.contains("handshake"))
                            .count()
                            == n
                        && replica_ok
                })
                .then_some(())
        });
    }

    /// Seed URLs for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Server::url).collect()
    }

    /// A cluster-aware client.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.urls()).expect("cluster client")
    }

    /// The node with this port.
    pub fn node(&self, port: u16) -> &Server {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("node by port")
    }

    /// The node with this port, mutably (to kill or restart it).
    pub fn node_mut(&mut self, port: u16) -> &mut Server {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node by port")
    }

    /// The slot of a key.
    pub fn slot(&self, key: &str) -> u16 {
        let mut c = self.nodes[0].conn();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("keyslot")
    }

    /// (master port, replica ports) serving `slot`, from the first node that
    /// answers with a consistent view.
    pub fn shard_of_slot(&self, slot: u16) -> (u16, Vec<u16>) {
        for node in &self.nodes {
            let Ok(mut c) = node
                .client()
                .get_connection_with_timeout(Duration::from_secs(1))
            else {
                continue;
            };
            let Ok(v) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<redis::Value>(&mut c)
            else {
                continue;
            };
            let redis::Value::Array(ranges) = v else {
                continue;
            };
            for r in ranges {
                let redis::Value::Array(f) = r else { continue };
                let lo: i64 = redis::from_redis_value_ref(&f[0]).unwrap_or(-1);
                let hi: i64 = redis::from_redis_value_ref(&f[1]).unwrap_or(-1);
                if (lo..=hi).contains(&i64::from(slot)) {
                    let port = |v: &redis::Value| -> u16 {
                        let redis::Value::Array(a) = v else { return 0 };
                        redis::from_redis_value_ref::<i64>(&a[1]).unwrap_or(0) as u16
                    };
                    let master = port(&f[2]);
                    let replicas = f[3..].iter().map(port).collect();
                    return (master, replicas);
                }
            }
        }
        panic!("no node knows slot {slot}");
    }

    /// The ports of the replicas connected to the master on `port` (from
    /// its own `INFO replication`, which does not lag behind gossip).
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let mut c = self.node(port).conn();
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut c)
            .expect("info");
        info.lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .filter_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("port=")))
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }

    /// The node id of a node.
    pub fn node_id(&self, port: u16) -> String {
        let mut c = self.node(port).conn();
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut c)
            .expect("myid")
    }
}

/// A `redis-sentinel` process watching one master under the name `m`.
pub struct Sentinel {
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Sentinel {
    /// Starts a sentinel that monitors `master` as `m` (quorum 1, down after
    /// 1 s, failover timeout 5 s) and waits until it sees the master's
    /// replicas (if `replicas` > 0).
    pub fn start(master: &Server, replicas: usize) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("fencelock-sentinel-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let conf = format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {dir}\nlogfile sentinel.log\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor m 127.0.0.1 {mport} 1\n\
             sentinel down-after-milliseconds m 1000\n\
             sentinel failover-timeout m 5000\n\
             sentinel parallel-syncs m 1\n",
            dir = dir.path().display(),
            mport = master.port,
        );
        let path = dir.path().join("sentinel.conf");
        std::fs::write(&path, conf).expect("write sentinel.conf");
        let child = Command::new("redis-sentinel")
            .arg(&path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-sentinel (make test installs it)");
        let s = Sentinel {
            port,
            dir,
            child: Some(child),
        };
        wait_for("sentinel to answer", Duration::from_secs(20), || {
            let mut c = s.conn_opt()?;
            redis::cmd("PING").query::<String>(&mut c).ok()
        });
        wait_for(
            "sentinel to discover the replicas",
            Duration::from_secs(30),
            || {
                let mut c = s.conn_opt()?;
                let v: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg("m")
                    .query(&mut c)
                    .ok()?;
                (v.len() >= replicas).then_some(())
            },
        );
        s
    }

    fn conn_opt(&self) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()
    }

    /// The port of the master Sentinel currently names for `m`.
    pub fn master_port(&self) -> Option<u16> {
        let mut c = self.conn_opt()?;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("m")
            .query(&mut c)
            .ok()?;
        addr.get(1)?.parse().ok()
    }

    /// Waits until Sentinel names `port` as the master and that server says
    /// it is a master.
    pub fn wait_master(&self, server: &Server, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.master_port() == Some(server.port) {
                let mut c = server.conn();
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut c)
                    .unwrap_or_default();
                if info_field(&info, "role").as_deref() == Some("master") {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "sentinel did not fail over to port {} (names {:?}); log:\n{}",
                    server.port,
                    self.master_port(),
                    std::fs::read_to_string(self.dir.path().join("sentinel.log"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
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
