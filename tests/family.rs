//! The lock family on a real redis-server: read/write locks (`SHARED`) and
//! semaphores (`LIMIT permits [COUNT n]`) — who is granted what, the kind of
//! a key, `RELEASE ... COUNT n`, `FORCERELEASE key owner`, per-holder leases,
//! the `LOCK.INFO` shapes in both protocols, argument errors, `INFO lock`
//! counters, keyspace events, `MEMORY USAGE`, and generic commands on such
//! keys. Waiting is in tests/family_wait.rs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;

use redis::{Connection, Value};
use testkit::family::{
    self, acquire_error, acquire_permits, acquire_shared, error_text, force_release_owner,
    grant_timed, release_count, release_count_error, semaphore_error, try_acquire,
    try_release_count, Holder, Info, Kind, COUNT_ERROR, LIMIT_ERROR, NOT_A_SEMAPHORE, SYNTAX_ERROR,
    UPGRADE_ERROR,
};
use testkit::lock::{
    acquire, exists, force_release, release, renew, stat, wait_expired, wait_gone,
};
use testkit::timing::{before, lease_ms};
use testkit::{dbsize, until_conclusive, wait_for, Server, PATIENCE};

fn owners(info: &Info) -> Vec<String> {
    info.holders().into_iter().map(|h| h.owner).collect()
}

fn shared_holders(c: &mut Connection, key: &str) -> Vec<Holder> {
    match family::info(c, key) {
        Some(Info::Shared { holders, .. }) => holders,
        other => panic!("{key} should be shared, LOCK.INFO says {other:?}"),
    }
}

/// (limit, available, holders) of a semaphore.
fn semaphore(c: &mut Connection, key: &str) -> (i64, i64, Vec<(String, i64, i64)>) {
    match &family::info(c, key) {
        Some(
            i @ Info::Semaphore {
                limit, available, ..
            },
        ) => (*limit, *available, i.held()),
        other => panic!("{key} should be a semaphore, LOCK.INFO says {other:?}"),
    }
}

fn exclusive(c: &mut Connection, key: &str) -> Holder {
    match family::info(c, key) {
        Some(Info::Exclusive { holder, .. }) => holder,
        other => panic!("{key} should be held exclusively, LOCK.INFO says {other:?}"),
    }
}

fn notify_all(c: &mut Connection) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Ed")
        .query(c)
        .unwrap();
}

/// The next keyspace event: (event name, key).
fn next_event(pubsub: &mut redis::PubSub) -> (String, String) {
    let m = pubsub.get_message().unwrap();
    let key: String = m.get_payload().unwrap();
    let event = m
        .get_channel_name()
        .trim_start_matches("__keyevent@0__:")
        .to_string();
    (event, key)
}

#[test]
fn shared_grants_each_reader_its_own_increasing_token_and_reentry_keeps_it() {
    let s = Server::start();
    let mut c = s.conn();
    let mut tokens = Vec::new();
    for r in ["r1", "r2", "r3", "r4"] {
        let t = acquire_shared(&mut c, "k", r, 60_000).expect("readers share the lock");
        if let Some(last) = tokens.last() {
            assert!(t > *last, "fresh token {t} after {last}");
        }
        tokens.push(t);
    }
    assert_eq!(acquire_shared(&mut c, "k", "r2", 60_000), Some(tokens[1]));
    assert_eq!(acquire_shared(&mut c, "k", "r2", 60_000), Some(tokens[1]));
    let info = family::info(&mut c, "k").unwrap();
    assert_eq!(info.mode(), "shared");
    assert_eq!(info.waiters(), 0);
    assert_eq!(
        info.held(),
        [
            ("r1".into(), 1, tokens[0]),
            ("r2".into(), 3, tokens[1]),
            ("r3".into(), 1, tokens[2]),
            ("r4".into(), 1, tokens[3]),
        ],
        "holders oldest grant first, each with its own holds and token"
    );
    // A reader that leaves and comes back is a fresh grant: a new token.
    assert_eq!(release(&mut c, "k", "r1"), Some(0));
    let again = acquire_shared(&mut c, "k", "r1", 60_000).unwrap();
    assert!(again > tokens[3]);
    assert_eq!(
        owners(&family::info(&mut c, "k").unwrap()),
        ["r2", "r3", "r4", "r1"]
    );
}

#[test]
fn a_writer_is_excluded_while_readers_hold_and_readers_while_a_writer_holds() {
    let s = Server::start();
    let mut c = s.conn();
    let r1 = acquire_shared(&mut c, "k", "r1", 60_000).unwrap();
    acquire_shared(&mut c, "k", "r2", 60_000).unwrap();
    assert_eq!(acquire(&mut c, "k", "w", 60_000), None);
    assert_eq!(release(&mut c, "k", "r2"), Some(0));
    assert_eq!(
        acquire(&mut c, "k", "w", 60_000),
        None,
        "one reader is enough to exclude a writer"
    );
    assert_eq!(shared_holders(&mut c, "k")[0].token, r1);
    assert_eq!(release(&mut c, "k", "r1"), Some(0));
    assert!(!exists(&mut c, "k"));
    let w = acquire(&mut c, "k", "w", 60_000).expect("free again: the writer gets it");
    assert!(w > r1);
    assert_eq!(acquire_shared(&mut c, "k", "r1", 60_000), None);
    assert_eq!(acquire_shared(&mut c, "k", "r3", 60_000), None);
    assert_eq!(
        acquire(&mut c, "k", "w2", 60_000),
        None,
        "and other writers too"
    );
    let h = exclusive(&mut c, "k");
    assert_eq!((h.owner.as_str(), h.amount, h.token), ("w", 1, w));
}

#[test]
fn the_exclusive_holder_downgrades_with_shared_and_keeps_its_token() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "w", 60_000).unwrap();
    assert_eq!(acquire_shared(&mut c, "k", "w", 60_000), Some(t));
    let h = exclusive(&mut c, "k");
    assert_eq!(
        (h.owner.as_str(), h.amount, h.token),
        ("w", 2, t),
        "still exclusive; holds counts the shared one too"
    );
    assert_eq!(
        acquire_shared(&mut c, "k", "r", 60_000),
        None,
        "no reader while the exclusive hold lasts"
    );
    // Releasing the exclusive hold leaves it shared.
    assert_eq!(release(&mut c, "k", "w"), Some(1));
    let holders = shared_holders(&mut c, "k");
    assert_eq!(holders.len(), 1);
    assert_eq!((holders[0].owner.as_str(), holders[0].amount), ("w", 1));
    assert_eq!(holders[0].token, t, "the downgrade keeps the token");
    let r = acquire_shared(&mut c, "k", "r", 60_000).expect("others can read now");
    assert!(r > t);
    assert_eq!(
        owners(&family::info(&mut c, "k").unwrap()),
        ["w", "r"],
        "the downgraded holder is the oldest grant"
    );
    assert_eq!(acquire(&mut c, "k", "x", 60_000), None);
}

#[test]
fn a_reader_asking_for_the_exclusive_lock_gets_the_upgrade_error_and_nothing_changes() {
    let s = Server::start();
    let mut c = s.conn();
    // Alone, and beside another reader.
    for others in [&[][..], &["b"][..]] {
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        let t = acquire_shared(&mut c, "k", "a", 60_000).unwrap();
        acquire_shared(&mut c, "k", "a", 60_000).unwrap();
        for o in others {
            acquire_shared(&mut c, "k", o, 60_000).unwrap();
        }
        let before = family::info(&mut c, "k").unwrap();
        assert_eq!(
            acquire_error(&mut c, "k", "a", 600_000, Kind::Exclusive),
            UPGRADE_ERROR
        );
        let after = family::info(&mut c, "k").unwrap();
        assert_eq!(after.held(), before.held(), "nothing changed");
        assert_eq!(after.holder("a").unwrap().token, t);
        assert!(
            after.holder("a").unwrap().ttl <= before.holder("a").unwrap().ttl,
            "the refused request did not renew the lease"
        );
    }
}

#[test]
fn a_semaphore_counts_permits_and_an_owner_adds_with_its_token() {
    let s = Server::start();
    let mut c = s.conn();
    let a = acquire_permits(&mut c, "s", "a", 60_000, 5, 1).expect("granted");
    assert_eq!(semaphore(&mut c, "s"), (5, 4, vec![("a".into(), 1, a)]));
    let b = acquire_permits(&mut c, "s", "b", 60_000, 5, 3).expect("3 of the 4 left");
    assert!(b > a);
    assert_eq!(semaphore(&mut c, "s").1, 1);
    assert_eq!(
        acquire_permits(&mut c, "s", "a", 60_000, 5, 1),
        Some(a),
        "the same owner adds with the same token"
    );
    assert_eq!(
        semaphore(&mut c, "s"),
        (5, 0, vec![("a".into(), 2, a), ("b".into(), 3, b)])
    );
    // LIMIT without COUNT takes one permit.
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    let one: Option<i64> = redis::cmd("LOCK.ACQUIRE")
        .arg("t")
        .arg("o")
        .arg(60_000)
        .arg("LIMIT")
        .arg(2)
        .query(&mut c)
        .unwrap();
    assert_eq!(
        semaphore(&mut c, "t"),
        (2, 1, vec![("o".into(), 1, one.unwrap())])
    );
    // The whole semaphore to one owner.
    let all = acquire_permits(&mut c, "u", "o", 60_000, 1_000_000, 1_000_000).unwrap();
    assert_eq!(
        semaphore(&mut c, "u"),
        (1_000_000, 0, vec![("o".into(), 1_000_000, all)])
    );
}

#[test]
fn a_semaphore_refuses_when_not_enough_permits_are_free() {
    let s = Server::start();
    let mut c = s.conn();
    let a = acquire_permits(&mut c, "s", "a", 60_000, 4, 2).unwrap();
    let b = acquire_permits(&mut c, "s", "b", 60_000, 4, 1).unwrap();
    let before = semaphore(&mut c, "s");
    assert_eq!(before.1, 1);
    assert_eq!(acquire_permits(&mut c, "s", "c", 60_000, 4, 2), None);
    assert_eq!(
        acquire_permits(&mut c, "s", "a", 600_000, 4, 2),
        None,
        "the holder itself cannot add more than is free"
    );
    assert_eq!(acquire_permits(&mut c, "s", "c", 60_000, 4, 4), None);
    let after = semaphore(&mut c, "s");
    assert_eq!(after, before, "nothing changed");
    let info = family::info(&mut c, "s").unwrap();
    assert!(
        info.holder("a").unwrap().ttl <= 60_000,
        "a refused add does not renew"
    );
    let d = acquire_permits(&mut c, "s", "d", 60_000, 4, 1).expect("the last permit");
    assert_eq!(
        semaphore(&mut c, "s"),
        (
            4,
            0,
            vec![("a".into(), 2, a), ("b".into(), 1, b), ("d".into(), 1, d)]
        )
    );
    assert_eq!(acquire_permits(&mut c, "s", "e", 60_000, 4, 1), None);
}

#[test]
fn the_wrong_kind_gets_wrongtype_and_nothing_changes() {
    let s = Server::start();
    let mut c = s.conn();
    acquire_permits(&mut c, "sem", "a", 60_000, 5, 2).unwrap();
    acquire(&mut c, "x", "w", 60_000).unwrap();
    acquire_shared(&mut c, "r", "a", 60_000).unwrap();
    let snapshot = |c: &mut Connection| -> Vec<Vec<(String, i64, i64)>> {
        ["sem", "x", "r"]
            .iter()
            .map(|k| family::held(c, k))
            .collect()
    };
    let before = snapshot(&mut c);
    let cases: Vec<(&str, &str, Kind, String)> = vec![
        ("sem", "b", Kind::Exclusive, semaphore_error(5)),
        ("sem", "b", Kind::Shared, semaphore_error(5)),
        ("sem", "b", Kind::permits(4, 1), semaphore_error(5)),
        ("sem", "b", Kind::permits(6, 1), semaphore_error(5)),
        // The holder itself too.
        ("sem", "a", Kind::Exclusive, semaphore_error(5)),
        ("sem", "a", Kind::Shared, semaphore_error(5)),
        ("sem", "a", Kind::permits(1, 1), semaphore_error(5)),
        ("x", "b", Kind::permits(5, 1), NOT_A_SEMAPHORE.to_string()),
        ("x", "w", Kind::permits(5, 1), NOT_A_SEMAPHORE.to_string()),
        ("r", "b", Kind::permits(5, 1), NOT_A_SEMAPHORE.to_string()),
        ("r", "a", Kind::permits(1, 1), NOT_A_SEMAPHORE.to_string()),
    ];
    for (key, owner, kind, want) in cases {
        assert_eq!(
            acquire_error(&mut c, key, owner, 600_000, kind),
            want,
            "{owner} asks {key} for {kind:?}"
        );
    }
    assert_eq!(snapshot(&mut c), before, "nothing changed");
    assert!(
        family::info(&mut c, "sem")
            .unwrap()
            .holder("a")
            .unwrap()
            .ttl
            <= 60_000,
        "no lease was renewed"
    );
    // RENEW and RELEASE do not care about the kind.
    assert_eq!(renew(&mut c, "sem", "a", 60_000), 1);
    assert_eq!(release(&mut c, "sem", "a"), Some(1));
}

#[test]
fn the_kind_is_forgotten_when_the_key_is_gone() {
    let s = Server::start();
    let mut c = s.conn();
    acquire_permits(&mut c, "k", "a", 60_000, 3, 2).unwrap();
    assert_eq!(release_count(&mut c, "k", "a", 2), Some(0));
    assert!(!exists(&mut c, "k"));
    let t = acquire(&mut c, "k", "w", 60_000).expect("a semaphore no more");
    assert_eq!(exclusive(&mut c, "k").token, t);
    assert_eq!(release(&mut c, "k", "w"), Some(0));
    acquire_permits(&mut c, "k", "a", 60_000, 7, 1).expect("any LIMIT now");
    assert_eq!(semaphore(&mut c, "k").0, 7);
    assert_eq!(force_release(&mut c, "k"), 1);
    acquire_shared(&mut c, "k", "r", 60_000).unwrap();
    assert_eq!(
        acquire_error(&mut c, "k", "q", 60_000, Kind::permits(7, 1)),
        NOT_A_SEMAPHORE
    );
    assert_eq!(force_release_owner(&mut c, "k", "r"), 1);
    assert!(!exists(&mut c, "k"));
    acquire_permits(&mut c, "k", "q", 60_000, 2, 1).expect("the reader is gone: any kind");
    assert_eq!(semaphore(&mut c, "k").0, 2);
}

#[test]
fn release_count_releases_exclusive_holds_before_shared_ones() {
    let s = Server::start();
    let mut c = s.conn();
    // Two exclusive holds, then two shared ones (the downgrade path).
    let t = acquire(&mut c, "k", "w", 60_000).unwrap();
    acquire(&mut c, "k", "w", 60_000).unwrap();
    acquire_shared(&mut c, "k", "w", 60_000).unwrap();
    acquire_shared(&mut c, "k", "w", 60_000).unwrap();
    assert_eq!(exclusive(&mut c, "k").amount, 4);
    assert_eq!(release_count(&mut c, "k", "w", 1), Some(3));
    assert_eq!(exclusive(&mut c, "k").amount, 3, "one exclusive hold left");
    assert_eq!(acquire_shared(&mut c, "k", "r", 60_000), None);
    assert_eq!(release_count(&mut c, "k", "w", 1), Some(2));
    let holders = shared_holders(&mut c, "k");
    assert_eq!(
        (
            holders[0].owner.as_str(),
            holders[0].amount,
            holders[0].token
        ),
        ("w", 2, t),
        "the exclusive holds went first: shared now"
    );
    acquire_shared(&mut c, "k", "r", 60_000).expect("readers may join");
    assert_eq!(release_count(&mut c, "k", "w", 2), Some(0));
    assert_eq!(owners(&family::info(&mut c, "k").unwrap()), ["r"]);
    assert_eq!(release_count(&mut c, "k", "w", 1), None, "w holds nothing");
    assert_eq!(release_count(&mut c, "k", "w", 5), None);
    assert_eq!(release_count(&mut c, "k", "r", 1), Some(0));
    assert!(!exists(&mut c, "k"));
    // Several exclusive holds at once (no shared ones) down to zero.
    acquire(&mut c, "e", "w", 60_000).unwrap();
    acquire(&mut c, "e", "w", 60_000).unwrap();
    acquire(&mut c, "e", "w", 60_000).unwrap();
    assert_eq!(release_count(&mut c, "e", "w", 3), Some(0));
    assert!(!exists(&mut c, "e"));
    // A partial release keeps the lease as it was.
    acquire(&mut c, "p", "w", 60_000).unwrap();
    acquire_shared(&mut c, "p", "w", 60_000).unwrap();
    assert_eq!(renew(&mut c, "p", "w", 20_000), 1);
    assert_eq!(release_count(&mut c, "p", "w", 1), Some(1));
    assert!(shared_holders(&mut c, "p")[0].ttl <= 20_000);
}

#[test]
fn release_count_on_a_semaphore_returns_permits() {
    let s = Server::start();
    let mut c = s.conn();
    let a = acquire_permits(&mut c, "s", "a", 60_000, 5, 3).unwrap();
    let b = acquire_permits(&mut c, "s", "b", 60_000, 5, 2).unwrap();
    assert_eq!(release_count(&mut c, "s", "a", 2), Some(1));
    assert_eq!(
        semaphore(&mut c, "s"),
        (5, 2, vec![("a".into(), 1, a), ("b".into(), 2, b)])
    );
    assert_eq!(
        release(&mut c, "s", "b"),
        Some(1),
        "RELEASE alone: 1 permit"
    );
    assert_eq!(semaphore(&mut c, "s").1, 3);
    assert_eq!(release_count(&mut c, "s", "a", 1), Some(0));
    assert_eq!(semaphore(&mut c, "s"), (5, 4, vec![("b".into(), 1, b)]));
    assert_eq!(release_count(&mut c, "s", "a", 1), None);
    assert_eq!(release_count(&mut c, "s", "b", 1), Some(0));
    assert!(
        !exists(&mut c, "s"),
        "nobody holds anything: the key is gone"
    );
}

#[test]
fn release_count_above_what_is_held_is_refused_and_changes_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "w", 60_000).unwrap();
    acquire_shared(&mut c, "k", "w", 60_000).unwrap();
    acquire_shared(&mut c, "r", "a", 60_000).unwrap();
    acquire_shared(&mut c, "r", "a", 60_000).unwrap();
    acquire_shared(&mut c, "r", "b", 60_000).unwrap();
    acquire_permits(&mut c, "s", "p", 60_000, 9, 4).unwrap();
    let snapshot = |c: &mut Connection| -> Vec<Vec<(String, i64, i64)>> {
        ["k", "r", "s"].iter().map(|k| family::held(c, k)).collect()
    };
    let before = snapshot(&mut c);
    for (key, owner, n, held) in [
        ("k", "w", 3, 2),
        ("r", "a", 3, 2),
        ("r", "b", 2, 1),
        ("s", "p", 5, 4),
        ("s", "p", i64::MAX as u64, 4),
    ] {
        let err = try_release_count(&mut c, key, owner, n).unwrap_err();
        assert_eq!(
            error_text(&err),
            release_count_error(held),
            "{key} {owner} {n}"
        );
    }
    assert_eq!(snapshot(&mut c), before, "nothing changed");
    // Exactly what is held is fine.
    assert_eq!(release_count(&mut c, "s", "p", 4), Some(0));
    assert_eq!(release_count(&mut c, "k", "w", 2), Some(0));
}

#[test]
fn renew_renews_only_that_owners_lease() {
    let s = Server::start();
    let mut c = s.conn();
    acquire_shared(&mut c, "r", "a", 10_000).unwrap();
    acquire_shared(&mut c, "r", "b", 20_000).unwrap();
    acquire_permits(&mut c, "s", "p", 10_000, 3, 1).unwrap();
    acquire_permits(&mut c, "s", "q", 20_000, 3, 2).unwrap();
    for (key, owner, other) in [("r", "a", "b"), ("s", "p", "q")] {
        assert_eq!(renew(&mut c, key, owner, 60_000), 1);
        let info = family::info(&mut c, key).unwrap();
        assert!(
            info.holder(owner).unwrap().ttl > 20_000,
            "{owner}'s lease is now + 60 s"
        );
        assert!(
            info.holder(other).unwrap().ttl <= 20_000,
            "{other}'s lease is untouched"
        );
        assert_eq!(renew(&mut c, key, "nobody", 60_000), 0);
    }
    // A shorter renewal shortens only that lease too.
    assert_eq!(renew(&mut c, "r", "b", 5_000), 1);
    let info = family::info(&mut c, "r").unwrap();
    assert!(info.holder("b").unwrap().ttl <= 5_000);
    assert!(info.holder("a").unwrap().ttl > 20_000);
}

#[test]
fn each_reader_expires_on_its_own_and_is_announced_once() {
    let s = Server::start();
    let mut c = s.conn();
    notify_all(&mut c);
    let mut sub = s.conn();
    let mut pubsub = sub.as_pubsub();
    pubsub.psubscribe("__keyevent@0__:lock.*").unwrap();
    pubsub.set_read_timeout(Some(PATIENCE)).unwrap();

    let long = acquire_shared(&mut c, "k", "long", 600_000).unwrap();
    let short = grant_timed(&mut c, "k", "short", 300, Kind::Shared);
    family::expect_holder_expiry(&mut c, &[("short", &short)]);
    wait_expired(&mut c, 1);
    assert_eq!(
        family::held(&mut c, "k"),
        [("long".into(), 1, long)],
        "only the short lease ended"
    );
    assert_eq!(release(&mut c, "k", "short"), None);
    assert_eq!(renew(&mut c, "k", "short", 1000), 0);
    assert_eq!(release(&mut c, "k", "long"), Some(0));
    let seen: Vec<(String, String)> = (0..4).map(|_| next_event(&mut pubsub)).collect();
    let k = || "k".to_string();
    assert_eq!(
        seen,
        [
            ("lock.acquire".into(), k()),
            ("lock.acquire".into(), k()),
            ("lock.expire".into(), k()),
            ("lock.release".into(), k()),
        ],
        "one lock.expire, for the short lease, before the release"
    );
    assert_eq!(stat(&mut c, "expired"), 1);
}

#[test]
fn each_permit_holder_expires_on_its_own() {
    let s = Server::start();
    let mut c = s.conn();
    let long = acquire_permits(&mut c, "s", "long", 600_000, 3, 1).unwrap();
    let short = grant_timed(&mut c, "s", "short", 300, Kind::permits(3, 2));
    family::expect_holder_expiry(&mut c, &[("short", &short)]);
    assert_eq!(
        semaphore(&mut c, "s"),
        (3, 2, vec![("long".into(), 1, long)]),
        "its permits are free again"
    );
    wait_expired(&mut c, 1);
    acquire_permits(&mut c, "s", "next", 60_000, 3, 2).expect("the freed permits");
}

#[test]
fn force_release_of_one_owner_removes_only_its_holds() {
    let s = Server::start();
    let mut c = s.conn();
    let a = acquire_shared(&mut c, "r", "a", 60_000).unwrap();
    acquire_shared(&mut c, "r", "b", 60_000).unwrap();
    acquire_shared(&mut c, "r", "b", 60_000).unwrap();
    let cc = acquire_shared(&mut c, "r", "c", 60_000).unwrap();
    assert_eq!(force_release_owner(&mut c, "r", "b"), 1);
    assert_eq!(
        family::held(&mut c, "r"),
        [("a".into(), 1, a), ("c".into(), 1, cc)],
        "all of b's holds, nobody else's"
    );
    assert_eq!(force_release_owner(&mut c, "r", "b"), 0);
    assert_eq!(force_release_owner(&mut c, "r", "nobody"), 0);
    assert_eq!(release(&mut c, "r", "b"), None);
    assert_eq!(force_release_owner(&mut c, "nokey", "a"), 0);

    // A semaphore: that owner's permits come back.
    acquire_permits(&mut c, "s", "p", 60_000, 3, 2).unwrap();
    let q = acquire_permits(&mut c, "s", "q", 60_000, 3, 1).unwrap();
    assert_eq!(force_release_owner(&mut c, "s", "p"), 1);
    assert_eq!(semaphore(&mut c, "s"), (3, 2, vec![("q".into(), 1, q)]));
    assert_eq!(force_release_owner(&mut c, "s", "q"), 1);
    assert!(
        !exists(&mut c, "s"),
        "the last holder's removal deletes the key"
    );

    // The exclusive lock: only its holder's name removes it.
    acquire(&mut c, "x", "w", 60_000).unwrap();
    acquire(&mut c, "x", "w", 60_000).unwrap();
    assert_eq!(force_release_owner(&mut c, "x", "other"), 0);
    assert_eq!(exclusive(&mut c, "x").amount, 2);
    assert_eq!(force_release_owner(&mut c, "x", "w"), 1);
    assert!(!exists(&mut c, "x"));

    // Without an owner: everyone.
    assert_eq!(force_release(&mut c, "r"), 1);
    assert!(!exists(&mut c, "r"));
    assert_eq!(renew(&mut c, "r", "a", 1000), 0);
    assert_eq!(force_release(&mut c, "r"), 0);
}

/// The raw `LOCK.INFO` reply.
fn raw_info(c: &mut Connection, key: &str) -> Value {
    redis::cmd("LOCK.INFO").arg(key).query(c).unwrap()
}

#[test]
fn info_shapes_are_exact_in_resp2_and_resp3() {
    let s = Server::start();
    let mut c = s.conn();
    let x = acquire(&mut c, "x", "w", 60_000).unwrap();
    acquire_shared(&mut c, "x", "w", 60_000).unwrap();
    let r1 = acquire_shared(&mut c, "r", "r1", 30_000).unwrap();
    let r2 = acquire_shared(&mut c, "r", "r2", 60_000).unwrap();
    acquire_shared(&mut c, "r", "r2", 60_000).unwrap();
    let p = acquire_permits(&mut c, "s", "p", 30_000, 10, 3).unwrap();
    let q = acquire_permits(&mut c, "s", "q", 60_000, 10, 4).unwrap();
    for resp3 in [false, true] {
        let mut c = if resp3 { s.conn_resp3() } else { s.conn() };
        let proto = if resp3 { "RESP3" } else { "RESP2" };
        for key in ["x", "r", "s"] {
            let v = raw_info(&mut c, key);
            match (&v, resp3) {
                (Value::Map(_), true) | (Value::Array(_), false) => {}
                _ => panic!(
                    "{proto}: LOCK.INFO {key} should be a {}: {v:?}",
                    if resp3 { "map" } else { "flat array" }
                ),
            }
        }
        // The field order and every type are checked by the parser.
        let i = family::parse_info(&raw_info(&mut c, "x")).unwrap();
        let Info::Exclusive { holder, waiters } = i else {
            panic!("{proto}: {i:?}")
        };
        assert_eq!(
            (holder.owner.as_str(), holder.amount, holder.token, waiters),
            ("w", 2, x, 0),
            "{proto}"
        );
        assert!(holder.ttl > 0 && holder.ttl <= 60_000);

        let i = family::parse_info(&raw_info(&mut c, "r")).unwrap();
        let Info::Shared { waiters, holders } = &i else {
            panic!("{proto}: {i:?}")
        };
        assert_eq!(*waiters, 0);
        assert_eq!(
            i.held(),
            [("r1".into(), 1, r1), ("r2".into(), 2, r2)],
            "{proto}"
        );
        assert!(holders[0].ttl <= 30_000, "{proto}: each its own ttl");
        assert!(holders[1].ttl > 30_000, "{proto}: each its own ttl");

        let i = family::parse_info(&raw_info(&mut c, "s")).unwrap();
        let Info::Semaphore {
            limit,
            available,
            waiters,
            holders,
        } = &i
        else {
            panic!("{proto}: {i:?}")
        };
        assert_eq!((*limit, *available, *waiters), (10, 3, 0), "{proto}");
        assert_eq!(
            i.held(),
            [("p".into(), 3, p), ("q".into(), 4, q)],
            "{proto}"
        );
        assert!(holders[0].ttl <= 30_000 && holders[1].ttl > 30_000);
        // Holder entries are maps in RESP3, flat arrays in RESP2.
        let v = raw_info(&mut c, "s");
        let holders_value = match &v {
            Value::Map(f) => f[4].1.clone(),
            Value::Array(f) => f[9].clone(),
            _ => unreachable!(),
        };
        let Value::Array(entries) = holders_value else {
            panic!("{proto}: holders must be an array")
        };
        for e in &entries {
            match (e, resp3) {
                (Value::Map(_), true) | (Value::Array(_), false) => {}
                _ => panic!("{proto}: a holder entry of the wrong type: {e:?}"),
            }
        }
        let v = raw_info(&mut c, "free");
        assert_eq!(v, Value::Nil, "{proto}: nil when nothing is held");
    }
    // redis-cli (RESP2): the shared form, field by field.
    let lines = s.cli_stdout(&["LOCK.INFO", "r"]);
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines[..4], ["mode", "shared", "waiters", "0"], "{lines:?}");
    assert_eq!(lines[4], "holders");
}

#[test]
fn option_errors_are_exact_and_change_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    acquire_shared(&mut c, "k", "a", 60_000).unwrap();
    acquire_permits(&mut c, "s", "a", 60_000, 5, 1).unwrap();
    let before = (family::held(&mut c, "k"), family::held(&mut c, "s"));
    let syntax: Vec<Vec<&str>> = vec![
        vec!["COUNT", "1"],
        vec!["COUNT", "1", "WAIT", "10"],
        vec!["SHARED", "COUNT", "1"],
        vec!["SHARED", "LIMIT", "5"],
        vec!["LIMIT", "5", "SHARED"],
        vec!["LIMIT", "5", "COUNT", "1", "SHARED"],
        vec!["WAIT", "10", "SHARED", "LIMIT", "5"],
        vec!["SHARED", "SHARED"],
        vec!["shared", "Shared"],
        vec!["SHARED", "WAIT", "10", "SHARED"],
        vec!["LIMIT", "5", "LIMIT", "5"],
        vec!["LIMIT", "5", "COUNT", "1", "COUNT", "1"],
        vec!["LIMIT", "5", "COUNT", "1", "LIMIT", "5"],
        vec!["WAIT", "10", "WAIT", "10"],
        vec!["WAIT", "10", "SHARED", "WAIT", "10"],
    ];
    let limit: Vec<Vec<&str>> = vec![
        vec!["LIMIT", "0"],
        vec!["LIMIT", "1000001"],
        vec!["LIMIT", "-1"],
        vec!["LIMIT", "many"],
        vec!["LIMIT", "1.5"],
        vec!["LIMIT", ""],
        vec!["LIMIT", "99999999999999999999"],
        vec!["LIMIT", "0", "COUNT", "1"],
        vec!["limit", "1000001", "count", "1"],
    ];
    let count: Vec<Vec<&str>> = vec![
        vec!["LIMIT", "5", "COUNT", "0"],
        vec!["LIMIT", "5", "COUNT", "6"],
        vec!["LIMIT", "5", "COUNT", "-1"],
        vec!["LIMIT", "5", "COUNT", "x"],
        vec!["LIMIT", "1", "COUNT", "2"],
        vec!["LIMIT", "1000000", "COUNT", "1000001"],
        vec!["LIMIT", "5", "count", "99999999999999999999"],
    ];
    let mut cases: Vec<(Vec<&str>, Option<&str>)> = Vec::new();
    cases.extend(syntax.into_iter().map(|a| (a, Some(SYNTAX_ERROR))));
    cases.extend(limit.into_iter().map(|a| (a, Some(LIMIT_ERROR))));
    cases.extend(count.into_iter().map(|a| (a, Some(COUNT_ERROR))));
    // A missing value or an unknown word: an ERR, whichever message.
    for a in [
        vec!["LIMIT"],
        vec!["LIMIT", "5", "COUNT"],
        vec!["SHARED", "WAIT"],
        vec!["EXCLUSIVE"],
        vec!["SHARED", "5"],
    ] {
        cases.push((a, None));
    }
    for (opts, want) in &cases {
        for key in ["k", "s", "fresh"] {
            let err = redis::cmd("LOCK.ACQUIRE")
                .arg(key)
                .arg("b")
                .arg(60_000)
                .arg(opts)
                .query::<Value>(&mut c)
                .unwrap_err();
            match want {
                Some(want) => assert_eq!(error_text(&err), *want, "{key} {opts:?}"),
                None => assert_eq!(err.code(), Some("ERR"), "{key} {opts:?}: {err}"),
            }
        }
        assert_eq!(
            (family::held(&mut c, "k"), family::held(&mut c, "s")),
            before,
            "{opts:?} changed a lock"
        );
        assert_eq!(dbsize(&mut c), 2, "{opts:?} created a key");
    }
}

#[test]
fn options_are_case_insensitive_and_in_any_order() {
    let s = Server::start();
    let mut c = s.conn();
    let grant = |c: &mut Connection, key: &str, owner: &str, opts: &[&str]| -> i64 {
        let r: Option<i64> = redis::cmd("LOCK.ACQUIRE")
            .arg(key)
            .arg(owner)
            .arg(60_000)
            .arg(opts)
            .query(c)
            .unwrap_or_else(|e| panic!("{opts:?}: {e}"));
        r.unwrap_or_else(|| panic!("{opts:?} not granted"))
    };
    grant(&mut c, "r", "a", &["shared"]);
    grant(&mut c, "r", "b", &["Shared", "wait", "100"]);
    grant(&mut c, "r", "c", &["WAIT", "100", "sHaReD"]);
    assert_eq!(owners(&family::info(&mut c, "r").unwrap()), ["a", "b", "c"]);
    grant(&mut c, "s", "a", &["limit", "7", "count", "2"]);
    grant(
        &mut c,
        "s",
        "b",
        &["Wait", "100", "Limit", "7", "Count", "3"],
    );
    grant(
        &mut c,
        "s",
        "c",
        &["LIMIT", "7", "COUNT", "1", "WAIT", "100"],
    );
    grant(&mut c, "s", "d", &["LiMiT", "7"]);
    let (limit, available, holders) = semaphore(&mut c, "s");
    assert_eq!((limit, available), (7, 0));
    let amounts: Vec<i64> = holders.iter().map(|h| h.1).collect();
    assert_eq!(amounts, [2, 3, 1, 1]);
    grant(&mut c, "x", "a", &["wait", "100"]);
    assert_eq!(family::info(&mut c, "x").unwrap().mode(), "exclusive");
}

#[test]
fn release_and_force_release_argument_errors() {
    let s = Server::start();
    let mut c = s.conn();
    acquire_shared(&mut c, "k", "a", 60_000).unwrap();
    acquire_shared(&mut c, "k", "a", 60_000).unwrap();
    let before = family::held(&mut c, "k");
    for args in [
        vec!["LOCK.RELEASE", "k", "a", "COUNT"],
        vec!["LOCK.RELEASE", "k", "a", "COUNT", "0"],
        vec!["LOCK.RELEASE", "k", "a", "COUNT", "-1"],
        vec!["LOCK.RELEASE", "k", "a", "COUNT", "x"],
        vec!["LOCK.RELEASE", "k", "a", "COUNT", "9223372036854775808"],
        vec!["LOCK.RELEASE", "k", "a", "COUNT", "1", "COUNT", "1"],
        vec!["LOCK.RELEASE", "k", "a", "ALL"],
        vec!["LOCK.RELEASE", "k", "a", "1"],
        vec!["LOCK.FORCERELEASE", "k", ""],
        vec!["LOCK.FORCERELEASE", "k", "a", "extra"],
    ] {
        let err = redis::cmd(args[0])
            .arg(&args[1..])
            .query::<Value>(&mut c)
            .unwrap_err();
        assert_eq!(err.code(), Some("ERR"), "{args:?}: {err}");
        assert_eq!(
            family::held(&mut c, "k"),
            before,
            "{args:?} changed the lock"
        );
    }
    let n: Option<i64> = redis::cmd("LOCK.RELEASE")
        .arg("k")
        .arg("a")
        .arg("count")
        .arg(2)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, Some(0), "the keyword is case-insensitive");
}

#[test]
fn info_lock_counts_shared_and_semaphore_grants() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "x", "w", 60_000).unwrap(); // exclusive grant
    acquire_shared(&mut c, "x", "w", 60_000).unwrap(); // downgrade: a re-entry
    acquire_shared(&mut c, "r", "a", 60_000).unwrap(); // shared grant
    acquire_shared(&mut c, "r", "b", 60_000).unwrap(); // shared grant
    acquire_shared(&mut c, "r", "a", 60_000).unwrap(); // re-entry
    assert_eq!(acquire(&mut c, "r", "w", 60_000), None); // denied
    acquire_permits(&mut c, "s", "p", 60_000, 4, 2).unwrap(); // semaphore grant
    acquire_permits(&mut c, "s", "q", 60_000, 4, 1).unwrap(); // semaphore grant
    acquire_permits(&mut c, "s", "p", 60_000, 4, 1).unwrap(); // adds: same token
    assert_eq!(acquire_permits(&mut c, "s", "z", 60_000, 4, 1), None); // denied
                                                                       // A fresh grant after a release counts again.
    release(&mut c, "r", "b").unwrap();
    acquire_shared(&mut c, "r", "b", 60_000).unwrap(); // shared grant
    assert_eq!(stat(&mut c, "shared_grants"), 3);
    assert_eq!(stat(&mut c, "semaphore_grants"), 2);
    assert_eq!(
        stat(&mut c, "grants"),
        6,
        "every fresh grant, of every kind"
    );
    assert!(stat(&mut c, "reentries") >= 2);
    assert_eq!(stat(&mut c, "denied"), 2);
    assert_eq!(stat(&mut c, "releases"), 1);
}

#[test]
fn keyspace_events_for_every_kind() {
    let s = Server::start();
    let mut c = s.conn();
    notify_all(&mut c);
    let mut sub = s.conn();
    let mut pubsub = sub.as_pubsub();
    pubsub.psubscribe("__keyevent@0__:lock.*").unwrap();
    pubsub.set_read_timeout(Some(PATIENCE)).unwrap();

    acquire_shared(&mut c, "r", "a", 60_000).unwrap(); // acquire
    acquire_shared(&mut c, "r", "b", 60_000).unwrap(); // acquire
    acquire_shared(&mut c, "r", "a", 60_000).unwrap(); // re-entry: nothing
    release(&mut c, "r", "a").unwrap(); // a still holds 1: nothing
    release(&mut c, "r", "a").unwrap(); // release
    force_release_owner(&mut c, "r", "b"); // forcerelease
    acquire(&mut c, "x", "w", 60_000).unwrap(); // acquire
    acquire_shared(&mut c, "x", "w", 60_000).unwrap(); // downgrade: nothing
    release_count(&mut c, "x", "w", 1).unwrap(); // still holds shared: nothing
    release_count(&mut c, "x", "w", 1).unwrap(); // release
    acquire_permits(&mut c, "s", "p", 60_000, 3, 1).unwrap(); // acquire
    acquire_permits(&mut c, "s", "q", 60_000, 3, 2).unwrap(); // acquire
    release_count(&mut c, "s", "q", 1).unwrap(); // q keeps 1: nothing
    release_count(&mut c, "s", "q", 1).unwrap(); // release
    force_release(&mut c, "s"); // forcerelease
    let want: Vec<(String, String)> = [
        ("lock.acquire", "r"),
        ("lock.acquire", "r"),
        ("lock.release", "r"),
        ("lock.forcerelease", "r"),
        ("lock.acquire", "x"),
        ("lock.release", "x"),
        ("lock.acquire", "s"),
        ("lock.acquire", "s"),
        ("lock.release", "s"),
        ("lock.forcerelease", "s"),
    ]
    .iter()
    .map(|(e, k)| (e.to_string(), k.to_string()))
    .collect();
    let seen: Vec<(String, String)> = want.iter().map(|_| next_event(&mut pubsub)).collect();
    assert_eq!(seen, want);
    // Expiries, one kind after the other.
    for (key, kind) in [("re", Kind::Shared), ("se", Kind::permits(2, 1))] {
        try_acquire(&mut c, key, "o", 100, kind).unwrap().unwrap();
        assert_eq!(next_event(&mut pubsub), ("lock.acquire".into(), key.into()));
        assert_eq!(next_event(&mut pubsub), ("lock.expire".into(), key.into()));
    }
}

#[test]
fn memory_usage_grows_with_holders() {
    let s = Server::start();
    let mut c = s.conn();
    acquire_shared(&mut c, "r", "reader-0", 60_000).unwrap();
    acquire_permits(&mut c, "s", "holder-0", 60_000, 1000, 1).unwrap();
    let one = (
        family::memory_usage(&mut c, "r"),
        family::memory_usage(&mut c, "s"),
    );
    for i in 1..100 {
        acquire_shared(&mut c, "r", &format!("reader-{i}"), 60_000).unwrap();
        acquire_permits(&mut c, "s", &format!("holder-{i}"), 60_000, 1000, 1).unwrap();
    }
    let hundred = (
        family::memory_usage(&mut c, "r"),
        family::memory_usage(&mut c, "s"),
    );
    // 99 more owner names of 8+ bytes each, at the very least.
    assert!(
        hundred.0 >= one.0 + 99 * 8,
        "shared: {} bytes with 1 holder, {} with 100",
        one.0,
        hundred.0
    );
    assert!(
        hundred.1 >= one.1 + 99 * 8,
        "semaphore: {} bytes with 1 holder, {} with 100",
        one.1,
        hundred.1
    );
}

#[test]
fn rename_and_move_keep_every_holders_lease_on_time() {
    let s = Server::start();
    let mut c = s.conn();
    let mut in_db3 = s.conn();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut in_db3).unwrap();
    for (kind, how) in [
        (Kind::Shared, "RENAME"),
        (Kind::permits(3, 1), "MOVE"),
        (Kind::permits(3, 1), "RENAME"),
        (Kind::Shared, "MOVE"),
    ] {
        // Both holders' leases must still run when the command has moved
        // them (else, again with longer leases).
        until_conclusive(|attempt| {
            let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
            let ttl = lease_ms(400, attempt);
            let mut a = grant_timed(&mut c, "k", "a", ttl, kind);
            let mut b = grant_timed(&mut c, "k", "b", 2 * ttl, kind);
            let expired_before = stat(&mut c, "expired");
            let held_before = family::held(&mut c, "k");
            let new_name = if how == "RENAME" {
                let _: () = redis::cmd("RENAME")
                    .arg("k")
                    .arg("k2")
                    .query(&mut c)
                    .unwrap();
                "k2"
            } else {
                let moved: i64 = redis::cmd("MOVE").arg("k").arg(3).query(&mut c).unwrap();
                assert_eq!(moved, 1);
                "k"
            };
            let old_name_free = !exists(&mut c, "k");
            let there = if how == "RENAME" { &mut c } else { &mut in_db3 };
            let held_after = family::held(there, new_name);
            before(&format!("{how} {kind:?}"), Instant::now(), a.earliest)?;
            assert_eq!(
                held_after, held_before,
                "{how}: same holders, holds and tokens"
            );
            assert!(old_name_free, "{how}: nothing is left at the old place");
            a.key = new_name.to_string();
            b.key = new_name.to_string();
            family::expect_holder_expiry(there, &[("a", &a), ("b", &b)]);
            wait_gone(there, new_name);
            assert_eq!(
                stat(&mut c, "expired") - expired_before,
                2,
                "{how} {kind:?}: each holder expired once"
            );
            Ok(())
        });
    }
}

#[test]
fn del_of_a_shared_or_semaphore_key_leaves_no_stale_lease_behind() {
    // Old holders' leases end at `ttl`; the new locks at the same names,
    // some by the same owners, must outlive those deadlines. A probe lease
    // ending after them shows when the server's timer has passed them.
    let s = Server::start();
    let mut c = s.conn();
    let ttl = 300;
    acquire_shared(&mut c, "r", "a", ttl).unwrap();
    acquire_shared(&mut c, "r", "b", ttl).unwrap();
    acquire_permits(&mut c, "s", "p", ttl, 3, 2).unwrap();
    acquire_permits(&mut c, "s", "q", ttl, 3, 1).unwrap();
    let n: i64 = redis::cmd("DEL").arg("r").arg("s").query(&mut c).unwrap();
    assert_eq!(n, 2);
    assert!(family::info(&mut c, "r").is_none() && family::info(&mut c, "s").is_none());
    let a = acquire_shared(&mut c, "r", "a", 600_000).unwrap();
    assert_eq!(
        acquire_error(&mut c, "r", "b", 600_000, Kind::permits(2, 1)),
        NOT_A_SEMAPHORE,
        "the name holds a read/write lock again, not the old semaphore"
    );
    let p = acquire(&mut c, "s", "p", 600_000).expect("the semaphore is gone: any kind");
    let q = acquire_shared(&mut c, "t", "q", 600_000).unwrap();
    acquire(&mut c, "probe", "o", ttl + 300).unwrap();
    wait_gone(&mut c, "probe");
    assert_eq!(family::held(&mut c, "r"), [("a".into(), 1, a)]);
    assert_eq!(family::held(&mut c, "s"), [("p".into(), 1, p)]);
    assert_eq!(family::held(&mut c, "t"), [("q".into(), 1, q)]);
    assert_eq!(stat(&mut c, "expired"), 1, "only the probe expired");
}

#[test]
fn a_holder_is_never_shown_after_its_lease() {
    // Looks hard right around one reader's deadline: whenever LOCK.INFO
    // shows a holder, it has time left (the parser checks ttl > 0).
    let s = Server::start();
    let mut c = s.conn();
    acquire_shared(&mut c, "k", "long", 600_000).unwrap();
    acquire_shared(&mut c, "k", "short", 150).unwrap();
    acquire_permits(&mut c, "s", "long", 600_000, 2, 1).unwrap();
    acquire_permits(&mut c, "s", "short", 150, 2, 1).unwrap();
    let start = Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(400) {
        family::info(&mut c, "k").unwrap();
        family::info(&mut c, "s").unwrap();
    }
    wait_for("the short leases to go", PATIENCE, || {
        (family::held(&mut c, "k").len() == 1 && family::held(&mut c, "s").len() == 1).then_some(())
    });
}
