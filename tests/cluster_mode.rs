//! Redis Cluster: 3 masters with a replica each on loopback, the module on
//! every node. Locks over all slots through cluster-aware clients (the
//! `redis` crate and the fencelock client crate), `CLUSTER FAILOVER` of a
//! shard, and moving a slot that holds locks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use redis::{Connection, ConnectionLike, Value};
use testkit::lock::{self, acquire, digest};
use testkit::multi::Cluster;
use testkit::{info_int, wait_for};

/// (owner, holds, token) of a key, None when free.
fn info(c: &mut impl ConnectionLike, key: &str) -> Option<(String, i64, i64)> {
    lock::info(c, key).map(|i| (i.owner, i.holds, i.token))
}

#[test]
fn locks_across_all_slots_and_a_shard_failover() {
    let cluster = Cluster::start(3, 1);
    let mut cc = cluster.client().get_connection().unwrap();

    // Keys spread over every shard, through a cluster-aware client.
    let mut tokens = Vec::new();
    for i in 0..300 {
        let key = format!("lock:{i}");
        tokens.push(acquire(&mut cc, &key, "owner", 60_000).expect("granted"));
        assert_eq!(acquire(&mut cc, &key, "other", 60_000), None);
    }
    let masters: Vec<u16> = (0..3).map(|i| cluster.nodes[i].port).collect();
    for port in &masters {
        let mut c = cluster.node(*port).conn();
        let held = info_int(&mut c, "lock", "lock_held");
        assert!(held > 50, "node {port} holds {held} of the 300 locks");
    }
    for (i, token) in tokens.iter_mut().enumerate() {
        let key = format!("lock:{i}");
        let left: Option<i64> = redis::cmd("LOCK.RELEASE")
            .arg(&key)
            .arg("owner")
            .query(&mut cc)
            .unwrap();
        assert_eq!(left, Some(0));
        let again = acquire(&mut cc, &key, "second", 60_000).unwrap();
        assert!(again > *token, "{key}: {again} after {token}");
        *token = again;
    }

    // CLUSTER FAILOVER of the shard that serves "{f}kept".
    let kept = "{f}kept";
    let (master, _) = cluster.shard_of_slot(cluster.slot(kept));
    let replicas = cluster.replicas_of(master);
    let t = acquire(&mut cc, kept, "holder", 60_000).unwrap();
    acquire(&mut cc, kept, "holder", 60_000).unwrap();
    acquire(&mut cc, "{f}short", "holder", 2_500).unwrap();
    let mut m = cluster.node(master).conn();
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut m).unwrap();
    assert_eq!(acked, 1);
    let replica = replicas[0];
    let mut r = cluster.node(replica).conn();
    // A manual failover can time out (e.g. when a master declines to vote
    // this time); ask again until the replica has taken over.
    let is_master = |r: &mut Connection| -> bool {
        let role: Vec<Value> = redis::cmd("ROLE").query(r).unwrap_or_default();
        role.first()
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .as_deref()
            == Some("master")
    };
    let mut took_over = false;
    for _attempt in 0..5 {
        let _: () = redis::cmd("CLUSTER").arg("FAILOVER").query(&mut r).unwrap();
        for _ in 0..100 {
            if is_master(&mut r) {
                took_over = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if took_over {
            break;
        }
    }
    assert!(
        took_over,
        "the replica did not take over; its log:\n{}",
        cluster.node(replica).log()
    );
    cluster.wait_healthy();
    let mut cc = cluster.client().get_connection().unwrap();
    assert_eq!(
        info(&mut cc, kept),
        Some(("holder".to_string(), 2, t)),
        "the lock survived the failover"
    );
    wait_for(
        "a lease to expire on the new master",
        Duration::from_secs(6),
        || {
            let n: i64 = redis::cmd("EXISTS").arg("{f}short").query(&mut cc).unwrap();
            (n == 0).then_some(())
        },
    );
    let _: i64 = redis::cmd("LOCK.FORCERELEASE")
        .arg(kept)
        .query(&mut cc)
        .unwrap();
    let next = acquire(&mut cc, kept, "next", 60_000).unwrap();
    assert!(next > t, "token after failover {next} must exceed {t}");
}

#[test]
fn moving_a_slot_keeps_owner_holds_token_and_deadline() {
    let cluster = Cluster::start(3, 1);
    let key = "{mig}held";
    let short = "{mig}short";
    let slot = cluster.slot(key);
    let (source, _) = cluster.shard_of_slot(slot);
    let target = (0..3)
        .map(|i| cluster.nodes[i].port)
        .find(|p| *p != source)
        .unwrap();
    let mut a = cluster.node(source).conn();
    let mut b = cluster.node(target).conn();

    let t = acquire(&mut a, key, "holder", 60_000).unwrap();
    acquire(&mut a, key, "holder", 60_000).unwrap();
    acquire(&mut a, short, "holder", 3_000).unwrap();
    let before = digest(&mut a, key);

    // A client waits for the lock on the source node.
    let mut w = cluster.node(source).conn();
    let waiter = std::thread::spawn(move || {
        redis::cmd("LOCK.ACQUIRE")
            .arg("{mig}held")
            .arg("waiter")
            .arg(1000)
            .arg("WAIT")
            .arg(20_000)
            .query::<Option<i64>>(&mut w)
    });
    wait_for("the waiter to queue", Duration::from_secs(5), || {
        (info_int(&mut a, "lock", "lock_waiters") == 1).then_some(())
    });

    // Move the slot by hand, the way `redis-cli --cluster reshard` does.
    let (id_a, id_b) = (cluster.node_id(source), cluster.node_id(target));
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&id_a)
        .query(&mut b)
        .unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&id_b)
        .query(&mut a)
        .unwrap();
    let _: Value = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(target)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(key)
        .arg(short)
        .query(&mut a)
        .unwrap();
    // The target first, then the source, then the other masters.
    let third = (0..3)
        .map(|i| cluster.nodes[i].port)
        .find(|p| *p != source && *p != target)
        .unwrap();
    for port in [target, source, third] {
        let mut c = cluster.node(port).conn();
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&id_b)
            .query(&mut c)
            .unwrap();
    }

    // The waiter on the source is told to retry (it would follow MOVED).
    let err = waiter.join().unwrap().unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");

    // The lock arrived whole: owner, holds, token and absolute deadline.
    assert_eq!(info(&mut b, key), Some(("holder".to_string(), 2, t)));
    assert_eq!(digest(&mut b, key), before);
    // Its lease is tracked on the receiving node: the short one expires there.
    wait_for(
        "the migrated lease to expire on the target",
        Duration::from_secs(7),
        || {
            let n: i64 = redis::cmd("EXISTS").arg(short).query(&mut b).unwrap();
            (n == 0).then_some(())
        },
    );
    // The receiving node keeps issuing larger tokens for the key.
    let left: Option<i64> = redis::cmd("LOCK.RELEASE")
        .arg(key)
        .arg("holder")
        .query(&mut b)
        .unwrap();
    assert_eq!(left, Some(1));
    let left: Option<i64> = redis::cmd("LOCK.RELEASE")
        .arg(key)
        .arg("holder")
        .query(&mut b)
        .unwrap();
    assert_eq!(left, Some(0));
    let next = acquire(&mut b, key, "next", 60_000).unwrap();
    assert!(next > t, "token {next} on the receiving node after {t}");
    // And a cluster client finds it there.
    let mut cc = cluster.client().get_connection().unwrap();
    assert_eq!(info(&mut cc, key).map(|i| i.2), Some(next));
}

#[test]
fn the_client_crate_works_across_the_cluster() {
    use fencelock_client::{AcquireOptions, Client};
    let cluster = Cluster::start(3, 1);
    let urls = cluster.urls();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let cc = redis::cluster::ClusterClient::new(urls).unwrap();
        let conn = cc.get_async_connection().await.unwrap();
        let client = Client::new(conn);
        let mut guards = Vec::new();
        for i in 0..30 {
            let lock = client.lock(format!("job:{i}"));
            let options = AcquireOptions::new().ttl(Duration::from_millis(600));
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
        tokio::time::sleep(Duration::from_millis(2_000)).await;
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
