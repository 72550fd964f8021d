//! The watchdog: one task per lease that renews it every `renew_every` and
//! marks it lost when the server says it is gone or when no renewal was
//! confirmed before the local deadline. With the watchdog off, the same
//! task only watches the deadline.
//!
//! Unlike a watchdog that stops silently when a renewal finds the lock gone,
//! this one always ends in one of two ways: the lease ended (all guards
//! released; the task is aborted before any release is sent), or the lease is
//! marked lost and every guard's `lost()` completes.

use std::sync::Arc;

use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, warn};

use crate::commands::show;
use crate::connection::Connection;
use crate::error::LeaseLost;
use crate::handle::Handle;
use crate::lease::Lease;

/// Starts the lease's watchdog task on `runtime`.
pub(crate) fn spawn<C: Connection>(
    runtime: &tokio::runtime::Handle,
    lease: Arc<Lease>,
    handle: Arc<Handle<C>>,
) {
    let task = runtime.spawn(run(Arc::clone(&lease), handle));
    lease.set_watchdog(task.abort_handle());
}

async fn run<C: Connection>(lease: Arc<Lease>, handle: Arc<Handle<C>>) {
    let p = lease.params;
    let key = show(&handle.key).into_owned();
    let owner = handle.owner.as_str();
    let token = lease.token;
    let mut conn = handle.conn();
    let mut next = lease.confirmed_at() + p.renew_every;
    let mut failures = 0u32;
    loop {
        let now = Instant::now();
        // Re-read every time: a re-entry may have moved it.
        let deadline = lease.deadline();
        if now >= deadline {
            let reason = if p.watchdog {
                LeaseLost::Unconfirmed
            } else {
                LeaseLost::Expired
            };
            if lease.lose(reason) {
                warn!(%key, %owner, token, %reason, failures, "lease lost");
            }
            return;
        }
        if !p.watchdog {
            sleep_until(deadline).await;
            continue;
        }
        if now < next {
            sleep_until(next.min(deadline)).await;
            continue;
        }

        // The deadline counts from the moment the request is sent: the
        // server cannot start the renewed lease before receiving it.
        let sent = Instant::now();
        let reply = timeout_at(
            (sent + p.renew_every).min(deadline),
            handle.renew(&mut conn, p.ttl_ms()),
        )
        .await;
        let Ok(outcome) = reply else {
            // No answer in time (server stopped, network cut): try again at
            // once on a fresh request; the deadline decides.
            failures += 1;
            debug!(%key, %owner, token, failures, "renewal got no reply in time");
            next = Instant::now();
            continue;
        };
        match outcome {
            Ok(true) => {
                lease.confirm(sent);
                if failures > 0 {
                    debug!(%key, %owner, token, failures, "renewal succeeded again");
                }
                failures = 0;
                next = sent + p.renew_every;
            }
            Ok(false) => {
                if lease.lose(LeaseLost::NotHeld) {
                    warn!(%key, %owner, token, "lease lost: the server says the lock is not held");
                }
                return;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    warn!(%key, %owner, token, error = %e, "renewal failed; retrying until the local deadline");
                } else {
                    debug!(%key, %owner, token, error = %e, failures, "renewal failed again");
                }
                next = Instant::now() + p.retry_delay();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::{sleep, Instant};

    use crate::mock::{ms, Answer, Mock};
    use crate::{AcquireOptions, LeaseLost};

    #[tokio::test(start_paused = true)]
    async fn renews_every_third_of_the_ttl() {
        let mock = Mock::granting();
        let t0 = Instant::now();
        let guard = mock.guard(AcquireOptions::new()).await;
        sleep(ms(1050)).await;
        let renewals: Vec<_> = mock.sent("LOCK.RENEW").iter().map(|t| *t - t0).collect();
        assert_eq!(renewals, (1..=10).map(|i| ms(100 * i)).collect::<Vec<_>>());
        assert!(!guard.is_lost());
        assert!(guard.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_answered_zero_means_not_held() {
        let mock = Mock::granting();
        let t0 = Instant::now();
        let guard = mock.guard(AcquireOptions::new()).await;
        mock.on("LOCK.RENEW", [Answer::Int(1), Answer::Int(0)]);
        assert_eq!(guard.lost().await, LeaseLost::NotHeld);
        assert_eq!(Instant::now() - t0, ms(200));
        assert!(guard.is_lost());
        // The watchdog stopped: no renewal after the one that answered 0.
        sleep(ms(1000)).await;
        assert_eq!(mock.sent("LOCK.RENEW").len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_server_means_lost_at_deadline_counted_from_send_time() {
        let mock = Mock::granting();
        let t0 = Instant::now();
        let guard = mock.guard(AcquireOptions::new()).await;
        // The renewal sent at 100 ms is answered at 180 ms; then silence.
        mock.on("LOCK.RENEW", [Answer::Late(ms(80), 1), Answer::Hang]);
        assert_eq!(guard.lost().await, LeaseLost::Unconfirmed);
        // 100 (send) + 300 (ttl) − 30 (margin); counting from the reply
        // would have said 450 ms — after the server may have let it go.
        assert_eq!(Instant::now() - t0, ms(370));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_are_retried_until_the_deadline() {
        let mock = Mock::granting();
        let t0 = Instant::now();
        let guard = mock.guard(AcquireOptions::new()).await;
        mock.on("LOCK.RENEW", [Answer::Fail]);
        assert_eq!(guard.lost().await, LeaseLost::Unconfirmed);
        assert_eq!(Instant::now() - t0, ms(270));
        let tries = mock.sent("LOCK.RENEW").len();
        assert!(tries >= 5, "only {tries} renewal attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_followed_by_a_success_keeps_the_lease() {
        let mock = Mock::granting();
        let guard = mock.guard(AcquireOptions::new()).await;
        mock.on(
            "LOCK.RENEW",
            [Answer::Fail, Answer::Fail, Answer::Hang, Answer::Int(1)],
        );
        sleep(ms(2000)).await;
        assert!(!guard.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn without_watchdog_the_lease_runs_out_at_the_local_deadline() {
        let mock = Mock::granting();
        let t0 = Instant::now();
        let guard = mock.guard(AcquireOptions::new().watchdog(false)).await;
        assert_eq!(guard.lost().await, LeaseLost::Expired);
        assert_eq!(Instant::now() - t0, ms(270));
        assert!(mock.sent("LOCK.RENEW").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn release_stops_the_watchdog_before_releasing() {
        let mock = Mock::granting();
        let guard = mock.guard(AcquireOptions::new()).await;
        sleep(ms(250)).await;
        assert!(guard.release().await.unwrap());
        sleep(ms(1000)).await;
        assert_eq!(
            mock.log(),
            ["LOCK.ACQUIRE", "LOCK.RENEW", "LOCK.RENEW", "LOCK.RELEASE"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lost_never_completes_after_a_release() {
        let mock = Mock::granting();
        let guard = mock.guard(AcquireOptions::new()).await;
        let lost = guard.lost();
        assert!(guard.release().await.unwrap());
        let waited = tokio::time::timeout(ms(5000), lost).await;
        assert!(waited.is_err(), "lost() completed after a release");
    }
}
