//! [`LockInfo`]: a lock as `LOCK.INFO` shows it.

use std::time::Duration;

/// A lock as the server shows it (`LOCK.INFO`), read by
/// [`Lock::info`](crate::Lock::info). It is a snapshot: by the time you read
/// it, the lock may have changed hands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder's owner string, as text (bytes that are not UTF-8 are
    /// replaced by U+FFFD; the owners of this crate, `<uuid>:<n>`, always
    /// are UTF-8). Compare it with [`Lock::owner`](crate::Lock::owner).
    pub owner: String,
    /// How many holds the owner has (each re-entry adds one).
    pub holds: u64,
    /// What is left of the lease on the server's clock when it answered
    /// (whole milliseconds).
    pub ttl: Duration,
    /// The fencing token of the current grant.
    pub token: u64,
    /// How many acquires wait for the lock in the server's queue.
    pub waiters: u64,
}
