//! What `LOCK.INFO` shows: [`KeyInfo`] for a key of any kind, and its three
//! shapes — [`LockInfo`] (an exclusive holder), [`SharedInfo`] (readers) and
//! [`SemaphoreInfo`] (permit holders) — with the kind itself, [`Mode`].

use std::fmt;
use std::time::Duration;

/// How a key is held: the `mode` field of `LOCK.INFO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// One exclusive (write) holder: a [`Lock`](crate::Lock) or the write
    /// side of an [`RwLock`](crate::RwLock).
    Exclusive,
    /// Read holds of an [`RwLock`](crate::RwLock), no writer.
    Shared,
    /// A [`Semaphore`](crate::Semaphore)'s permits.
    Semaphore,
}

impl Mode {
    /// The name the server uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
            Mode::Semaphore => "semaphore",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lock held exclusively, as the server shows it (`LOCK.INFO`), read by
/// [`Lock::info`](crate::Lock::info). It is a snapshot: by the time you read
/// it, the lock may have changed hands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder's owner string, as text (bytes that are not UTF-8 are
    /// replaced by U+FFFD; the owners of this crate, `<uuid>:<n>`, always
    /// are UTF-8). Compare it with [`Lock::owner`](crate::Lock::owner).
    pub owner: String,
    /// How many holds the owner has (each re-entry adds one; after a
    /// downgrade, its read holds are counted here too).
    pub holds: u64,
    /// What is left of the lease on the server's clock when it answered
    /// (whole milliseconds).
    pub ttl: Duration,
    /// The fencing token of the current grant.
    pub token: u64,
    /// How many acquires wait for the lock in the server's queue.
    pub waiters: u64,
}

/// One reader of a read/write lock held shared.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The reader's owner string, as text (see [`LockInfo::owner`]).
    pub owner: String,
    /// Its read holds.
    pub holds: u64,
    /// What is left of its lease (each reader has its own).
    pub ttl: Duration,
    /// Its fencing token.
    pub token: u64,
}

/// A read/write lock held shared (readers only).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedInfo {
    /// How many acquires wait in the server's queue (a writer waits for all
    /// readers to leave; readers that come after it wait too).
    pub waiters: u64,
    /// The readers, oldest grant first.
    pub holders: Vec<Holder>,
}

/// One holder of a semaphore's permits.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PermitHolder {
    /// The holder's owner string, as text (see [`LockInfo::owner`]).
    pub owner: String,
    /// How many permits it holds.
    pub permits: u64,
    /// What is left of its lease.
    pub ttl: Duration,
    /// Its fencing token.
    pub token: u64,
}

/// A semaphore, as the server shows it; read by
/// [`Semaphore::info`](crate::Semaphore::info).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SemaphoreInfo {
    /// Its permits (the `LIMIT` it was created with).
    pub limit: u64,
    /// Permits nobody holds.
    pub available: u64,
    /// How many acquires wait in the server's queue.
    pub waiters: u64,
    /// The holders, oldest grant first.
    pub holders: Vec<PermitHolder>,
}

/// A key of any kind as `LOCK.INFO` shows it: read by
/// [`RwLock::info`](crate::RwLock::info) (and behind
/// [`Lock::is_locked`](crate::Lock::is_locked) and the `hold_count` calls).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyInfo {
    /// An exclusive holder (`mode` = `exclusive`).
    Exclusive(LockInfo),
    /// Readers (`mode` = `shared`).
    Shared(SharedInfo),
    /// A semaphore (`mode` = `semaphore`).
    Semaphore(SemaphoreInfo),
}

impl KeyInfo {
    /// How the key is held.
    pub fn mode(&self) -> Mode {
        match self {
            KeyInfo::Exclusive(_) => Mode::Exclusive,
            KeyInfo::Shared(_) => Mode::Shared,
            KeyInfo::Semaphore(_) => Mode::Semaphore,
        }
    }

    /// How many acquires wait in the server's queue.
    pub fn waiters(&self) -> u64 {
        match self {
            KeyInfo::Exclusive(i) => i.waiters,
            KeyInfo::Shared(i) => i.waiters,
            KeyInfo::Semaphore(i) => i.waiters,
        }
    }

    /// The owner strings of the holders, oldest grant first.
    pub fn owners(&self) -> Vec<&str> {
        match self {
            KeyInfo::Exclusive(i) => vec![i.owner.as_str()],
            KeyInfo::Shared(i) => i.holders.iter().map(|h| h.owner.as_str()).collect(),
            KeyInfo::Semaphore(i) => i.holders.iter().map(|h| h.owner.as_str()).collect(),
        }
    }

    /// What `owner` holds at the key: its holds (exclusive or shared), or
    /// its permits; 0 when it holds nothing.
    pub fn held_by(&self, owner: &str) -> u64 {
        match self {
            KeyInfo::Exclusive(i) => {
                if i.owner == owner {
                    i.holds
                } else {
                    0
                }
            }
            KeyInfo::Shared(i) => i
                .holders
                .iter()
                .filter(|h| h.owner == owner)
                .map(|h| h.holds)
                .sum(),
            KeyInfo::Semaphore(i) => i
                .holders
                .iter()
                .filter(|h| h.owner == owner)
                .map(|h| h.permits)
                .sum(),
        }
    }
}
