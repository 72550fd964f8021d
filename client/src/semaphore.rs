//! [`Semaphore`]: a handle on a semaphore of `permits` at one key, with one
//! owner string — acquiring permits (the steps are in `acquire`), and the
//! calls that look at or clear it on the server.

use std::fmt;
use std::sync::Arc;

use crate::acquire;
use crate::commands::{show, Request};
use crate::connection::{Connection, Connections};
use crate::error::Error;
use crate::guard::Guard;
use crate::handle::Handle;
use crate::info::{KeyInfo, SemaphoreInfo};
use crate::options::AcquireOptions;

/// The most permits a semaphore may have.
pub(crate) const MAX_PERMITS: u32 = 1_000_000;

/// A semaphore handle: one key, `permits` permits, one owner string
/// (`<client uuid>:<n>`).
///
/// Take it from [`Client::semaphore`](crate::Client::semaphore).
/// [`acquire(n, options)`](Self::acquire) takes `n` permits
/// (`LOCK.ACQUIRE key owner ttl LIMIT permits COUNT n [WAIT ms]`); its
/// guard gives back exactly those `n` (`LOCK.RELEASE key owner COUNT n`).
/// Granted when `n` permits are free and nobody waits: the server's queue
/// is strict FIFO, so a waiter that needs many permits is not overtaken by
/// later ones that need few.
///
/// All acquires through one handle (and its clones) are one owner on the
/// server: their guards share one lease — one token, one watchdog renewing
/// it, one [`lost`](Guard::lost) signal — and each guard releases only its
/// own permits. Every handle that uses a key must agree on `permits`: the
/// first grant sets it, and the server refuses another `LIMIT` with
/// `WRONGTYPE` (as it refuses a read/write lock on the key).
///
/// ```no_run
/// use fencelock_client::{AcquireOptions, Client, Wait};
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), fencelock_client::Error> {
/// let client = Client::connect("redis://127.0.0.1:6379/").await?;
/// // At most 10 concurrent exports, whatever the number of workers.
/// let exports = client.semaphore("exports", 10);
/// let options = AcquireOptions::new().wait(Wait::For(Duration::from_secs(30)));
/// if let Some(guard) = exports.acquire(2, options).await? {
///     // ... a big export, worth 2 permits ...
///     guard.release().await?; // gives the 2 back
/// }
/// println!("{} permits free", exports.available().await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore<C> {
    handle: Arc<Handle<C>>,
    permits: u32,
}

impl<C> fmt::Debug for Semaphore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("key", &show(&self.handle.key))
            .field("owner", &self.handle.owner)
            .field("permits", &self.permits)
            .finish_non_exhaustive()
    }
}

impl<C: Connection> Semaphore<C> {
    pub(crate) fn new(
        connections: Arc<Connections<C>>,
        key: Vec<u8>,
        owner: String,
        permits: u32,
    ) -> Self {
        Self {
            handle: Arc::new(Handle::new(connections, key, owner)),
            permits,
        }
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.handle.key
    }

    /// The owner string sent to the server: `<client uuid>:<n>`.
    pub fn owner(&self) -> &str {
        &self.handle.owner
    }

    /// The semaphore's permits (its `LIMIT`).
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Takes `n` permits (or `n` more, when the handle holds some), as
    /// `options` say: `Ok(Some(guard))` when granted, `Ok(None)` when `n`
    /// permits are not free (after the wait, if one was asked for) — that
    /// says nothing about the permits the handle holds already: its other
    /// guards keep theirs. [`Error::InvalidOptions`] when `permits` is not
    /// 1 ..= 1 000 000 or `n` is not 1 ..= `permits`.
    ///
    /// A second acquire through the handle joins its lease (same token; the
    /// lease's ttl; its watchdog), as
    /// [`Lock::acquire`](crate::Lock::acquire) describes; the acquires of
    /// one handle run one at a time, but its guards may release while one
    /// waits.
    pub async fn acquire(
        &self,
        n: u32,
        options: AcquireOptions,
    ) -> Result<Option<Guard<C>>, Error> {
        let request = self.request(n)?;
        acquire::acquire(&self.handle, request, options).await
    }

    /// `acquire(n, AcquireOptions::new())`: one try, ttl 30 s, watchdog on.
    pub async fn try_acquire(&self, n: u32) -> Result<Option<Guard<C>>, Error> {
        self.acquire(n, AcquireOptions::new()).await
    }

    fn request(&self, n: u32) -> Result<Request, Error> {
        if !(1..=MAX_PERMITS).contains(&self.permits) {
            return Err(Error::InvalidOptions(
                "a semaphore has 1 to 1000000 permits",
            ));
        }
        if !(1..=self.permits).contains(&n) {
            return Err(Error::InvalidOptions(
                "a semaphore acquire takes 1 to all of its permits",
            ));
        }
        Ok(Request::Permits {
            limit: self.permits,
            count: n,
        })
    }

    /// The semaphore as the server shows it now (`LOCK.INFO`): its limit,
    /// free permits, waiters and holders; `None` when nobody holds a
    /// permit (the key does not exist then). A key that holds a read/write
    /// lock fails with [`Error::WrongKind`].
    pub async fn info(&self) -> Result<Option<SemaphoreInfo>, Error> {
        match self.handle.info().await? {
            None => Ok(None),
            Some(KeyInfo::Semaphore(info)) => Ok(Some(info)),
            Some(other) => Err(Error::WrongKind {
                found: other.mode(),
            }),
        }
    }

    /// How many permits are free now: the server's count, or all of this
    /// handle's `permits` when nobody holds any.
    pub async fn available(&self) -> Result<u64, Error> {
        Ok(self
            .info()
            .await?
            .map_or(u64::from(self.permits), |info| info.available))
    }

    /// How many permits this handle's owner holds on the server now.
    pub async fn held(&self) -> Result<u64, Error> {
        Ok(self
            .handle
            .info()
            .await?
            .map_or(0, |info| info.held_by(&self.handle.owner)))
    }

    /// Removes every holder's permits (`LOCK.FORCERELEASE key`,
    /// administrative). Returns whether there were any. This handle's own
    /// guards know at once; other holders' watchdogs learn it at their next
    /// renewal.
    pub async fn force_release(&self) -> Result<bool, Error> {
        self.handle.force_release(None).await
    }

    /// Removes only `owner`'s permits (`LOCK.FORCERELEASE key owner`), e.g.
    /// to evict a dead holder; the queue is served with the freed permits.
    /// Returns whether it held any. Given this handle's own owner, its
    /// guards are lost at once.
    pub async fn force_release_owner(&self, owner: &str) -> Result<bool, Error> {
        self.handle.force_release(Some(owner)).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::{sleep, Instant};

    use crate::mock::{flat, info_fields, map, ms, semaphore_info, Answer, Mock};
    use crate::{AcquireOptions, Error, LeaseLost, Mode, Wait};

    fn ttl300() -> AcquireOptions {
        AcquireOptions::new().ttl(ms(300))
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_sends_limit_and_count_and_the_guard_releases_its_count() {
        let mock = Mock::granting();
        let sem = mock.client().semaphore("k", 5);
        let guard = sem.acquire(2, ttl300()).await.unwrap().unwrap();
        assert_eq!(guard.token(), 7);
        assert!(guard.release().await.unwrap());
        let one = sem.try_acquire(1).await.unwrap().unwrap();
        drop(one);
        sleep(ms(10)).await;
        let owner = sem.owner();
        assert_eq!(
            mock.args("LOCK.ACQUIRE"),
            [
                vec!["k", owner, "300", "LIMIT", "5", "COUNT", "2"],
                vec!["k", owner, "30000", "LIMIT", "5", "COUNT", "1"]
            ]
        );
        assert_eq!(
            mock.args("LOCK.RELEASE"),
            [vec!["k", owner, "COUNT", "2"], vec!["k", owner]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn guards_of_one_handle_share_one_lease_and_release_only_their_permits() {
        let mock = Mock::granting();
        let sem = mock.client().semaphore("k", 5);
        let two = sem.acquire(2, ttl300()).await.unwrap().unwrap();
        let three = sem.acquire(3, ttl300()).await.unwrap().unwrap();
        assert_eq!(two.token(), three.token());
        sleep(ms(250)).await;
        // One watchdog for both (every 100 ms).
        assert_eq!(mock.sent("LOCK.RENEW").len(), 2);
        mock.on("LOCK.RELEASE", [Answer::Int(3), Answer::Int(0)]);
        assert!(two.release().await.unwrap());
        sleep(ms(1000)).await;
        assert!(!three.is_lost(), "the other guard's release left it held");
        assert_eq!(mock.sent("LOCK.RENEW").len(), 12);
        assert!(three.release().await.unwrap());
        let owner = sem.owner();
        assert_eq!(
            mock.args("LOCK.RELEASE"),
            [["k", owner, "COUNT", "2"], ["k", owner, "COUNT", "3"]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn more_permits_refused_leave_the_held_ones_held() {
        let mock = Mock::granting();
        let sem = mock.client().semaphore("k", 3);
        let guard = sem.acquire(2, ttl300()).await.unwrap().unwrap();
        mock.on("LOCK.ACQUIRE", [Answer::Nil]);
        assert!(sem.acquire(2, ttl300()).await.unwrap().is_none());
        assert!(!guard.is_lost());
        sleep(ms(350)).await;
        assert!(!guard.is_lost());
        assert!(guard.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn counts_outside_the_permits_are_refused_before_sending() {
        let mock = Mock::granting();
        let client = mock.client();
        let sem = client.semaphore("k", 3);
        for n in [0, 4] {
            assert!(matches!(
                sem.try_acquire(n).await,
                Err(Error::InvalidOptions(_))
            ));
        }
        for permits in [0, 1_000_001] {
            assert!(matches!(
                client.semaphore("k", permits).try_acquire(1).await,
                Err(Error::InvalidOptions(_))
            ));
        }
        assert!(client
            .semaphore("k", 1_000_000)
            .try_acquire(1_000_000)
            .await
            .unwrap()
            .is_some());
        assert_eq!(mock.log(), ["LOCK.ACQUIRE"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_acquire_does_not_hold_up_the_release_of_the_handles_guards() {
        let mock = Mock::granting();
        let sem = mock.client().semaphore("k", 3);
        let held = sem.acquire(2, ttl300()).await.unwrap().unwrap();
        // The next acquire needs those permits back; it is granted 200 ms
        // later (a re-entry on the server: the same token).
        mock.on("LOCK.ACQUIRE", [Answer::Late(ms(200), 7)]);
        let t0 = Instant::now();
        let waiting = tokio::spawn({
            let sem = sem.clone();
            async move { sem.acquire(3, ttl300().wait(Wait::Forever)).await }
        });
        sleep(ms(10)).await;
        // The server granted the waiter's 3 before this release arrived.
        mock.on("LOCK.RELEASE", [Answer::Int(3), Answer::Int(0)]);
        assert!(held.release().await.unwrap());
        assert_eq!(Instant::now() - t0, ms(10), "not held up by the wait");
        let granted = waiting.await.unwrap().unwrap().unwrap();
        assert_eq!(granted.token(), 7);
        // The 3 permits still held for the waiter were not cleared as
        // leftovers.
        assert_eq!(mock.args("LOCK.RELEASE").len(), 1);
        assert!(!granted.is_lost());
        sleep(ms(350)).await;
        assert!(!granted.is_lost());
        assert!(granted.release().await.unwrap());
        assert_eq!(
            mock.args("LOCK.RELEASE")[1],
            ["k", sem.owner(), "COUNT", "3"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_of_more_than_the_server_counts_marks_the_lease_lost() {
        let mock = Mock::granting();
        let sem = mock.client().semaphore("k", 5);
        let two = sem.acquire(2, ttl300()).await.unwrap().unwrap();
        let one = sem.acquire(1, ttl300()).await.unwrap().unwrap();
        mock.on(
            "LOCK.RELEASE",
            [Answer::Error(
                "ERR COUNT is more than the owner holds (1); nothing changed",
            )],
        );
        assert!(matches!(two.release().await, Err(Error::Redis(_))));
        assert_eq!(one.lost().await, LeaseLost::NotHeld);
        assert!(!one.release().await.unwrap());
        assert_eq!(mock.sent("LOCK.RELEASE").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn info_available_and_held_read_the_semaphore_in_both_protocols() {
        let mock = Mock::granting();
        let sem = mock.client().semaphore("k", 5);
        let owner = sem.owner().to_string();
        let of = [(owner.as_str(), 3), ("other", 1)];
        mock.on(
            "LOCK.INFO",
            [
                Answer::Reply(semaphore_info(map, 5, &of)),
                Answer::Reply(semaphore_info(flat, 5, &of)),
                Answer::Reply(semaphore_info(flat, 5, &of)),
                Answer::Nil,
                Answer::Reply(map(info_fields("u:1", 1))),
            ],
        );
        let info = sem.info().await.unwrap().unwrap();
        assert_eq!((info.limit, info.available, info.waiters), (5, 1, 1));
        assert_eq!(info.holders.len(), 2);
        assert_eq!(sem.available().await.unwrap(), 1);
        assert_eq!(sem.held().await.unwrap(), 3);
        assert_eq!(sem.available().await.unwrap(), 5, "nobody holds any");
        assert!(matches!(
            sem.info().await,
            Err(Error::WrongKind {
                found: Mode::Exclusive
            })
        ));
    }
}
