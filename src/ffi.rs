//! Every `unsafe` call into Redis that the `redis-module` crate does not wrap
//! (or wraps in a way unfit here) lives in this file: blocking clients,
//! timers, database selection, server-event subscriptions and the data
//! type's I/O helpers. Each `extern "C"` callback only converts its
//! arguments and calls a safe function elsewhere in the module.
//!
//! Every function pointer is checked before use: a missing API is reported
//! as a failure, never unwrapped (a panic here would abort redis-server).

use std::os::raw::{c_int, c_void};
use std::ptr;

use redis_module::logging::RedisLogLevel;
use redis_module::{raw, Context, RedisString};

use crate::{datatype, engine, waiting};

const OK: c_int = raw::REDISMODULE_OK as c_int;
const ERR: c_int = raw::REDISMODULE_ERR as c_int;

// ---------------------------------------------------------------- databases

/// The database the context has selected.
pub fn selected_db(ctx: &Context) -> i32 {
    match unsafe { raw::RedisModule_GetSelectedDb } {
        Some(f) => unsafe { f(ctx.ctx) },
        None => 0,
    }
}

/// Selects a database on the context; false when it does not exist.
pub fn select_db(ctx: &Context, db: i32) -> bool {
    match unsafe { raw::RedisModule_SelectDb } {
        Some(f) => unsafe { f(ctx.ctx, db) == OK },
        None => false,
    }
}

// ------------------------------------------------------------ module setup

/// Asks Redis to report short reads in `rdb_load` as errors the module
/// handles (`RESTORE` then fails, a file is reported corrupt) instead of
/// aborting the server.
pub fn handle_io_errors(ctx: &Context) -> bool {
    match unsafe { raw::RedisModule_SetModuleOptions } {
        Some(f) => {
            unsafe { f(ctx.ctx, raw::REDISMODULE_OPTIONS_HANDLE_IO_ERRORS as c_int) };
            true
        }
        None => false,
    }
}

/// True while Redis pauses writes (`CLIENT PAUSE`, `FAILOVER`, a manual
/// `CLUSTER FAILOVER`, `SHUTDOWN` waiting for replicas): nothing may be
/// written or propagated then (Redis 7.0 asserts it), as Redis itself
/// holds back its own key expiry.
pub fn writes_paused() -> bool {
    match unsafe { raw::RedisModule_AvoidReplicaTraffic } {
        Some(f) => unsafe { f() != 0 },
        None => false,
    }
}

// ------------------------------------------------------------------- timers

/// What a timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum TimerKind {
    /// Expire the leases that are due.
    Expiry = 1,
    /// Look at keys whose lock vanished under their waiters.
    Sweep = 2,
}

extern "C" fn on_timer(ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    let ctx = Context::new(ctx);
    if data as usize == TimerKind::Expiry as usize {
        engine::on_expiry_timer(&ctx);
    } else {
        engine::on_sweep_timer(&ctx);
    }
}

/// Arms a one-shot timer; `None` if Redis refused.
pub fn start_timer(ctx: &Context, delay_ms: u64, kind: TimerKind) -> Option<u64> {
    let f = unsafe { raw::RedisModule_CreateTimer }?;
    let delay = i64::try_from(delay_ms).unwrap_or(i64::MAX);
    // The timer's data is the kind itself, not a pointer to anything.
    let id = unsafe { f(ctx.ctx, delay, Some(on_timer), kind as usize as *mut c_void) };
    Some(id)
}

/// Disarms a timer (no-op if it already fired).
pub fn stop_timer(ctx: &Context, id: u64) {
    if let Some(f) = unsafe { raw::RedisModule_StopTimer } {
        unsafe { f(ctx.ctx, id, ptr::null_mut()) };
    }
}

// --------------------------------------------------------- blocked clients

/// How a blocked `LOCK.ACQUIRE ... WAIT` is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Granted: reply with the fencing token.
    Granted(u64),
    /// Not granted: reply nil.
    Nil,
    /// Reply with this error.
    Error(&'static str),
}

/// Blocks the calling client; returns its handle as a waiter id.
pub fn block_client(ctx: &Context, timeout_ms: u64) -> Option<usize> {
    let block = unsafe { raw::RedisModule_BlockClient }?;
    let timeout = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
    let bc = unsafe {
        block(
            ctx.ctx,
            Some(on_wait_reply),
            Some(on_wait_timeout),
            Some(on_wait_free),
            timeout,
        )
    };
    if bc.is_null() {
        return None;
    }
    if let Some(set_disconnect) = unsafe { raw::RedisModule_SetDisconnectCallback } {
        unsafe { set_disconnect(bc, Some(on_wait_disconnect)) };
    }
    Some(bc as usize)
}

/// Answers a blocked client (its reply is written on the next event loop
/// turn, by `on_wait_reply`).
pub fn unblock_client(id: usize, outcome: WaitOutcome) {
    let Some(unblock) = (unsafe { raw::RedisModule_UnblockClient }) else {
        return;
    };
    let data = Box::into_raw(Box::new(outcome)).cast::<c_void>();
    let status = unsafe { unblock(id as *mut raw::RedisModuleBlockedClient, data) };
    if status != OK {
        // Redis kept no reference to the data.
        drop(unsafe { Box::from_raw(data.cast::<WaitOutcome>()) });
    }
}

extern "C" fn on_wait_reply(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let context = Context::new(ctx);
    let data = match unsafe { raw::RedisModule_GetBlockedClientPrivateData } {
        Some(f) => unsafe { f(ctx) }.cast::<WaitOutcome>(),
        None => ptr::null_mut(),
    };
    let outcome = if data.is_null() {
        WaitOutcome::Nil
    } else {
        unsafe { *data }
    };
    waiting::reply(&context, outcome);
    OK
}

extern "C" fn on_wait_timeout(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let context = Context::new(ctx);
    let id = match unsafe { raw::RedisModule_GetBlockedClientHandle } {
        Some(f) => (unsafe { f(ctx) }) as usize,
        None => 0,
    };
    waiting::on_timeout(&context, id);
    OK
}

extern "C" fn on_wait_free(_ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if !data.is_null() {
        drop(unsafe { Box::from_raw(data.cast::<WaitOutcome>()) });
    }
}

extern "C" fn on_wait_disconnect(
    _ctx: *mut raw::RedisModuleCtx,
    bc: *mut raw::RedisModuleBlockedClient,
) {
    waiting::on_abandoned(bc as usize);
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
    engine::on_role_changed(&Context::new(ctx), sub == ROLE_NOW_MASTER);
}

extern "C" fn on_loading(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut c_void,
) {
    if sub == LOADING_ENDED || sub == LOADING_FAILED {
        engine::on_loading_ended(&Context::new(ctx));
    } else {
        engine::on_loading_started();
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
    let info = unsafe { &*data.cast::<raw::RedisModuleFlushInfoV1>() };
    let db = if info.dbnum < 0 {
        None
    } else {
        Some(info.dbnum)
    };
    engine::on_flushed(&Context::new(ctx), db);
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
    let info = unsafe { &*data.cast::<raw::RedisModuleSwapDbInfoV1>() };
    engine::on_swapdb(&Context::new(ctx), info.dbnum_first, info.dbnum_second);
}

/// Subscribes to the server events the module reacts to.
pub fn subscribe_server_events(ctx: &Context) -> bool {
    let Some(subscribe) = (unsafe { raw::RedisModule_SubscribeToServerEvent }) else {
        return false;
    };
    let events: [(u64, raw::RedisModuleEventCallback); 4] = [
        (
            raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
            Some(on_role_changed),
        ),
        (raw::REDISMODULE_EVENT_LOADING, Some(on_loading)),
        (raw::REDISMODULE_EVENT_FLUSHDB, Some(on_flush)),
        (raw::REDISMODULE_EVENT_SWAPDB, Some(on_swapdb)),
    ];
    events.into_iter().all(|(id, cb)| {
        let event = raw::RedisModuleEvent { id, dataver: 1 };
        unsafe { subscribe(ctx.ctx, event, cb) == OK }
    })
}

// ------------------------------------------------------------- data type I/O

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
        unlink2: Some(on_unlink),
        copy2: None,
        aux_save2: None,
    }
}

/// Reading side of an RDB stream (a safe facade over `RedisModuleIO`).
/// With `HANDLE_IO_ERRORS` set, a short read marks the stream as failed
/// instead of aborting the server; every read checks that mark.
pub struct RdbReader(*mut raw::RedisModuleIO);

impl crate::encoding::FieldSource for RdbReader {
    fn u64(&mut self) -> Option<u64> {
        raw::load_unsigned(self.0).ok()
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        raw::load_string_buffer(self.0)
            .ok()
            .map(|b| b.as_ref().to_vec())
    }
}

/// Writing side of an RDB stream.
pub struct RdbWriter(*mut raw::RedisModuleIO);

impl RdbWriter {
    /// Writes an unsigned integer.
    pub fn u64(&self, v: u64) {
        raw::save_unsigned(self.0, v);
    }
    /// Writes a byte string.
    pub fn bytes(&self, v: &[u8]) {
        raw::save_slice(self.0, v);
    }
}

extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    let lock = match datatype::load(&mut RdbReader(rdb), encver) {
        Ok(lock) => lock,
        Err(e) => {
            // Redis reports the key (RESTORE answers an error; a file or a
            // full sync is reported as corrupt); say why here. A RESTORE
            // can be sent by anyone, so it is not worth a warning each time.
            let level = if engine::is_loading() {
                RedisLogLevel::Warning
            } else {
                RedisLogLevel::Verbose
            };
            let why = format!("fencelock: refused a lock value: {e}");
            redis_module::logging::log_io_error(rdb, level, &why);
            return ptr::null_mut();
        }
    };
    // Outside of loading this is RESTORE (e.g. MIGRATE into this node):
    // track the arriving lease under its key.
    if !engine::is_loading() {
        let (Some(name_of), Some(db_of)) = (unsafe {
            (
                raw::RedisModule_GetKeyNameFromIO,
                raw::RedisModule_GetDbIdFromIO,
            )
        }) else {
            return Box::into_raw(Box::new(lock)).cast::<c_void>();
        };
        let name = unsafe { name_of(rdb) };
        if !name.is_null() {
            let db = unsafe { db_of(rdb) };
            engine::on_lock_restored(db, string_bytes(name), lock.deadline_ms, lock.token);
        }
    }
    Box::into_raw(Box::new(lock)).cast::<c_void>()
}

extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    if let Some(lock) = unsafe { value.cast::<crate::lock::Lock>().as_ref() } {
        datatype::save(&RdbWriter(rdb), lock);
    }
}

extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, encver: c_int, when: c_int) -> c_int {
    match datatype::aux_load(&mut RdbReader(rdb), encver, when) {
        Ok(()) => OK,
        Err(e) => {
            let why = format!("fencelock: refused the token field of the RDB file: {e}");
            redis_module::logging::log_io_error(rdb, RedisLogLevel::Warning, &why);
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
    let Some(lock) = (unsafe { value.cast::<crate::lock::Lock>().as_ref() }) else {
        return;
    };
    let Some(emit) = (unsafe { raw::RedisModule_EmitAOF }) else {
        return;
    };
    let (holds, token, deadline) = datatype::aof_fields(lock);
    // "sbccc": key as RedisModuleString, owner as a binary-safe buffer, and
    // the numbers as C strings (the variadic "l" would need c_longlong
    // promotion rules; text is unambiguous).
    let holds = std::ffi::CString::new(holds).unwrap_or_default();
    let token = std::ffi::CString::new(token).unwrap_or_default();
    let deadline = std::ffi::CString::new(deadline).unwrap_or_default();
    unsafe {
        emit(
            aof,
            c"LOCK.APPLY".as_ptr(),
            c"sbccc".as_ptr(),
            key,
            lock.owner.as_ptr(),
            lock.owner.len(),
            holds.as_ptr(),
            token.as_ptr(),
            deadline.as_ptr(),
        );
    }
}

extern "C" fn mem_usage(value: *const c_void) -> usize {
    unsafe { value.cast::<crate::lock::Lock>().as_ref() }.map_or(0, crate::lock::Lock::mem_usage)
}

extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    let Some(lock) = (unsafe { value.cast::<crate::lock::Lock>().as_ref() }) else {
        return;
    };
    let (Some(add_buf), Some(add_ll), Some(end)) = (unsafe {
        (
            raw::RedisModule_DigestAddStringBuffer,
            raw::RedisModule_DigestAddLongLong,
            raw::RedisModule_DigestEndSequence,
        )
    }) else {
        return;
    };
    unsafe {
        add_buf(md, lock.owner.as_ptr().cast_mut().cast(), lock.owner.len());
        add_ll(md, i64::try_from(lock.holds).unwrap_or(i64::MAX));
        add_ll(md, i64::try_from(lock.token).unwrap_or(i64::MAX));
        add_ll(md, i64::try_from(lock.deadline_ms).unwrap_or(i64::MAX));
        end(md);
    }
}

extern "C" fn free(value: *mut c_void) {
    if !value.is_null() {
        // May run on a background thread (lazyfree): drop memory and count, nothing else.
        engine::on_lock_freed(value as usize);
        drop(unsafe { Box::from_raw(value.cast::<crate::lock::Lock>()) });
        datatype::on_freed();
    }
}

/// A lock value leaves the keyspace (DEL, UNLINK, overwrite, expiry of a
/// native TTL, eviction, the source side of RENAME and MOVE, and the
/// module's own deletions). Main thread, inside the deleting command.
extern "C" fn on_unlink(ctx: *mut raw::RedisModuleKeyOptCtx, value: *const c_void) {
    let (Some(name_of), Some(db_of)) = (unsafe {
        (
            raw::RedisModule_GetKeyNameFromOptCtx,
            raw::RedisModule_GetDbIdFromOptCtx,
        )
    }) else {
        return;
    };
    let name = unsafe { name_of(ctx) };
    let Some(lock) = (unsafe { value.cast::<crate::lock::Lock>().as_ref() }) else {
        return;
    };
    if name.is_null() {
        return;
    }
    let db = unsafe { db_of(ctx) };
    engine::on_lock_unlinked(db, string_bytes(name), value as usize, lock.token);
}

/// A context for creating timers outside of any callback's context (e.g.
/// from `on_unlink`), made once at load.
static DETACHED: std::sync::atomic::AtomicPtr<raw::RedisModuleCtx> =
    std::sync::atomic::AtomicPtr::new(ptr::null_mut());

/// Creates the detached context; call once from the module's init.
pub fn init_detached_context(ctx: &Context) -> bool {
    let Some(f) = (unsafe { raw::RedisModule_GetDetachedThreadSafeContext }) else {
        return false;
    };
    let detached = unsafe { f(ctx.ctx) };
    DETACHED.store(detached, std::sync::atomic::Ordering::Release);
    !detached.is_null()
}

/// The detached context, for callbacks that have no context of their own.
pub fn detached_context() -> Option<Context> {
    let ctx = DETACHED.load(std::sync::atomic::Ordering::Acquire);
    (!ctx.is_null()).then(|| Context::new(ctx))
}

/// Arms a timer from a place that has no context of its own.
pub fn start_detached_timer(delay_ms: u64, kind: TimerKind) -> Option<u64> {
    let ctx = DETACHED.load(std::sync::atomic::Ordering::Acquire);
    if ctx.is_null() {
        return None;
    }
    start_timer(&Context::new(ctx), delay_ms, kind)
}

/// The key name of a `RedisModuleString` handed to a keyspace-event callback.
pub fn string_bytes<'a>(s: *const raw::RedisModuleString) -> &'a [u8] {
    RedisString::string_as_slice(s)
}

// ------------------------------------------------------------------ replies

/// Replies to `LOCK.INFO` with the fields in their documented order: a map
/// under RESP3, a flat field/value array under RESP2 (Redis converts).
pub fn reply_lock_info(ctx: &Context, lock: &crate::lock::Lock, ttl_ms: u64, waiters: usize) {
    let (Some(map), Some(simple), Some(buf), Some(int)) = (unsafe {
        (
            raw::RedisModule_ReplyWithMap,
            raw::RedisModule_ReplyWithSimpleString,
            raw::RedisModule_ReplyWithStringBuffer,
            raw::RedisModule_ReplyWithLongLong,
        )
    }) else {
        return;
    };
    let num = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    unsafe {
        map(ctx.ctx, 5);
        simple(ctx.ctx, c"owner".as_ptr());
        buf(ctx.ctx, lock.owner.as_ptr().cast(), lock.owner.len());
        simple(ctx.ctx, c"holds".as_ptr());
        int(ctx.ctx, num(lock.holds));
        simple(ctx.ctx, c"ttl".as_ptr());
        int(ctx.ctx, num(ttl_ms));
        simple(ctx.ctx, c"token".as_ptr());
        int(ctx.ctx, num(lock.token));
        simple(ctx.ctx, c"waiters".as_ptr());
        int(ctx.ctx, num(waiters as u64));
    }
}

// --------------------------------------------------------------------- INFO

extern "C" fn on_info(ictx: *mut raw::RedisModuleInfoCtx, _for_crash_report: c_int) {
    crate::info::write(&redis_module::InfoContext::new(ictx));
}

/// Registers the `INFO lock` section writer.
pub fn register_info(ctx: &Context) -> bool {
    match unsafe { raw::RedisModule_RegisterInfoFunc } {
        Some(f) => unsafe { f(ctx.ctx, Some(on_info)) == OK },
        None => false,
    }
}

// ------------------------------------------------- replication, notification

/// Replicates `LOCK.APPLY key owner holds token deadline-ms` (the whole state
/// of a lock with its absolute deadline) without building strings first.
pub fn replicate_apply(ctx: &Context, key: &RedisString, lock: &crate::lock::Lock) {
    let Some(replicate) = (unsafe { raw::RedisModule_Replicate }) else {
        return;
    };
    let num = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    unsafe {
        replicate(
            ctx.ctx,
            c"LOCK.APPLY".as_ptr(),
            c"sblll".as_ptr(),
            key.inner,
            lock.owner.as_ptr(),
            lock.owner.len(),
            num(lock.holds),
            num(lock.token),
            num(lock.deadline_ms),
        );
    }
}

/// Replicates `DEL key`.
pub fn replicate_del(ctx: &Context, key: &RedisString) {
    if let Some(replicate) = unsafe { raw::RedisModule_Replicate } {
        unsafe { replicate(ctx.ctx, c"DEL".as_ptr(), c"s".as_ptr(), key.inner) };
    }
}

/// Announces a module keyspace event (class `d`).
pub fn notify(ctx: &Context, event: &std::ffi::CStr, key: &RedisString) {
    if let Some(f) = unsafe { raw::RedisModule_NotifyKeyspaceEvent } {
        unsafe {
            f(
                ctx.ctx,
                raw::REDISMODULE_NOTIFY_MODULE as c_int,
                event.as_ptr(),
                key.inner,
            )
        };
    }
}

// --------------------------------------------------------------------- scan

extern "C" fn on_scanned_key(
    _ctx: *mut raw::RedisModuleCtx,
    name: *mut raw::RedisModuleString,
    key: *mut raw::RedisModuleKey,
    data: *mut c_void,
) {
    if key.is_null() || name.is_null() || data.is_null() {
        return;
    }
    let (Some(type_of), Some(value_of)) = (unsafe {
        (
            raw::RedisModule_ModuleTypeGetType,
            raw::RedisModule_ModuleTypeGetValue,
        )
    }) else {
        return;
    };
    if unsafe { type_of(key) } != *crate::datatype::LOCK_TYPE.raw_type.borrow() {
        return;
    }
    let Some(lock) = (unsafe { value_of(key).cast::<crate::lock::Lock>().as_ref() }) else {
        return;
    };
    let found = unsafe { &mut *data.cast::<Vec<ScannedLock>>() };
    found.push(ScannedLock {
        key: string_bytes(name).to_vec(),
        deadline_ms: lock.deadline_ms,
        token: lock.token,
        value: (lock as *const crate::lock::Lock) as usize,
    });
}

/// A lock found by `scan_locks`.
pub struct ScannedLock {
    /// Its key.
    pub key: Vec<u8>,
    /// Its lease deadline.
    pub deadline_ms: u64,
    /// Its token.
    pub token: u64,
    /// The address of its value (identifies a value that moved keys).
    pub value: usize,
}

/// Every lock in the context's selected database.
pub fn scan_locks(ctx: &Context) -> Vec<ScannedLock> {
    let mut found: Vec<ScannedLock> = Vec::new();
    let (Some(create), Some(scan), Some(destroy)) = (unsafe {
        (
            raw::RedisModule_ScanCursorCreate,
            raw::RedisModule_Scan,
            raw::RedisModule_ScanCursorDestroy,
        )
    }) else {
        return found;
    };
    unsafe {
        let cursor = create();
        let data = (&mut found as *mut Vec<ScannedLock>).cast::<c_void>();
        while scan(ctx.ctx, cursor, Some(on_scanned_key), data) != 0 {}
        destroy(cursor);
    }
    found
}
