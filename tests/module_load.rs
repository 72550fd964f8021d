//! Loading the module the way many users do: `MODULE LOAD` into a server
//! that is already running and holds other data, and into a replica.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use redis::Connection;
use testkit::lock::{self, acquire, force_release, release, renew, spawn_waiter, stat};
use testkit::replication::synced;
use testkit::{dbsize, module_path, wait_for, Server, PATIENCE};

/// A server started without the module, allowed to load one over a local
/// connection (as `redis.conf.example` allows).
fn server_without_module() -> Server {
    let mut config = Server::config().arg("enable-module-command", "local");
    config.module = false;
    config.start()
}

fn module_load(c: &mut Connection) {
    let ok: String = redis::cmd("MODULE")
        .arg("LOAD")
        .arg(module_path().display().to_string())
        .query(c)
        .expect("MODULE LOAD");
    assert_eq!(ok, "OK");
    let list: redis::Value = redis::cmd("MODULE").arg("LIST").query(c).unwrap();
    assert!(
        format!("{list:?}").contains("lock"),
        "MODULE LIST: {list:?}"
    );
}

#[test]
fn the_example_config_allows_module_load_from_local_connections() {
    let conf = std::fs::read_to_string(testkit::workspace_root().join("redis.conf.example"))
        .expect("redis.conf.example");
    assert!(
        conf.lines()
            .any(|l| l.trim() == "enable-module-command local"),
        "redis.conf.example must enable MODULE LOAD for local connections"
    );
}

#[test]
fn module_load_into_a_running_server_with_data_serves_every_command() {
    let s = server_without_module();
    let mut c = s.conn();
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("v")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("l")
        .arg("a")
        .arg("b")
        .query(&mut c)
        .unwrap();
    let err = redis::cmd("LOCK.ACQUIRE")
        .arg("k")
        .arg("a")
        .arg(1000)
        .query::<Option<i64>>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");

    module_load(&mut c);

    // Every command, on the same connection.
    let t = acquire(&mut c, "k", "a", 60_000).expect("granted");
    assert_eq!(acquire(&mut c, "k", "a", 60_000), Some(t), "re-entry");
    assert_eq!(acquire(&mut c, "k", "b", 60_000), None, "other owner");
    assert_eq!(renew(&mut c, "k", "a", 60_000), 1);
    let info = lock::info(&mut c, "k").expect("held");
    assert_eq!((info.owner.as_str(), info.holds, info.token), ("a", 2, t));
    assert_eq!(release(&mut c, "k", "a"), Some(1));
    assert_eq!(release(&mut c, "k", "a"), Some(0));
    assert_eq!(lock::info(&mut c, "k"), None);
    acquire(&mut c, "k", "a", 60_000).unwrap();
    assert_eq!(force_release(&mut c, "k"), 1);

    // WAIT: a blocked acquirer gets the lock when it is released.
    acquire(&mut c, "w", "holder", 60_000).unwrap();
    let waiter = spawn_waiter(&s, "w", "waiter", 60_000, 0);
    wait_for("the waiter to queue", PATIENCE, || {
        (lock::info(&mut c, "w").map(|i| i.waiters) == Some(1)).then_some(())
    });
    assert_eq!(release(&mut c, "w", "holder"), Some(0));
    let handed = waiter.join().unwrap().expect("granted by hand-off");
    let info = lock::info(&mut c, "w").expect("held by the waiter");
    assert_eq!((info.owner.as_str(), info.token), ("waiter", handed));

    // Leases still expire on the server's own timer.
    acquire(&mut c, "short", "a", 50).unwrap();
    wait_for("the short lease to expire", PATIENCE, || {
        (!lock::exists(&mut c, "short")).then_some(())
    });
    assert_eq!(stat(&mut c, "expired"), 1);

    // The data that was there before is untouched, and locks survive a
    // reload like any other data.
    let v: String = redis::cmd("GET").arg("plain").query(&mut c).unwrap();
    assert_eq!(v, "v");
    let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
    assert_eq!(lock::info(&mut c, "w").map(|i| i.token), Some(handed));
    let len: i64 = redis::cmd("LLEN").arg("l").query(&mut c).unwrap();
    assert_eq!(len, 2);
    let f: String = redis::cmd("HGET").arg("h").arg("f").query(&mut c).unwrap();
    assert_eq!(f, "1");
}

#[test]
fn module_load_into_a_new_replica_of_a_master_with_locks() {
    let master = Server::start();
    let mut m = master.conn();
    let t = acquire(&mut m, "held", "a", 600_000).unwrap();
    acquire(&mut m, "held", "a", 600_000).unwrap();
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("v")
        .query(&mut m)
        .unwrap();

    let replica = server_without_module();
    let mut r = replica.conn();
    module_load(&mut r);
    replica.replicate_from(&master);
    synced(&mut m, 1);

    // The full sync brought the locks.
    let info = lock::info(&mut r, "held").expect("on the replica");
    assert_eq!((info.owner.as_str(), info.holds, info.token), ("a", 2, t));
    // New effects arrive, and the master's expiry reaches the replica.
    let t2 = acquire(&mut m, "later", "b", 600_000).unwrap();
    acquire(&mut m, "brief", "c", 50).unwrap();
    synced(&mut m, 1);
    assert_eq!(lock::info(&mut r, "later").map(|i| i.token), Some(t2));
    wait_for(
        "the brief lease to be deleted on the replica",
        PATIENCE,
        || (!lock::exists(&mut r, "brief")).then_some(()),
    );
    assert_eq!(dbsize(&mut r), dbsize(&mut m));
}

#[test]
fn module_load_on_a_replica_then_on_its_master() {
    // Both servers run without the module and replicate plain data; the
    // module is loaded into the replica first (while it is a replica), then
    // into the master.
    let master = server_without_module();
    let replica = server_without_module();
    let mut m = master.conn();
    let mut r = replica.conn();
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("v")
        .query(&mut m)
        .unwrap();
    replica.replicate_from(&master);
    synced(&mut m, 1);

    module_load(&mut r);
    module_load(&mut m);
    assert_eq!(stat(&mut r, "held"), 0);

    let t = acquire(&mut m, "k", "a", 600_000).unwrap();
    acquire(&mut m, "brief", "b", 50).unwrap();
    synced(&mut m, 1);
    assert_eq!(lock::info(&mut r, "k").map(|i| i.token), Some(t));
    // The replica does not act on leases itself; the master's deletion comes.
    wait_for("the master to expire the brief lease", PATIENCE, || {
        (!lock::exists(&mut m, "brief")).then_some(())
    });
    synced(&mut m, 1);
    assert!(!lock::exists(&mut r, "brief"));
    assert_eq!(
        stat(&mut r, "expired"),
        0,
        "the replica expires nothing itself"
    );
    let v: String = redis::cmd("GET").arg("plain").query(&mut r).unwrap();
    assert_eq!(v, "v");
    // Writes on the replica are refused as usual.
    let err = redis::cmd("LOCK.ACQUIRE")
        .arg("x")
        .arg("a")
        .arg(1000)
        .query::<Option<i64>>(&mut r)
        .unwrap_err();
    assert!(err.to_string().contains("read only replica"), "{err}");
}
