//! Waiting in the lock family on a real redis-server: one FIFO queue per key
//! for exclusive, `SHARED` and `LIMIT` requests; readers granted together;
//! semaphores served in strict order; capacity freed by release, expiry and
//! force-release served at once; waiters that leave; MULTI and scripts;
//! re-entry from the queue; requests that reach the head of a key that
//! changed kind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use redis::Connection;
use testkit::family::{
    self, acquire_permits, acquire_shared, error_text, force_release_owner, grant_timed,
    queue_waiter, release_count, semaphore_error, spawn_waiter, wait_key_waiters, Info, Kind,
    Waiter, NOT_A_SEMAPHORE, UPGRADE_ERROR,
};
use testkit::lock::{acquire, force_release, release, stat};
use testkit::timing::{before, lease_ms};
use testkit::{until_conclusive, wait_for, Server, EXPIRY_SLACK, PATIENCE};

/// Long enough to see that a waiter is still waiting, not a timing claim:
/// a waiter that should stay queued is checked again at the end.
const A_MOMENT: Duration = Duration::from_millis(200);

fn still_waiting(w: &Waiter, what: &str) {
    assert!(!w.is_finished(), "{what} must still be waiting");
}

#[test]
fn a_writer_queued_behind_readers_is_not_overtaken_by_later_readers() {
    let s = Server::start();
    let mut c = s.conn();
    let r1 = acquire_shared(&mut c, "k", "r1", 60_000).unwrap();
    let w = queue_waiter(&s, &mut c, "k", "w", Kind::Exclusive, 1);
    let info = family::info(&mut c, "k").unwrap();
    assert_eq!((info.mode(), info.waiters()), ("shared", 1));
    assert_eq!(
        acquire_shared(&mut c, "k", "r2", 60_000),
        None,
        "a reader arriving after a queued writer is not granted"
    );
    let r3 = queue_waiter(&s, &mut c, "k", "r3", Kind::Shared, 2);
    std::thread::sleep(A_MOMENT);
    still_waiting(&r3, "the reader behind the writer");
    assert_eq!(family::held(&mut c, "k"), [("r1".into(), 1, r1)]);

    assert_eq!(release(&mut c, "k", "r1"), Some(0));
    let wt = w.granted();
    assert!(wt > r1);
    let info = family::info(&mut c, "k").unwrap();
    assert_eq!(info.held(), [("w".into(), 1, wt)]);
    assert_eq!((info.mode(), info.waiters()), ("exclusive", 1));
    still_waiting(&r3, "the reader behind the writer");
    assert_eq!(release(&mut c, "k", "w"), Some(0));
    assert!(r3.granted() > wt);
    assert_eq!(stat(&mut c, "waiters"), 0);
}

#[test]
fn consecutive_shared_waiters_are_granted_together_up_to_the_first_writer() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "x", 60_000).unwrap();
    let r1 = queue_waiter(&s, &mut c, "k", "r1", Kind::Shared, 1);
    let r2 = queue_waiter(&s, &mut c, "k", "r2", Kind::Shared, 2);
    let r3 = queue_waiter(&s, &mut c, "k", "r3", Kind::Shared, 3);
    let w = queue_waiter(&s, &mut c, "k", "w", Kind::Exclusive, 4);
    let r4 = queue_waiter(&s, &mut c, "k", "r4", Kind::Shared, 5);

    // The release serves the queue in the same event: the very next
    // command on this connection sees the three readers in.
    assert_eq!(release(&mut c, "k", "x"), Some(0));
    let info = family::info(&mut c, "k").unwrap();
    let Info::Shared { waiters, holders } = &info else {
        panic!("shared after the release: {info:?}")
    };
    assert_eq!(*waiters, 2, "the writer and the reader behind it wait on");
    let names: Vec<&str> = holders.iter().map(|h| h.owner.as_str()).collect();
    assert_eq!(names, ["r1", "r2", "r3"], "in queue order");
    let tokens = [r1.granted(), r2.granted(), r3.granted()];
    assert!(tokens[0] < tokens[1] && tokens[1] < tokens[2], "{tokens:?}");
    let shown: Vec<i64> = holders.iter().map(|h| h.token).collect();
    assert_eq!(shown, tokens, "each its own fresh token");
    assert_eq!(stat(&mut c, "handoffs"), 3);

    std::thread::sleep(A_MOMENT);
    still_waiting(&w, "the writer");
    still_waiting(&r4, "the reader behind the writer");
    release(&mut c, "k", "r1").unwrap();
    release(&mut c, "k", "r2").unwrap();
    assert_eq!(family::key_waiters(&mut c, "k"), 2, "r3 still reads");
    release(&mut c, "k", "r3").unwrap();
    let h = family::info(&mut c, "k").unwrap();
    assert_eq!((h.mode(), h.waiters()), ("exclusive", 1));
    let wt = w.granted();
    assert_eq!(h.held(), [("w".into(), 1, wt)]);
    still_waiting(&r4, "the reader behind the writer");
    release(&mut c, "k", "w").unwrap();
    assert!(r4.granted() > wt);
}

#[test]
fn semaphore_waiters_are_served_in_strict_fifo_order() {
    let s = Server::start();
    let mut c = s.conn();
    // 2 of 4 permits are free: a waiter for 3 queues, and one for 1 that
    // comes later queues behind it instead of taking one of the free two.
    acquire_permits(&mut c, "s", "h", 60_000, 4, 2).unwrap();
    let big = queue_waiter(&s, &mut c, "s", "big", Kind::permits(4, 3), 1);
    let small = queue_waiter(&s, &mut c, "s", "small", Kind::permits(4, 1), 2);
    assert_eq!(
        acquire_permits(&mut c, "s", "now", 60_000, 4, 1),
        None,
        "nobody is granted past the queue"
    );
    let Some(Info::Semaphore {
        limit,
        available,
        waiters,
        ..
    }) = family::info(&mut c, "s")
    else {
        panic!()
    };
    assert_eq!((limit, available, waiters), (4, 2, 2));
    std::thread::sleep(A_MOMENT);
    still_waiting(&small, "the small waiter behind the big one");

    // One permit back: 3 free, the big waiter takes them at once.
    assert_eq!(release_count(&mut c, "s", "h", 1), Some(1));
    let i = family::info(&mut c, "s").unwrap();
    let bt = big.granted();
    let h = i.holder("h").unwrap().token;
    assert_eq!(i.held(), [("h".into(), 1, h), ("big".into(), 3, bt)]);
    assert_eq!(i.waiters(), 1);
    still_waiting(&small, "the small waiter (no permit left)");
    release(&mut c, "s", "h").unwrap();
    let st = small.granted();
    assert!(st > bt);
    assert_eq!(
        family::held(&mut c, "s"),
        [("big".into(), 3, bt), ("small".into(), 1, st)]
    );

    // Served in order while permits suffice, stopping at the first that
    // cannot be served.
    acquire_permits(&mut c, "t", "h", 60_000, 3, 3).unwrap();
    let s1 = queue_waiter(&s, &mut c, "t", "s1", Kind::permits(3, 1), 1);
    let s2 = queue_waiter(&s, &mut c, "t", "s2", Kind::permits(3, 1), 2);
    let b = queue_waiter(&s, &mut c, "t", "b", Kind::permits(3, 2), 3);
    let s3 = queue_waiter(&s, &mut c, "t", "s3", Kind::permits(3, 1), 4);
    assert_eq!(release_count(&mut c, "t", "h", 3), Some(0));
    let i = family::info(&mut c, "t").unwrap();
    let Info::Semaphore {
        available, waiters, ..
    } = &i
    else {
        panic!("{i:?}")
    };
    assert_eq!((*available, *waiters), (1, 2), "b needs 2: it and s3 wait");
    let names: Vec<String> = i.holders().into_iter().map(|h| h.owner).collect();
    assert_eq!(names, ["s1", "s2"]);
    s1.granted();
    s2.granted();
    std::thread::sleep(A_MOMENT);
    still_waiting(&b, "b");
    still_waiting(&s3, "s3 behind b, though one permit is free");
    release(&mut c, "t", "s1").unwrap();
    b.granted();
    still_waiting(&s3, "s3 (b took the two)");
    release(&mut c, "t", "s2").unwrap();
    s3.granted();
}

#[test]
fn permits_freed_by_a_release_go_to_the_waiter_at_once() {
    let s = Server::start();
    let mut c = s.conn();
    acquire_permits(&mut c, "s", "a", 60_000, 2, 1).unwrap();
    acquire_permits(&mut c, "s", "b", 60_000, 2, 1).unwrap();
    let w = queue_waiter(&s, &mut c, "s", "w", Kind::permits(2, 1), 1);
    assert_eq!(release(&mut c, "s", "a"), Some(0));
    // Granted by the release itself: the next command sees it.
    let held: Vec<String> = family::info(&mut c, "s")
        .unwrap()
        .holders()
        .into_iter()
        .map(|h| h.owner)
        .collect();
    assert_eq!(held, ["b", "w"]);
    w.granted();
    assert_eq!(stat(&mut c, "handoffs"), 1);
}

#[test]
fn capacity_freed_by_one_holders_expiry_goes_to_the_waiter_at_its_deadline() {
    // The waiters must be queued before the short lease ends (else they
    // simply find room): an attempt too slow for that proves nothing.
    until_conclusive(|attempt| {
        let s = Server::start();
        let mut c = s.conn();
        let ttl = lease_ms(600, attempt);
        // A semaphore: one long holder, one short.
        let long = acquire_permits(&mut c, "s", "long", 600_000, 2, 1).unwrap();
        let short = grant_timed(&mut c, "s", "short", ttl, Kind::permits(2, 1));
        let w = spawn_waiter(&s, "s", "w", 60_000, Kind::permits(2, 1), 120_000);
        wait_key_waiters(&mut c, "s", 1);
        // A read/write lock: the writer waits for both readers; only the
        // short one's lease ends, so it still waits after that.
        let reader = acquire_shared(&mut c, "r", "long", 600_000).unwrap();
        let short_reader = grant_timed(&mut c, "r", "short", ttl, Kind::Shared);
        let writer = spawn_waiter(&s, "r", "writer", 60_000, Kind::Exclusive, 0);
        wait_key_waiters(&mut c, "r", 1);
        before("the waiters' arrival", Instant::now(), short.earliest)?;

        let token = w.granted();
        let granted = Instant::now();
        assert!(
            granted + Duration::from_millis(50) >= short.earliest,
            "granted {:?} before the deadline",
            short.earliest - granted
        );
        assert!(
            granted < short.latest + EXPIRY_SLACK,
            "granted {:?} after the deadline",
            granted - short.latest
        );
        assert_eq!(
            family::held(&mut c, "s"),
            [("long".into(), 1, long), ("w".into(), 1, token)]
        );
        family::expect_holder_expiry(&mut c, &[("short", &short_reader)]);
        assert_eq!(family::held(&mut c, "r"), [("long".into(), 1, reader)]);
        assert_eq!(family::key_waiters(&mut c, "r"), 1);
        still_waiting(&writer, "the writer (a reader still holds)");
        assert_eq!(release(&mut c, "r", "long"), Some(0));
        writer.granted();
        assert_eq!(stat(&mut c, "expired"), 2);
        Ok(())
    });
}

#[test]
fn force_release_of_one_owner_serves_the_waiters_at_once() {
    let s = Server::start();
    let mut c = s.conn();
    // A semaphore whose only holder died.
    acquire_permits(&mut c, "s", "dead", 600_000, 1, 1).unwrap();
    let w = queue_waiter(&s, &mut c, "s", "w", Kind::permits(1, 1), 1);
    assert_eq!(force_release_owner(&mut c, "s", "dead"), 1);
    assert_eq!(
        family::info(&mut c, "s").unwrap().holders()[0].owner,
        "w",
        "granted by the force-release itself"
    );
    w.granted();

    // A writer waiting for two readers: evicting one is not enough.
    acquire_shared(&mut c, "r", "a", 600_000).unwrap();
    acquire_shared(&mut c, "r", "b", 600_000).unwrap();
    let writer = queue_waiter(&s, &mut c, "r", "writer", Kind::Exclusive, 1);
    assert_eq!(force_release_owner(&mut c, "r", "a"), 1);
    assert_eq!(family::key_waiters(&mut c, "r"), 1);
    std::thread::sleep(A_MOMENT);
    still_waiting(&writer, "the writer (b still reads)");
    assert_eq!(force_release_owner(&mut c, "r", "b"), 1);
    let h = family::info(&mut c, "r").unwrap();
    assert_eq!(
        (h.mode(), h.holders()[0].owner.as_str()),
        ("exclusive", "writer")
    );
    writer.granted();

    // FORCERELEASE without an owner: all readers go, the writer comes in.
    acquire_shared(&mut c, "q", "a", 600_000).unwrap();
    acquire_shared(&mut c, "q", "b", 600_000).unwrap();
    let writer = queue_waiter(&s, &mut c, "q", "writer", Kind::Exclusive, 1);
    assert_eq!(force_release(&mut c, "q"), 1);
    writer.granted();
    assert_eq!(family::info(&mut c, "q").unwrap().mode(), "exclusive");
}

#[test]
fn shared_and_limit_waits_time_out_with_nil() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "r", "x", 600_000).unwrap();
    acquire_permits(&mut c, "s", "p", 600_000, 2, 2).unwrap();
    for (key, kind) in [("r", Kind::Shared), ("s", Kind::permits(2, 1))] {
        let start = Instant::now();
        let r = spawn_waiter(&s, key, "w", 1000, kind, 300).join();
        let waited = start.elapsed();
        assert_eq!(r.unwrap(), None, "{kind:?}");
        assert!(
            waited >= Duration::from_millis(250),
            "{kind:?} answered too early: {waited:?}"
        );
        assert_eq!(family::key_waiters(&mut c, key), 0);
    }
    assert_eq!(stat(&mut c, "wait_timeouts"), 2);
    assert_eq!(family::held(&mut c, "r")[0].0, "x");
    assert_eq!(family::held(&mut c, "s")[0].0, "p");
}

/// A semaphore of 4 with 2 permits held, a head waiter for 3 and one for 1
/// behind it: when the head leaves (by `leave`), the second is served at
/// once — 2 permits are free and nobody is ahead of it.
fn head_leaves(leave: &str) {
    // A head that times out must still be there when the second queues
    // (else that one is simply granted): a too slow attempt proves nothing,
    // the next gives the head a longer wait.
    until_conclusive(|attempt| {
        let s = Server::start();
        let mut c = s.conn();
        acquire_permits(&mut c, "s", "h", 600_000, 4, 2).unwrap();
        let head_wait = if leave == "timeout" {
            lease_ms(500, attempt)
        } else {
            0
        };
        let head = spawn_waiter(&s, "s", "head", 60_000, Kind::permits(4, 3), head_wait);
        wait_key_waiters(&mut c, "s", 1);
        let next = spawn_waiter(&s, "s", "next", 60_000, Kind::permits(4, 1), 0);
        wait_for("the second waiter to queue", PATIENCE, || {
            (family::key_waiters(&mut c, "s") == 2 || head.is_finished()).then_some(())
        });
        if head.is_finished() {
            return Err("the head's wait ended before the second one queued".into());
        }
        let id = head.client_id();
        match leave {
            "timeout" => {}
            "kill" => {
                let n: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .query(&mut c)
                    .unwrap();
                assert_eq!(n, 1);
            }
            "unblock" => {
                let n: i64 = redis::cmd("CLIENT")
                    .arg("UNBLOCK")
                    .arg(id)
                    .query(&mut c)
                    .unwrap();
                assert_eq!(n, 1);
            }
            _ => unreachable!(),
        }
        let r = head.join();
        match leave {
            "kill" => assert!(r.is_err(), "a killed client gets no reply"),
            _ => assert_eq!(r.unwrap(), None, "{leave}: nil"),
        }
        let token = next.granted();
        let h = family::info(&mut c, "s").unwrap();
        assert_eq!(h.held()[1], ("next".into(), 1, token), "{leave}");
        assert_eq!(h.waiters(), 0, "{leave}");
        Ok(())
    });
}

#[test]
fn a_head_waiter_that_times_out_lets_the_next_be_served() {
    head_leaves("timeout");
}

#[test]
fn a_killed_head_waiter_leaves_the_queue_and_the_next_is_served() {
    head_leaves("kill");
}

#[test]
fn a_head_waiter_unblocked_by_client_unblock_lets_the_next_be_served() {
    head_leaves("unblock");
}

#[test]
fn a_killed_writer_at_the_head_lets_the_reader_behind_it_in() {
    // Only readers hold: with the writer gone, the reader behind it is
    // served beside them at once.
    let s = Server::start();
    let mut c = s.conn();
    acquire_shared(&mut c, "k", "a", 600_000).unwrap();
    let writer = queue_waiter(&s, &mut c, "k", "writer", Kind::Exclusive, 1);
    let reader = queue_waiter(&s, &mut c, "k", "reader", Kind::Shared, 2);
    let n: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(writer.client_id())
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    assert!(writer.join().is_err(), "a killed client gets no reply");
    reader.granted();
    let names: Vec<String> = family::held(&mut c, "k").into_iter().map(|h| h.0).collect();
    assert_eq!(names, ["a", "reader"]);
    assert!(stat(&mut c, "wait_abandoned") >= 1);
}

#[test]
fn client_unblock_ends_shared_and_limit_waits() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "r", "x", 600_000).unwrap();
    acquire_permits(&mut c, "s", "p", 600_000, 1, 1).unwrap();
    let reader = queue_waiter(&s, &mut c, "r", "reader", Kind::Shared, 1);
    let permit = queue_waiter(&s, &mut c, "s", "permit", Kind::permits(1, 1), 1);
    let n: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(reader.client_id())
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(reader.join().unwrap(), None, "CLIENT UNBLOCK answers nil");
    let n: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(permit.client_id())
        .arg("ERROR")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    let err = permit.join().unwrap_err();
    assert_eq!(err.code(), Some("UNBLOCKED"), "{err}");
    assert_eq!(family::key_waiters(&mut c, "r"), 0);
    assert_eq!(family::key_waiters(&mut c, "s"), 0);
    assert_eq!(stat(&mut c, "waiters"), 0);
}

#[test]
fn shared_and_limit_waits_do_not_block_in_multi_or_scripts() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "r", "x", 60_000).unwrap();
    acquire_permits(&mut c, "s", "p", 60_000, 1, 1).unwrap();
    let ta = acquire_shared(&mut c, "q", "a", 60_000).unwrap();
    let start = Instant::now();
    let r: Vec<Option<i64>> = redis::pipe()
        .atomic()
        .cmd("LOCK.ACQUIRE")
        .arg("r")
        .arg("w")
        .arg(1000)
        .arg("SHARED")
        .arg("WAIT")
        .arg(0)
        .cmd("LOCK.ACQUIRE")
        .arg("s")
        .arg("w")
        .arg(1000)
        .arg("LIMIT")
        .arg(1)
        .arg("WAIT")
        .arg(0)
        .cmd("LOCK.ACQUIRE")
        .arg("free")
        .arg("w")
        .arg(1000)
        .arg("WAIT")
        .arg(0)
        .arg("SHARED")
        .query(&mut c)
        .unwrap();
    assert_eq!(r[..2], [None, None]);
    assert!(r[2].is_some(), "a free key is granted in MULTI");
    let script = |c: &mut Connection, key: &str, owner: &str, opts: &[&str]| -> Option<i64> {
        let mut args = vec![owner, "1000"];
        args.extend_from_slice(opts);
        redis::cmd("EVAL")
            .arg("return redis.call('LOCK.ACQUIRE', KEYS[1], unpack(ARGV))")
            .arg(1)
            .arg(key)
            .arg(args)
            .query(c)
            .unwrap()
    };
    assert_eq!(script(&mut c, "r", "w", &["SHARED", "WAIT", "0"]), None);
    assert_eq!(script(&mut c, "s", "w", &["LIMIT", "1", "WAIT", "0"]), None);
    // (Lua turns integer replies into doubles: the token itself is not
    // exact there, LOCK.INFO shows the re-entry.)
    assert!(
        script(&mut c, "q", "a", &["SHARED", "WAIT", "0"]).is_some(),
        "shared re-entry inside a script"
    );
    assert_eq!(family::held(&mut c, "q"), [("a".into(), 2, ta)]);
    // With WAIT 0 a real wait would last until the read timeout.
    assert!(start.elapsed() < PATIENCE);
    assert_eq!(stat(&mut c, "waiters"), 0);
    assert_eq!(family::key_waiters(&mut c, "r"), 0);
    assert_eq!(family::key_waiters(&mut c, "s"), 0);
}

#[test]
fn a_holder_reentering_with_shared_is_granted_at_once_even_with_waiters() {
    let s = Server::start();
    let mut c = s.conn();
    let ta = acquire_shared(&mut c, "k", "a", 60_000).unwrap();
    let writer = queue_waiter(&s, &mut c, "k", "writer", Kind::Exclusive, 1);
    assert_eq!(acquire_shared(&mut c, "k", "a", 60_000), Some(ta));
    let again = spawn_waiter(&s, "k", "a", 60_000, Kind::Shared, 0);
    assert_eq!(again.granted(), ta, "a waiter of a holder is never queued");
    assert_eq!(acquire_shared(&mut c, "k", "b", 60_000), None);
    let info = family::info(&mut c, "k").unwrap();
    assert_eq!(info.held(), [("a".into(), 3, ta)]);
    assert_eq!(info.waiters(), 1);
    still_waiting(&writer, "the writer");

    // The exclusive holder downgrading while a writer waits: at once too;
    // once its exclusive hold goes, the waiting writer still waits for the
    // shared one, and no new reader passes it.
    let tx = acquire(&mut c, "d", "x", 60_000).unwrap();
    let w2 = queue_waiter(&s, &mut c, "d", "w2", Kind::Exclusive, 1);
    assert_eq!(acquire_shared(&mut c, "d", "x", 60_000), Some(tx));
    assert_eq!(release_count(&mut c, "d", "x", 1), Some(1));
    assert_eq!(family::info(&mut c, "d").unwrap().mode(), "shared");
    assert_eq!(acquire_shared(&mut c, "d", "other", 60_000), None);
    std::thread::sleep(A_MOMENT);
    still_waiting(&w2, "the writer behind the downgraded holder");
    assert_eq!(release(&mut c, "d", "x"), Some(0));
    assert!(w2.granted() > tx);

    assert_eq!(release_count(&mut c, "k", "a", 3), Some(0));
    writer.granted();
}

#[test]
fn a_queued_reentry_is_granted_as_soon_as_its_owner_holds() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "x", 60_000).unwrap();
    let a1 = queue_waiter(&s, &mut c, "k", "a", Kind::Shared, 1);
    let w = queue_waiter(&s, &mut c, "k", "w", Kind::Exclusive, 2);
    let a2 = queue_waiter(&s, &mut c, "k", "a", Kind::Shared, 3);
    assert_eq!(release(&mut c, "k", "x"), Some(0));
    let t1 = a1.granted();
    assert_eq!(
        a2.granted(),
        t1,
        "the second is a re-entry, past the writer"
    );
    let info = family::info(&mut c, "k").unwrap();
    assert_eq!(info.held(), [("a".into(), 2, t1)]);
    assert_eq!(info.waiters(), 1);
    still_waiting(&w, "the writer");
    assert_eq!(release_count(&mut c, "k", "a", 2), Some(0));
    w.granted();
}

#[test]
fn a_queued_request_of_the_wrong_kind_gets_wrongtype_when_served() {
    let s = Server::start();
    let mut c = s.conn();
    // A LIMIT waiter on a semaphore; a read/write lock is renamed over it.
    acquire_permits(&mut c, "k", "p", 600_000, 2, 2).unwrap();
    let w = queue_waiter(&s, &mut c, "k", "w", Kind::permits(2, 1), 1);
    let reader = acquire_shared(&mut c, "rw", "a", 600_000).unwrap();
    let _: () = redis::cmd("RENAME")
        .arg("rw")
        .arg("k")
        .query(&mut c)
        .unwrap();
    let err = w.join().unwrap_err();
    assert_eq!(error_text(&err), NOT_A_SEMAPHORE);
    assert_eq!(family::held(&mut c, "k"), [("a".into(), 1, reader)]);
    assert_eq!(family::key_waiters(&mut c, "k"), 0);

    // A SHARED and an exclusive waiter on a read/write lock; a semaphore
    // (with permits free) is renamed over it.
    acquire(&mut c, "j", "x", 600_000).unwrap();
    let r = queue_waiter(&s, &mut c, "j", "r", Kind::Shared, 1);
    let x = queue_waiter(&s, &mut c, "j", "y", Kind::Exclusive, 2);
    let p = acquire_permits(&mut c, "sem", "p", 600_000, 3, 1).unwrap();
    let _: () = redis::cmd("RENAME")
        .arg("sem")
        .arg("j")
        .query(&mut c)
        .unwrap();
    assert_eq!(error_text(&r.join().unwrap_err()), semaphore_error(3));
    assert_eq!(error_text(&x.join().unwrap_err()), semaphore_error(3));
    let Some(Info::Semaphore {
        limit, available, ..
    }) = family::info(&mut c, "j")
    else {
        panic!()
    };
    assert_eq!((limit, available), (3, 2));
    assert_eq!(family::held(&mut c, "j"), [("p".into(), 1, p)]);
    assert_eq!(stat(&mut c, "waiters"), 0);
}

#[test]
fn a_queued_upgrade_gets_the_upgrade_error_when_served() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "x", 60_000).unwrap();
    let shared = queue_waiter(&s, &mut c, "k", "a", Kind::Shared, 1);
    let upgrade = queue_waiter(&s, &mut c, "k", "a", Kind::Exclusive, 2);
    let behind = queue_waiter(&s, &mut c, "k", "b", Kind::Shared, 3);
    assert_eq!(release(&mut c, "k", "x"), Some(0));
    let t = shared.granted();
    assert_eq!(error_text(&upgrade.join().unwrap_err()), UPGRADE_ERROR);
    // The refused upgrade left the queue: the reader behind it comes in.
    let tb = behind.granted();
    assert_eq!(
        family::held(&mut c, "k"),
        [("a".into(), 1, t), ("b".into(), 1, tb)]
    );
    assert_eq!(family::key_waiters(&mut c, "k"), 0);
}
