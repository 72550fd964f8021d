//! [`RwLock`]: a read/write lock handle on one key with one owner string,
//! its two sides [`ReadLock`] and [`WriteLock`] (acquiring `SHARED` or
//! exclusive; the steps are in `acquire`), and the calls that look at or
//! clear the lock on the server.

use std::fmt;
use std::sync::Arc;

use crate::acquire;
use crate::commands::{show, Request};
use crate::connection::{Connection, Connections};
use crate::error::Error;
use crate::guard::Guard;
use crate::handle::Handle;
use crate::info::KeyInfo;
use crate::options::AcquireOptions;

/// A read/write lock handle: one key, one owner string
/// (`<client uuid>:<n>`), two sides — [`read`](Self::read) (shared, any
/// number of readers) and [`write`](Self::write) (exclusive).
///
/// Take it from [`Client::rw_lock`](crate::Client::rw_lock). Both sides of
/// one handle (and its clones) are one owner on the server, so:
///
/// - reading or writing again through the handle re-enters (holds + 1, same
///   token), and all its guards share one lease, one watchdog and one
///   [`lost`](Guard::lost) signal;
/// - the write holder can take the read side: that is the **downgrade** —
///   release the write guard and the handle goes on holding the lock
///   shared, with the same token, without letting a writer in between;
/// - a handle that holds only read guards asking for the write side gets
///   [`Error::Upgrade`] (the server refuses upgrades: two readers upgrading
///   at once would wait for each other forever); nothing changes.
///
/// A read is granted at once when nobody holds the key exclusively and
/// nobody waits (a queued writer is never overtaken by later readers).
/// Other handles — of this client or any other — are other owners. A
/// [`Lock`](crate::Lock) on the same key is the same exclusive lock as the
/// write side.
///
/// ```no_run
/// use fencelock_client::{AcquireOptions, Client};
///
/// # async fn run() -> Result<(), fencelock_client::Error> {
/// let client = Client::connect("redis://127.0.0.1:6379/").await?;
/// let config = client.rw_lock("config");
/// if let Some(write) = config.write().acquire(AcquireOptions::new()).await? {
///     // ... write the config under write.token() ...
///     // Downgrade: take the read side, then let the write side go.
///     let read = config.read().try_acquire().await?.expect("re-entry");
///     write.release().await?;
///     // ... readers may join now; writers wait ...
///     read.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RwLock<C> {
    handle: Arc<Handle<C>>,
}

impl<C> fmt::Debug for RwLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock")
            .field("key", &show(&self.handle.key))
            .field("owner", &self.handle.owner)
            .finish_non_exhaustive()
    }
}

impl<C: Connection> RwLock<C> {
    pub(crate) fn new(connections: Arc<Connections<C>>, key: Vec<u8>, owner: String) -> Self {
        Self {
            handle: Arc::new(Handle::new(connections, key, owner)),
        }
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.handle.key
    }

    /// The owner string sent to the server for both sides:
    /// `<client uuid>:<n>`.
    pub fn owner(&self) -> &str {
        &self.handle.owner
    }

    /// The read (shared) side of this handle.
    pub fn read(&self) -> ReadLock<C> {
        ReadLock {
            handle: Arc::clone(&self.handle),
        }
    }

    /// The write (exclusive) side of this handle.
    pub fn write(&self) -> WriteLock<C> {
        WriteLock {
            handle: Arc::clone(&self.handle),
        }
    }

    /// The key as the server shows it now (`LOCK.INFO`): the exclusive
    /// holder ([`KeyInfo::Exclusive`]) or the readers ([`KeyInfo::Shared`]),
    /// whoever holds it; `None` when nobody does.
    pub async fn info(&self) -> Result<Option<KeyInfo>, Error> {
        self.handle.info().await
    }

    /// Whether anyone holds the key now, in any mode.
    pub async fn is_locked(&self) -> Result<bool, Error> {
        Ok(self.handle.info().await?.is_some())
    }

    /// How many holds this handle's owner has on the server now, exclusive
    /// and shared together: 0 when it holds nothing.
    pub async fn hold_count(&self) -> Result<u64, Error> {
        Ok(self
            .handle
            .info()
            .await?
            .map_or(0, |info| info.held_by(&self.handle.owner)))
    }

    /// Removes every hold on the key, whoever holds it
    /// (`LOCK.FORCERELEASE key`, administrative); the server serves its
    /// queue. Returns whether there was anything to remove. This handle's
    /// own guards know at once (they are lost and send no release); other
    /// holders' watchdogs learn it at their next renewal.
    pub async fn force_release(&self) -> Result<bool, Error> {
        self.handle.force_release(None).await
    }

    /// Removes only `owner`'s holds (`LOCK.FORCERELEASE key owner`), e.g.
    /// to evict a dead reader; the others keep theirs. Returns whether it
    /// held anything. Given this handle's own owner, its guards are lost at
    /// once.
    pub async fn force_release_owner(&self, owner: &str) -> Result<bool, Error> {
        self.handle.force_release(Some(owner)).await
    }
}

/// The read side of an [`RwLock`], from [`RwLock::read`]: acquires
/// `LOCK.ACQUIRE key owner ttl SHARED [WAIT ms]`.
#[derive(Clone)]
pub struct ReadLock<C> {
    handle: Arc<Handle<C>>,
}

impl<C> fmt::Debug for ReadLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadLock")
            .field("key", &show(&self.handle.key))
            .field("owner", &self.handle.owner)
            .finish_non_exhaustive()
    }
}

impl<C: Connection> ReadLock<C> {
    /// The owner string (the handle's).
    pub fn owner(&self) -> &str {
        &self.handle.owner
    }

    /// Takes a read hold, as `options` say: `Ok(Some(guard))` when granted,
    /// `Ok(None)` when a writer holds the key or waits for it (after the
    /// wait, if one was asked for). When the handle holds the key already —
    /// shared or exclusive — it re-enters at once and joins the handle's
    /// lease, as [`Lock::acquire`](crate::Lock::acquire) describes.
    pub async fn acquire(&self, options: AcquireOptions) -> Result<Option<Guard<C>>, Error> {
        acquire::acquire(&self.handle, Request::Shared, options).await
    }

    /// `acquire(AcquireOptions::new())`: one try, ttl 30 s, watchdog on.
    pub async fn try_acquire(&self) -> Result<Option<Guard<C>>, Error> {
        self.acquire(AcquireOptions::new()).await
    }
}

/// The write side of an [`RwLock`], from [`RwLock::write`]: acquires
/// `LOCK.ACQUIRE key owner ttl [WAIT ms]`, the exclusive lock.
#[derive(Clone)]
pub struct WriteLock<C> {
    handle: Arc<Handle<C>>,
}

impl<C> fmt::Debug for WriteLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteLock")
            .field("key", &show(&self.handle.key))
            .field("owner", &self.handle.owner)
            .finish_non_exhaustive()
    }
}

impl<C: Connection> WriteLock<C> {
    /// The owner string (the handle's).
    pub fn owner(&self) -> &str {
        &self.handle.owner
    }

    /// Takes the write lock, as `options` say: `Ok(Some(guard))` when
    /// granted, `Ok(None)` when others hold the key (after the wait, if one
    /// was asked for). When the handle holds it exclusively already, it
    /// re-enters. When the handle holds it shared only, the server refuses:
    /// [`Error::Upgrade`], and the read guards keep their holds.
    pub async fn acquire(&self, options: AcquireOptions) -> Result<Option<Guard<C>>, Error> {
        acquire::acquire(&self.handle, Request::Exclusive, options).await
    }

    /// `acquire(AcquireOptions::new())`: one try, ttl 30 s, watchdog on.
    pub async fn try_acquire(&self) -> Result<Option<Guard<C>>, Error> {
        self.acquire(AcquireOptions::new()).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::sleep;

    use crate::mock::{flat, info_fields, map, ms, shared_info, Answer, Mock, UPGRADE};
    use crate::{AcquireOptions, Error, KeyInfo, LeaseLost, Mode, Wait};

    fn ttl300() -> AcquireOptions {
        AcquireOptions::new().ttl(ms(300))
    }

    #[tokio::test(start_paused = true)]
    async fn read_sends_shared_and_write_no_option_with_the_one_owner() {
        let mock = Mock::granting();
        let rw = mock.client().rw_lock("k");
        let read = rw.read().acquire(ttl300()).await.unwrap().unwrap();
        assert!(read.release().await.unwrap());
        let options = ttl300().wait(Wait::For(ms(50)));
        let write = rw.write().acquire(options).await.unwrap().unwrap();
        assert!(write.release().await.unwrap());
        let owner = rw.owner();
        assert_eq!(
            mock.args("LOCK.ACQUIRE"),
            [
                vec!["k", owner, "300", "SHARED"],
                vec!["k", owner, "300", "WAIT", "50"]
            ]
        );
        // Each guard released its one hold (no COUNT).
        assert_eq!(mock.args("LOCK.RELEASE"), [["k", owner], ["k", owner]]);
    }

    #[tokio::test(start_paused = true)]
    async fn downgrade_joins_the_write_lease_and_survives_the_write_release() {
        let mock = Mock::granting();
        let rw = mock.client().rw_lock("k");
        let write = rw.write().acquire(ttl300()).await.unwrap().unwrap();
        // The re-entry asks for 30 s, but joins the 300 ms lease.
        let read = rw.read().try_acquire().await.unwrap().unwrap();
        assert_eq!(read.token(), write.token());
        mock.on("LOCK.RELEASE", [Answer::Int(1), Answer::Int(0)]);
        assert!(write.release().await.unwrap());
        assert_eq!(mock.args("LOCK.RELEASE"), [["k", rw.owner()]]);
        // One watchdog renews the read hold on (every 100 ms).
        sleep(ms(350)).await;
        assert!(!read.is_lost());
        assert_eq!(mock.sent("LOCK.RENEW").len(), 3);
        assert!(read.release().await.unwrap());
        sleep(ms(350)).await;
        assert_eq!(mock.sent("LOCK.RENEW").len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_guard_released_under_the_write_guard_goes_with_the_write_release() {
        let mock = Mock::granting();
        let rw = mock.client().rw_lock("k");
        let write = rw.write().acquire(ttl300()).await.unwrap().unwrap();
        let read = rw.read().try_acquire().await.unwrap().unwrap();
        // Sending it now would release the exclusive hold.
        assert!(read.release().await.unwrap());
        assert!(mock.sent("LOCK.RELEASE").is_empty());
        assert!(!write.is_lost());
        assert!(write.release().await.unwrap());
        assert_eq!(mock.args("LOCK.RELEASE"), [["k", rw.owner(), "COUNT", "2"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_asking_to_write_gets_the_upgrade_error_and_keeps_its_read() {
        let mock = Mock::granting();
        let rw = mock.client().rw_lock("k");
        let read = rw.read().acquire(ttl300()).await.unwrap().unwrap();
        mock.on("LOCK.ACQUIRE", [Answer::Error(UPGRADE)]);
        let refused = rw.write().acquire(ttl300()).await;
        assert!(matches!(refused, Err(Error::Upgrade)), "{refused:?}");
        // Also through the pipeline of a durable acquire.
        mock.on("WAIT", [Answer::Int(1)]);
        let refused = rw.write().acquire(ttl300().replicas(1, ms(10))).await;
        assert!(matches!(refused, Err(Error::Upgrade)), "{refused:?}");
        sleep(ms(250)).await;
        assert!(!read.is_lost());
        assert_eq!(mock.sent("LOCK.RENEW").len(), 2);
        assert!(read.release().await.unwrap());
        assert_eq!(mock.sent("LOCK.RELEASE").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_reentry_refused_means_the_lease_was_lost() {
        let mock = Mock::granting();
        let rw = mock.client().rw_lock("k");
        let read = rw.read().acquire(ttl300()).await.unwrap().unwrap();
        mock.on("LOCK.ACQUIRE", [Answer::Nil]);
        assert!(rw.read().try_acquire().await.unwrap().is_none());
        assert_eq!(read.lost().await, LeaseLost::NotHeld);
        assert!(!read.release().await.unwrap());
        assert!(mock.sent("LOCK.RELEASE").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn releasing_one_of_two_readers_leaves_the_other_held_and_renewed() {
        let mock = Mock::granting();
        let rw = mock.client().rw_lock("k");
        let first = rw.read().acquire(ttl300()).await.unwrap().unwrap();
        let second = rw.read().acquire(ttl300()).await.unwrap().unwrap();
        mock.on("LOCK.RELEASE", [Answer::Int(1), Answer::Int(0)]);
        assert!(first.release().await.unwrap());
        sleep(ms(1050)).await;
        assert!(!second.is_lost());
        assert_eq!(mock.sent("LOCK.RENEW").len(), 10);
        assert!(second.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn info_and_hold_count_read_readers_in_both_protocols() {
        let mock = Mock::granting();
        let client = mock.client();
        let rw = client.rw_lock("k");
        let owner = rw.owner().to_string();
        let of = [("other", 1), (owner.as_str(), 2)];
        mock.on(
            "LOCK.INFO",
            [
                Answer::Reply(shared_info(map, &of)),
                Answer::Reply(shared_info(flat, &of)),
                Answer::Reply(shared_info(flat, &of)),
                Answer::Reply(shared_info(map, &of)),
                Answer::Reply(map(info_fields(&owner, 3))),
                Answer::Nil,
            ],
        );
        let info = rw.info().await.unwrap().unwrap();
        assert_eq!(info.mode(), Mode::Shared);
        assert_eq!(info, rw.info().await.unwrap().unwrap());
        assert_eq!(rw.hold_count().await.unwrap(), 2);
        // A Lock on the key sees it held, but not in its shape.
        let lock = client.lock("k");
        assert!(matches!(
            lock.info().await,
            Err(Error::WrongKind {
                found: Mode::Shared
            })
        ));
        assert!(matches!(
            rw.info().await.unwrap(),
            Some(KeyInfo::Exclusive(i)) if i.owner == owner
        ));
        assert!(!rw.is_locked().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn force_release_of_the_own_owner_marks_the_guards_lost_and_of_another_does_not() {
        let mock = Mock::granting();
        let rw = mock.client().rw_lock("k");
        let read = rw.read().acquire(ttl300()).await.unwrap().unwrap();
        mock.on("LOCK.FORCERELEASE", [Answer::Int(1)]);
        assert!(rw.force_release_owner("someone").await.unwrap());
        assert!(!read.is_lost());
        assert!(rw.force_release_owner(rw.owner()).await.unwrap());
        assert_eq!(read.lost().await, LeaseLost::NotHeld);
        assert_eq!(
            mock.args("LOCK.FORCERELEASE"),
            [["k", "someone"], ["k", rw.owner()]]
        );
        assert!(!read.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unacknowledged_read_under_the_write_guard_is_released_with_it() {
        let mock = Mock::granting();
        mock.on("WAIT", [Answer::Int(0)]);
        let rw = mock.client().rw_lock("k");
        let write = rw.write().acquire(ttl300()).await.unwrap().unwrap();
        let refused = rw.read().acquire(ttl300().replicas(1, ms(10))).await;
        assert!(
            matches!(refused, Err(Error::NotDurable { .. })),
            "{refused:?}"
        );
        // Releasing it now would have taken the exclusive hold.
        assert!(mock.sent("LOCK.RELEASE").is_empty());
        assert!(!write.is_lost());
        assert!(write.release().await.unwrap());
        assert_eq!(mock.args("LOCK.RELEASE"), [["k", rw.owner(), "COUNT", "2"]]);
    }
}
