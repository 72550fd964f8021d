//! The one error type of the crate, and the reasons a lease can be lost.

use std::time::Duration;

use crate::info::Mode;

/// What can go wrong when taking or giving back a lock.
///
/// A lock that is simply held by someone else is not an error:
/// [`Lock::acquire`](crate::Lock::acquire) returns `Ok(None)` for that.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection or the server failed (I/O error, timeout, error
    /// reply). Acquires and releases that get no answer are sent again with
    /// the same request id first (for the lease's ttl, or a waiting
    /// acquire's wait); this is the last attempt's error. When it comes from
    /// an acquire, the outcome is unknown: the lock may have been granted;
    /// such a grant is never renewed and expires after its ttl (or is cleared
    /// by the handle's next final release).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),

    /// The options cannot be sent as they are (e.g. a ttl below 1 ms, or a
    /// renewal interval that leaves no time before the local deadline).
    #[error("invalid options: {0}")]
    InvalidOptions(&'static str),

    /// The lock was granted, but fewer replicas than asked acknowledged it
    /// within the timeout; the grant has been released again.
    #[error(
        "only {acked} of {wanted} replicas acknowledged the grant within {timeout:?}; released it"
    )]
    NotDurable {
        /// Replicas that acknowledged (`WAIT`'s reply).
        acked: u64,
        /// Replicas that were asked for.
        wanted: u64,
        /// How long the server waited for them.
        timeout: Duration,
    },

    /// The server answered something the command interface does not allow.
    #[error("unexpected reply to {command}: {reply}")]
    UnexpectedReply {
        /// The command that was answered.
        command: &'static str,
        /// The reply, as debug text.
        reply: String,
    },

    /// The call was made outside a tokio runtime; the watchdog needs one to
    /// run on.
    #[error("no tokio runtime: the watchdog runs as a tokio task")]
    NoRuntime,

    /// The write side of an [`RwLock`](crate::RwLock) was asked for while
    /// its handle holds the lock shared only (read guards, no write guard):
    /// the server refuses an upgrade, because two readers upgrading at once
    /// would wait for each other forever. Nothing changed: the read guards
    /// still hold. Release them first, then take the write lock. (The server
    /// also refuses while it still counts read holds of a lease this handle
    /// gave up as lost; those expire after their ttl.)
    #[error(
        "the handle holds this lock shared: release the read guards before taking the write lock"
    )]
    Upgrade,

    /// The key holds another kind of lock than the call reads (e.g.
    /// [`Semaphore::info`](crate::Semaphore::info) on a read/write lock).
    /// Acquiring a key of another kind fails with the server's `WRONGTYPE`
    /// error instead ([`Error::Redis`]).
    #[error("the key holds a lock of another kind ({found})")]
    WrongKind {
        /// What the key holds.
        found: Mode,
    },
}

/// Why a lease is known to be lost. Once lost, a lease stays lost: its
/// watchdog has stopped, and its guards never send `LOCK.RELEASE` again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseLost {
    /// The server said this owner does not hold the lock (a renewal
    /// answered 0, or a re-entry found it gone): it expired, was
    /// force-released or deleted, and may belong to someone else now.
    #[error("the server says the lock is no longer held by this owner")]
    NotHeld,
    /// No renewal succeeded before the local deadline (the send time of the
    /// last successful renewal + ttl − safety margin). The server may still
    /// hold the lease for a moment, but it expires by itself before anyone
    /// else can be granted the lock.
    #[error("no renewal was confirmed before the local deadline")]
    Unconfirmed,
    /// The watchdog is off and the lease's ttl has run out (local deadline).
    #[error("the lease ran out (watchdog off)")]
    Expired,
}
