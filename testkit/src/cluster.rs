//! A Redis Cluster on loopback for the fault tests: masters with replicas,
//! built with `redis-cli --cluster create`, the module loaded on every node.
//! Each node runs in its own temporary directory (its `nodes.conf` too) and
//! is killed on drop, like every [`Server`].
//!
//! Also the cluster's own vocabulary: key slots (CRC16 with hash tags), the
//! topology as a node sees it (`CLUSTER NODES`), failover, and moving slots
//! by hand or with `redis-cli --cluster reshard`.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{info_field, wait_for, Server, PATIENCE};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The hash slot of a key: CRC16 (XMODEM) of the key, or of its hash tag
/// (the part between the first `{` and the next `}` when not empty), mod
/// 16384 — the same computation as `CLUSTER KEYSLOT`.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// `count` distinct key names `<prefix><n>` whose slots lie in `slots`
/// (found by trying n = 0, 1, 2, ... a bounded number of times).
pub fn keys_in_slots(prefix: &str, slots: RangeInclusive<u16>, count: usize) -> Vec<String> {
    let keys: Vec<String> = (0..2_000_000u32)
        .map(|n| format!("{prefix}{n}"))
        .filter(|k| slots.contains(&key_slot(k.as_bytes())))
        .take(count)
        .collect();
    assert_eq!(keys.len(), count, "keys for slots {slots:?}");
    keys
}

/// One node as another node sees it (one line of `CLUSTER NODES`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Flagged `fail` or `fail?` by the node that answered.
    pub failing: bool,
    /// The node id of its master, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges it serves (importing/migrating markers left out).
    pub slots: Vec<(u16, u16)>,
}

/// Parses `CLUSTER NODES` output.
pub fn parse_nodes(text: &str) -> Vec<NodeView> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split(['@', ',']).next()?;
            let port: u16 = addr.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(NodeView {
                id: f[0].to_string(),
                port,
                master: flags.contains(&"master"),
                failing: flags.contains(&"fail") || flags.contains(&"fail?"),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// A Redis Cluster on 127.0.0.1.
pub struct Cluster {
    /// Every node, in creation order (`redis-cli --cluster create` makes the
    /// first `masters` of them masters).
    pub nodes: Vec<Server>,
    /// Ports of nodes killed through [`Cluster::kill9`].
    dead: Vec<u16>,
}

impl Cluster {
    /// 3 masters with one replica each, healthy.
    pub fn start() -> Cluster {
        Cluster::start_with(3, 1)
    }

    /// `masters` masters with `replicas` replicas each; returns once every
    /// node says `cluster_state:ok`, all agree on the slots, and every
    /// replica is in sync.
    pub fn start_with(masters: usize, replicas: usize) -> Cluster {
        let nodes: Vec<Server> = (0..masters * (1 + replicas))
            .map(|_| {
                Server::config()
                    .arg("cluster-enabled", "yes")
                    // Relative to --dir: the node's temporary directory.
                    .arg("cluster-config-file", "nodes.conf")
                    .arg("cluster-node-timeout", "2000")
                    // A replica that was stopped for a while may still be
                    // elected (the tests stop replicas on purpose).
                    .arg("cluster-replica-validity-factor", "0")
                    // Replicas stay with their master when slots move.
                    .arg("cluster-allow-replica-migration", "no")
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
        let out = redis_cli(&args);
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster {
            nodes,
            dead: Vec::new(),
        };
        cluster.wait_healthy();
        cluster
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> &Server {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// `kill -9` of a node; it stays dead (and is left out of health checks).
    pub fn kill9(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
            .kill9();
        self.dead.push(port);
    }

    /// Ports of the nodes not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .map(|n| n.port)
            .filter(|p| !self.dead.contains(p))
            .collect()
    }

    fn quick_conn(&self, port: u16) -> Option<redis::Connection> {
        let c = self
            .node(port)
            .client()
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        Some(c)
    }

    /// The topology as the node on `port` sees it.
    pub fn view(&self, port: u16) -> Vec<NodeView> {
        let mut c = self.node(port).conn();
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut c)
            .expect("CLUSTER NODES");
        parse_nodes(&text)
    }

    /// Why the cluster is not healthy now, or None when it is.
    fn unhealthy(&self) -> Option<String> {
        let live = self.live_ports();
        let mut agreed: Option<BTreeMap<(u16, u16), u16>> = None;
        for &port in &live {
            let Some(mut c) = self.quick_conn(port) else {
                return Some(format!("{port}: no connection"));
            };
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut c)
                .unwrap_or_default();
            if !info.contains("cluster_state:ok") {
                return Some(format!("{port}: cluster_state not ok"));
            }
            let text: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut c)
                .unwrap_or_default();
            let view = parse_nodes(&text);
            for p in &live {
                let Some(n) = view.iter().find(|n| n.port == *p && !n.failing) else {
                    return Some(format!("{port} does not see {p} as healthy"));
                };
                // Settled roles: a master serves slots, a replica follows a
                // live master.
                let follows_live_master = n.master_id.as_ref().is_some_and(|id| {
                    view.iter()
                        .any(|m| &m.id == id && m.master && !m.failing && live.contains(&m.port))
                });
                if (n.master && n.slots.is_empty()) || (!n.master && !follows_live_master) {
                    return Some(format!("{port} sees {p} in no settled role"));
                }
            }
            let slots: BTreeMap<(u16, u16), u16> = view
                .iter()
                .filter(|n| n.master && !n.failing)
                .flat_map(|n| n.slots.iter().map(move |r| (*r, n.port)))
                .collect();
            let covered: u32 = slots.keys().map(|(a, b)| u32::from(b - a) + 1).sum();
            if covered != u32::from(SLOTS) {
                return Some(format!("{port} sees {covered} slots served"));
            }
            match &agreed {
                None => agreed = Some(slots),
                Some(a) if *a != slots => return Some(format!("{port} disagrees on slots")),
                Some(_) => {}
            }
            let repl: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut c)
                .unwrap_or_default();
            if info_field(&repl, "role").as_deref() == Some("slave")
                && (info_field(&repl, "master_link_status").as_deref() != Some("up")
                    || info_field(&repl, "master_sync_in_progress").as_deref() != Some("0"))
            {
                return Some(format!("{port}: replica not in sync"));
            }
        }
        None
    }

    /// Waits until every live node says `cluster_state:ok`, sees every live
    /// node as healthy, all agree on who serves which slot, and every live
    /// replica is in sync with its master.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + 2 * PATIENCE;
        loop {
            let Some(why) = self.unhealthy() else { return };
            if Instant::now() > deadline {
                panic!("cluster not healthy after {:?}: {why}", 2 * PATIENCE);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cluster as the first live node sees it.
    fn any_view(&self) -> Vec<NodeView> {
        let port = *self.live_ports().first().expect("a live node");
        self.view(port)
    }

    /// Ports of the masters that serve slots.
    pub fn masters(&self) -> Vec<u16> {
        self.any_view()
            .into_iter()
            .filter(|n| n.master && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// (master port, live replica ports) of the shard serving `slot`.
    pub fn shard_of_slot(&self, slot: u16) -> (u16, Vec<u16>) {
        let view = self.any_view();
        let master = view
            .iter()
            .find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .unwrap_or_else(|| panic!("nobody serves slot {slot}"));
        let replicas = view
            .iter()
            .filter(|n| n.master_id.as_deref() == Some(&master.id) && !n.failing)
            .map(|n| n.port)
            .filter(|p| !self.dead.contains(p))
            .collect();
        (master.port, replicas)
    }

    /// (master port, live replica ports) of the shard serving `key`.
    pub fn shard_of(&self, key: &str) -> (u16, Vec<u16>) {
        self.shard_of_slot(key_slot(key.as_bytes()))
    }

    /// The slot ranges the master on `port` serves.
    pub fn slots_of(&self, port: u16) -> Vec<(u16, u16)> {
        self.any_view()
            .into_iter()
            .find(|n| n.port == port)
            .map(|n| n.slots)
            .unwrap_or_default()
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        let mut c = self.node(port).conn();
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut c)
            .expect("CLUSTER MYID")
    }

    /// Seed URLs of the live nodes.
    pub fn urls(&self) -> Vec<String> {
        self.live_ports()
            .into_iter()
            .map(|p| self.node(p).url())
            .collect()
    }

    /// A cluster-aware client (follows MOVED/ASK, retries TRYAGAIN).
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::builder(self.urls())
            .connection_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(30))
            .build()
            .expect("cluster client")
    }

    /// A new synchronous cluster connection.
    pub fn conn(&self) -> redis::cluster::ClusterConnection {
        self.client().get_connection().expect("cluster connection")
    }

    /// Whether the node on `port` says it is a master.
    pub fn is_master(&self, port: u16) -> bool {
        let Some(mut c) = self.quick_conn(port) else {
            return false;
        };
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c).unwrap_or_default();
        role.first()
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .as_deref()
            == Some("master")
    }

    /// Runs `CLUSTER FAILOVER [option]` on the replica on `port` and waits
    /// until it is a master. A manual failover may time out (when a vote
    /// does not come in time); it is asked again, a bounded number of times.
    pub fn failover(&self, replica: u16, option: Option<&str>) {
        for _attempt in 0..5 {
            let mut c = self.node(replica).conn();
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("FAILOVER");
            if let Some(o) = option {
                cmd.arg(o);
            }
            let _: () = cmd.query(&mut c).expect("CLUSTER FAILOVER");
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if self.is_master(replica) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!(
            "replica {replica} did not take over; its log:\n{}",
            self.node(replica).log()
        );
    }

    /// Waits until the node on `port` is a master (after an automatic
    /// failover), at most `timeout`.
    pub fn wait_master(&self, port: u16, timeout: Duration) {
        wait_for(&format!("node {port} to become a master"), timeout, || {
            self.is_master(port).then_some(())
        });
    }

    /// Moves `slot` from the master on `from` to the master on `to` by hand,
    /// the way `redis-cli --cluster reshard` does it: `SETSLOT IMPORTING` on
    /// the target, `SETSLOT MIGRATING` on the source, `MIGRATE ... KEYS` in
    /// batches, then `SETSLOT NODE` on the target, the source and every other
    /// master.
    pub fn move_slot(&self, slot: u16, from: u16, to: u16) {
        let (id_from, id_to) = (self.node_id(from), self.node_id(to));
        let mut src = self.node(from).conn();
        let mut dst = self.node(to).conn();
        let setslot = |c: &mut redis::Connection, how: &str, id: &str| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(how)
                .arg(id)
                .query(c)
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {how}: {e}"));
        };
        setslot(&mut dst, "IMPORTING", &id_from);
        setslot(&mut src, "MIGRATING", &id_to);
        for _batch in 0..10_000 {
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut src)
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut src)
                .expect("MIGRATE");
        }
        setslot(&mut dst, "NODE", &id_to);
        setslot(&mut src, "NODE", &id_to);
        for port in self.masters() {
            if port != from && port != to {
                let mut c = self.node(port).conn();
                setslot(&mut c, "NODE", &id_to);
            }
        }
    }

    /// `redis-cli --cluster reshard`: moves `count` slots from the master on
    /// `from` to the master on `to` (redis-cli takes the source's lowest
    /// slots first).
    pub fn reshard(&self, from: u16, to: u16, count: u16) {
        let out = redis_cli(&[
            "--cluster".to_string(),
            "reshard".to_string(),
            format!("127.0.0.1:{from}"),
            "--cluster-from".to_string(),
            self.node_id(from),
            "--cluster-to".to_string(),
            self.node_id(to),
            "--cluster-slots".to_string(),
            count.to_string(),
            "--cluster-yes".to_string(),
        ]);
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn redis_cli(args: &[String]) -> Output {
    Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_the_cluster_spec() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "e7d1 127.0.0.1:30004@40004 slave 67ed 0 1426238317239 4 connected\n\
                    67ed 127.0.0.1:30002@40002,host master - 0 1426238316232 2 connected 5461-10922 [5462->-e7d1]\n\
                    292f 127.0.0.1:30003@40003 myself,master,fail? - 0 0 3 connected 10923-16383 16000\n";
        let v = parse_nodes(text);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].port, 30004);
        assert!(!v[0].master);
        assert_eq!(v[0].master_id.as_deref(), Some("67ed"));
        assert_eq!(v[1].slots, vec![(5461, 10922)]);
        assert!(v[2].failing);
        assert_eq!(v[2].slots, vec![(10923, 16383), (16000, 16000)]);
    }
}
