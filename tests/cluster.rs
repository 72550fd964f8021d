//! Redis Cluster: 3 masters with a replica each on loopback, the module on
//! every node. Locks on keys over all slots through a cluster-aware client;
//! `CLUSTER FAILOVER` of a shard and an automatic failover after a master
//! crash keep the locks and the token order; moving a slot that holds locks
//! (by hand and with `redis-cli --cluster reshard`) keeps owner, holds,
//! token and deadline, and the receiving node expires the leases on time
//! and keeps issuing larger tokens.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Value;
use testkit::cluster::{key_slot, keys_in_slots, Cluster, SLOTS};
use testkit::lock::{
    acquire, digest, exists, expect_expiry, force_release, grant_timed, held, release,
    spawn_waiter_on, stat, wait_waiters,
};
use testkit::replication::{cut_replica_link, synced};
use testkit::timing::{before, lease_ms};
use testkit::{until_conclusive, wait_for, EXPIRY_SLACK, PATIENCE};

/// Long enough for anything a test does around a failover or a slot move.
const LONG: u64 = 600_000;

#[test]
fn locks_on_keys_over_every_slot_through_a_cluster_client() {
    let cluster = Cluster::start();
    let mut cc = cluster.conn();

    // One key in every slot.
    let mut key_of_slot: Vec<Option<String>> = vec![None; SLOTS as usize];
    let mut left = SLOTS as usize;
    for n in 0..2_000_000u32 {
        let key = format!("lock:{n}");
        let slot = &mut key_of_slot[key_slot(key.as_bytes()) as usize];
        if slot.is_none() {
            *slot = Some(key);
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    let keys: Vec<String> = key_of_slot.into_iter().map(Option::unwrap).collect();
    let mut tokens = HashMap::new();
    for key in &keys {
        tokens.insert(key.clone(), acquire(&mut cc, key, "owner", LONG).unwrap());
    }
    for key in keys.iter().step_by(97) {
        assert_eq!(acquire(&mut cc, key, "owner", LONG), Some(tokens[key]));
        assert_eq!(acquire(&mut cc, key, "other", LONG), None);
        assert_eq!(held(&mut cc, key), Some(("owner".into(), 2, tokens[key])));
    }

    // Every master holds its share; its replica holds the same locks.
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    for port in masters {
        let mut m = cluster.node(port).conn();
        let share: u64 = cluster
            .slots_of(port)
            .iter()
            .map(|(a, b)| u64::from(b - a) + 1)
            .sum();
        assert_eq!(stat(&mut m, "held") as u64, share, "node {port}");
        synced(&mut m, 1);
        let (_, replicas) = cluster.shard_of_slot(cluster.slots_of(port)[0].0);
        let mut r = cluster.node(replicas[0]).conn();
        // Reads on a cluster replica need READONLY (else MOVED).
        let _: () = redis::cmd("READONLY").query(&mut r).unwrap();
        let mut compared = 0;
        for key in keys.iter().step_by(13) {
            if cluster.shard_of(key).0 == port {
                assert_eq!(held(&mut r, key), held(&mut m, key), "{key}");
                assert_eq!(digest(&mut r, key), digest(&mut m, key), "{key}");
                compared += 1;
            }
        }
        assert!(compared > 100, "compared {compared} keys on {port}");
    }

    // Release everywhere, grant again: larger tokens on every shard.
    for key in &keys {
        let holds = held(&mut cc, key).unwrap().1;
        for left in (0..holds).rev() {
            assert_eq!(release(&mut cc, key, "owner"), Some(left), "{key}");
        }
        let again = acquire(&mut cc, key, "second", LONG).unwrap();
        assert!(again > tokens[key], "{key}: {again} after {}", tokens[key]);
        tokens.insert(key.clone(), again);
    }

    // WAIT through cluster connections: hand-off on release.
    let key = &keys[12_345];
    let waiter = spawn_waiter_on(cluster.conn(), key, "waiter", LONG, 120_000);
    let (port, _) = cluster.shard_of(key);
    wait_waiters(&mut cluster.node(port).conn(), 1);
    assert_eq!(release(&mut cc, key, "second"), Some(0));
    let got = waiter.join().unwrap().unwrap();
    assert!(got > tokens[key]);
    assert_eq!(held(&mut cc, key), Some(("waiter".into(), 1, got)));
}

#[test]
fn cluster_failover_keeps_locks_leases_and_token_order() {
    // The failover must be done before the short lease ends (else the old
    // master expires it): again, on a new cluster, with a longer lease when
    // it was not.
    until_conclusive(|attempt| {
        let cluster = Cluster::start();
        let (old, replicas) = cluster.shard_of("{f}");
        let new = replicas[0];
        let mut cc = cluster.conn();
        let long = acquire(&mut cc, "{f}long", "a", LONG).unwrap();
        acquire(&mut cc, "{f}long", "a", LONG).unwrap();
        let mut others = Vec::new();
        for i in 0..20 {
            let key = format!("{{f}}k{i}");
            others.push((key.clone(), acquire(&mut cc, &key, "b", LONG).unwrap()));
        }
        let short = grant_timed(&mut cc, "{f}short", "c", lease_ms(6_000, attempt));
        let mut m = cluster.node(old).conn();
        let before_failover = digest(&mut m, "{f}long");
        let max_before = others.iter().map(|(_, t)| *t).max().unwrap().max(long);
        // A client waits on the old master.
        let waiter = spawn_waiter_on(cluster.node(old).conn(), "{f}long", "w", LONG, 300_000);
        wait_waiters(&mut m, 1);
        synced(&mut m, 1);

        cluster.failover(new, None);
        before("the failover", Instant::now(), short.earliest)?;
        // Demoted, the old master answers its waiter.
        let err = waiter.join().unwrap_err();
        assert_eq!(err.code(), Some("UNBLOCKED"), "{err}");
        cluster.wait_healthy();

        let mut cc = cluster.conn();
        let mut n = cluster.node(new).conn();
        assert_eq!(held(&mut cc, "{f}long"), Some(("a".into(), 2, long)));
        assert_eq!(digest(&mut n, "{f}long"), before_failover, "same deadline");
        for (key, t) in &others {
            assert_eq!(held(&mut cc, key), Some(("b".into(), 1, *t)), "{key}");
        }
        // The lease still expires, now by the new master's timer; the old
        // master (a replica now) expired nothing.
        expect_expiry(&mut n, &[short]);
        assert_eq!(stat(&mut n, "expired"), 1);
        assert_eq!(stat(&mut cluster.node(old).conn(), "expired"), 0);

        // WAIT is served by the new master, and its tokens are larger.
        let waiter = spawn_waiter_on(cluster.conn(), "{f}long", "w2", LONG, 120_000);
        wait_waiters(&mut n, 1);
        assert_eq!(release(&mut cc, "{f}long", "a"), Some(1));
        assert_eq!(release(&mut cc, "{f}long", "a"), Some(0));
        let handed = waiter.join().unwrap().unwrap();
        assert!(
            handed > max_before,
            "{handed} after failover, {max_before} before"
        );
        let fresh = acquire(&mut cc, "{f}fresh", "d", LONG).unwrap();
        assert!(fresh > handed);
        Ok(())
    });
}

#[test]
fn automatic_failover_after_a_master_crash_exceeds_lost_grants() {
    let mut cluster = Cluster::start();
    let (old, replicas) = cluster.shard_of("{c}");
    let new = replicas[0];
    let mut m = cluster.node(old).conn();
    let long = acquire(&mut m, "{c}long", "a", LONG).unwrap();
    let seen = acquire(&mut m, "{c}seen", "a", LONG).unwrap();
    for i in 0..10 {
        acquire(&mut m, &format!("{{c}}overdue{i}"), "a", 500).unwrap();
    }
    synced(&mut m, 1);

    // The replica stops and loses its link: the next grants never reach it.
    cluster.node(new).pause();
    cut_replica_link(&mut m);
    let lost = acquire(&mut m, "{c}lost", "x", LONG).unwrap();
    assert_eq!(force_release(&mut m, "{c}seen"), 1);
    let lost_seen = acquire(&mut m, "{c}seen", "y", LONG).unwrap();
    drop(m);
    cluster.kill9(old);
    cluster.node(new).resume();

    // The cluster elects the replica once the master is marked failed.
    cluster.wait_master(new, PATIENCE);
    let promoted = Instant::now();
    let mut n = cluster.node(new).conn();
    wait_for("the overdue leases to be expired", EXPIRY_SLACK, || {
        (!(0..10).any(|i| exists(&mut n, &format!("{{c}}overdue{i}")))).then_some(())
    });
    assert!(promoted.elapsed() < EXPIRY_SLACK);
    cluster.wait_healthy();

    let mut cc = cluster.conn();
    assert_eq!(held(&mut cc, "{c}long"), Some(("a".into(), 1, long)));
    assert_eq!(held(&mut cc, "{c}seen"), Some(("a".into(), 1, seen)));
    assert!(!exists(&mut n, "{c}lost"), "the lost grant never arrived");
    let t = acquire(&mut cc, "{c}lost", "z", LONG).unwrap();
    assert!(t > lost, "{t} after failover, lost {lost}");
    assert_eq!(force_release(&mut cc, "{c}seen"), 1);
    let t = acquire(&mut cc, "{c}seen", "z", LONG).unwrap();
    assert!(t > lost_seen, "{t} after failover, lost {lost_seen}");
}

#[test]
fn moving_a_slot_by_hand_keeps_owner_holds_token_and_deadline() {
    // The short lease must still be live when the move and the looks at the
    // target are done: again, on a new cluster, with a longer lease when it
    // was not.
    until_conclusive(|attempt| {
        let cluster = Cluster::start();
        let slot = key_slot(b"{mig}");
        let (source, _) = cluster.shard_of_slot(slot);
        let target = *cluster.masters().iter().find(|p| **p != source).unwrap();
        let mut a = cluster.node(source).conn();
        let t_a = acquire(&mut a, "{mig}a", "holder", LONG).unwrap();
        acquire(&mut a, "{mig}a", "holder", LONG).unwrap();
        let t_b = acquire(&mut a, "{mig}b", "other", LONG).unwrap();
        let short = grant_timed(&mut a, "{mig}short", "s", lease_ms(4_000, attempt));
        let keys = ["{mig}a", "{mig}b", "{mig}short"];
        let digests: Vec<Value> = keys.iter().map(|k| digest(&mut a, k)).collect();
        let held_before = stat(&mut a, "held");
        // A client waits for a lock on the source.
        let waiter = spawn_waiter_on(cluster.node(source).conn(), "{mig}a", "w", LONG, 300_000);
        wait_waiters(&mut a, 1);

        cluster.move_slot(slot, source, target);

        // What the source, the target and the target's replica hold now.
        let held_after = stat(&mut a, "held");
        let left: i64 = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query(&mut a)
            .unwrap();
        let mut b = cluster.node(target).conn();
        let on_target: Vec<Value> = keys.iter().map(|k| digest(&mut b, k)).collect();
        let held_a = held(&mut b, "{mig}a");
        let held_b = held(&mut b, "{mig}b");
        synced(&mut b, 1);
        let (_, target_replicas) = cluster.shard_of_slot(slot);
        let mut br = cluster.node(target_replicas[0]).conn();
        let on_replica: Vec<Value> = keys.iter().map(|k| digest(&mut br, k)).collect();
        before("the looks after the move", Instant::now(), short.earliest)?;

        // The waiter is told to retry (where a cluster client follows MOVED).
        let err = waiter.join().unwrap_err();
        assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
        assert_eq!(held_after, held_before - 3);
        assert_eq!(left, 0, "the source kept no key of the slot");
        // The locks arrived whole, also on the target's replica.
        for (key, (want, got)) in keys.iter().zip(digests.iter().zip(&on_target)) {
            assert_eq!(got, want, "{key}: owner, holds, token, deadline");
        }
        assert_eq!(held_a, Some(("holder".into(), 2, t_a)));
        assert_eq!(held_b, Some(("other".into(), 1, t_b)));
        for (key, (want, got)) in keys.iter().zip(digests.iter().zip(&on_replica)) {
            assert_eq!(got, want, "{key} on the target's replica");
        }

        // The lease expires on the receiving node, on time.
        expect_expiry(&mut b, &[short]);
        assert_eq!(stat(&mut b, "expired"), 1);

        // The receiving node issues larger tokens for the moved keys.
        assert_eq!(release(&mut b, "{mig}a", "holder"), Some(1));
        assert_eq!(release(&mut b, "{mig}a", "holder"), Some(0));
        let next = acquire(&mut b, "{mig}a", "next", LONG).unwrap();
        assert!(next > t_a, "{next} on the target after {t_a}");
        assert_eq!(force_release(&mut b, "{mig}b"), 1);
        assert!(acquire(&mut b, "{mig}b", "next", LONG).unwrap() > t_b);
        // And a cluster client finds the lock there.
        let mut cc = cluster.conn();
        assert_eq!(held(&mut cc, "{mig}a"), Some(("next".into(), 1, next)));
        Ok(())
    });
}

#[test]
fn resharding_with_redis_cli_keeps_locks() {
    // The short leases must still be live when the reshard and the looks at
    // the target are done: again, on a new cluster, with longer leases when
    // they were not.
    until_conclusive(|attempt| {
        let cluster = Cluster::start();
        let source = cluster.masters()[0];
        let target = cluster.masters()[1];
        // redis-cli moves the source's lowest slots first.
        let low = cluster
            .slots_of(source)
            .iter()
            .map(|(a, _)| *a)
            .min()
            .unwrap();
        let keys = keys_in_slots("res:", low..=low + 99, 30);
        let mut cc = cluster.conn();
        let mut before_move = Vec::new();
        let mut short = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if i % 5 == 0 {
                short.push(grant_timed(
                    &mut cc,
                    key,
                    &format!("o{i}"),
                    lease_ms(5_000, attempt),
                ));
            } else {
                acquire(&mut cc, key, &format!("o{i}"), LONG).unwrap();
                acquire(&mut cc, key, &format!("o{i}"), LONG).unwrap();
            }
            let mut m = cluster.node(source).conn();
            before_move.push((held(&mut m, key).unwrap(), digest(&mut m, key)));
        }

        cluster.reshard(source, target, 100);
        cluster.wait_healthy();

        let mut b = cluster.node(target).conn();
        let after: Vec<_> = keys
            .iter()
            .map(|key| {
                (
                    cluster.shard_of(key).0,
                    held(&mut b, key),
                    digest(&mut b, key),
                )
            })
            .collect();
        before(
            "the looks after the reshard",
            Instant::now(),
            short[0].earliest,
        )?;
        for (key, ((info, d), (port, got, got_digest))) in
            keys.iter().zip(before_move.iter().zip(&after))
        {
            assert_eq!(*port, target, "{key} moved");
            assert_eq!(got.as_ref(), Some(info), "{key}");
            assert_eq!(got_digest, d, "{key}");
        }
        expect_expiry(&mut b, &short);
        let mut cc = cluster.conn();
        for (i, (key, ((owner, holds, token), _))) in keys.iter().zip(&before_move).enumerate() {
            if i % 5 == 0 {
                continue;
            }
            for left in (0..*holds).rev() {
                assert_eq!(release(&mut cc, key, owner), Some(left));
            }
            let t = acquire(&mut cc, key, "next", LONG).unwrap();
            assert!(t > *token, "{key}: {t} after {token}");
        }
        Ok(())
    });
}

#[test]
fn cluster_failover_force_from_a_frozen_master() {
    let cluster = Cluster::start();
    let (old, replicas) = cluster.shard_of("{z}");
    let new = replicas[0];
    let mut m = cluster.node(old).conn();
    let long = acquire(&mut m, "{z}long", "a", LONG).unwrap();
    for i in 0..10 {
        acquire(&mut m, &format!("{{z}}overdue{i}"), "a", 1_500).unwrap();
    }
    let deadline = Instant::now() + Duration::from_millis(1_500);
    let waiter = spawn_waiter_on(cluster.node(old).conn(), "{z}long", "w", LONG, 0);
    wait_waiters(&mut m, 1);
    synced(&mut m, 1);

    // The replica loses its link, the master grants once more and freezes.
    cluster.node(new).pause();
    cut_replica_link(&mut m);
    let lost = acquire(&mut m, "{z}lost", "x", LONG).unwrap();
    drop(m);
    cluster.node(old).pause();
    cluster.node(new).resume();
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    std::thread::sleep(Duration::from_millis(300));

    // The frozen master cannot take part: FORCE.
    cluster.failover(new, Some("FORCE"));
    let promoted = Instant::now();
    let mut n = cluster.node(new).conn();
    wait_for("the overdue leases to be expired", EXPIRY_SLACK, || {
        (!(0..10).any(|i| exists(&mut n, &format!("{{z}}overdue{i}")))).then_some(())
    });
    assert!(promoted.elapsed() < EXPIRY_SLACK);
    assert_eq!(held(&mut n, "{z}long"), Some(("a".into(), 1, long)));
    assert!(!exists(&mut n, "{z}lost"), "the lost grant never arrived");
    let t = acquire(&mut n, "{z}lost", "z", LONG).unwrap();
    assert!(t > lost, "{t} after failover, lost {lost}");

    // The old master wakes up, learns it lost its slots and becomes a
    // replica: its waiter is answered, and it follows the new master.
    cluster.node(old).resume();
    let err = waiter.join().unwrap_err();
    assert_eq!(err.code(), Some("UNBLOCKED"), "{err}");
    cluster.wait_healthy();
    synced(&mut n, 1);
    let mut o = cluster.node(old).conn();
    let _: () = redis::cmd("READONLY").query(&mut o).unwrap();
    assert_eq!(held(&mut o, "{z}lost"), Some(("z".into(), 1, t)));
    assert_eq!(held(&mut o, "{z}long"), Some(("a".into(), 1, long)));
    assert_eq!(stat(&mut o, "waiters"), 0);
}

#[test]
fn the_client_crate_works_across_the_cluster() {
    use fencelock_client::{AcquireOptions, Client};
    let cluster = Cluster::start();
    let urls = cluster.urls();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let cc = redis::cluster::ClusterClient::new(urls).unwrap();
        let conn = cc.get_async_connection().await.unwrap();
        let client = Client::new(conn);
        let mut guards = Vec::new();
        for i in 0..30 {
            let lock = client.lock(format!("job:{i}"));
            // Renewed every 667 ms: a renewal may take over a second on a
            // slow, loaded machine before the guard gives the lease up.
            let options = AcquireOptions::new().ttl(Duration::from_millis(2_000));
            guards.push(lock.acquire(options).await.unwrap().expect("granted"));
            // Another handle is excluded, wherever the key lives.
            let other = client.lock(format!("job:{i}"));
            assert!(other
                .acquire(AcquireOptions::new())
                .await
                .unwrap()
                .is_none());
        }
        // Held well past the ttl by the watchdogs, on every shard.
        tokio::time::sleep(Duration::from_millis(5_000)).await;
        let mut check = cc.get_async_connection().await.unwrap();
        for g in &guards {
            assert!(!g.is_lost());
            let key = String::from_utf8(g.key().to_vec()).unwrap();
            let v: Value = redis::cmd("LOCK.INFO")
                .arg(&key)
                .query_async(&mut check)
                .await
                .unwrap();
            let Value::Array(f) = v else {
                panic!("{key} is not held: {v:?}")
            };
            let owner: String = redis::from_redis_value_ref(&f[1]).unwrap();
            let token: i64 = redis::from_redis_value_ref(&f[7]).unwrap();
            assert_eq!((owner.as_str(), token as u64), (g.owner(), g.token()));
        }
        for g in guards {
            assert!(g.release().await.unwrap());
        }
    });
}
