//! Async Rust client for the fencelock Redis module: lock guards whose
//! watchdog renews the lease while the work goes on, and that say when the
//! lease is lost.
//!
//! ```no_run
//! use fencelock_client::{AcquireOptions, Client};
//!
//! # async fn do_long_work(_token: u64) {}
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("redis://127.0.0.1:6379/").await?;
//! let lock = client.lock("jobs:nightly");
//! let Some(guard) = lock.acquire(AcquireOptions::new()).await? else {
//!     return Ok(()); // someone else runs it
//! };
//! tokio::select! {
//!     _ = do_long_work(guard.token()) => { guard.release().await?; }
//!     reason = guard.lost() => eprintln!("stopped: lock lost ({reason})"),
//! }
//! # Ok(()) }
//! ```
//!
//! - [`Client`]: a random UUID and its connections —
//!   [`Client::connect`] for one server, or [`Client::builder`] over any
//!   [`Connection`] (e.g. `ConnectionManager` or
//!   `cluster_async::ClusterConnection`).
//! - [`Lock`]: a handle on one key with its own owner string `<uuid>:<n>`;
//!   it re-enters, other handles are excluded. [`Lock::acquire`],
//!   [`Lock::try_acquire`]; the lock on the server: [`Lock::info`]
//!   ([`LockInfo`]), [`Lock::is_locked`], [`Lock::hold_count`],
//!   [`Lock::force_release`].
//! - [`RwLock`] ([`Client::rw_lock`]): a read/write lock handle, one owner
//!   for its [`read`](RwLock::read) ([`ReadLock`]) and
//!   [`write`](RwLock::write) ([`WriteLock`]) sides: many readers or one
//!   writer; the writer can downgrade, a reader asking to write gets
//!   [`Error::Upgrade`]. [`RwLock::info`] ([`KeyInfo`]).
//! - [`Semaphore`] ([`Client::semaphore`]): `n` of a key's permits per
//!   guard; [`Semaphore::info`] ([`SemaphoreInfo`]),
//!   [`Semaphore::available`].
//! - [`AcquireOptions`]: ttl, [`Wait`], watchdog, renewal interval, safety
//!   margin, replica acknowledgement.
//! - [`Guard`] (the same for all three): the fencing token,
//!   [`Guard::lost`], [`Guard::remaining`], [`Guard::release`] of exactly
//!   what it took; release on drop.
//!
//! Retries: every acquire and release carries an `ID request-id` and is
//! sent again, with the same id, when the connection fails before the
//! answer comes; the server answers a request it has applied instead of
//! applying it twice (no double re-entry, release or set of permits).
//! Acquires without a wait and releases retry for the lease's ttl, waiting
//! acquires until their wait deadline (and at least the ttl). This needs a
//! module that knows `ID` (docs/INTERFACE.md).
//!
//! How the guard knows it lost the lease: the watchdog measures a local
//! deadline from the moment each confirmed renewal was *sent* (the server
//! starts the new lease after that), minus a safety margin. If renewals keep
//! failing — server stopped, network cut — the deadline passes before the
//! server can expire the lease, so the application stops before anyone else
//! can be granted the lock.
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

// The layout, bottom layer first; a module imports only from the layers
// above it (no cycles).
//
// Plain types and their checks, no I/O: the error type and the loss reasons;
// the acquire options and the lease parameters they yield; what `LOCK.INFO`
// shows (`KeyInfo` and its shapes).
mod error;
mod info;
mod options;

// The wire: the module's commands and the checks on their replies
// (docs/INTERFACE.md); the `Connection` trait and a client's connections
// (shared, and dedicated for acquires that block); which failures are sent
// again, for how long, and the request ids that make that safe.
mod commands;
mod connection;
mod retry;

// One lease as the client knows it: the local deadline, its guards and what
// each stands for (`Hold`), and the "lost" signal (bookkeeping, no I/O).
mod lease;

// What a handle's clones, guards and watchdogs share: key, owner,
// connections, the current lease, and the requests on the key (renew,
// release, force-release, info).
mod handle;

// The two users of a handle: the guard (token, lost, release) and the
// watchdog task that renews a lease.
mod guard;
mod watchdog;

// Acquire in its steps (send, check replicas, confirm after a wait, hand out
// the guard), the same for every kind of request.
mod acquire;

// The public handles: the exclusive lock, the read/write lock, the
// semaphore; each acquires through `acquire` and looks at or clears its key.
mod lock;
mod rw_lock;
mod semaphore;

// The entry point: the client and its builder, which hand out handles.
mod client;

#[cfg(test)]
mod mock;

pub use client::{Client, ClientBuilder};
pub use connection::Connection;
pub use error::{Error, LeaseLost};
pub use guard::Guard;
pub use info::{Holder, KeyInfo, LockInfo, Mode, PermitHolder, SemaphoreInfo, SharedInfo};
pub use lock::Lock;
pub use options::{AcquireOptions, Wait};
pub use rw_lock::{ReadLock, RwLock, WriteLock};
pub use semaphore::Semaphore;
