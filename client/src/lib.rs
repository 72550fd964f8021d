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
//! - [`Client`]: a random UUID and a connection (generic: any
//!   `redis::aio::ConnectionLike + Clone + Send + Sync + 'static`, e.g.
//!   `ConnectionManager` or `cluster_async::ClusterConnection`).
//! - [`Lock`]: a handle on one key with its own owner string `<uuid>:<n>`;
//!   it re-enters, other handles are excluded.
//! - [`AcquireOptions`]: ttl, [`Wait`], watchdog, renewal interval, safety
//!   margin, replica acknowledgement.
//! - [`Guard`]: the fencing token, [`Guard::lost`], [`Guard::release`];
//!   release on drop.
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

mod client;
mod commands;
mod error;
mod guard;
mod lease;
mod lock;
mod options;
mod watchdog;

#[cfg(test)]
mod mock;

pub use client::{Client, Connection};
pub use error::{Error, LeaseLost};
pub use guard::Guard;
pub use lock::Lock;
pub use options::{AcquireOptions, Wait};
