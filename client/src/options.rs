//! [`AcquireOptions`]: what an acquire asks for, and the checks that turn
//! them into the parameters of a lease.

use std::time::Duration;

use crate::error::Error;

/// The largest ttl and wait timeout the module accepts: 30 days.
const MAX_MS: u128 = 2_592_000_000;

/// What [`Lock::acquire`](crate::Lock::acquire) does when another owner
/// holds the lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wait {
    /// Try once: `acquire` returns `Ok(None)` at once.
    #[default]
    No,
    /// Queue on the server (FIFO, direct hand-off) for at most this long,
    /// rounded up to whole milliseconds; `Ok(None)` when it runs out.
    For(Duration),
    /// Queue on the server until the lock is granted.
    Forever,
}

/// Options of one acquire. Start from [`AcquireOptions::new`] (ttl 30 s,
/// try once, watchdog on, renewal every ttl/3, safety margin ttl/10) and
/// change what you need:
///
/// ```
/// use std::time::Duration;
/// use fencelock_client::{AcquireOptions, Wait};
///
/// let options = AcquireOptions::new()
///     .ttl(Duration::from_secs(10))
///     .wait(Wait::For(Duration::from_secs(5)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcquireOptions {
    ttl: Duration,
    wait: Wait,
    watchdog: bool,
    renew_every: Option<Duration>,
    safety_margin: Option<Duration>,
    replicas: Option<(u32, Duration)>,
}

impl Default for AcquireOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl AcquireOptions {
    /// The default lease ttl: 30 s.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

    /// The defaults: ttl 30 s, try once, watchdog on, renewal every ttl/3,
    /// safety margin ttl/10, no replica acknowledgement.
    pub fn new() -> Self {
        Self {
            ttl: Self::DEFAULT_TTL,
            wait: Wait::No,
            watchdog: true,
            renew_every: None,
            safety_margin: None,
            replicas: None,
        }
    }

    /// The lease's time to live, in whole milliseconds (1 ms ..= 30 days):
    /// how long the lock outlives its holder when nothing renews it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Whether and how long to wait when the lock is held by another owner.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// Watchdog on (default): a task renews the lease every
    /// [`renew_every`](Self::renew_every) while the guard lives. Off: the
    /// lease expires after its ttl, and the guard's
    /// [`lost`](crate::Guard::lost) completes at the local deadline.
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// How often the watchdog renews (default ttl/3). Must leave room before
    /// the local deadline: `renew_every < ttl − safety_margin`.
    pub fn renew_every(mut self, interval: Duration) -> Self {
        self.renew_every = Some(interval);
        self
    }

    /// How long before the server could expire the lease the client gives it
    /// up locally (default ttl/10): the local deadline is the send time of
    /// the last confirmed renewal + ttl − margin. It covers clock-rate
    /// differences and the time the application needs to stop its work.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = Some(margin);
        self
    }

    /// Durability: after the grant, wait until `replicas` replicas have
    /// acknowledged it (`WAIT replicas timeout`); if fewer do within
    /// `timeout` (rounded up to whole milliseconds, at least 1 ms), the grant
    /// is released and the acquire fails with
    /// [`Error::NotDurable`](crate::Error::NotDurable).
    pub fn replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = Some((replicas, timeout));
        self
    }

    /// Checks the options and computes the lease's parameters.
    pub(crate) fn params(&self) -> Result<LeaseParams, Error> {
        let ttl_ms = self.ttl.as_millis();
        if !(1..=MAX_MS).contains(&ttl_ms) {
            return Err(Error::InvalidOptions(
                "ttl must be between 1 ms and 30 days",
            ));
        }
        let ttl = Duration::from_millis(ttl_ms as u64);
        let safety_margin = self.safety_margin.unwrap_or(ttl / 10);
        if safety_margin >= ttl {
            return Err(Error::InvalidOptions(
                "safety margin must be shorter than the ttl",
            ));
        }
        let renew_every = self.renew_every.unwrap_or(ttl / 3);
        if renew_every.is_zero() {
            return Err(Error::InvalidOptions("renewal interval must be positive"));
        }
        if renew_every >= ttl - safety_margin {
            return Err(Error::InvalidOptions(
                "renewal interval must be shorter than ttl minus the safety margin",
            ));
        }
        if let Wait::For(d) = self.wait {
            if ceil_ms(d) > MAX_MS {
                return Err(Error::InvalidOptions("wait must be at most 30 days"));
            }
        }
        if let Some((n, timeout)) = self.replicas {
            if n == 0 {
                return Err(Error::InvalidOptions(
                    "replicas must be at least 1 (leave it unset for none)",
                ));
            }
            if ceil_ms(timeout) > MAX_MS {
                return Err(Error::InvalidOptions(
                    "replica timeout must be at most 30 days",
                ));
            }
        }
        Ok(LeaseParams {
            ttl,
            watchdog: self.watchdog,
            renew_every,
            safety_margin,
        })
    }

    /// The `WAIT` argument of `LOCK.ACQUIRE`: `None` for no wait, `Some(0)`
    /// for no limit.
    pub(crate) fn wait_ms(&self) -> Option<u64> {
        match self.wait {
            Wait::No => None,
            // At least 1: 0 would mean "no limit" to the server.
            Wait::For(d) => Some(ceil_ms(d).clamp(1, MAX_MS) as u64),
            Wait::Forever => Some(0),
        }
    }

    /// The arguments of the replication `WAIT`, when durability is asked for.
    pub(crate) fn durability(&self) -> Option<Durability> {
        self.replicas.map(|(replicas, timeout)| Durability {
            replicas: u64::from(replicas),
            // At least 1: `WAIT n 0` would block forever.
            timeout_ms: ceil_ms(timeout).clamp(1, MAX_MS) as u64,
        })
    }
}

/// Whole milliseconds, rounded up.
pub(crate) fn ceil_ms(d: Duration) -> u128 {
    let ms = d.as_millis();
    if Duration::from_millis(ms as u64) < d {
        ms + 1
    } else {
        ms
    }
}

/// The replication `WAIT` that follows a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Durability {
    pub replicas: u64,
    pub timeout_ms: u64,
}

/// The fixed parameters of one lease (checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeaseParams {
    pub ttl: Duration,
    pub watchdog: bool,
    pub renew_every: Duration,
    pub safety_margin: Duration,
}

impl LeaseParams {
    /// The ttl argument sent to the server.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// How long after a confirmed request was *sent* the client stops
    /// counting on the lease: the server started the lease no earlier than
    /// the send, so it lasts at least until send + ttl.
    pub fn confirmed_for(&self) -> Duration {
        self.ttl.saturating_sub(self.safety_margin)
    }

    /// How long the watchdog waits before trying again after a failed
    /// renewal: often enough for several tries before the deadline, not so
    /// often that a refused connection spins.
    pub fn retry_delay(&self) -> Duration {
        (self.renew_every / 3)
            .max(Duration::from_millis(10))
            .min(self.renew_every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_ttl_30s_renew_ttl_over_3_margin_ttl_over_10() {
        let p = AcquireOptions::new().params().unwrap();
        assert_eq!(p.ttl, Duration::from_secs(30));
        assert_eq!(p.renew_every, Duration::from_secs(10));
        assert_eq!(p.safety_margin, Duration::from_secs(3));
        assert!(p.watchdog);
        assert_eq!(AcquireOptions::new().wait_ms(), None);
        assert_eq!(AcquireOptions::new().durability(), None);
    }

    #[test]
    fn ttl_below_1ms_or_above_30_days_is_refused() {
        for ttl in [
            Duration::ZERO,
            Duration::from_micros(999),
            ms(2_592_000_001),
        ] {
            assert!(matches!(
                AcquireOptions::new().ttl(ttl).params(),
                Err(Error::InvalidOptions(_))
            ));
        }
        assert!(AcquireOptions::new()
            .ttl(ms(2_592_000_000))
            .params()
            .is_ok());
    }

    #[test]
    fn renewal_must_come_before_the_local_deadline() {
        let o = AcquireOptions::new().ttl(ms(300));
        assert!(o.renew_every(ms(269)).params().is_ok());
        assert!(o.renew_every(ms(270)).params().is_err());
        assert!(o.renew_every(Duration::ZERO).params().is_err());
        assert!(o.safety_margin(ms(300)).params().is_err());
    }

    #[test]
    fn wait_for_is_rounded_up_and_never_zero() {
        let o = AcquireOptions::new();
        assert_eq!(o.wait(Wait::For(Duration::ZERO)).wait_ms(), Some(1));
        assert_eq!(
            o.wait(Wait::For(Duration::from_micros(1500))).wait_ms(),
            Some(2)
        );
        assert_eq!(o.wait(Wait::For(ms(250))).wait_ms(), Some(250));
        assert_eq!(o.wait(Wait::Forever).wait_ms(), Some(0));
    }

    #[test]
    fn replica_timeout_is_never_zero_and_count_at_least_one() {
        let o = AcquireOptions::new();
        let d = o.replicas(2, Duration::ZERO).durability().unwrap();
        assert_eq!(
            d,
            Durability {
                replicas: 2,
                timeout_ms: 1
            }
        );
        assert!(o.replicas(0, ms(10)).params().is_err());
    }

    #[test]
    fn retry_delay_is_a_third_of_the_interval_but_at_least_10ms() {
        let p = AcquireOptions::new().ttl(ms(300)).params().unwrap();
        assert_eq!(p.retry_delay(), Duration::from_nanos(33_333_333));
        let p = AcquireOptions::new()
            .ttl(ms(3))
            .renew_every(ms(1))
            .safety_margin(ms(1))
            .params()
            .unwrap();
        assert_eq!(p.retry_delay(), ms(1));
    }
}
