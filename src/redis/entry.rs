//! The `extern "C"` entry points Redis calls on its own, and their
//! registration: the data type's methods, server events and the `INFO lock`
//! section. Each converts its arguments and calls one safe function of the
//! layer it serves (`datatype`, `events`, `metrics`).

use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::ptr;

use redis_module::logging::{self, RedisLogLevel};
use redis_module::{raw, Context, InfoContext, RedisResult, RedisString};

use super::calls::{self, RdbReader, RdbWriter, ERR, OK};
use super::string_bytes;
use crate::rules::lock::Lock;
use crate::{commands, datatype, events, expiry, metrics, state};

// ------------------------------------------------------------- the commands

/// A command as the command layer writes it: the context and the arguments
/// (the command name first).
type Command = fn(&Context, &[RedisString]) -> RedisResult;

/// Runs `command` on the arguments Redis passed, borrowed for the call:
/// redis-module's own dispatch retains and frees every argument and
/// collects them into a fresh vector, ~500 instructions a call.
fn dispatch(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
    command: Command,
) -> c_int {
    let context = Context::new(ctx);
    let n = usize::try_from(argc).unwrap_or(0);
    let raw_args: &[*mut raw::RedisModuleString] = if argv.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: Redis passes `argc` valid string pointers in `argv`, alive
        // and unchanged until the command returns.
        unsafe { std::slice::from_raw_parts(argv, n) }
    };
    // Wrapped without retaining them (Redis owns them); never dropped, so
    // never freed by us: each is forgotten below.
    let args: smallvec::SmallVec<[RedisString; 12]> = raw_args
        .iter()
        .map(|&a| RedisString::from_redis_module_string(ctx, a))
        .collect();
    let reply = command(&context, &args);
    args.into_iter().for_each(std::mem::forget);
    context.reply(reply) as c_int
}

macro_rules! command_entry {
    ($name:ident, $command:path) => {
        extern "C" fn $name(
            ctx: *mut raw::RedisModuleCtx,
            argv: *mut *mut raw::RedisModuleString,
            argc: c_int,
        ) -> c_int {
            dispatch(ctx, argv, argc, $command)
        }
    };
}

command_entry!(acquire_entry, commands::acquire);
command_entry!(renew_entry, commands::renew);
command_entry!(release_entry, commands::release);
command_entry!(force_release_entry, commands::force_release);
command_entry!(info_entry, commands::info);
command_entry!(apply_entry, commands::apply);

/// Registers the `LOCK.*` commands (name, entry point, flags; the key is
/// always the first argument); call once from the module's init.
pub fn register_commands(ctx: &Context) -> bool {
    // SAFETY: reading a function pointer Redis filled in at module load.
    let Some(create) = (unsafe { raw::RedisModule_CreateCommand }) else {
        return false;
    };
    let table: [(&CStr, raw::RedisModuleCmdFunc, &CStr); 6] = [
        (c"lock.acquire", Some(acquire_entry), c"write deny-oom"),
        (c"lock.renew", Some(renew_entry), c"write fast"),
        (c"lock.release", Some(release_entry), c"write fast"),
        (c"lock.forcerelease", Some(force_release_entry), c"write"),
        (c"lock.info", Some(info_entry), c"readonly fast"),
        (c"lock.apply", Some(apply_entry), c"write"),
    ];
    table.into_iter().all(|(name, entry, flags)| {
        // SAFETY: the init context; NUL-terminated name and flags that
        // outlive the call; `entry` matches the command function type.
        unsafe { create(ctx.ctx, name.as_ptr(), entry, flags.as_ptr(), 1, 1, 1) == OK }
    })
}

// ------------------------------------------------------------- the data type

/// The data type's callbacks, handed to `RedisModule_CreateDataType`.
pub const fn type_methods() -> raw::RedisModuleTypeMethods {
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: Some(aof_rewrite),
        mem_usage: Some(mem_usage),
        digest: Some(digest),
        free: Some(free),
        aux_load: Some(aux_load),
        aux_save: Some(aux_save),
        aux_save_triggers: raw::REDISMODULE_AUX_BEFORE_RDB as i32,
        free_effort: None,
        unlink: None,
        copy: None,
        defrag: None,
        mem_usage2: None,
        free_effort2: None,
        unlink2: Some(unlink),
        copy2: None,
        aux_save2: None,
    }
}

/// The value behind a type callback's pointer.
///
/// # Safety
/// `value` must be null or a value of the lock type, which this module
/// always stores as a boxed `Lock`, alive for `'a`.
unsafe fn lock_at<'a>(value: *const c_void) -> Option<&'a Lock> {
    // SAFETY: as the caller guarantees.
    unsafe { value.cast::<Lock>().as_ref() }
}

extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    let lock = match datatype::load(&mut RdbReader(rdb), encver) {
        Ok(lock) => lock,
        Err(e) => {
            // Redis reports the key (RESTORE answers an error; a file or a
            // full sync is reported as corrupt); say why here. A RESTORE
            // can be sent by anyone, so it is not worth a warning each time.
            let level = if state::is_loading() {
                RedisLogLevel::Warning
            } else {
                RedisLogLevel::Verbose
            };
            let why = format!("fencelock: refused a lock value: {e}");
            logging::log_io_error(rdb, level, &why);
            return ptr::null_mut();
        }
    };
    // Outside of loading this is RESTORE (e.g. MIGRATE into this node):
    // track the arriving lease under its key.
    if !state::is_loading() {
        // SAFETY: reading function pointers Redis filled in at module load.
        let names = unsafe {
            (
                raw::RedisModule_GetKeyNameFromIO,
                raw::RedisModule_GetDbIdFromIO,
            )
        };
        if let (Some(name_of), Some(db_of)) = names {
            // SAFETY: `rdb` is this callback's I/O context.
            let (name, db) = unsafe { (name_of(rdb), db_of(rdb)) };
            if !name.is_null() {
                // SAFETY: the key name lives at least as long as this call.
                let key = unsafe { string_bytes(name) };
                events::on_lock_restored(db, key, &lock);
            }
        }
    }
    Box::into_raw(Box::new(lock)).cast::<c_void>()
}

extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    // SAFETY: Redis hands this callback a value of the lock type.
    if let Some(lock) = unsafe { lock_at(value) } {
        datatype::save(&mut RdbWriter(rdb), lock);
    }
}

extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, encver: c_int, when: c_int) -> c_int {
    match datatype::aux_load(&mut RdbReader(rdb), encver, when) {
        Ok(()) => OK,
        Err(e) => {
            let why = format!("fencelock: refused the token field of the RDB file: {e}");
            logging::log_io_error(rdb, RedisLogLevel::Warning, &why);
            ERR
        }
    }
}

extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, when: c_int) {
    datatype::aux_save(&RdbWriter(rdb), when);
}

extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    // SAFETY: Redis hands this callback a value of the lock type.
    if let Some(lock) = unsafe { lock_at(value) } {
        calls::emit_apply(aof, key, lock, state::wall_offset());
    }
}

extern "C" fn mem_usage(value: *const c_void) -> usize {
    // SAFETY: Redis hands this callback a value of the lock type.
    unsafe { lock_at(value) }.map_or(0, Lock::mem_usage)
}

extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    // SAFETY: Redis hands this callback a value of the lock type.
    if let Some(lock) = unsafe { lock_at(value) } {
        calls::digest_lock(md, lock, state::wall_offset());
    }
}

extern "C" fn free(value: *mut c_void) {
    if value.is_null() {
        return;
    }
    // May run on a background thread (lazyfree): drop memory and count,
    // nothing else.
    events::on_lock_freed(value as usize);
    // SAFETY: every value of the lock type is a `Box<Lock>` made by this
    // module; Redis frees each once.
    drop(unsafe { Box::from_raw(value.cast::<Lock>()) });
    metrics::lock_freed();
}

/// A lock value leaves the keyspace (DEL, UNLINK, overwrite, expiry of a
/// native TTL, eviction, the source side of RENAME and MOVE, and the
/// module's own deletions). Main thread, inside the deleting command.
extern "C" fn unlink(ctx: *mut raw::RedisModuleKeyOptCtx, value: *const c_void) {
    // SAFETY: reading function pointers Redis filled in at module load.
    let names = unsafe {
        (
            raw::RedisModule_GetKeyNameFromOptCtx,
            raw::RedisModule_GetDbIdFromOptCtx,
        )
    };
    let (Some(name_of), Some(db_of)) = names else {
        return;
    };
    // SAFETY: Redis hands this callback a value of the lock type.
    let Some(lock) = (unsafe { lock_at(value) }) else {
        return;
    };
    // SAFETY: `ctx` is this callback's key context.
    let (name, db) = unsafe { (name_of(ctx), db_of(ctx)) };
    if name.is_null() {
        return;
    }
    // SAFETY: the key name lives at least as long as this call.
    let key = unsafe { string_bytes(name) };
    let first_token = lock.holders.first().map_or(0, |h| h.token);
    events::on_lock_unlinked(db, key, value as usize, first_token);
}

// ------------------------------------------------------------ server events

/// `REDISMODULE_SUBEVENT_*` values used below (stable across Redis 6/7).
const ROLE_NOW_MASTER: u64 = 0;
const LOADING_ENDED: u64 = 3;
const LOADING_FAILED: u64 = 4;
const FLUSH_END: u64 = 1;

extern "C" fn on_role_changed(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut c_void,
) {
    events::on_role_changed(&Context::new(ctx), sub == ROLE_NOW_MASTER);
}

extern "C" fn on_loading(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut c_void,
) {
    if sub == LOADING_ENDED || sub == LOADING_FAILED {
        events::on_loading_ended(&Context::new(ctx));
    } else {
        events::on_loading_started();
    }
}

extern "C" fn on_flush(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    data: *mut c_void,
) {
    if sub != FLUSH_END || data.is_null() {
        return;
    }
    // SAFETY: for the flush event, `data` is a `RedisModuleFlushInfoV1`
    // (the version subscribed to), alive during the callback.
    let info = unsafe { &*data.cast::<raw::RedisModuleFlushInfoV1>() };
    let db = (info.dbnum >= 0).then_some(info.dbnum);
    events::on_flushed(&Context::new(ctx), db);
}

extern "C" fn on_swapdb(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    _sub: u64,
    data: *mut c_void,
) {
    if data.is_null() {
        return;
    }
    // SAFETY: for the swapdb event, `data` is a `RedisModuleSwapDbInfoV1`
    // (the version subscribed to), alive during the callback.
    let info = unsafe { &*data.cast::<raw::RedisModuleSwapDbInfoV1>() };
    events::on_swapdb(&Context::new(ctx), info.dbnum_first, info.dbnum_second);
}

extern "C" fn on_cron(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    _sub: u64,
    _data: *mut c_void,
) {
    expiry::on_cron(&Context::new(ctx));
}

extern "C" fn on_info(ictx: *mut raw::RedisModuleInfoCtx, _for_crash_report: c_int) {
    metrics::write_info(&InfoContext::new(ictx));
}

/// Subscribes to the server events the module reacts to and registers the
/// `INFO lock` section; call once from the module's init.
pub fn register(ctx: &Context) -> bool {
    // SAFETY: reading function pointers Redis filled in at module load.
    let (Some(subscribe), Some(register_info)) = (unsafe {
        (
            raw::RedisModule_SubscribeToServerEvent,
            raw::RedisModule_RegisterInfoFunc,
        )
    }) else {
        return false;
    };
    let events: [(u64, raw::RedisModuleEventCallback); 5] = [
        (
            raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
            Some(on_role_changed),
        ),
        (raw::REDISMODULE_EVENT_LOADING, Some(on_loading)),
        (raw::REDISMODULE_EVENT_FLUSHDB, Some(on_flush)),
        (raw::REDISMODULE_EVENT_SWAPDB, Some(on_swapdb)),
        (raw::REDISMODULE_EVENT_CRON_LOOP, Some(on_cron)),
    ];
    let subscribed = events.into_iter().all(|(id, cb)| {
        let event = raw::RedisModuleEvent { id, dataver: 1 };
        // SAFETY: `ctx.ctx` is the init context; each callback matches the
        // event callback signature and reads only data of version 1.
        unsafe { subscribe(ctx.ctx, event, cb) == OK }
    });
    // SAFETY: the init context; `on_info` matches the info callback type.
    subscribed && unsafe { register_info(ctx.ctx, Some(on_info)) == OK }
}
