//! A master with a replica, and waiting for replicas to catch up.

use redis::Connection;

use crate::{wait_aof_settled, Server, PATIENCE};

/// A master and one replica in sync (both with the module, persistence off).
pub fn pair() -> (Server, Server) {
    let master = Server::start();
    let replica = Server::start();
    replica.replicate_from(&master);
    // The master counts the replica as online from its first ACK (up to a
    // second after the sync); from then on WAIT answers at once.
    synced(&mut master.conn(), 1);
    (master, replica)
}

/// A replica of `master` that keeps its own AOF, started as a replica by
/// its config (a restart makes it one again), in sync and done with the
/// AOF rewrite that follows the sync. `appendfsync always`: every effect it
/// acknowledged is in its AOF file (with `everysec` Redis may hold a write
/// back while a background fsync runs, and a `kill -9` loses it).
pub fn replica_with_aof(master: &Server) -> Server {
    let replica = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .arg("replicaof", &format!("127.0.0.1 {}", master.port))
        .start();
    replica.wait_replication_link();
    wait_aof_settled(&mut replica.conn());
    replica
}

/// Waits (`WAIT n`, at most [`PATIENCE`]) until `n` replicas of the master
/// behind `m` have processed everything it sent them, whichever connection
/// wrote it. (`WAIT` counts only up to the last write of the connection it
/// is sent on, and a fresh connection has written nothing: a `PUBLISH` on
/// `m` first moves that mark to the end of the replication stream.)
pub fn synced(m: &mut Connection, n: i64) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg("testkit:synced")
        .arg("")
        .query(m)
        .expect("PUBLISH");
    let acked: i64 = redis::cmd("WAIT")
        .arg(n)
        .arg(PATIENCE.as_millis() as u64)
        .query(m)
        .expect("WAIT");
    assert_eq!(acked, n, "replicas acknowledged");
}

/// `CLIENT KILL TYPE replica` on the master behind `m`: its one replica
/// loses the link (stop the replica first, and nothing more reaches it).
pub fn cut_replica_link(m: &mut Connection) {
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(m)
        .expect("CLIENT KILL TYPE replica");
    assert_eq!(killed, 1, "one replica link cut");
}
