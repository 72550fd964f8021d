//! The fencing token's one promise under hostile input: a `RESTORE`d lock
//! can raise the token floor but never make a token repeat, and two leases
//! that share a deadline and a token are still two leases.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use testkit::hostile::{ModuleValue, MAX_TOKEN};
use testkit::lock::{self, acquire, stat};
use testkit::{wait_for, Server};

fn restore(c: &mut redis::Connection, key: &str, payload: &[u8]) -> redis::RedisResult<()> {
    redis::cmd("RESTORE").arg(key).arg(0).arg(payload).query(c)
}

fn soon_ms(ms: u64) -> u64 {
    testkit::hostile::now_ms() + ms
}

#[test]
fn a_restored_token_above_the_accepted_range_is_refused_and_tokens_never_repeat() {
    let s = Server::start();
    let mut c = s.conn();
    let before = acquire(&mut c, "before", "a", 600_000).unwrap();
    for token in [i64::MAX as u64, MAX_TOKEN + 1, u64::MAX] {
        let p = ModuleValue::lock(b"evil", 1, token, soon_ms(60_000)).payload();
        assert!(
            restore(&mut c, "evil", &p).is_err(),
            "token {token} refused"
        );
        assert!(!lock::exists(&mut c, "evil"), "nothing stored");
    }
    // Grants go on, strictly increasing.
    let next = acquire(&mut c, "next", "a", 600_000).unwrap();
    assert!(next > before);

    // The largest accepted token raises the floor, and leaves room above.
    let p = ModuleValue::lock(b"high", 1, MAX_TOKEN, soon_ms(60_000)).payload();
    restore(&mut c, "high", &p).unwrap();
    assert_eq!(
        lock::info(&mut c, "high").map(|i| i.token as u64),
        Some(MAX_TOKEN)
    );
    let mut last = MAX_TOKEN as i64;
    for i in 0..100 {
        let t = acquire(&mut c, &format!("after{i}"), "b", 600_000).unwrap();
        assert!(t > last, "{t} after {last}");
        last = t;
    }
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn restore_refuses_oversized_owners_zero_holds_and_immortal_deadlines() {
    let s = Server::start();
    let mut c = s.conn();
    let cases: [(&str, ModuleValue); 5] = [
        (
            "100,000-byte owner",
            ModuleValue::lock(&vec![b'o'; 100_000], 1, 5, soon_ms(60_000)),
        ),
        ("empty owner", ModuleValue::lock(b"", 1, 5, soon_ms(60_000))),
        ("zero holds", ModuleValue::lock(b"o", 0, 5, soon_ms(60_000))),
        ("deadline 2^63", ModuleValue::lock(b"o", 1, 5, 1 << 63)),
        (
            "deadline in 32 days",
            ModuleValue::lock(b"o", 1, 5, soon_ms(32 * 86_400_000)),
        ),
    ];
    for (what, v) in cases {
        assert!(
            restore(&mut c, "k", &v.payload()).is_err(),
            "{what} refused"
        );
        assert!(!lock::exists(&mut c, "k"), "{what}: nothing stored");
    }
    // The limits themselves are fine.
    let ok = ModuleValue::lock(&vec![b'o'; 1024], 1, 5, soon_ms(30 * 86_400_000));
    restore(&mut c, "k", &ok.payload()).unwrap();
    assert_eq!(lock::info(&mut c, "k").map(|i| i.owner.len()), Some(1024));
    assert_eq!(stat(&mut c, "held"), 1);
}

#[test]
fn two_locks_with_equal_deadline_and_token_both_expire() {
    // A lock DUMPed and RESTOREd under another name: same deadline, same
    // token. The schedule keeps both leases; each expires on time.
    let s = Server::start();
    let mut c = s.conn();
    let token = acquire(&mut c, "first", "a", 2_000).unwrap();
    let dump: Vec<u8> = redis::cmd("DUMP").arg("first").query(&mut c).unwrap();
    restore(&mut c, "second", &dump).unwrap();
    restore(&mut c, "third", &dump).unwrap();
    assert_eq!(
        lock::digest(&mut c, "first"),
        lock::digest(&mut c, "second")
    );
    assert_eq!(lock::info(&mut c, "third").map(|i| i.token), Some(token));
    wait_for(
        "all three leases to expire",
        Duration::from_secs(60),
        || {
            (!lock::exists(&mut c, "first")
                && !lock::exists(&mut c, "second")
                && !lock::exists(&mut c, "third"))
            .then_some(())
        },
    );
    assert_eq!(stat(&mut c, "expired"), 3);
    assert_eq!(stat(&mut c, "leases_scheduled"), 0);
}
