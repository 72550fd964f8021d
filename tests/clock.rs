//! Steps of a running server's wall clock (an NTP step, a VM resume, an
//! operator's `date -s`): leases are timed by the monotonic clock, so a
//! lease neither ends early when the wall clock jumps ahead nor outlives
//! its length when it jumps back; what is written out (AOF, RDB, the
//! replication stream) carries wall-clock deadlines that keep each lease's
//! remaining time; tokens still only grow. The step is an hour, far more
//! than any slack a test allows, so a lease timed by the wall clock fails
//! each of these at once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use testkit::clock::ClockStep;
use testkit::lock::{self, acquire, expect_expiry, grant_timed, renew, TimedLease};
use testkit::replication::synced;
use testkit::timing::{before, lease_ms};
use testkit::{
    info_int, until_conclusive, wait_aof_settled, wait_for, Server, ServerConfig, EXPIRY_SLACK,
    PATIENCE,
};

const HOUR_MS: i64 = 3_600_000;
/// Short enough to watch end, long enough for a step and a look before it.
const TTL_MS: u64 = 3_000;
/// Leases that never end in a test.
const LONG_MS: u64 = 600_000;

fn stepped_server(clock: &ClockStep, config: ServerConfig) -> Server {
    clock.apply(config).start()
}

/// The server's own wall clock (`TIME`), in ms.
fn server_time_ms(c: &mut redis::Connection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(c).unwrap();
    secs * 1000 + micros / 1000
}

/// Waits until the module has measured the wall clock's offset (its cron
/// does, `hz` times a second): `INFO lock`'s `lock_clock_offset_ms`.
fn wait_offset(c: &mut redis::Connection, offset_ms: i64) {
    wait_for(
        &format!("the module to see the offset {offset_ms}"),
        PATIENCE,
        || (info_int(c, "lock", "lock_clock_offset_ms") == offset_ms).then_some(()),
    );
}

/// The remaining lease `LOCK.INFO` shows (ms).
fn ttl_ms_of(c: &mut redis::Connection, key: &str) -> i64 {
    lock::info(c, key).map_or(-1, |i| i.ttl)
}

#[test]
fn the_shim_steps_the_servers_wall_clock() {
    // Guards the other tests: without a working step they prove nothing.
    let clock = ClockStep::new();
    let s = stepped_server(&clock, Server::config());
    let mut c = s.conn();
    let before = server_time_ms(&mut c);
    clock.step_ms(HOUR_MS);
    let after = server_time_ms(&mut c);
    assert!(
        after - before >= HOUR_MS && after - before < HOUR_MS + 60_000,
        "TIME moved {} ms",
        after - before
    );
    // The module measures the step, and the step back.
    wait_offset(&mut c, HOUR_MS);
    clock.step_ms(-3 * HOUR_MS);
    wait_offset(&mut c, -2 * HOUR_MS);
}

/// `LOCK.ACQUIRE key owner ttl_ms` that must re-enter with `token`, timed.
fn reenter_timed(
    c: &mut redis::Connection,
    key: &str,
    owner: &str,
    ttl_ms: u64,
    token: i64,
) -> TimedLease {
    let ttl = Duration::from_millis(ttl_ms);
    let sent = Instant::now();
    assert_eq!(acquire(c, key, owner, ttl_ms), Some(token), "re-entry");
    TimedLease {
        key: key.to_string(),
        token,
        earliest: sent + ttl,
        latest: Instant::now() + ttl,
    }
}

/// The remaining lease right after a step, checked while the lease can
/// still be there (else the attempt proves nothing: a slow machine).
fn left_after_step(
    c: &mut redis::Connection,
    lease: &TimedLease,
    ttl_ms: u64,
) -> Result<(), String> {
    let left = ttl_ms_of(c, &lease.key);
    before("the look after the step", Instant::now(), lease.earliest)?;
    assert!(
        left > 0 && left <= ttl_ms as i64,
        "{left} ms left on {} after the step",
        lease.key
    );
    Ok(())
}

#[test]
fn a_forward_step_ends_no_lease_early() {
    until_conclusive(|attempt| {
        let ttl = lease_ms(TTL_MS, attempt);
        let clock = ClockStep::new();
        let s = stepped_server(&clock, Server::config());
        let mut c = s.conn();
        let lease = grant_timed(&mut c, "k", "a", ttl);
        clock.step_ms(HOUR_MS);
        left_after_step(&mut c, &lease, ttl)?;
        // Neither before its deadline nor long after it.
        expect_expiry(&mut c, &[lease]);
        assert_eq!(info_int(&mut c, "lock", "lock_expired"), 1);
        Ok(())
    });
}

#[test]
fn a_backward_step_keeps_no_lease_past_its_length() {
    until_conclusive(|attempt| {
        let ttl = lease_ms(TTL_MS, attempt);
        let clock = ClockStep::new();
        let s = stepped_server(&clock, Server::config());
        let mut c = s.conn();
        // Taken before the step: the module's timer was armed on the old
        // wall clock, and Redis 7.0 times module timers by the wall clock.
        let before_step = grant_timed(&mut c, "before", "a", ttl);
        clock.step_ms(-HOUR_MS);
        left_after_step(&mut c, &before_step, ttl)?;
        // Taken after it, a little longer than the first.
        let after_step = grant_timed(&mut c, "after", "b", ttl + 500);
        expect_expiry(&mut c, &[before_step, after_step]);
        Ok(())
    });
}

#[test]
fn renewal_and_reentry_after_a_step_count_from_now() {
    until_conclusive(|attempt| {
        let ttl = lease_ms(TTL_MS, attempt);
        let clock = ClockStep::new();
        let s = stepped_server(&clock, Server::config());
        let mut c = s.conn();
        let t = acquire(&mut c, "k", "a", LONG_MS).unwrap();
        clock.step_ms(-HOUR_MS);
        let sent = Instant::now();
        assert_eq!(renew(&mut c, "k", "a", ttl), 1);
        let renewed = TimedLease {
            key: "k".into(),
            token: t,
            earliest: sent + Duration::from_millis(ttl),
            latest: Instant::now() + Duration::from_millis(ttl),
        };
        left_after_step(&mut c, &renewed, ttl)?;
        clock.step_ms(2 * HOUR_MS);
        let reentered = reenter_timed(&mut c, "k", "a", ttl, t);
        left_after_step(&mut c, &reentered, ttl)?;
        expect_expiry(&mut c, &[reentered]);
        Ok(())
    });
}

#[test]
fn tokens_keep_growing_when_the_wall_clock_steps_back() {
    let clock = ClockStep::new();
    let s = stepped_server(&clock, Server::config());
    let mut c = s.conn();
    let first = acquire(&mut c, "a", "o", LONG_MS).unwrap();
    clock.step_ms(-HOUR_MS);
    let second = acquire(&mut c, "b", "o", LONG_MS).unwrap();
    let third = acquire(&mut c, "c", "o", LONG_MS).unwrap();
    assert!(first < second && second < third, "{first} {second} {third}");
}

/// The deadline `LOCK.APPLY` carries in the AOF (commands form) for `key`.
fn aof_deadline(s: &Server, key: &str) -> i64 {
    let dir = s.dir().join("appendonlydir");
    let mut found = None;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".incr.aof") {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let lines: Vec<&str> = text.split("\r\n").collect();
        for w in lines.windows(7) {
            // *4 $10 LOCK.APPLY $n key $n owner $n state
            if w[0].eq_ignore_ascii_case("LOCK.APPLY") && w[2] == key {
                let state: Vec<&str> = w[6].split(' ').collect();
                found = Some(state[4].parse::<i64>().unwrap());
            }
        }
    }
    found.unwrap_or_else(|| panic!("no LOCK.APPLY for {key} in {}", dir.display()))
}

#[test]
fn the_aof_and_a_restart_keep_the_remaining_lease_after_a_step() {
    let clock = ClockStep::new();
    let config = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .arg("aof-use-rdb-preamble", "no");
    let mut s = stepped_server(&clock, config);
    let mut c = s.conn();
    clock.step_ms(HOUR_MS);
    wait_offset(&mut c, HOUR_MS);
    let now = server_time_ms(&mut c);
    acquire(&mut c, "k", "a", LONG_MS).unwrap();
    // The AOF says wall-clock time: the stepped clock's now + ttl.
    let deadline = aof_deadline(&s, "k");
    let wall_now_after = server_time_ms(&mut c);
    assert!(
        deadline >= now + LONG_MS as i64 && deadline <= wall_now_after + LONG_MS as i64 + 1,
        "deadline {deadline}, wall clock {now}..{wall_now_after}"
    );
    wait_aof_settled(&mut c);
    drop(c);
    // A new process anchors its lease clock to the (still stepped) wall
    // clock: the lease has what it had left, not an hour less.
    s.restart();
    let mut c = s.conn();
    assert_eq!(
        info_int(&mut c, "lock", "lock_clock_offset_ms"),
        0,
        "a new anchor"
    );
    let left = ttl_ms_of(&mut c, "k");
    assert!(
        left > (LONG_MS as i64) - 120_000 && left <= LONG_MS as i64,
        "{left} ms left after the restart"
    );
    // DEBUG RELOAD (RDB out and in on the same clock) keeps it too.
    clock.step_ms(-2 * HOUR_MS);
    wait_offset(&mut c, -2 * HOUR_MS);
    redis::cmd("DEBUG")
        .arg("RELOAD")
        .query::<()>(&mut c)
        .unwrap();
    let after_reload = ttl_ms_of(&mut c, "k");
    assert!(
        after_reload > (LONG_MS as i64) - 120_000 && after_reload <= left,
        "{after_reload} ms left after the reload ({left} before)"
    );
}

#[test]
fn a_replica_gets_wall_clock_deadlines_from_a_stepped_master() {
    // The master's clock was an hour behind and NTP stepped it: from then
    // on its effects carry deadlines on the corrected wall clock, which the
    // replica (always right) shares, so the replica sees the lease's true
    // remaining time.
    let clock = ClockStep::new();
    clock.set_offset_ms(-HOUR_MS);
    let master = stepped_server(&clock, Server::config());
    let replica = Server::start();
    replica.replicate_from(&master);
    replica.wait_replication_link();
    let mut m = master.conn();
    clock.step_ms(HOUR_MS);
    wait_offset(&mut m, HOUR_MS);
    acquire(&mut m, "k", "a", LONG_MS).unwrap();
    synced(&mut m, 1);
    let mut r = replica.conn();
    let on_replica = ttl_ms_of(&mut r, "k");
    let on_master = ttl_ms_of(&mut m, "k");
    assert!(
        on_replica > (LONG_MS as i64) - 120_000 && on_replica <= LONG_MS as i64,
        "{on_replica} ms left on the replica ({on_master} on the master)"
    );
}

#[test]
fn a_wait_ends_after_its_length_whatever_the_wall_clock_does() {
    // Waits are timed by the module on the lease clock, not by Redis's
    // blocked-client timeout on the wall clock.
    const WAIT_MS: u64 = 2_000;
    let clock = ClockStep::new();
    let s = stepped_server(&clock, Server::config());
    let mut c = s.conn();
    acquire(&mut c, "k", "holder", LONG_MS).unwrap();
    let back = lock::spawn_waiter(&s, "k", "back", LONG_MS, WAIT_MS);
    lock::wait_key_waiters(&mut c, "k", 1);
    clock.step_ms(-HOUR_MS);
    let (answer, waited) = back.join_timed();
    assert_eq!(answer.unwrap(), None, "timed out");
    assert!(
        waited >= Duration::from_millis(WAIT_MS - 50)
            && waited < Duration::from_millis(WAIT_MS) + EXPIRY_SLACK,
        "waited {waited:?} with the clock stepped back"
    );
    let ahead = lock::spawn_waiter(&s, "k", "ahead", LONG_MS, WAIT_MS);
    lock::wait_key_waiters(&mut c, "k", 1);
    clock.step_ms(2 * HOUR_MS);
    let (answer, waited) = ahead.join_timed();
    assert_eq!(answer.unwrap(), None, "timed out");
    assert!(
        waited >= Duration::from_millis(WAIT_MS - 50),
        "waited only {waited:?} with the clock stepped ahead"
    );
    assert_eq!(info_int(&mut c, "lock", "lock_wait_timeouts"), 2);
}
