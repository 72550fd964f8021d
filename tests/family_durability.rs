//! The lock family survives what the exclusive lock survives. One mix of
//! every kind — an exclusive lock re-entered (holds 2), a read/write lock
//! held shared by three readers (one a writer that downgraded, one
//! re-entered), a semaphore of 5 permits held 1 + 2 + 1 — goes through:
//! - RDB: `DEBUG RELOAD`, a restart from the file;
//! - the AOF: a rewrite (with and without RDB preamble), changes after it,
//!   a restart that replays both;
//! - replication: the replica's `LOCK.INFO`, `DEBUG DIGEST-VALUE` and
//!   `MEMORY USAGE` equal the master's; one reader's expiry reaches it and
//!   the other readers still hold; a promoted replica expires each holder
//!   on time and issues larger tokens;
//! - `kill -9` under a load of every kind with `appendfsync always`: every
//!   acknowledged grant is there with its token, nothing twice;
//! - a cluster: a slot moved with `MIGRATE` keeps shared and semaphore
//!   holders, tokens and deadlines, and the leases expire on the target;
//!   `RESTORE` of a `DUMP` of a semaphore under another name works.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Connection, ConnectionLike, Value};
use testkit::cluster::{key_slot, Cluster};
use testkit::family::{
    self, expect_holder_expiry, force_release_owner, grant_timed, memory_usage, release_count,
    try_acquire, Info, Kind,
};
use testkit::fixtures::{aof_base_file, parse_resp_commands};
use testkit::lock::{digest, exists, wait_expired, TimedLease};
use testkit::replication::{pair, synced};
use testkit::timing::{before, lease_ms};
use testkit::{info_field, until_conclusive, wait_aof_settled, wait_for, Server, PATIENCE};

/// Longer than anything a test does: these leases never end in a test.
const LONG: u64 = 600_000;
/// The semaphore's permits.
const LIMIT: u64 = 5;

/// What one key of the mix must hold.
#[derive(Clone, Debug)]
struct Expect {
    key: String,
    mode: &'static str,
    /// (owner, holds or permits, token), oldest grant first.
    held: Vec<(String, i64, i64)>,
}

/// The mix: its exclusive, shared and semaphore keys, at these indexes.
#[derive(Clone, Debug)]
struct Mix([Expect; 3]);

const EXCLUSIVE: usize = 0;
const SHARED: usize = 1;
const SEMAPHORE: usize = 2;

impl Mix {
    fn keys(&self) -> Vec<String> {
        self.0.iter().map(|e| e.key.clone()).collect()
    }
    fn exclusive(&self) -> &str {
        &self.0[EXCLUSIVE].key
    }
    fn shared(&self) -> &str {
        &self.0[SHARED].key
    }
    fn semaphore(&self) -> &str {
        &self.0[SEMAPHORE].key
    }
    /// The greatest token any holder of the mix has.
    fn max_token(&self) -> i64 {
        self.0
            .iter()
            .flat_map(|e| e.held.iter().map(|h| h.2))
            .max()
            .unwrap()
    }
    /// Adds a holder to the key at `i` (after the others: the newest grant).
    fn push(&mut self, i: usize, owner: &str, amount: i64, token: i64) {
        self.0[i].held.push((owner.to_string(), amount, token));
    }
    /// The token of `owner` at the key at `i`.
    fn token(&self, i: usize, owner: &str) -> i64 {
        self.0[i].held.iter().find(|h| h.0 == owner).unwrap().2
    }
    /// Sets what `owner` holds at the key at `i` (0: gone).
    fn set(&mut self, i: usize, owner: &str, amount: i64) {
        let held = &mut self.0[i].held;
        let at = held.iter().position(|h| h.0 == owner).unwrap();
        if amount == 0 {
            held.remove(at);
        } else {
            held[at].1 = amount;
        }
    }
}

/// A grant that must happen: the token.
fn grant(c: &mut impl ConnectionLike, key: &str, owner: &str, kind: Kind) -> i64 {
    try_acquire(c, key, owner, LONG, kind)
        .unwrap_or_else(|e| panic!("LOCK.ACQUIRE {key} {owner} {kind:?}: {e}"))
        .unwrap_or_else(|| panic!("{key} not granted to {owner} ({kind:?})"))
}

/// Builds the mix on keys `<prefix>x`, `<prefix>s`, `<prefix>sem`.
fn make_mix(c: &mut impl ConnectionLike, prefix: &str) -> Mix {
    let (x, s, sem) = (
        format!("{prefix}x"),
        format!("{prefix}s"),
        format!("{prefix}sem"),
    );
    let w = grant(c, &x, "w", Kind::Exclusive);
    assert_eq!(grant(c, &x, "w", Kind::Exclusive), w, "re-entry");
    // A writer downgrades (exclusive + shared, same token), then lets go
    // of its exclusive hold: a reader like the others.
    let dw = grant(c, &s, "dw", Kind::Exclusive);
    assert_eq!(grant(c, &s, "dw", Kind::Shared), dw, "downgrade");
    assert_eq!(release_count(c, &s, "dw", 1), Some(1));
    let r1 = grant(c, &s, "r1", Kind::Shared);
    let r2 = grant(c, &s, "r2", Kind::Shared);
    // A reader re-enters after a later grant: it keeps its place.
    assert_eq!(grant(c, &s, "r1", Kind::Shared), r1, "re-entry");
    let p1 = grant(c, &sem, "p1", Kind::permits(LIMIT, 1));
    let p2 = grant(c, &sem, "p2", Kind::permits(LIMIT, 2));
    let p3 = grant(c, &sem, "p3", Kind::permits(LIMIT, 1));
    let held = |v: &[(&str, i64, i64)]| -> Vec<(String, i64, i64)> {
        v.iter().map(|(o, a, t)| (o.to_string(), *a, *t)).collect()
    };
    let mix = Mix([
        Expect {
            key: x,
            mode: "exclusive",
            held: held(&[("w", 2, w)]),
        },
        Expect {
            key: s,
            mode: "shared",
            held: held(&[("dw", 1, dw), ("r1", 2, r1), ("r2", 1, r2)]),
        },
        Expect {
            key: sem,
            mode: "semaphore",
            held: held(&[("p1", 1, p1), ("p2", 2, p2), ("p3", 1, p3)]),
        },
    ]);
    expect_mix(c, &mix, "as made");
    mix
}

/// `LOCK.INFO` of every key of the mix.
fn infos(c: &mut impl ConnectionLike, mix: &Mix) -> Vec<Option<Info>> {
    mix.keys().iter().map(|k| family::info(c, k)).collect()
}

/// Checks that `infos` (of the keys of `mix`, in order) show exactly `mix`:
/// kind, holders in order with their holds or permits and tokens, a live
/// lease each (the parser checks ttl > 0), nobody waiting, the semaphore's
/// free permits.
fn expect_infos(infos: &[Option<Info>], mix: &Mix, when: &str) {
    assert_eq!(infos.len(), mix.0.len());
    for (info, e) in infos.iter().zip(&mix.0) {
        let info = info
            .as_ref()
            .unwrap_or_else(|| panic!("{when}: {} holds nothing", e.key));
        assert_eq!(info.mode(), e.mode, "{when}: {}", e.key);
        assert_eq!(info.held(), e.held, "{when}: holders of {}", e.key);
        assert_eq!(info.waiters(), 0, "{when}: {}", e.key);
        if let Info::Semaphore {
            limit, available, ..
        } = info
        {
            let used: i64 = e.held.iter().map(|h| h.1).sum();
            assert_eq!((*limit, *available), (LIMIT as i64, LIMIT as i64 - used));
        }
    }
}

/// Checks that the server behind `c` holds exactly `mix` (see
/// [`expect_infos`]).
fn expect_mix(c: &mut impl ConnectionLike, mix: &Mix, when: &str) {
    expect_infos(&infos(c, mix), mix, when);
}

/// `DEBUG DIGEST-VALUE` of every key of the mix.
fn digests(c: &mut impl ConnectionLike, mix: &Mix) -> Vec<Value> {
    mix.keys().iter().map(|k| digest(c, k)).collect()
}

/// `Info` without the ttls (which change from one look to the next).
fn without_ttl(info: Option<Info>) -> Option<Info> {
    let strip = |hs: &mut Vec<family::Holder>| hs.iter_mut().for_each(|h| h.ttl = 0);
    info.map(|mut i| {
        match &mut i {
            Info::Exclusive { holder, .. } => holder.ttl = 0,
            Info::Shared { holders, .. } | Info::Semaphore { holders, .. } => strip(holders),
        }
        i
    })
}

/// What a server shows of one key: `LOCK.INFO`, `DEBUG DIGEST-VALUE`,
/// `MEMORY USAGE`.
type Look = (Option<Info>, Value, i64);

/// One key seen on a master, then on its replica at most `apart_ms` later.
struct Mirrored {
    key: String,
    on_master: Look,
    on_replica: Look,
    apart_ms: i64,
}

fn look(c: &mut Connection, key: &str) -> Look {
    (family::info(c, key), digest(c, key), memory_usage(c, key))
}

/// Every key looked at on the master behind `m`, then on the replica
/// behind `r`.
fn look_mirrored(m: &mut Connection, r: &mut Connection, keys: &[String]) -> Vec<Mirrored> {
    keys.iter()
        .map(|key| {
            let asked = Instant::now();
            let on_master = look(m, key);
            let on_replica = look(r, key);
            Mirrored {
                key: key.clone(),
                on_master,
                on_replica,
                apart_ms: asked.elapsed().as_millis() as i64,
            }
        })
        .collect()
}

/// The replica showed what the master showed at every key: `LOCK.INFO`
/// (each ttl within the time between the two looks, both counting down to
/// the same absolute deadline), `DEBUG DIGEST-VALUE` and `MEMORY USAGE`.
fn expect_mirrored(looks: Vec<Mirrored>) {
    let ttls = |i: &Option<Info>| -> Vec<i64> {
        i.iter().flat_map(|i| i.holders()).map(|h| h.ttl).collect()
    };
    for l in looks {
        let key = &l.key;
        let (ttl_m, ttl_r) = (ttls(&l.on_master.0), ttls(&l.on_replica.0));
        assert_eq!(
            without_ttl(l.on_replica.0),
            without_ttl(l.on_master.0),
            "{key}: LOCK.INFO on the replica"
        );
        for (a, b) in ttl_m.iter().zip(&ttl_r) {
            // The replica looked later: its ttl is not longer, and shorter
            // by no more than the time between the looks (1 ms rounding).
            assert!(
                *b <= a + 1 && *b >= a - l.apart_ms - 1,
                "{key}: ttl {b} on the replica, {a} on the master ({} ms apart)",
                l.apart_ms
            );
        }
        assert_eq!(l.on_replica.1, l.on_master.1, "{key}: DEBUG DIGEST-VALUE");
        assert_eq!(l.on_replica.2, l.on_master.2, "{key}: MEMORY USAGE");
    }
}

/// `REPLICAOF NO ONE`, and waits until the server says it is a master.
fn promote(server: &Server) {
    let mut c = server.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut c)
        .unwrap();
    wait_for("the promotion", PATIENCE, || {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
        (info_field(&info, "role").as_deref() == Some("master")).then_some(())
    });
}

/// Fresh grants of every kind on the server behind `c` (a new reader, a
/// new permit holder, a new exclusive key): each token above `floor`.
fn expect_fresh_tokens_above(c: &mut impl ConnectionLike, mix: &Mix, floor: i64) {
    let fresh = [
        (mix.shared().to_string(), Kind::Shared),
        (mix.semaphore().to_string(), Kind::permits(LIMIT, 1)),
        (format!("{}-fresh", mix.exclusive()), Kind::Exclusive),
    ];
    for (key, kind) in fresh {
        let t = grant(c, &key, "fresh", kind);
        assert!(t > floor, "{key} ({kind:?}): token {t} not above {floor}");
        assert_eq!(release_count(c, &key, "fresh", 1), Some(0));
    }
}

#[test]
fn rdb_keeps_every_kind_through_debug_reload_and_a_restart() {
    let mut s = Server::start();
    let mut c = s.conn();
    let mix = make_mix(&mut c, "mix:");
    let digests_before = digests(&mut c, &mix);
    let usage_before: Vec<i64> = mix.keys().iter().map(|k| memory_usage(&mut c, k)).collect();
    // MEMORY USAGE counts the holders: three permit holders take more than one.
    grant(&mut c, "mix:one", "p1", Kind::permits(LIMIT, 1));
    assert!(
        usage_before[SEMAPHORE] > memory_usage(&mut c, "mix:one"),
        "MEMORY USAGE of 3 holders {} vs 1",
        usage_before[SEMAPHORE]
    );
    assert_eq!(force_release_owner(&mut c, "mix:one", "p1"), 1);

    let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
    expect_mix(&mut c, &mix, "after DEBUG RELOAD");
    assert_eq!(digests(&mut c, &mix), digests_before, "after DEBUG RELOAD");
    let usage: Vec<i64> = mix.keys().iter().map(|k| memory_usage(&mut c, k)).collect();
    assert_eq!(usage, usage_before, "MEMORY USAGE after DEBUG RELOAD");

    let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    drop(c);
    s.kill9();
    s.restart();
    let mut c = s.conn();
    expect_mix(&mut c, &mix, "after a restart from RDB");
    assert_eq!(digests(&mut c, &mix), digests_before, "after a restart");
    expect_fresh_tokens_above(&mut c, &mix, mix.max_token());
}

/// The mix through an AOF rewrite (`aof-use-rdb-preamble preamble`), changes
/// of every kind after it, a `kill -9` and a restart that replays both.
fn aof_round_trip(preamble: &str) {
    let mut s = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .arg("aof-use-rdb-preamble", preamble)
        .start();
    let mut c = s.conn();
    wait_aof_settled(&mut c);
    let mut mix = make_mix(&mut c, "mix:");
    let _: String = redis::cmd("BGREWRITEAOF").query(&mut c).unwrap();
    wait_aof_settled(&mut c);
    if preamble == "no" {
        // The rewrite wrote every key as LOCK.APPLY effects.
        let base = std::fs::read(aof_base_file(s.dir())).unwrap();
        let applied: HashSet<Vec<u8>> = parse_resp_commands(&base)
            .into_iter()
            .filter(|a| a[0].eq_ignore_ascii_case(b"LOCK.APPLY"))
            .map(|a| a[1].clone())
            .collect();
        for key in mix.keys() {
            assert!(applied.contains(key.as_bytes()), "{key} not in the base");
        }
    }
    // After the rewrite, into the increment: one of each kind of change.
    let r3 = grant(&mut c, mix.shared(), "r3", Kind::Shared);
    mix.push(SHARED, "r3", 1, r3);
    assert_eq!(force_release_owner(&mut c, mix.shared(), "r2"), 1);
    mix.set(SHARED, "r2", 0);
    assert_eq!(release_count(&mut c, mix.semaphore(), "p2", 1), Some(1));
    mix.set(SEMAPHORE, "p2", 1);
    assert_eq!(
        grant(&mut c, mix.semaphore(), "p3", Kind::permits(LIMIT, 1)),
        mix.token(SEMAPHORE, "p3"),
        "more permits, same token"
    );
    mix.set(SEMAPHORE, "p3", 2);
    // The writer downgrades (exclusive 2 + shared 1), then gives back one
    // exclusive hold: exclusive 1 + shared 1.
    let w = mix.token(EXCLUSIVE, "w");
    assert_eq!(grant(&mut c, mix.exclusive(), "w", Kind::Shared), w);
    assert_eq!(release_count(&mut c, mix.exclusive(), "w", 1), Some(2));
    mix.set(EXCLUSIVE, "w", 2);
    expect_mix(&mut c, &mix, "after the changes");
    let digests_before = digests(&mut c, &mix);
    drop(c);
    s.kill9();
    s.restart();
    let mut c = s.conn();
    expect_mix(
        &mut c,
        &mix,
        &format!("after replaying the AOF (preamble {preamble})"),
    );
    assert_eq!(digests(&mut c, &mix), digests_before);
    // The replayed record still splits exclusive 1 + shared 1: the next
    // release takes the exclusive hold and leaves a read lock.
    assert_eq!(release_count(&mut c, mix.exclusive(), "w", 1), Some(1));
    let after = family::info(&mut c, mix.exclusive()).unwrap();
    assert_eq!(
        (after.mode(), after.held()),
        ("shared", vec![("w".into(), 1, w)])
    );
    expect_fresh_tokens_above(&mut c, &mix, mix.max_token());
}

#[test]
fn aof_rewrite_with_rdb_preamble_and_replay_keep_every_kind() {
    aof_round_trip("yes");
}

#[test]
fn aof_rewrite_as_commands_and_replay_keep_every_kind() {
    aof_round_trip("no");
}

#[test]
fn a_replica_mirrors_every_kind_and_sees_one_reader_expire() {
    // The replica must be looked at before the short reader's lease ends:
    // again, with a longer lease, when this machine was too slow.
    until_conclusive(|attempt| {
        let (master, replica) = pair();
        let (mut m, mut r) = (master.conn(), replica.conn());
        let mix = make_mix(&mut m, "mix:");
        let short = grant_timed(
            &mut m,
            mix.shared(),
            "rs",
            lease_ms(2_000, attempt),
            Kind::Shared,
        );
        synced(&mut m, 1);
        let looks = look_mirrored(&mut m, &mut r, &mix.keys());
        let shown = family::info(&mut r, mix.shared()).and_then(|i| i.holder("rs"));
        // Looked at later, a lease passed in between could differ.
        before("the looks at the replica", Instant::now(), short.earliest)?;
        expect_mirrored(looks);
        assert_eq!(
            shown.map(|h| h.token),
            Some(short.token),
            "rs on the replica"
        );

        // The master expires the one reader; the replica follows, and the
        // other readers still hold there.
        expect_holder_expiry(&mut m, &[("rs", &short)]);
        synced(&mut m, 1);
        expect_mix(&mut r, &mix, "on the replica after the expiry");
        wait_expired(&mut m, 1);
        synced(&mut m, 1);
        expect_mirrored(look_mirrored(&mut m, &mut r, &mix.keys()));
        Ok(())
    });
}

#[test]
fn a_promoted_replica_expires_each_holder_on_time_and_issues_larger_tokens() {
    // The master must die before any short lease ends (else its own
    // expiries reach the replica): again, with longer leases, when not.
    until_conclusive(|attempt| {
        let (mut master, replica) = pair();
        let mut m = master.conn();
        let mix = make_mix(&mut m, "mix:");
        let base = lease_ms(1_500, attempt);
        let xs = grant_timed(&mut m, "mix:xs", "xs", base, Kind::Exclusive);
        let rs = grant_timed(&mut m, mix.shared(), "rs", base + 100, Kind::Shared);
        let ps = grant_timed(
            &mut m,
            mix.semaphore(),
            "ps",
            base + 200,
            Kind::permits(LIMIT, 1),
        );
        let floor = mix.max_token().max(ps.token);
        synced(&mut m, 1);
        drop(m);
        master.kill9();
        before("the master's death", Instant::now(), xs.earliest)?;
        promote(&replica);

        let mut r = replica.conn();
        expect_holder_expiry(&mut r, &[("xs", &xs), ("rs", &rs), ("ps", &ps)]);
        assert!(!exists(&mut r, "mix:xs"));
        expect_mix(&mut r, &mix, "on the promoted replica");
        wait_expired(&mut r, 3);
        expect_fresh_tokens_above(&mut r, &mix, floor);
        Ok(())
    });
}

// ------------------------------------------------------------- kill -9

const CRASH_CLIENTS: usize = 3;
/// Keys of each kind the clients share.
const PER_KIND: u64 = 3;
const CRASH_LIMIT: u64 = 6;
/// Requests answered before the crash.
const MIN_ANSWERED: u64 = 150;

/// xorshift64: reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What one client was told.
#[derive(Default, Debug)]
struct ClientLog {
    /// key → (token, holds or permits) it holds, by the answers.
    held: HashMap<String, (i64, i64)>,
    /// The key of the request in flight when the server died.
    uncertain: Option<String>,
    /// Every token it was answered.
    tokens: Vec<i64>,
    violations: Vec<String>,
}

/// One client `owner`: random grants (exclusive on `ex*`, shared on `sh*`,
/// 1 or 2 permits on `sem*`), re-entries and partial releases, until its
/// connection dies; every answer logged.
fn crash_client(port: u16, owner: String, seed: u64, answered: Arc<AtomicU64>) -> ClientLog {
    let mut rng = Rng(seed | 1);
    let mut log = ClientLog::default();
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(10))
        .unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    let stop = Instant::now() + 2 * PATIENCE;
    while Instant::now() < stop {
        let (prefix, kind) = match rng.below(3) {
            0 => ("ex", Kind::Exclusive),
            1 => ("sh", Kind::Shared),
            _ => ("sem", Kind::permits(CRASH_LIMIT, 1 + rng.below(2))),
        };
        let key = format!("{prefix}{}", rng.below(PER_KIND));
        let mine = log.held.get(&key).copied();
        let reply = match mine {
            Some((token, amount)) if rng.below(3) == 0 => {
                let n = 1 + rng.below(amount as u64);
                family::try_release_count(&mut c, &key, &owner, n).map(|left| match left {
                    Some(0) => {
                        log.held.remove(&key);
                    }
                    Some(left) => {
                        log.held.insert(key.clone(), (token, left));
                    }
                    None => log.violations.push(format!("{owner} lost {key}")),
                })
            }
            _ => try_acquire(&mut c, &key, &owner, LONG, kind).map(|got| {
                let add = match kind {
                    Kind::Permits { count, .. } => count as i64,
                    _ => 1,
                };
                match (got, mine) {
                    (Some(t), Some((token, amount))) => {
                        if t != token {
                            log.violations
                                .push(format!("{owner} re-entered {key}: {t}, not {token}"));
                        }
                        log.held.insert(key.clone(), (token, amount + add));
                    }
                    (Some(t), None) => {
                        log.tokens.push(t);
                        log.held.insert(key.clone(), (t, add));
                    }
                    // Refused: held by another, or not enough free permits.
                    (None, Some(_)) if !matches!(kind, Kind::Permits { .. }) => log
                        .violations
                        .push(format!("{owner} refused re-entry of {key}")),
                    (None, _) => {}
                }
            }),
        };
        match reply {
            Ok(()) => {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                log.uncertain = Some(key);
                return log;
            }
            Err(e) => log.violations.push(format!("{owner} {key}: {e}")),
        }
    }
    log
}

#[test]
fn kill9_with_aof_always_keeps_every_acknowledged_grant_of_every_kind() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut s = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .start();
    wait_aof_settled(&mut s.conn());
    let answered = Arc::new(AtomicU64::new(0));
    let logs = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..CRASH_CLIENTS)
        .map(|i| {
            let (port, answered, logs) = (s.port, answered.clone(), logs.clone());
            std::thread::spawn(move || {
                let log = crash_client(port, format!("c{i}"), seed ^ (i as u64 + 1), answered);
                logs.lock().unwrap().push((format!("c{i}"), log));
            })
        })
        .collect();
    // A rewrite during the load: the crash finds a base and an increment.
    wait_for("the load to start", PATIENCE, || {
        (answered.load(Ordering::SeqCst) >= MIN_ANSWERED / 3).then_some(())
    });
    let _: String = redis::cmd("BGREWRITEAOF").query(&mut s.conn()).unwrap();
    wait_for("the load to be answered", PATIENCE, || {
        (answered.load(Ordering::SeqCst) >= MIN_ANSWERED).then_some(())
    });
    s.kill9();
    for t in threads {
        t.join().unwrap();
    }
    s.restart();
    let mut c = s.conn();
    let logs = std::mem::take(&mut *logs.lock().unwrap());
    let ctx = format!("seed {seed}");
    for (owner, log) in &logs {
        assert!(
            log.violations.is_empty(),
            "{ctx}: {owner}: {:?}",
            log.violations
        );
    }
    let all_told: HashSet<i64> = logs.iter().flat_map(|(_, l)| l.tokens.clone()).collect();
    let mut tokens_shown = HashSet::new();
    for prefix in ["ex", "sh", "sem"] {
        for j in 0..PER_KIND {
            let key = format!("{prefix}{j}");
            let holders = family::info(&mut c, &key)
                .map(|i| i.holders())
                .unwrap_or_default();
            let mut owners = HashSet::new();
            for h in &holders {
                assert!(
                    owners.insert(h.owner.clone()),
                    "{ctx}: {key}: {} twice",
                    h.owner
                );
                assert!(
                    tokens_shown.insert(h.token),
                    "{ctx}: token {} twice",
                    h.token
                );
            }
            if prefix == "sem" {
                let used: i64 = holders.iter().map(|h| h.amount).sum();
                assert!(used <= CRASH_LIMIT as i64, "{ctx}: {key}: {used} permits");
            }
            for (owner, log) in &logs {
                let shown = holders.iter().find(|h| &h.owner == owner);
                let told = log.held.get(&key);
                if log.uncertain.as_deref() == Some(key.as_str()) {
                    // The effect of the request in flight is unknown; what
                    // it held before keeps its token, and a new grant is
                    // one nobody else was told.
                    if let (Some(h), Some((token, _))) = (shown, told) {
                        assert_eq!(h.token, *token, "{ctx}: {owner} on {key}");
                    } else if let Some(h) = shown {
                        assert!(!all_told.contains(&h.token), "{ctx}: {owner} on {key}");
                    }
                    continue;
                }
                assert_eq!(
                    shown.map(|h| (h.token, h.amount)),
                    told.copied(),
                    "{ctx}: {owner} on {key}: (token, holds) shown vs answered"
                );
            }
        }
    }
    let answered_max = all_told.iter().copied().max().unwrap();
    let t = grant(&mut c, "after-crash", "checker", Kind::Shared);
    assert!(t > answered_max, "{ctx}: {t} after {answered_max}");
}

// -------------------------------------------------------------- cluster

#[test]
fn a_moved_slot_keeps_shared_and_semaphore_holders_and_a_restored_semaphore_works() {
    // The short leases must still be live when the move and the looks at
    // the target are done: again, on a new cluster, with longer ones.
    until_conclusive(|attempt| {
        let cluster = Cluster::start();
        let slot = key_slot(b"{mig}");
        let (source, _) = cluster.shard_of_slot(slot);
        let target = *cluster.masters().iter().find(|p| **p != source).unwrap();
        let mut a = cluster.node(source).conn();
        let mix = make_mix(&mut a, "{mig}");
        let base = lease_ms(5_000, attempt);
        let rs = grant_timed(&mut a, mix.shared(), "rs", base, Kind::Shared);
        let ps = grant_timed(
            &mut a,
            mix.semaphore(),
            "ps",
            base + 100,
            Kind::permits(LIMIT, 1),
        );
        let mut moved = mix.clone();
        moved.push(SHARED, "rs", 1, rs.token);
        moved.push(SEMAPHORE, "ps", 1, ps.token);
        let digests_before = digests(&mut a, &moved);

        cluster.move_slot(slot, source, target);

        let left: i64 = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query(&mut a)
            .unwrap();
        assert_eq!(left, 0, "the source kept keys of the slot");
        let mut b = cluster.node(target).conn();
        let on_target = infos(&mut b, &moved);
        let digests_on_target = digests(&mut b, &moved);
        // A DUMP of the semaphore restored under another name: the same
        // holders, tokens and deadlines.
        let copy = "{mig}copy";
        let payload: Vec<u8> = redis::cmd("DUMP")
            .arg(mix.semaphore())
            .query(&mut b)
            .unwrap();
        let _: () = redis::cmd("RESTORE")
            .arg(copy)
            .arg(0)
            .arg(&payload)
            .query(&mut b)
            .unwrap();
        let original = family::info(&mut b, mix.semaphore());
        let restored = family::info(&mut b, copy);
        let digest_restored = digest(&mut b, copy);
        // Looked at later, a lease passed in between would be missing.
        before("the looks after the move", Instant::now(), rs.earliest)?;
        expect_infos(&on_target, &moved, "on the target");
        assert_eq!(digests_on_target, digests_before, "on the target");
        assert_eq!(
            without_ttl(restored),
            without_ttl(original),
            "the restored semaphore"
        );
        assert_eq!(digest_restored, digests_before[SEMAPHORE], "restored");

        // The leases expire on the target, also in the restored copy.
        let ps_copy = TimedLease {
            key: copy.to_string(),
            ..ps.clone()
        };
        expect_holder_expiry(&mut b, &[("rs", &rs), ("ps", &ps), ("ps", &ps_copy)]);
        expect_mix(&mut b, &mix, "on the target after the expiries");
        assert_eq!(
            family::held(&mut b, copy),
            family::held(&mut b, mix.semaphore())
        );
        // The copy is a key of its own: evicting a holder there leaves the
        // original alone; the target issues larger tokens.
        assert_eq!(force_release_owner(&mut b, copy, "p1"), 1);
        expect_mix(&mut b, &mix, "after a change to the copy");
        let floor = moved.max_token();
        let t = grant(&mut b, copy, "fresh", Kind::permits(LIMIT, 1));
        assert!(t > floor, "{t} on the copy after {floor}");
        expect_fresh_tokens_above(&mut b, &mix, floor);
        Ok(())
    });
}
