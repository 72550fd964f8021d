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
//! - [`AcquireOptions`]: ttl, [`Wait`], watchdog, renewal interval, safety
//!   margin, replica acknowledgement.
//! - [`Guard`]: the fencing token, [`Guard::lost`], [`Guard::remaining`],
//!   [`Guard::release`]; release on drop.
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
// the acquire options and the lease parameters they yield; `LockInfo`.
mod error;
mod info;
mod options;

// The wire: the module's commands and the checks on their replies
// (docs/INTERFACE.md); the `Connection` trait and a client's connections
// (shared, and dedicated for acquires that block).
mod commands;
mod connection;

// One lease as the client knows it: the local deadline, the guard count and
// the "lost" signal (bookkeeping, no I/O).
mod lease;

// What a lock handle's clones, guards and watchdogs share: key, owner,
// connections, the current lease, and the renew/release requests.
mod handle;

// The two users of a handle: the guard (token, lost, release) and the
// watchdog task that renews a lease.
mod guard;
mod watchdog;

// The public handle: acquire in its steps, and the calls that look at or
// clear the lock on the server.
mod lock;

// The entry point: the client and its builder, which hand out lock handles.
mod client;

#[cfg(test)]
mod mock;

pub use client::{Client, ClientBuilder};
pub use connection::Connection;
pub use error::{Error, LeaseLost};
pub use guard::Guard;
pub use info::LockInfo;
pub use lock::Lock;
pub use options::{AcquireOptions, Wait};
