//! Time in the tests, on machines of any speed: how long to wait for what
//! should happen soon, how late a lease may be seen after its deadline, and
//! scenarios that can only prove something when the machine keeps up with a
//! lease.
//!
//! The rule: a test never assumes that its own work (or the server's) takes
//! less than some time. It polls with [`PATIENCE`], allows [`EXPIRY_SLACK`]
//! after a deadline, and where a check needs "this happened before that
//! lease ended", it measures that and tries again with a longer lease when
//! it did not hold ([`until_conclusive`]).

use std::time::{Duration, Instant};

/// How long a test waits for something that should happen soon (a waiter to
/// queue, a replica to catch up, a timer to fire, a rewrite to finish):
/// generous, for a slow, loaded machine. Waits poll, so a fast machine
/// never waits this long; only a broken behaviour does.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How long after its deadline a lease may still be seen on a server that
/// was able to expire it (the module's timer fires within about a
/// millisecond; this covers a slow, loaded machine, and a polling test that
/// looks only now and then). A lease that is never removed, or only when
/// touched, still fails.
pub const EXPIRY_SLACK: Duration = Duration::from_secs(5);

/// How many times [`until_conclusive`] tries, with leases of `base`, 2×,
/// 4× and 8× `base` (see [`lease_ms`]).
pub const ATTEMPTS: u32 = 4;

/// The lease (ms) of attempt `n`: `base_ms` doubled `n` times.
pub fn lease_ms(base_ms: u64, attempt: u32) -> u64 {
    base_ms << attempt
}

/// `Ok` when `at` came before `deadline`; else why the attempt proved
/// nothing (for [`until_conclusive`]).
pub fn before(what: &str, at: Instant, deadline: Instant) -> Result<(), String> {
    if at < deadline {
        Ok(())
    } else {
        Err(format!(
            "{what} came {:?} after the lease could end",
            at - deadline
        ))
    }
}

/// Runs a scenario that can only prove something when the machine keeps up
/// with a lease ("the master is stopped before the lease ends", "the waiter
/// is queued before the deadline"): `attempt(n)` for n = 0, 1, ... until one
/// returns `Ok`, at most [`ATTEMPTS`] times.
///
/// An attempt measures its timing precondition and returns `Err(why)` when it
/// did not hold: that run proved nothing either way, and the next attempt
/// uses a longer lease (see [`lease_ms`]). A real failure panics inside
/// `attempt`, as any assertion does. Panics when no attempt could check
/// anything.
pub fn until_conclusive(mut attempt: impl FnMut(u32) -> Result<(), String>) {
    let mut why = Vec::new();
    for n in 0..ATTEMPTS {
        match attempt(n) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("attempt {n} proved nothing (the machine was too slow): {e}");
                why.push(e);
            }
        }
    }
    panic!("none of {ATTEMPTS} attempts could check anything, each was too slow: {why:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_first_conclusive_attempt() {
        let mut seen = Vec::new();
        until_conclusive(|n| {
            seen.push(lease_ms(100, n));
            if n < 2 {
                Err("slow".into())
            } else {
                Ok(())
            }
        });
        assert_eq!(seen, [100, 200, 400]);
    }

    #[test]
    #[should_panic(expected = "none of 4 attempts")]
    fn panics_when_no_attempt_is_conclusive() {
        until_conclusive(|_| Err("slow".into()));
    }

    #[test]
    fn before_measures() {
        let now = Instant::now();
        assert!(before("x", now, now + Duration::from_millis(1)).is_ok());
        assert!(before("x", now, now).is_err());
    }
}
