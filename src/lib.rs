//! fencelock: native distributed locks for Redis.
//!
//! The module table: commands, the data type, keyspace-event handling and
//! start-up. Where things live:
//! - `lock`, `schedule`, `queue`, `args`, `encoding`: the pure rules (no
//!   FFI, unit tests);
//! - `commands`, `waiting`: the command layer;
//! - `engine`: storing, expiring, replicating and announcing changes, and
//!   reactions to timers, generic commands and role changes;
//! - `datatype`: the data type and its persistence;
//! - `ffi`: every `unsafe` call into Redis;
//! - `state`, `stats`, `info`: module-global state and `INFO lock`.

mod args;
mod commands;
mod datatype;
mod encoding;
mod engine;
mod ffi;
mod info;
mod lock;
mod queue;
mod schedule;
mod state;
mod stats;
mod waiting;

use redis_module::{redis_module, Context, RedisString, Status};

use crate::datatype::LOCK_TYPE;

/// Runs once when Redis loads the module.
fn init(ctx: &Context, _args: &[RedisString]) -> Status {
    // A panic aborts redis-server; make sure the reason reaches the log.
    std::panic::set_hook(Box::new(|info| {
        // The log call takes a printf format: keep `%` literal.
        let msg = format!("fencelock: panic: {info}").replace('%', "%%");
        redis_module::logging::log_warning(&msg);
        eprintln!("{msg}");
    }));
    if !ffi::handle_io_errors(ctx) {
        ctx.log_warning("fencelock: could not ask Redis to report RDB read errors to the module");
        return Status::Err;
    }
    if !ffi::subscribe_server_events(ctx) {
        ctx.log_warning("fencelock: could not subscribe to server events");
        return Status::Err;
    }
    if !ffi::init_detached_context(ctx) {
        ctx.log_warning("fencelock: could not create a detached context");
        return Status::Err;
    }
    if !ffi::register_info(ctx) {
        ctx.log_warning("fencelock: could not register the INFO section");
        return Status::Err;
    }
    engine::init_role(ctx);
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
    commands: [
        ["lock.acquire", commands::acquire, "write deny-oom", 1, 1, 1, ""],
        ["lock.renew", commands::renew, "write fast", 1, 1, 1, ""],
        ["lock.release", commands::release, "write fast", 1, 1, 1, ""],
        ["lock.forcerelease", commands::force_release, "write", 1, 1, 1, ""],
        ["lock.info", commands::info, "readonly fast", 1, 1, 1, ""],
        ["lock.apply", commands::apply, "write", 1, 1, 1, ""],
    ],
}
