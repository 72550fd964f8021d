//! Retries of the requests that change what an owner holds: which failures
//! are sent again, for how long, and the request ids that make sending
//! `LOCK.ACQUIRE` and `LOCK.RELEASE` again safe.
//!
//! A connection can fail between the server applying a request and the
//! client reading the reply. Sent again as it was, a release would release
//! twice and an acquire would re-enter (or take its permits) twice. Every
//! acquire and release therefore carries an `ID request-id`, unique per
//! operation of the handle and the same on each of its retries: the server
//! answers an id it has applied with the reply it gave and changes nothing
//! (docs/INTERFACE.md, "Exactly-once retries").
//!
//! How long an operation is retried (from its first send):
//! - an acquire without a wait, and a release: for the lease's ttl — after
//!   that, a grant made by a lost attempt has expired on the server anyway,
//!   and a release has nothing left to give back;
//! - a waiting acquire: until its wait deadline, and at least as long as
//!   one that does not wait; each retry sends the wait that is left.
//!   [`Wait::Forever`](crate::Wait::Forever) retries until an answer comes
//!   (drop the future to give up);
//! - a durable acquire: as above, plus the replicas' `WAIT` timeout.
//!
//! An attempt still unanswered a second after the window closed (a
//! connection stuck reconnecting, a server that stopped) is given up as a
//! timeout. The second covers a waiting acquire, whose server answers at the
//! wait deadline.
//!
//! Renewals carry no id: `LOCK.RENEW` is idempotent, and the watchdog
//! retries it until the local deadline anyway. `LOCK.FORCERELEASE` is not
//! retried: it has no id, and sent again it could remove a holder granted
//! in between.

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, warn};

use crate::commands::show;
use crate::error::Error;

/// The pause before the first retry; it doubles after each failure, up to
/// [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(10);

/// The longest pause between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// How long after the window an attempt may still be answered.
const GRACE: Duration = Duration::from_secs(1);

/// Whether a failed attempt may be sent again: the connection failed (an
/// I/O error, a dropped connection, a timeout, a refused or failed
/// reconnect — the request may or may not have been applied), or the server
/// said it cannot take requests right now (`LOADING` after a restart,
/// `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`: nothing was applied). Any other
/// answer is final.
pub(crate) fn is_retryable(e: &Error) -> bool {
    match e {
        Error::Redis(e) => {
            e.is_io_error()
                || matches!(
                    e.code(),
                    Some("LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN")
                )
        }
        _ => false,
    }
}

/// The request id of a handle's `n`-th operation: `acquire-<n>` or
/// `release-<n>` (at most 28 bytes; the server takes 1 to 64). The server
/// keeps ids per key and owner, and a handle's owner string is its own, so
/// the handle's counter makes them unique.
pub(crate) fn request_id(op: &str, n: u64) -> String {
    format!("{op}-{n}")
}

/// The attempts of one operation: when the first was sent, until when
/// retries are sent, and the pause before the next.
#[derive(Debug)]
pub(crate) struct Retries {
    /// What is retried, for the logs.
    what: &'static str,
    first_sent: Instant,
    /// No attempt is sent after this; `None`: until an answer comes.
    deadline: Option<Instant>,
    delay: Duration,
    failed: u32,
}

impl Retries {
    /// The retries of an operation first sent now, for `window` (`None`:
    /// no limit).
    pub fn new(what: &'static str, window: Option<Duration>) -> Self {
        let first_sent = Instant::now();
        Self {
            what,
            first_sent,
            deadline: window.map(|w| first_sent + w),
            delay: FIRST_DELAY,
            failed: 0,
        }
    }

    /// When the first attempt was sent (a grant answered to any attempt
    /// started its lease no earlier than this).
    pub fn first_sent(&self) -> Instant {
        self.first_sent
    }

    /// Whether an attempt failed before: the answer may be to a retry.
    pub fn retried(&self) -> bool {
        self.failed > 0
    }

    /// Runs one attempt, given up as a timeout when it is still unanswered
    /// [`GRACE`] after the window closed.
    pub async fn attempt<T>(
        &self,
        attempt: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(deadline) = self.deadline else {
            return attempt.await;
        };
        match timeout_at(deadline + GRACE, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Redis(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer within the retry window",
                )
                .into(),
            )),
        }
    }

    /// After a failed attempt: waits until the next one is due and returns
    /// `Ok`, or returns the error when it is final or the window has closed.
    /// The last attempt is sent at the end of the window.
    pub async fn after(&mut self, e: Error, key: &[u8], owner: &str) -> Result<(), Error> {
        if !is_retryable(&e) {
            return Err(e);
        }
        self.failed += 1;
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            warn!(key = %show(key), %owner, what = self.what, attempts = self.failed, error = %e, "giving up: no answer within the retry window");
            return Err(e);
        }
        if self.failed == 1 {
            warn!(key = %show(key), %owner, what = self.what, error = %e, "no answer; sending it again with the same request id");
        } else {
            debug!(key = %show(key), %owner, what = self.what, attempts = self.failed, error = %e, "no answer again");
        }
        let next = now + self.delay;
        sleep_until(self.deadline.map_or(next, |d| next.min(d))).await;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;
    use crate::mock::{ms, Answer, Mock};
    use crate::{AcquireOptions, Client, LeaseLost, Wait};

    fn io_error() -> Error {
        Error::Redis(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into())
    }

    fn server_error(text: &str) -> Error {
        Error::Redis(
            crate::mock::server_error(text)
                .extract_error()
                .expect_err("an error reply"),
        )
    }

    #[test]
    fn connection_failures_and_servers_not_ready_are_retried_other_answers_are_final() {
        assert!(is_retryable(&io_error()));
        for retried in [
            "LOADING Redis is loading the dataset in memory",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down",
        ] {
            assert!(is_retryable(&server_error(retried)), "{retried}");
        }
        for final_answer in [
            "ERR syntax error",
            "WRONGTYPE the key holds a read/write lock, not a semaphore: acquire it without LIMIT",
            "READONLY You can't write against a read only replica.",
        ] {
            assert!(!is_retryable(&server_error(final_answer)), "{final_answer}");
        }
        assert!(!is_retryable(&Error::Upgrade));
        assert!(!is_retryable(&Error::InvalidOptions("x")));
    }

    #[test]
    fn request_ids_fit_the_servers_limit() {
        assert_eq!(request_id("acquire", 1), "acquire-1");
        assert!(request_id("release", u64::MAX).len() <= 64);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_and_stop_at_the_end_of_the_window() {
        let t0 = Instant::now();
        let mut r = Retries::new("test", Some(ms(100)));
        let mut pauses = Vec::new();
        let mut last = t0;
        while r.after(io_error(), b"k", "o").await.is_ok() {
            pauses.push(Instant::now() - last);
            last = Instant::now();
        }
        // 10, 20, 40, then the rest of the window (30), then it gives up.
        assert_eq!(pauses, [ms(10), ms(20), ms(40), ms(30)]);
        assert_eq!(Instant::now() - t0, ms(100));
        assert!(r.retried());
        // A final answer is returned at once.
        let mut r = Retries::new("test", None);
        assert!(matches!(
            r.after(Error::Upgrade, b"k", "o").await,
            Err(Error::Upgrade)
        ));
        assert!(!r.retried());
    }

    #[tokio::test(start_paused = true)]
    async fn every_acquire_and_release_carries_an_id_of_its_own() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        let outer = lock.try_acquire().await.unwrap().unwrap();
        let inner = lock.try_acquire().await.unwrap().unwrap();
        mock.on("LOCK.RELEASE", [Answer::Int(1), Answer::Int(0)]);
        assert!(inner.release().await.unwrap());
        assert!(outer.release().await.unwrap());
        assert_eq!(mock.ids("LOCK.ACQUIRE"), ["acquire-1", "acquire-2"]);
        assert_eq!(mock.ids("LOCK.RELEASE"), ["release-3", "release-4"]);
        // Another handle counts on its own (its owner is another).
        let other = mock.client().lock("k");
        let guard = other.try_acquire().await.unwrap().unwrap();
        assert_eq!(mock.ids("LOCK.ACQUIRE")[2], "acquire-1");
        assert!(guard.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn an_acquire_that_got_no_answer_is_sent_again_with_the_same_id() {
        let mock = Mock::granting();
        mock.on(
            "LOCK.ACQUIRE",
            [
                Answer::Fail,
                Answer::Error("LOADING loading"),
                Answer::Int(9),
            ],
        );
        let t0 = Instant::now();
        let guard = mock.guard(AcquireOptions::new()).await;
        assert_eq!(guard.token(), 9);
        assert_eq!(mock.ids("LOCK.ACQUIRE"), ["acquire-1"; 3]);
        // The local deadline counts from the first send: a grant answered to
        // a retry may have been made by the first attempt.
        assert_eq!(Instant::now() - t0, ms(30));
        assert_eq!(guard.remaining(), ms(270 - 30));
        assert!(guard.release().await.unwrap());
        assert_eq!(mock.ids("LOCK.RELEASE"), ["release-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_acquire_retries_on_a_new_dedicated_connection_with_the_wait_left() {
        let mock = Mock::granting();
        mock.on(
            "LOCK.ACQUIRE",
            [Answer::FailAfter(ms(400)), Answer::Late(ms(100), 7)],
        );
        let (client, opened) = mock.client_with_wait_connections();
        let options = AcquireOptions::new().wait(Wait::For(ms(1000)));
        let guard = client.lock("k").acquire(options).await.unwrap().unwrap();
        assert_eq!(guard.token(), 7);
        assert_eq!(opened.load(Ordering::SeqCst), 2, "reopened for the retry");
        let waits: Vec<String> = mock
            .args("LOCK.ACQUIRE")
            .iter()
            .map(|a| a[4].clone())
            .collect();
        // 1000 ms, then what is left after 400 ms and the 10 ms pause.
        assert_eq!(waits, ["1000", "590"]);
        assert_eq!(mock.ids("LOCK.ACQUIRE"), ["acquire-1", "acquire-1"]);
        assert!(guard.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn an_acquire_is_retried_as_long_as_it_may_block_and_at_least_for_its_ttl() {
        let ttl = AcquireOptions::new().ttl(ms(300));
        for (options, window) in [
            (ttl.replicas(1, ms(50)), ms(300)),
            (ttl.wait(Wait::For(ms(500))).replicas(1, ms(2000)), ms(2500)),
            (AcquireOptions::new().ttl(ms(300)), ms(300)),
            (
                AcquireOptions::new().ttl(ms(300)).wait(Wait::For(ms(50))),
                ms(300),
            ),
            (
                AcquireOptions::new().ttl(ms(300)).wait(Wait::For(ms(2000))),
                ms(2000),
            ),
        ] {
            let mock = Mock::granting();
            mock.on("LOCK.ACQUIRE", [Answer::Fail]);
            let t0 = Instant::now();
            let failed = mock.client().lock("k").acquire(options).await;
            assert!(matches!(failed, Err(Error::Redis(_))), "{failed:?}");
            assert_eq!(Instant::now() - t0, window, "{options:?}");
            let sent = mock.ids("LOCK.ACQUIRE");
            assert!(sent.len() > 3 && sent.iter().all(|id| id == "acquire-1"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_unanswered_after_the_window_is_given_up() {
        let mock = Mock::granting();
        mock.on("LOCK.ACQUIRE", [Answer::Fail, Answer::Hang]);
        let t0 = Instant::now();
        let failed = mock
            .client()
            .lock("k")
            .acquire(AcquireOptions::new().ttl(ms(300)))
            .await;
        assert!(
            matches!(failed, Err(Error::Redis(ref e)) if e.is_timeout()),
            "{failed:?}"
        );
        assert_eq!(Instant::now() - t0, ms(300) + GRACE);
        assert_eq!(mock.sent("LOCK.ACQUIRE").len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_forever_acquire_retries_until_it_is_answered() {
        let mock = Mock::granting();
        let mut answers = vec![Answer::Fail; 200];
        answers.push(Answer::Int(7));
        mock.on("LOCK.ACQUIRE", answers);
        let guard = mock.guard(AcquireOptions::new().wait(Wait::Forever)).await;
        assert_eq!(guard.token(), 7);
        assert_eq!(mock.sent("LOCK.ACQUIRE").len(), 201);
        assert!(mock.args("LOCK.ACQUIRE").iter().all(|a| a[4] == "0"));
    }

    #[tokio::test(start_paused = true)]
    async fn final_answers_are_not_retried() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        mock.on("LOCK.ACQUIRE", [Answer::Error("ERR syntax error")]);
        assert!(matches!(lock.try_acquire().await, Err(Error::Redis(_))));
        mock.on("LOCK.ACQUIRE", [Answer::Error(crate::mock::UPGRADE)]);
        assert!(matches!(lock.try_acquire().await, Err(Error::Upgrade)));
        assert_eq!(mock.sent("LOCK.ACQUIRE").len(), 2);
        // A force-release has no id: sent again, it could remove a holder
        // granted in between.
        mock.on("LOCK.FORCERELEASE", [Answer::Fail, Answer::Int(1)]);
        assert!(matches!(lock.force_release().await, Err(Error::Redis(_))));
        assert_eq!(mock.sent("LOCK.FORCERELEASE").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_that_got_no_answer_is_sent_again_with_the_same_id() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        let outer = lock.try_acquire().await.unwrap().unwrap();
        let inner = lock.try_acquire().await.unwrap().unwrap();
        mock.on(
            "LOCK.RELEASE",
            [Answer::Fail, Answer::Int(1), Answer::Int(0)],
        );
        assert!(inner.release().await.unwrap());
        assert!(!outer.is_lost());
        assert!(outer.release().await.unwrap());
        assert_eq!(
            mock.ids("LOCK.RELEASE"),
            ["release-3", "release-3", "release-4"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retried_last_release_answered_nil_was_done_by_its_first_attempt() {
        // The first attempt released the last hold, so the server kept no
        // record to answer the retry from: it says nil (holds nothing).
        let mock = Mock::granting();
        let guard = mock.guard(AcquireOptions::new()).await;
        mock.on("LOCK.RELEASE", [Answer::Fail, Answer::Nil]);
        assert!(guard.release().await.unwrap());
        assert_eq!(mock.sent("LOCK.RELEASE").len(), 2, "no leftovers to clear");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retried_last_release_first_sent_after_the_local_deadline_answered_nil_was_not_held()
    {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        let outer = lock
            .acquire(AcquireOptions::new().ttl(ms(300)))
            .await
            .unwrap()
            .unwrap();
        let inner = lock.try_acquire().await.unwrap().unwrap();
        // The inner release holds the handle's turn for 300 ms; the outer
        // (last) one waits for it, so it is first sent after the local
        // deadline (270 ms: its watchdog stopped at once, nothing renewed).
        mock.on(
            "LOCK.RELEASE",
            [Answer::Late(ms(300), 1), Answer::Fail, Answer::Nil],
        );
        let inner_release = tokio::spawn(inner.release());
        tokio::task::yield_now().await;
        assert!(!outer.release().await.unwrap());
        assert!(inner_release.await.unwrap().unwrap());
        assert_eq!(mock.sent("LOCK.RELEASE").len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retried_partial_release_answered_nil_means_the_lease_is_gone() {
        // A release that leaves holds keeps the owner's record: a nil answer
        // to its retry means the owner held nothing any more.
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        let outer = lock.try_acquire().await.unwrap().unwrap();
        let inner = lock.try_acquire().await.unwrap().unwrap();
        mock.on("LOCK.RELEASE", [Answer::Fail, Answer::Nil]);
        assert!(!inner.release().await.unwrap());
        assert_eq!(outer.lost().await, LeaseLost::NotHeld);
    }

    #[tokio::test(start_paused = true)]
    async fn a_durable_acquire_retries_the_acquire_and_the_replica_wait_together() {
        let mock = Mock::granting();
        mock.on("LOCK.ACQUIRE", [Answer::Fail, Answer::Int(7)]);
        mock.on("WAIT", [Answer::Int(1)]);
        let guard = mock.guard(AcquireOptions::new().replicas(1, ms(50))).await;
        assert_eq!(guard.token(), 7);
        assert_eq!(mock.log(), ["LOCK.ACQUIRE", "LOCK.ACQUIRE", "WAIT"]);
        assert_eq!(mock.ids("LOCK.ACQUIRE"), ["acquire-1"; 2]);
        assert!(guard.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dedicated_connection_that_fails_to_open_is_opened_again() {
        let mock = Mock::granting();
        let opened = Arc::new(AtomicUsize::new(0));
        let client = Client::builder(mock.clone())
            .wait_connections({
                let (mock, opened) = (mock.clone(), Arc::clone(&opened));
                move || {
                    let n = opened.fetch_add(1, Ordering::SeqCst);
                    let mock = mock.clone();
                    async move {
                        if n < 2 {
                            Err(redis::RedisError::from(std::io::Error::new(
                                std::io::ErrorKind::ConnectionRefused,
                                "refused",
                            )))
                        } else {
                            Ok(mock)
                        }
                    }
                }
            })
            .build();
        let guard = client
            .lock("k")
            .acquire(AcquireOptions::new().wait(Wait::Forever))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(opened.load(Ordering::SeqCst), 3);
        assert_eq!(mock.log(), ["LOCK.ACQUIRE"]);
        assert!(guard.release().await.unwrap());
    }
}
