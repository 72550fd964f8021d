//! Every `unsafe` call between the module and Redis, split by direction:
//!
//! - `calls`: safe wrappers the module calls down into (timers, blocking
//!   clients, replication, notifications, keyspace scans, replies, RDB I/O).
//!   Where Redis calls back for such a service (a timer firing, a blocked
//!   client's reply), the wrapper owns the trampoline and calls the plain
//!   Rust function it was handed: nothing in `calls` names the module's
//!   other layers.
//! - `entry`: the `extern "C"` entry points Redis calls on its own — the
//!   data type's methods, server events, the `INFO` section — and their
//!   registration. Each converts its arguments and calls one safe function
//!   of the layer it serves.
//!
//! The one knot: the data type (`datatype::LOCK_TYPE`) is built from
//! `entry::type_methods()`, whose callbacks call back into `datatype` and
//! `events`. Redis needs the type and its callbacks together, so the cycle
//! `datatype → redis::entry → datatype/events` stays; it is confined to
//! these callbacks.

pub mod calls;
pub mod entry;

use redis_module::{raw, RedisString};

/// The bytes of a `RedisModuleString` Redis handed to a callback.
///
/// # Safety
/// `s` must be a valid `RedisModuleString` that outlives `'a` (true for the
/// arguments of the callback it came with, within that callback).
unsafe fn string_bytes<'a>(s: *const raw::RedisModuleString) -> &'a [u8] {
    RedisString::string_as_slice(s)
}
