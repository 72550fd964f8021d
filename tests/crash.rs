//! Crash safety: `kill -9` at a random moment under a steady
//! acquire/renew/release load (with re-entry and WAIT), then a restart from
//! the AOF (`appendfsync everysec` and `always`) or from RDB snapshots.
//! Clients log every answer they got. After each restart:
//! - no lock is held by two owners: with `appendfsync always` every answered
//!   effect survived, so the server shows exactly what the clients were told
//!   (never an older holder than the newest grant, every lease a client
//!   still counts on is there with its token and deadline); an RDB snapshot
//!   — and an `everysec` AOF, which may lose the last writes before the
//!   crash (Redis holds a write back for up to 2 s while a background fsync
//!   runs, and answers meanwhile) — may roll back to an older holder, but
//!   only to a grant that was really made;
//! - no token is ever issued again: new grants exceed every token any
//!   client was ever answered;
//! - no lock never expires: once the longest lease has passed, all are gone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::lock::{self, acquire, digest, exists, force_release, stat};
use testkit::timing::{before, lease_ms};
use testkit::{dbsize, until_conclusive, wait_for, Server, ServerConfig, EXPIRY_SLACK, PATIENCE};

const KEYS: usize = 24;
const CLIENTS: usize = 4;
const ROUNDS: usize = 3;
const MAX_TTL_MS: u64 = 2_000;
/// Requests each round's load must have answered before the crash.
const MIN_ANSWERED: u64 = 200;

/// xorshift64: reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t | 1
}

/// What the clients were told, across all rounds.
#[derive(Default)]
struct Log {
    /// Every granted token (fresh grant, re-entry, hand-off) → (key, owner).
    grants: HashMap<i64, (usize, String)>,
    /// Leases the clients count on: (key, owner) → (token, holds, held at
    /// least until). The server's deadline is at or after `until`, which is
    /// measured from before the request was sent.
    beliefs: HashMap<(usize, String), (i64, i64, Instant)>,
    /// Keys whose last request of some client got no answer (in flight when
    /// the server died): the client cannot know its effect.
    uncertain: HashSet<usize>,
    /// Problems the clients saw while the server ran.
    violations: Vec<String>,
    /// Requests answered (all rounds).
    answered: u64,
    /// Every token answered before the last crash: later grants exceed it.
    floor: i64,
}

impl Log {
    fn granted(&mut self, key: usize, owner: &str, token: i64) {
        if token <= self.floor {
            self.violations.push(format!(
                "token {token} granted for key {key} to {owner}, not above {} answered before the crash",
                self.floor
            ));
        }
        match self.grants.get(&token) {
            Some((k, o)) if (*k, o.as_str()) != (key, owner) => self.violations.push(format!(
                "token {token} granted for key {key} to {owner}, earlier for key {k} to {o}"
            )),
            _ => {
                self.grants.insert(token, (key, owner.to_string()));
            }
        }
    }

    /// The greatest token answered for `key`, with its owner.
    fn newest(&self, key: usize) -> Option<(i64, &str)> {
        self.grants
            .iter()
            .filter(|(_, (k, _))| *k == key)
            .max_by_key(|(t, _)| **t)
            .map(|(t, (_, o))| (*t, o.as_str()))
    }

    fn max_token(&self) -> i64 {
        self.grants.keys().copied().max().unwrap_or(0)
    }
}

type Shared = Arc<Mutex<Log>>;

/// One client: acquires (sometimes with WAIT), re-enters, renews and
/// releases random keys until `stop` or until its connection dies.
fn client(server_port: u16, owner: String, seed: u64, stop: Instant, log: Shared) {
    let mut rng = Rng(seed | 1);
    let url = format!("redis://127.0.0.1:{server_port}/");
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(10))
        .unwrap();
    // Long: a request ends with its answer or with the crash (the
    // connection is reset), not by the client giving up.
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    while Instant::now() < stop {
        let key = rng.below(KEYS as u64) as usize;
        let name = format!("k{key}");
        let ttl = 300 + rng.below(MAX_TTL_MS - 300);
        let sent = Instant::now();
        let belief = log
            .lock()
            .unwrap()
            .beliefs
            .get(&(key, owner.clone()))
            .copied();
        let held = belief.filter(|(_, _, until)| *until > sent + Duration::from_millis(100));
        let choice = rng.below(10);
        // A request answered before the lease the client counts on ended
        // surely reached the server within it; one answered later may have
        // come too late (a slow, loaded machine), and then finding the lease
        // gone is no violation.
        let answered = match held {
            Some((token, holds, until)) if choice < 3 => {
                let r: redis::RedisResult<i64> = redis::cmd("LOCK.RENEW")
                    .arg(&name)
                    .arg(&owner)
                    .arg(ttl)
                    .query(&mut c);
                r.map(|renewed| {
                    let in_lease = Instant::now() < until;
                    let mut l = log.lock().unwrap();
                    if renewed == 1 {
                        let until = sent + Duration::from_millis(ttl);
                        l.beliefs
                            .insert((key, owner.clone()), (token, holds, until));
                    } else {
                        if in_lease {
                            l.violations
                                .push(format!("{owner} lost {name} within its lease (renew)"));
                        }
                        l.beliefs.remove(&(key, owner.clone()));
                    }
                })
            }
            Some((token, holds, until)) if choice < 5 => {
                let r: redis::RedisResult<Option<i64>> = redis::cmd("LOCK.ACQUIRE")
                    .arg(&name)
                    .arg(&owner)
                    .arg(ttl)
                    .query(&mut c);
                r.map(|got| {
                    let in_lease = Instant::now() < until;
                    let mut l = log.lock().unwrap();
                    if got != Some(token) && in_lease {
                        l.violations.push(format!(
                            "{owner} re-entered {name} (token {token}) and got {got:?}"
                        ));
                    }
                    let until = sent + Duration::from_millis(ttl);
                    match got {
                        Some(t) => {
                            l.granted(key, &owner, t);
                            // A fresh grant (the old lease had ended) starts
                            // counting holds anew.
                            let holds = if t == token { holds + 1 } else { 1 };
                            l.beliefs.insert((key, owner.clone()), (t, holds, until));
                        }
                        None => {
                            l.beliefs.remove(&(key, owner.clone()));
                        }
                    }
                })
            }
            Some((token, _, until)) => {
                let r: redis::RedisResult<Option<i64>> = redis::cmd("LOCK.RELEASE")
                    .arg(&name)
                    .arg(&owner)
                    .query(&mut c);
                r.map(|left| {
                    let in_lease = Instant::now() < until;
                    let mut l = log.lock().unwrap();
                    match left {
                        Some(0) => {
                            l.beliefs.remove(&(key, owner.clone()));
                        }
                        Some(n) => {
                            l.beliefs.insert((key, owner.clone()), (token, n, until));
                        }
                        None => {
                            if in_lease {
                                l.violations.push(format!(
                                    "{owner} lost {name} within its lease (release)"
                                ));
                            }
                            l.beliefs.remove(&(key, owner.clone()));
                        }
                    }
                })
            }
            None => {
                let mut cmd = redis::cmd("LOCK.ACQUIRE");
                cmd.arg(&name).arg(&owner).arg(ttl);
                if rng.below(20) == 0 {
                    cmd.arg("WAIT").arg(10 + rng.below(50));
                }
                let r: redis::RedisResult<Option<i64>> = cmd.query(&mut c);
                r.map(|got| {
                    if let Some(t) = got {
                        let mut l = log.lock().unwrap();
                        l.granted(key, &owner, t);
                        // A lease of ours that ran out and was granted to us
                        // again would be a fresh grant; count holds anew.
                        let holds = match belief {
                            Some((old, h, _)) if old == t => h + 1,
                            _ => 1,
                        };
                        let until = sent + Duration::from_millis(ttl);
                        l.beliefs.insert((key, owner.clone()), (t, holds, until));
                    }
                })
            }
        };
        if answered.is_err() {
            // The server died with this request in flight.
            log.lock().unwrap().uncertain.insert(key);
            return;
        }
        log.lock().unwrap().answered += 1;
    }
}

/// How the server persists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Persistence {
    /// The AOF with `appendfsync always`: every answered effect survives a
    /// `kill -9`.
    AofAlways,
    /// The AOF with `appendfsync everysec`: the writes of the last moments
    /// before a `kill -9` may be lost (a restart goes back in time).
    AofEverysec,
    /// RDB snapshots: a restart goes back to the last one.
    Rdb,
}

/// Runs `ROUNDS` rounds of load → `kill -9` → restart → checks on one
/// server. Somewhere in each load the server also starts a background
/// AOF rewrite or RDB snapshot, so some crashes hit one.
fn crash_rounds(config: ServerConfig, persistence: Persistence) {
    let exact = persistence == Persistence::AofAlways;
    let seed = seed();
    let mut rng = Rng(seed);
    let mut server = config.start();
    let log: Shared = Arc::new(Mutex::new(Log::default()));
    for round in 0..ROUNDS {
        let ctx = format!("seed {seed}, round {round}");
        let load_for = Duration::from_millis(700 + rng.below(1_100));
        // Only a bound: the crash ends the clients.
        let stop = Instant::now() + 2 * PATIENCE;
        let answered_before = log.lock().unwrap().answered;
        let threads: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (log, port, s) = (log.clone(), server.port, rng.next());
                let owner = format!("c{i}.r{round}");
                std::thread::spawn(move || client(port, owner, s, stop, log))
            })
            .collect();
        let background_at = Duration::from_millis(rng.below(load_for.as_millis() as u64));
        std::thread::sleep(background_at);
        let mut admin = server.conn();
        let command = match persistence {
            Persistence::AofAlways | Persistence::AofEverysec => "BGREWRITEAOF",
            Persistence::Rdb => "BGSAVE",
        };
        // Refused only when one is running already, which serves as well.
        let _: redis::RedisResult<String> = redis::cmd(command).query(&mut admin);
        std::thread::sleep(load_for - background_at);
        // However slow this machine: the crash comes under a load that has
        // been answered (a slow one only crashes later).
        wait_for("the load to be answered", PATIENCE, || {
            let l = log.lock().unwrap();
            (l.answered >= answered_before + MIN_ANSWERED && !l.grants.is_empty()).then_some(())
        });
        server.kill9();
        for t in threads {
            t.join().unwrap();
        }
        server.restart();
        let mut c = server.conn();

        let mut l = log.lock().unwrap();
        assert!(l.violations.is_empty(), "{ctx}: {:?}", l.violations);
        assert!(
            l.answered > 100 && !l.grants.is_empty(),
            "{ctx}: the load made {} requests and {} grants",
            l.answered,
            l.grants.len()
        );
        let uncertain = std::mem::take(&mut l.uncertain);
        for key in 0..KEYS {
            let name = format!("k{key}");
            let shown = lock::info(&mut c, &name);
            let shown_at = Instant::now();
            if let Some(s) = &shown {
                assert!(s.owner.starts_with('c'), "{ctx}: {name} held by {s:?}");
                match l.grants.get(&s.token) {
                    Some((k, o)) => assert_eq!(
                        (*k, o.as_str()),
                        (key, s.owner.as_str()),
                        "{ctx}: {name} shows token {} of another grant",
                        s.token
                    ),
                    // Granted but never answered: only a request in flight
                    // when the server died.
                    None => assert!(
                        uncertain.contains(&key) || !exact,
                        "{ctx}: {name} shows {s:?}, a grant nobody was answered"
                    ),
                }
            }
            if !exact {
                continue;
            }
            // Never an older holder than the newest grant answered.
            if let (Some(s), Some((newest, owner))) = (&shown, l.newest(key)) {
                assert!(
                    s.token >= newest,
                    "{ctx}: {name} shows {s:?} though token {newest} was granted to {owner} later: \
                     a lock with two owners"
                );
            }
            if uncertain.contains(&key) {
                continue;
            }
            // Every lease a client counts on is there, whole.
            for ((k, owner), (token, holds, until)) in &l.beliefs {
                // Counted on still when the server answered (which it did
                // by `shown_at`; 50 ms for its millisecond clock).
                if *k != key || *until < shown_at + Duration::from_millis(50) {
                    continue;
                }
                let s = shown.as_ref().unwrap_or_else(|| {
                    panic!(
                        "{ctx}: {owner} holds {name} (token {token}) for {:?} more, \
                         but the restarted server has no lock",
                        *until - shown_at
                    )
                });
                assert_eq!(
                    (s.owner.as_str(), s.token, s.holds),
                    (owner.as_str(), *token, *holds),
                    "{ctx}: {name}"
                );
                let remaining = (*until - Instant::now()).as_millis() as i64;
                assert!(
                    s.ttl + 50 >= remaining,
                    "{ctx}: {name} lease shortened: ttl {} < {remaining}",
                    s.ttl
                );
            }
        }
        l.beliefs.clear();
        let max_before = l.max_token();
        l.floor = max_before;
        drop(l);

        // No lock never expires: nobody renews now.
        wait_for(
            "every lease to run out after the restart",
            Duration::from_millis(MAX_TTL_MS) + PATIENCE,
            || (dbsize(&mut c) == 0).then_some(()),
        );

        // No token issued again: fresh grants exceed every answered token.
        for key in 0..KEYS {
            let name = format!("k{key}");
            let t = acquire(&mut c, &name, "checker", 60_000).unwrap();
            assert!(
                t > max_before,
                "{ctx}: {name} granted token {t} after the restart, {max_before} answered before"
            );
            log.lock().unwrap().granted(key, "checker", t);
            assert_eq!(force_release(&mut c, &name), 1);
        }
    }
    let l = log.lock().unwrap();
    assert!(l.violations.is_empty(), "seed {seed}: {:?}", l.violations);
}

#[test]
fn kill9_under_load_then_restart_from_the_aof_with_fsync_everysec() {
    crash_rounds(
        Server::config()
            .arg("appendonly", "yes")
            .arg("appendfsync", "everysec")
            // Rewrites happen during the load, so some crashes hit one.
            .arg("auto-aof-rewrite-min-size", "64kb")
            .arg("auto-aof-rewrite-percentage", "50"),
        Persistence::AofEverysec,
    );
}

#[test]
fn kill9_under_load_then_restart_from_the_aof_with_fsync_always() {
    crash_rounds(
        Server::config()
            .arg("appendonly", "yes")
            .arg("appendfsync", "always")
            // Rewrites in command form: the locks go through aof_rewrite.
            .arg("aof-use-rdb-preamble", "no")
            .arg("auto-aof-rewrite-min-size", "64kb")
            .arg("auto-aof-rewrite-percentage", "50"),
        Persistence::AofAlways,
    );
}

#[test]
fn kill9_under_load_then_restart_from_rdb_snapshots() {
    crash_rounds(Server::config().arg("save", "1 1"), Persistence::Rdb);
}

#[test]
fn a_restart_expires_overdue_leases_at_once_and_keeps_live_ones() {
    let aof = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always");
    for config in [aof, Server::config()] {
        // The leases must still be live when the server dies (else it
        // expired them itself): again with longer ones when they were not.
        until_conclusive(|attempt| {
            let ttl = lease_ms(300, attempt);
            let mut server = config.clone().start();
            let mut c = server.conn();
            let sent = Instant::now();
            for i in 0..10 {
                acquire(&mut c, &format!("short{i}"), "a", ttl).unwrap();
            }
            let ended = Instant::now() + Duration::from_millis(ttl);
            let t = acquire(&mut c, "long", "a", 600_000).unwrap();
            acquire(&mut c, "long", "a", 600_000).unwrap();
            let before_crash = digest(&mut c, "long");
            let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
            drop(c);
            server.kill9();
            before(
                "the crash",
                Instant::now(),
                sent + Duration::from_millis(ttl),
            )?;
            // Down until every short lease has passed.
            std::thread::sleep(
                (ended + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
            );
            server.restart();
            let restarted = Instant::now();
            let mut c = server.conn();
            assert_eq!(digest(&mut c, "long"), before_crash, "port {}", server.port);
            let i = lock::info(&mut c, "long").unwrap();
            assert_eq!((i.owner.as_str(), i.holds, i.token), ("a", 2, t));
            wait_for("the overdue leases to be expired", EXPIRY_SLACK, || {
                (!(0..10).any(|i| exists(&mut c, &format!("short{i}")))).then_some(())
            });
            assert!(restarted.elapsed() < EXPIRY_SLACK);
            assert_eq!(stat(&mut c, "expired"), 10);
            Ok(())
        });
    }
}

#[test]
fn tokens_after_a_restart_exceed_grants_lost_with_the_crash() {
    // An RDB snapshot does not hold the grants made after it.
    let mut server = Server::start();
    let mut c = server.conn();
    let saved = acquire(&mut c, "k", "a", 60_000).unwrap();
    let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    assert_eq!(force_release(&mut c, "k"), 1);
    let lost = acquire(&mut c, "k", "b", 60_000).unwrap();
    let lost_other = acquire(&mut c, "other", "b", 60_000).unwrap();
    drop(c);
    server.kill9();
    server.restart();
    let mut c = server.conn();
    let i = lock::info(&mut c, "k").unwrap();
    assert_eq!((i.owner.as_str(), i.token), ("a", saved), "the snapshot");
    assert!(!exists(&mut c, "other"));
    let t = acquire(&mut c, "other", "c", 60_000).unwrap();
    assert!(
        t > lost && t > lost_other,
        "{t} after the crash, lost {lost}"
    );
    assert_eq!(force_release(&mut c, "k"), 1);
    let t2 = acquire(&mut c, "k", "c", 60_000).unwrap();
    assert!(t2 > t);
}
