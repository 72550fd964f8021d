//! fencelock: native distributed locks for Redis.
//!
//! The module table and start-up. The layers, each calling only downward
//! (see docs/ARCHITECTURE.md):
//! - `commands` — one thin function per command; `waiting` — blocked
//!   acquirers; `expiry` — the lease timer; `events` — reactions to the
//!   server (RESTORE, DEL/RENAME/FLUSH/SWAPDB, loading, role changes);
//! - `key` — one lock key: the one place a change is stored, scheduled,
//!   replicated and announced;
//! - `datatype` — the `fencelock` type and its persistence;
//! - `rules` — the pure lock rules (no FFI, unit tests);
//! - `state` — all module-global state; `metrics` — counters, `INFO lock`;
//! - `redis` — every `unsafe` call: `calls` down into Redis, `entry` for
//!   the callbacks Redis makes on its own.

mod commands;
mod datatype;
mod events;
mod expiry;
mod key;
mod metrics;
mod redis;
mod rules;
mod state;
mod waiting;

use redis_module::{redis_module, Context, RedisString, Status};

use crate::datatype::LOCK_TYPE;
use crate::redis::{calls, entry};

/// One start-up step and what to log when it fails.
type InitStep = (fn(&Context) -> bool, &'static str);

/// Runs once when Redis loads the module.
fn init(ctx: &Context, _args: &[RedisString]) -> Status {
    // A panic aborts redis-server; make sure the reason reaches the log.
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("fencelock: panic: {info}");
        // The log call takes a printf format: keep `%` literal; a NUL would
        // make the logger itself panic.
        redis_module::logging::log_warning(msg.replace('%', "%%").replace('\0', "\\0"));
        eprintln!("{msg}");
    }));
    let steps: [InitStep; 4] = [
        (
            entry::register_commands,
            "fencelock: could not register the LOCK.* commands",
        ),
        (
            calls::handle_io_errors,
            "fencelock: could not ask Redis to report RDB read errors to the module",
        ),
        (
            entry::register,
            "fencelock: could not subscribe to server events or register INFO lock",
        ),
        (
            calls::init_detached_context,
            "fencelock: could not create a detached context",
        ),
    ];
    for (step, failure) in steps {
        if !step(ctx) {
            ctx.log_warning(failure);
            return Status::Err;
        }
    }
    state::start_clock();
    events::init_role(ctx);
    ctx.log_notice("fencelock: loaded");
    Status::Ok
}

#[cfg(not(test))]
macro_rules! allocator {
    () => {
        redis_module::alloc::RedisAlloc
    };
}

#[cfg(test)]
macro_rules! allocator {
    () => {
        std::alloc::System
    };
}

redis_module! {
    name: "lock",
    version: 1,
    allocator: (allocator!(), allocator!()),
    data_types: [LOCK_TYPE],
    init: init,
    // The commands are registered by `entry::register_commands` (from `init`),
    // which hands them their arguments without copying them.
    commands: [],
}
