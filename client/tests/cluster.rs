//! The client over `redis::cluster_async::ClusterConnection`: a one-shard
//! Redis Cluster (a primary with all slots and one replica), started with
//! testkit. The watchdog, re-entry, waiting (on dedicated cluster
//! connections), and replica acknowledgement with `WAIT` routed to the key's
//! primary.

mod common;

use common::ms;
use fencelock_client::{AcquireOptions, Client, Error, LeaseLost, Wait};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use testkit::{info_field, wait_for, Server, PATIENCE};
use tokio::time::{sleep, timeout, Instant};

fn cluster_node() -> Server {
    Server::config()
        .arg("cluster-enabled", "yes")
        .arg("cluster-node-timeout", "5000")
        .start()
}

/// A 1 s lease renewed every 100 ms: a renewal may take 800 ms on a slow,
/// loaded machine before the guard gives the lease up.
fn renewed() -> AcquireOptions {
    AcquireOptions::new().ttl(ms(1_000)).renew_every(ms(100))
}

/// A primary with all 16384 slots and a replica of it.
fn one_shard_cluster() -> (Server, Server) {
    let primary = cluster_node();
    let replica = cluster_node();
    assert_eq!(
        primary.cli_stdout(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]),
        "OK"
    );
    let primary_id = primary.cli_stdout(&["CLUSTER", "MYID"]);
    assert_eq!(
        replica.cli_stdout(&["CLUSTER", "MEET", "127.0.0.1", &primary.port.to_string()]),
        "OK"
    );
    wait_for("the replica to learn the primary", PATIENCE, || {
        replica
            .cli_stdout(&["CLUSTER", "NODES"])
            .contains(&primary_id)
            .then_some(())
    });
    assert_eq!(
        replica.cli_stdout(&["CLUSTER", "REPLICATE", &primary_id]),
        "OK"
    );
    replica.wait_replication_link();
    for node in [&primary, &replica] {
        wait_for("cluster_state:ok", PATIENCE, || {
            let info = node.cli_stdout(&["CLUSTER", "INFO"]);
            (info_field(&info, "cluster_state").as_deref() == Some("ok")).then_some(())
        });
    }
    wait_for("the primary to list its replica", PATIENCE, || {
        let info = primary.cli_stdout(&["INFO", "replication"]);
        (info_field(&info, "connected_slaves").as_deref() == Some("1")).then_some(())
    });
    (primary, replica)
}

async fn cluster_client(primary: &Server) -> Client<ClusterConnection> {
    let cluster = ClusterClient::new(vec![primary.url()]).expect("cluster client");
    let conn = cluster
        .get_async_connection()
        .await
        .expect("cluster connection");
    Client::builder(conn)
        .wait_connections(move || {
            let cluster = cluster.clone();
            async move { cluster.get_async_connection().await }
        })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_works_over_a_cluster_connection() {
    let (primary, replica) = one_shard_cluster();
    let client = cluster_client(&primary).await;
    let other = cluster_client(&primary).await;

    // Watchdog: a 1 s lease held for 2.5 s.
    let lock = client.lock("{jobs}:nightly");
    let guard = lock.acquire(renewed()).await.unwrap().expect("granted");
    let inner = lock
        .acquire(AcquireOptions::new())
        .await
        .unwrap()
        .expect("re-entered");
    assert_eq!(guard.token(), inner.token());
    sleep(ms(2500)).await;
    assert!(!guard.is_lost());
    assert!(inner.release().await.unwrap());

    // Another client waits in the server's queue (a dedicated cluster
    // connection) and is handed the lock on release.
    let waiter = other.lock("{jobs}:nightly");
    let queued = tokio::spawn({
        let waiter = waiter.clone();
        async move {
            waiter
                .acquire(
                    AcquireOptions::new()
                        .ttl(ms(3_000))
                        .renew_every(ms(200))
                        .wait(Wait::For(PATIENCE)),
                )
                .await
        }
    });
    // Longer than the lease: renewals held up by the wait would lose it.
    sleep(ms(2500)).await;
    assert!(!guard.is_lost(), "the wait held up the renewals");
    let first = guard.token();
    assert!(guard.release().await.unwrap());
    let handed = timeout(PATIENCE, queued)
        .await
        .expect("hand-off")
        .unwrap()
        .unwrap()
        .expect("granted");
    assert!(handed.token() > first);

    // Durability: WAIT goes to the key's primary with the grant.
    let durable = client
        .lock("{jobs}:durable")
        .acquire(AcquireOptions::new().replicas(1, PATIENCE))
        .await
        .unwrap()
        .expect("acknowledged by the replica");
    assert!(durable.release().await.unwrap());
    replica.pause();
    let start = Instant::now();
    let refused = client
        .lock("{jobs}:durable")
        .acquire(AcquireOptions::new().replicas(1, ms(300)))
        .await
        .expect_err("the stopped replica cannot acknowledge");
    assert!(
        matches!(
            refused,
            Error::NotDurable {
                acked: 0,
                wanted: 1,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(start.elapsed() >= ms(250));
    assert_eq!(primary.cli_stdout(&["LOCK.INFO", "{jobs}:durable"]), "");
    replica.resume();

    // Loss: force-released under the holder.
    let lost = handed.lost();
    assert_eq!(
        primary.cli_stdout(&["LOCK.FORCERELEASE", "{jobs}:nightly"]),
        "1"
    );
    assert_eq!(timeout(PATIENCE, lost).await.unwrap(), LeaseLost::NotHeld);
}
