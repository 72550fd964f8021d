//! Exactly-once lock operations under retries, with raw commands (no client
//! crate; the client's retries are tested in client/tests/retry.rs).
//!
//! For every operation — acquire fresh, acquire re-entry, release partial,
//! release last, `WAIT` acquire granted by hand-off — and every kind
//! (exclusive, `SHARED`, semaphore `LIMIT/COUNT n`), the first attempt goes
//! through a proxy that swallows its reply and closes the connection (the
//! server applied it; the client never heard), then the same request with
//! the same `ID request-id` is sent again. It must be answered with the
//! swallowed reply and leave exactly the state of one request (holders,
//! amounts, tokens, leases: the key's digest does not change) — on the same
//! server, after `DEBUG RELOAD`, after an AOF replay, on a promoted replica,
//! and on the target of a slot migration. The same retry without `ID`
//! applies twice: that is the hazard the ids remove, and it shows the checks
//! can fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use redis::{Connection, Value};
use testkit::cluster::{key_slot, Cluster};
use testkit::family::{self, Kind};
use testkit::lock::{digest, stat};
use testkit::replication;
use testkit::retry::{replicated, seed, Proxy};
use testkit::{Server, PATIENCE};

/// Ten minutes: no lease runs out during a test.
const TTL: u64 = 600_000;
/// The owner whose request is retried, and another one.
const O: &str = "o";
const X: &str = "x";
/// The permits of every semaphore here.
const LIMIT: u64 = 5;

/// What a holder (or the retried request) takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Take {
    Exclusive,
    Shared,
    Permits,
}

impl Take {
    /// The options of an acquire of `n` (holds are taken one at a time;
    /// permits all at once).
    fn kind(self, n: u64) -> Kind {
        match self {
            Take::Exclusive => Kind::Exclusive,
            Take::Shared => Kind::Shared,
            Take::Permits => Kind::permits(LIMIT, n),
        }
    }
}

/// The request that is retried (always by [`O`]).
#[derive(Clone, Copy, Debug)]
enum Op {
    /// `LOCK.ACQUIRE key o ttl [SHARED | LIMIT 5 COUNT n]`.
    Acquire(u64),
    /// `LOCK.RELEASE key o COUNT n`.
    Release(u64),
    /// The acquire with `WAIT`, queued behind [`X`], which then releases
    /// `x_releases` and so hands the key to o.
    WaitAcquire { count: u64, x_releases: u64 },
}

struct Case {
    name: &'static str,
    /// What the request takes or gives back.
    take: Take,
    /// Held before the request: (owner, what, amount).
    before: &'static [(&'static str, Take, u64)],
    op: Op,
    /// The holders (owner, holds or permits) after one request.
    once: &'static [(&'static str, i64)],
    /// After the request applied twice, where that differs.
    twice: Option<&'static [(&'static str, i64)]>,
}

impl Case {
    fn is_last_release(&self) -> bool {
        matches!(self.op, Op::Release(_)) && !self.once.iter().any(|(o, _)| *o == O)
    }
}

use Take::{Exclusive as E, Permits as P, Shared as S};

const CASES: &[Case] = &[
    Case {
        name: "exclusive acquire fresh",
        take: E,
        before: &[],
        op: Op::Acquire(1),
        once: &[(O, 1)],
        twice: Some(&[(O, 2)]),
    },
    Case {
        name: "exclusive acquire re-entry",
        take: E,
        before: &[(O, E, 1)],
        op: Op::Acquire(1),
        once: &[(O, 2)],
        twice: Some(&[(O, 3)]),
    },
    Case {
        name: "exclusive release partial",
        take: E,
        before: &[(O, E, 3)],
        op: Op::Release(1),
        once: &[(O, 2)],
        twice: Some(&[(O, 1)]),
    },
    Case {
        name: "exclusive release last",
        take: E,
        before: &[(O, E, 1)],
        op: Op::Release(1),
        once: &[],
        twice: None,
    },
    Case {
        name: "exclusive WAIT acquire granted by hand-off",
        take: E,
        before: &[(X, E, 1)],
        op: Op::WaitAcquire {
            count: 1,
            x_releases: 1,
        },
        once: &[(O, 1)],
        twice: None,
    },
    Case {
        name: "SHARED acquire fresh",
        take: S,
        before: &[(X, S, 1)],
        op: Op::Acquire(1),
        once: &[(O, 1), (X, 1)],
        twice: Some(&[(O, 2), (X, 1)]),
    },
    Case {
        name: "SHARED acquire re-entry",
        take: S,
        before: &[(O, S, 1)],
        op: Op::Acquire(1),
        once: &[(O, 2)],
        twice: Some(&[(O, 3)]),
    },
    Case {
        name: "SHARED release partial",
        take: S,
        before: &[(O, S, 3)],
        op: Op::Release(1),
        once: &[(O, 2)],
        twice: Some(&[(O, 1)]),
    },
    Case {
        name: "SHARED release last",
        take: S,
        before: &[(O, S, 1), (X, S, 1)],
        op: Op::Release(1),
        once: &[(X, 1)],
        twice: None,
    },
    Case {
        name: "SHARED WAIT acquire granted by hand-off",
        take: S,
        before: &[(X, E, 1)],
        op: Op::WaitAcquire {
            count: 1,
            x_releases: 1,
        },
        once: &[(O, 1)],
        twice: None,
    },
    Case {
        name: "semaphore acquire COUNT 2 fresh",
        take: P,
        before: &[(X, P, 1)],
        op: Op::Acquire(2),
        once: &[(O, 2), (X, 1)],
        twice: Some(&[(O, 4), (X, 1)]),
    },
    Case {
        name: "semaphore acquire COUNT 2 re-entry",
        take: P,
        before: &[(O, P, 1)],
        op: Op::Acquire(2),
        once: &[(O, 3)],
        twice: Some(&[(O, 5)]),
    },
    Case {
        name: "semaphore release COUNT 2 partial",
        take: P,
        before: &[(O, P, 4)],
        op: Op::Release(2),
        once: &[(O, 2)],
        twice: Some(&[]),
    },
    Case {
        name: "semaphore release COUNT 3 last",
        take: P,
        before: &[(O, P, 3)],
        op: Op::Release(3),
        once: &[],
        twice: None,
    },
    Case {
        name: "semaphore WAIT acquire COUNT 3 granted by hand-off",
        take: P,
        before: &[(X, P, 4)],
        op: Op::WaitAcquire {
            count: 3,
            x_releases: 4,
        },
        once: &[(O, 3)],
        twice: None,
    },
];

/// The request of `case` on `key`, with `id` when given. A waiting acquire
/// waits up to [`PATIENCE`] (it is granted long before).
fn request(case: &Case, key: &str, id: Option<&str>) -> redis::Cmd {
    let mut cmd = match case.op {
        Op::Acquire(n) | Op::WaitAcquire { count: n, .. } => {
            let mut cmd = redis::cmd("LOCK.ACQUIRE");
            cmd.arg(key).arg(O).arg(TTL).arg(case.take.kind(n).args());
            if matches!(case.op, Op::WaitAcquire { .. }) {
                cmd.arg("WAIT").arg(PATIENCE.as_millis() as u64);
            }
            cmd
        }
        Op::Release(n) => {
            let mut cmd = redis::cmd("LOCK.RELEASE");
            cmd.arg(key).arg(O).arg("COUNT").arg(n);
            cmd
        }
    };
    if let Some(id) = id {
        cmd.arg("ID").arg(id);
    }
    cmd
}

/// (owner, holds or permits) of every holder of `key`, by owner.
fn holders(c: &mut Connection, key: &str) -> Vec<(String, i64)> {
    let mut h: Vec<(String, i64)> = family::held(c, key)
        .into_iter()
        .map(|(owner, amount, _)| (owner, amount))
        .collect();
    h.sort();
    h
}

fn expected(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    let mut h: Vec<(String, i64)> = list.iter().map(|(o, n)| (o.to_string(), *n)).collect();
    h.sort();
    h
}

/// The token of `owner` at `key`.
fn token_of(c: &mut Connection, key: &str, owner: &str) -> Option<i64> {
    family::info(c, key)
        .and_then(|i| i.holder(owner))
        .map(|h| h.token)
}

/// How the first attempt is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lost {
    /// After the server applied it: its reply is swallowed.
    Reply,
    /// Before: the server never sees it.
    Request,
}

/// A first attempt whose reply was lost, waiting for its retry.
struct Pending {
    case: &'static Case,
    key: String,
    id: Option<String>,
    /// The reply the server sent and the proxy swallowed (`Lost::Reply`).
    swallowed: Option<Value>,
}

/// Sets up each case on its own key under `prefix` through `direct`, and
/// sends its request once through `proxy` (in front of the same server),
/// which cuts it as `lost` says. `id`: whether requests carry ids.
fn first_attempts(
    direct: &mut Connection,
    proxy: &Proxy,
    prefix: &str,
    cases: impl IntoIterator<Item = &'static Case>,
    with_id: bool,
    lost: Lost,
) -> Vec<Pending> {
    let mut pending = Vec::new();
    for (i, case) in cases.into_iter().enumerate() {
        // One hash tag for every key: a slot migration moves them all.
        let key = format!("{{eo}}:{prefix}:{i}");
        for &(owner, take, amount) in case.before {
            let (times, n) = match take {
                Take::Permits => (1, amount),
                _ => (amount, 1),
            };
            for _ in 0..times {
                family::try_acquire(direct, &key, owner, TTL, take.kind(n))
                    .expect("set-up acquire")
                    .unwrap_or_else(|| panic!("{}: set-up not granted", case.name));
            }
        }
        let id = with_id.then(|| format!("{prefix}-{i}"));
        let cmd = request(case, &key, id.as_deref());
        let name = if matches!(case.op, Op::Release(_)) {
            "LOCK.RELEASE"
        } else {
            "LOCK.ACQUIRE"
        };
        let swallowed_before = proxy.swallowed().len();
        match lost {
            Lost::Reply => proxy.cut_reply_to(name),
            Lost::Request => proxy.cut_request(name),
        }
        let first = if let Op::WaitAcquire { x_releases, .. } = case.op {
            let mut c = proxy.conn();
            let waiter = std::thread::spawn(move || cmd.query::<Value>(&mut c));
            family::wait_key_waiters(direct, &key, 1);
            let remaining = family::release_count(direct, &key, X, x_releases);
            assert_eq!(remaining, Some(0), "{}: x released all", case.name);
            waiter.join().expect("waiter thread")
        } else {
            cmd.query::<Value>(&mut proxy.conn())
        };
        assert!(
            first.is_err(),
            "{}: the first attempt must not be answered, got {first:?}",
            case.name
        );
        let swallowed = match lost {
            Lost::Reply => Some(proxy.wait_swallowed(swallowed_before + 1)),
            Lost::Request => None,
        };
        assert!(!proxy.is_armed(), "{}: the cut happened", case.name);
        pending.push(Pending {
            case,
            key,
            id,
            swallowed,
        });
    }
    pending
}

/// Sends every pending request again on `c` (a new connection, maybe to
/// another server) and checks that it left the state of one request.
fn retry_once_each(c: &mut Connection, pending: &[Pending]) {
    for p in pending {
        let case = p.case;
        let before = digest(c, &p.key);
        let answered = stat(c, "retries_answered");
        let reply: Value = request(case, &p.key, p.id.as_deref())
            .query(c)
            .unwrap_or_else(|e| panic!("{}: the retry failed: {e}", case.name));
        assert_eq!(
            holders(c, &p.key),
            expected(case.once),
            "{}: the state of one request",
            case.name
        );
        if let Some(swallowed) = &p.swallowed {
            if case.is_last_release() {
                // The owner's record went with its last hold: the retry is a
                // release of nothing, which leaves the same state.
                assert_eq!(swallowed, &Value::Int(0), "{}", case.name);
                assert_eq!(reply, Value::Nil, "{}", case.name);
            } else {
                assert_eq!(&reply, swallowed, "{}: answered as the first", case.name);
            }
            assert_eq!(
                digest(c, &p.key),
                before,
                "{}: the retry changed the key (holds, token or lease)",
                case.name
            );
            let counted = i64::from(!case.is_last_release());
            assert_eq!(
                stat(c, "retries_answered") - answered,
                counted,
                "{}: lock_retries_answered",
                case.name
            );
        } else {
            // The first attempt never arrived: the retry is the request.
            assert_eq!(stat(c, "retries_answered"), answered, "{}", case.name);
        }
        if !matches!(case.op, Op::Release(_)) {
            assert_eq!(
                reply,
                Value::Int(token_of(c, &p.key, O).expect("o holds")),
                "{}: the token o holds",
                case.name
            );
        }
    }
}

/// A proxy in front of `server`.
fn proxy_to(server: &Server) -> Proxy {
    Proxy::start(server.addr(), seed())
}

#[test]
fn a_retry_with_the_same_id_after_a_lost_reply_leaves_the_state_of_one_request() {
    let server = Server::start();
    let proxy = proxy_to(&server);
    let pending = first_attempts(&mut server.conn(), &proxy, "same", CASES, true, Lost::Reply);
    // Lets the clock move on, so that a retry that renewed a lease would
    // change the key's digest.
    std::thread::sleep(Duration::from_millis(5));
    retry_once_each(&mut server.conn(), &pending);
}

#[test]
fn a_retry_of_a_request_the_server_never_saw_applies_it_once() {
    let server = Server::start();
    let proxy = proxy_to(&server);
    let immediate = CASES
        .iter()
        .filter(|c| !matches!(c.op, Op::WaitAcquire { .. }));
    let pending = first_attempts(
        &mut server.conn(),
        &proxy,
        "unseen",
        immediate,
        true,
        Lost::Request,
    );
    assert_eq!(proxy.dropped(), pending.len());
    retry_once_each(&mut server.conn(), &pending);
}

#[test]
fn a_blind_retry_without_id_applies_twice() {
    let server = Server::start();
    let proxy = proxy_to(&server);
    let hazards = CASES.iter().filter(|c| c.twice.is_some());
    let pending = first_attempts(
        &mut server.conn(),
        &proxy,
        "blind",
        hazards,
        false,
        Lost::Reply,
    );
    let mut c = server.conn();
    for p in &pending {
        let answered = stat(&mut c, "retries_answered");
        let _: Value = request(p.case, &p.key, None)
            .query(&mut c)
            .expect("blind retry");
        let twice = p.case.twice.expect("a hazard");
        assert_eq!(
            holders(&mut c, &p.key),
            expected(twice),
            "{}: applied twice",
            p.case.name
        );
        assert_ne!(expected(twice), expected(p.case.once));
        assert_eq!(stat(&mut c, "retries_answered"), answered);
    }
    assert_eq!(pending.len(), 9, "every hazard was shown");
}

#[test]
fn a_retry_after_debug_reload_is_answered_from_the_reloaded_record() {
    let server = Server::start();
    let proxy = proxy_to(&server);
    let mut c = server.conn();
    let pending = first_attempts(&mut c, &proxy, "reload", CASES, true, Lost::Reply);
    let _: () = redis::cmd("DEBUG")
        .arg("RELOAD")
        .query(&mut c)
        .expect("DEBUG RELOAD");
    retry_once_each(&mut server.conn(), &pending);
}

#[test]
fn a_retry_after_an_aof_replay_is_answered_from_the_replayed_record() {
    let mut server = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .start();
    testkit::wait_aof_settled(&mut server.conn());
    let proxy = proxy_to(&server);
    let pending = first_attempts(&mut server.conn(), &proxy, "aof", CASES, true, Lost::Reply);
    drop(proxy);
    // Every write was fsynced before its reply: kill -9 loses none.
    server.kill9();
    server.restart();
    retry_once_each(&mut server.conn(), &pending);
}

#[test]
fn a_retry_reaching_a_promoted_replica_is_answered_from_the_replicated_record() {
    let (mut master, replica) = replication::pair();
    let proxy = proxy_to(&master);
    let mut m = master.conn();
    let pending = first_attempts(&mut m, &proxy, "failover", CASES, true, Lost::Reply);
    // Durability: the replica has every effect (and every record), also
    // those applied on the proxy's connections.
    replicated(&master, 1);
    drop(proxy);
    master.kill9();
    let mut r = replica.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r)
        .expect("REPLICAOF NO ONE");
    retry_once_each(&mut r, &pending);
}

#[test]
fn a_retry_on_the_target_of_a_slot_migration_is_answered_from_the_migrated_record() {
    let cluster = Cluster::start_with(3, 0);
    let slot = key_slot(b"{eo}");
    let (source, _) = cluster.shard_of_slot(slot);
    let target = cluster
        .masters()
        .into_iter()
        .find(|&p| p != source)
        .expect("another master");
    let proxy = proxy_to(cluster.node(source));
    let pending = first_attempts(
        &mut cluster.node(source).conn(),
        &proxy,
        "migrate",
        CASES,
        true,
        Lost::Reply,
    );
    cluster.move_slot(slot, source, target);
    let mut t = cluster.node(target).conn();
    let moved: usize = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query(&mut t)
        .expect("COUNTKEYSINSLOT");
    let held = pending.iter().filter(|p| !p.case.once.is_empty()).count();
    assert_eq!(moved, held, "every held key is on the target");
    retry_once_each(&mut t, &pending);
}
