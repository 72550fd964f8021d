//! Safe wrappers the module calls down into Redis through: databases,
//! module options, timers, blocked clients, RDB I/O, replication,
//! notifications, keyspace scans and replies.
//!
//! Every function pointer of the API is checked before use: a missing one is
//! reported as a failure, never unwrapped (a panic here would abort
//! redis-server). Callbacks that a service needs (a timer firing, a blocked
//! client's reply) go through trampolines here that call the plain Rust
//! function the caller handed over.

use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use redis_module::{raw, Context, RedisString};

use crate::rules::clock::WallOffset;
use crate::rules::effect;
use crate::rules::encoding::FieldSource;
use crate::rules::lock::{Lock, Mode};
use crate::rules::queue::WaiterId;
use crate::state;

pub(super) const OK: c_int = raw::REDISMODULE_OK as c_int;
pub(super) const ERR: c_int = raw::REDISMODULE_ERR as c_int;

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

// ------------------------------------------------------------------ strings

/// A key name as a `RedisString`, binary-safe: key names may hold any byte,
/// NUL included (the crate's `Context::create_string` goes through a C
/// string and panics on a NUL — which would abort the server).
pub fn key_string(ctx: &Context, name: &[u8]) -> RedisString {
    RedisString::create_from_slice(ctx.ctx, name)
}

// ---------------------------------------------------------------- databases

/// The database the context has selected.
pub fn selected_db(ctx: &Context) -> i32 {
    // SAFETY: reading a function pointer Redis filled in at module load.
    match unsafe { raw::RedisModule_GetSelectedDb } {
        // SAFETY: `ctx.ctx` is the live context of the running callback.
        Some(f) => unsafe { f(ctx.ctx) },
        None => 0,
    }
}

/// Selects a database on the context; false when it does not exist.
pub fn select_db(ctx: &Context, db: i32) -> bool {
    // SAFETY: reading a function pointer Redis filled in at module load.
    match unsafe { raw::RedisModule_SelectDb } {
        // SAFETY: `ctx.ctx` is the live context of the running callback.
        Some(f) => unsafe { f(ctx.ctx, db) == OK },
        None => false,
    }
}

// ------------------------------------------------------------ server state

/// Asks Redis to report short reads in `rdb_load` as errors the module
/// handles (`RESTORE` then fails, a file is reported corrupt) instead of
/// aborting the server. Call from the module's init.
pub fn handle_io_errors(ctx: &Context) -> bool {
    // SAFETY: reading a function pointer Redis filled in at module load.
    match unsafe { raw::RedisModule_SetModuleOptions } {
        Some(f) => {
            // SAFETY: `ctx.ctx` is the init context; the flag is a constant.
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
    // SAFETY: reading a function pointer Redis filled in at module load.
    match unsafe { raw::RedisModule_AvoidReplicaTraffic } {
        // SAFETY: takes no arguments; main thread (every caller is a
        // command, timer or event callback).
        Some(f) => unsafe { f() != 0 },
        None => false,
    }
}

/// Creates the detached context for timers armed outside any callback's
/// context; call once from the module's init.
pub fn init_detached_context(ctx: &Context) -> bool {
    // SAFETY: reading a function pointer Redis filled in at module load.
    let Some(f) = (unsafe { raw::RedisModule_GetDetachedThreadSafeContext }) else {
        return false;
    };
    // SAFETY: `ctx.ctx` is the init context; the detached context lives as
    // long as the module (it is never freed).
    let detached = unsafe { f(ctx.ctx) };
    state::set_detached_context(detached);
    !detached.is_null()
}

// ------------------------------------------------------------------- timers

/// What a timer runs when it fires: a plain function (no captures), so the
/// timer's data can be the function pointer itself.
pub type TimerCallback = fn(&Context);

extern "C" fn timer_trampoline(ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if data.is_null() {
        return;
    }
    // Function and data pointers have the same size on every platform
    // Redis runs on.
    // SAFETY: only `start_timer` uses this trampoline, with a `TimerCallback` as data.
    let callback: TimerCallback =
        unsafe { std::mem::transmute::<*mut c_void, TimerCallback>(data) };
    callback(&Context::new(ctx));
}

/// Arms a one-shot timer that runs `callback`; `None` if Redis refused.
pub fn start_timer(ctx: &Context, delay_ms: u64, callback: TimerCallback) -> Option<u64> {
    // SAFETY: reading a function pointer Redis filled in at module load.
    let f = unsafe { raw::RedisModule_CreateTimer }?;
    let delay = i64::try_from(delay_ms).unwrap_or(i64::MAX);
    let data = callback as *mut c_void;
    // SAFETY: `ctx.ctx` is a live context; the data is a function pointer
    // that the trampoline turns back into a function, never dereferenced.
    Some(unsafe { f(ctx.ctx, delay, Some(timer_trampoline), data) })
}

/// Arms a timer from a place that has no context of its own.
pub fn start_detached_timer(delay_ms: u64, callback: TimerCallback) -> Option<u64> {
    let ctx = state::detached_context();
    if ctx.is_null() {
        return None;
    }
    start_timer(&Context::new(ctx), delay_ms, callback)
}

/// Disarms a timer (no-op if it already fired).
pub fn stop_timer(ctx: &Context, id: u64) {
    // SAFETY: reading a function pointer Redis filled in at module load.
    if let Some(f) = unsafe { raw::RedisModule_StopTimer } {
        // SAFETY: `ctx.ctx` is a live context; an unknown id is refused by
        // Redis; the data (a function pointer) needs no freeing.
        unsafe { f(ctx.ctx, id, ptr::null_mut()) };
    }
}

// --------------------------------------------------------- blocked clients

/// How a blocked client is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Granted: reply with the fencing token.
    Granted(u64),
    /// Not granted: reply nil.
    Nil,
    /// Reply with this error.
    Error(std::borrow::Cow<'static, str>),
}

/// What happens to a blocked client, in the layer that blocked it.
#[derive(Debug)]
pub struct WaitHandlers {
    /// Write the reply of an answered client.
    pub reply: fn(&Context, WaitOutcome),
    /// Its wait timed out (or `CLIENT UNBLOCK`): leave the queue and reply.
    pub timed_out: fn(&Context, WaiterId),
    /// The client is gone (disconnect, kill, demotion): leave the queue.
    pub abandoned: fn(WaiterId),
}

/// The handlers of the blocked clients (one set for the whole module).
static WAIT_HANDLERS: AtomicPtr<WaitHandlers> = AtomicPtr::new(ptr::null_mut());

fn wait_handlers() -> Option<&'static WaitHandlers> {
    // SAFETY: only `block_client` stores here, always a `&'static`.
    unsafe { WAIT_HANDLERS.load(Ordering::Acquire).as_ref() }
}

/// Blocks the calling client until [`unblock_client`] answers it, its
/// timeout passes (0: none) or it goes away; `handlers` say what each of
/// those does. Returns its handle as a waiter id.
pub fn block_client(
    ctx: &Context,
    timeout_ms: u64,
    handlers: &'static WaitHandlers,
) -> Option<WaiterId> {
    WAIT_HANDLERS.store(ptr::from_ref(handlers).cast_mut(), Ordering::Release);
    // SAFETY: reading a function pointer Redis filled in at module load.
    let block = unsafe { raw::RedisModule_BlockClient }?;
    let timeout = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
    // SAFETY: `ctx.ctx` is the context of the running command; the
    // callbacks are the trampolines below, which match Redis's signatures.
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
    // SAFETY: reading a function pointer Redis filled in at module load.
    if let Some(set_disconnect) = unsafe { raw::RedisModule_SetDisconnectCallback } {
        // SAFETY: `bc` was just returned by Redis and is still blocked.
        unsafe { set_disconnect(bc, Some(on_wait_disconnect)) };
    }
    Some(bc as WaiterId)
}

/// Answers a blocked client (the reply is written on the next event loop
/// turn, by the `reply` handler).
pub fn unblock_client(id: WaiterId, outcome: WaitOutcome) {
    // SAFETY: reading a function pointer Redis filled in at module load.
    let Some(unblock) = (unsafe { raw::RedisModule_UnblockClient }) else {
        return;
    };
    let data = Box::into_raw(Box::new(outcome)).cast::<c_void>();
    // `id` is still queued: a waiter leaves the queue before its handle is
    // freed. Redis owns `data` from here and hands it to `on_wait_free`.
    // SAFETY: `id` is a live blocked-client handle from `block_client`.
    let status = unsafe { unblock(id as *mut raw::RedisModuleBlockedClient, data) };
    if status != OK {
        // SAFETY: Redis refused and kept no reference to `data`, which came
        // from `Box::into_raw` above.
        drop(unsafe { Box::from_raw(data.cast::<WaitOutcome>()) });
    }
}

extern "C" fn on_wait_reply(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    // SAFETY: reading a function pointer Redis filled in at module load.
    let data = match unsafe { raw::RedisModule_GetBlockedClientPrivateData } {
        // SAFETY: `ctx` is the reply callback's context.
        Some(f) => unsafe { f(ctx) }.cast::<WaitOutcome>(),
        None => ptr::null_mut(),
    };
    // SAFETY: the private data, when set, is the `WaitOutcome` boxed by
    // `unblock_client`; Redis frees it after this callback.
    let outcome = unsafe { data.as_ref() }
        .cloned()
        .unwrap_or(WaitOutcome::Nil);
    if let Some(h) = wait_handlers() {
        (h.reply)(&Context::new(ctx), outcome);
    }
    OK
}

extern "C" fn on_wait_timeout(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    // SAFETY: reading a function pointer Redis filled in at module load.
    let id = match unsafe { raw::RedisModule_GetBlockedClientHandle } {
        // SAFETY: `ctx` is the timeout callback's context.
        Some(f) => (unsafe { f(ctx) }) as WaiterId,
        None => 0,
    };
    if let Some(h) = wait_handlers() {
        (h.timed_out)(&Context::new(ctx), id);
    }
    OK
}

extern "C" fn on_wait_free(_ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if !data.is_null() {
        // SAFETY: the private data is always a `WaitOutcome` boxed by
        // `unblock_client`; Redis calls this once, when it is done with it.
        drop(unsafe { Box::from_raw(data.cast::<WaitOutcome>()) });
    }
}

extern "C" fn on_wait_disconnect(
    _ctx: *mut raw::RedisModuleCtx,
    bc: *mut raw::RedisModuleBlockedClient,
) {
    if let Some(h) = wait_handlers() {
        (h.abandoned)(bc as WaiterId);
    }
}

// ------------------------------------------------------------------ RDB I/O

/// Reading side of an RDB stream (a safe facade over `RedisModuleIO`).
/// With `HANDLE_IO_ERRORS` set, a short read marks the stream as failed
/// instead of aborting the server; every read checks that mark.
pub struct RdbReader(pub(super) *mut raw::RedisModuleIO);

impl FieldSource for RdbReader {
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
pub struct RdbWriter(pub(super) *mut raw::RedisModuleIO);

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

/// Writes the `LOCK.APPLY` commands that rebuild `lock` into an AOF being
/// rewritten: one per holder, in the form the master replicates
/// (`rules::effect`).
pub(super) fn emit_apply(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    lock: &Lock,
    wall: WallOffset,
) {
    // SAFETY: reading a function pointer Redis filled in at module load.
    let Some(emit) = (unsafe { raw::RedisModule_EmitAOF }) else {
        return;
    };
    for (i, h) in lock.holders.iter().enumerate() {
        let Some(state) = effect::state_of(lock, i, wall) else {
            continue;
        };
        let state = state.as_bytes();
        // The key, the owner buffer and the state buffer, for "sbb".
        // SAFETY: the running `aof_rewrite` callback's arguments; each
        // pointer matches its format letter and outlives the call.
        unsafe {
            emit(
                aof,
                c"LOCK.APPLY".as_ptr(),
                c"sbb".as_ptr(),
                key,
                h.owner.as_ptr(),
                h.owner.len(),
                state.as_ptr(),
                state.len(),
            );
        }
    }
}

/// Feeds a lock to `DEBUG DIGEST-VALUE`, its deadlines on the wall clock
/// (as the RDB has them, so servers compare equal whatever their steps).
pub(super) fn digest_lock(md: *mut raw::RedisModuleDigest, lock: &Lock, wall: WallOffset) {
    // SAFETY: reading function pointers Redis filled in at module load.
    let (Some(add_buf), Some(add_ll), Some(end)) = (unsafe {
        (
            raw::RedisModule_DigestAddStringBuffer,
            raw::RedisModule_DigestAddLongLong,
            raw::RedisModule_DigestEndSequence,
        )
    }) else {
        return;
    };
    // SAFETY: `md` is the running digest callback's digest; the owner
    // buffers outlive the calls (Redis only reads them).
    unsafe {
        add_ll(md, i64::from(lock.limit));
        for h in &lock.holders {
            add_buf(md, h.owner.as_ptr().cast_mut().cast(), h.owner.len());
            add_ll(md, as_i64(h.exclusive));
            add_ll(md, as_i64(h.shared));
            add_ll(md, as_i64(h.token));
            add_ll(md, as_i64(wall.to_wall(h.deadline_ms)));
        }
        end(md);
    }
}

// ------------------------------------------------- replication, notification

/// Replicates the share of the holder at `i` as its effect, with absolute
/// deadline and token: `LOCK.APPLY key owner state` (`rules::effect`), three
/// arguments that Redis only copies.
pub fn replicate_share(ctx: &Context, key: &RedisString, lock: &Lock, i: usize, wall: WallOffset) {
    // SAFETY: reading a function pointer Redis filled in at module load.
    let Some(replicate) = (unsafe { raw::RedisModule_Replicate }) else {
        return;
    };
    let (Some(h), Some(state)) = (lock.holders.get(i), effect::state_of(lock, i, wall)) else {
        return;
    };
    let state = state.as_bytes();
    // Key, owner buffer and state buffer for "sbb"; Redis copies the buffers.
    // SAFETY: the running callback's live context and key; every argument
    // matches its format letter.
    unsafe {
        replicate(
            ctx.ctx,
            c"LOCK.APPLY".as_ptr(),
            c"sbb".as_ptr(),
            key.inner,
            h.owner.as_ptr(),
            h.owner.len(),
            state.as_ptr(),
            state.len(),
        );
    }
}

/// Replicates `LOCK.APPLY key owner DROP`: this owner's share left the key
/// (others still hold it).
pub fn replicate_drop(ctx: &Context, key: &RedisString, owner: &[u8]) {
    // SAFETY: reading a function pointer Redis filled in at module load.
    if let Some(replicate) = unsafe { raw::RedisModule_Replicate } {
        // SAFETY: live context and key; the owner buffer and the C string
        // match "sbc" and outlive the call.
        unsafe {
            replicate(
                ctx.ctx,
                c"LOCK.APPLY".as_ptr(),
                c"sbc".as_ptr(),
                key.inner,
                owner.as_ptr(),
                owner.len(),
                c"DROP".as_ptr(),
            );
        }
    }
}

/// Replicates `DEL key`.
pub fn replicate_del(ctx: &Context, key: &RedisString) {
    // SAFETY: reading a function pointer Redis filled in at module load.
    if let Some(replicate) = unsafe { raw::RedisModule_Replicate } {
        // SAFETY: live context and key; one string argument for "s".
        unsafe { replicate(ctx.ctx, c"DEL".as_ptr(), c"s".as_ptr(), key.inner) };
    }
}

/// Announces a module keyspace event (class `d`).
pub fn notify(ctx: &Context, event: &CStr, key: &RedisString) {
    // SAFETY: reading a function pointer Redis filled in at module load.
    if let Some(f) = unsafe { raw::RedisModule_NotifyKeyspaceEvent } {
        // SAFETY: live context and key; the event name is a C string that
        // Redis copies.
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

/// A lock found by [`scan_locks`].
pub struct ScannedLock {
    /// Its key.
    pub key: Vec<u8>,
    /// Every holder's lease: (deadline, token).
    pub leases: Vec<(u64, u64)>,
    /// The token of its oldest holder (with `value`, identifies a value
    /// that moved keys).
    pub first_token: u64,
    /// The address of its value.
    pub value: usize,
}

struct ScanState {
    lock_type: *mut raw::RedisModuleType,
    found: Vec<ScannedLock>,
}

extern "C" fn on_scanned_key(
    _ctx: *mut raw::RedisModuleCtx,
    name: *mut raw::RedisModuleString,
    key: *mut raw::RedisModuleKey,
    data: *mut c_void,
) {
    if key.is_null() || name.is_null() || data.is_null() {
        return;
    }
    // SAFETY: reading function pointers Redis filled in at module load.
    let (Some(type_of), Some(value_of)) = (unsafe {
        (
            raw::RedisModule_ModuleTypeGetType,
            raw::RedisModule_ModuleTypeGetValue,
        )
    }) else {
        return;
    };
    // SAFETY: `data` is the `ScanState` that `scan_locks` passes and keeps
    // alive for the whole scan; nothing else refers to it meanwhile.
    let scan = unsafe { &mut *data.cast::<ScanState>() };
    // SAFETY: `key` is the open key Redis hands to this scan callback.
    if unsafe { type_of(key) } != scan.lock_type {
        return;
    }
    // SAFETY: the key holds a value of the lock type, which is always a
    // `Lock` stored by this module.
    let Some(lock) = (unsafe { value_of(key).cast::<Lock>().as_ref() }) else {
        return;
    };
    scan.found.push(ScannedLock {
        // SAFETY: `name` is this callback's key name, read before it ends.
        key: unsafe { super::string_bytes(name) }.to_vec(),
        leases: lock
            .holders
            .iter()
            .map(|h| (h.deadline_ms, h.token))
            .collect(),
        first_token: lock.holders.first().map_or(0, |h| h.token),
        value: ptr::from_ref(lock) as usize,
    });
}

/// Every value of `lock_type` in the context's selected database.
pub fn scan_locks(ctx: &Context, lock_type: *mut raw::RedisModuleType) -> Vec<ScannedLock> {
    let mut scan = ScanState {
        lock_type,
        found: Vec::new(),
    };
    // SAFETY: reading function pointers Redis filled in at module load.
    let (Some(create), Some(scan_next), Some(destroy)) = (unsafe {
        (
            raw::RedisModule_ScanCursorCreate,
            raw::RedisModule_Scan,
            raw::RedisModule_ScanCursorDestroy,
        )
    }) else {
        return scan.found;
    };
    let data = ptr::from_mut(&mut scan).cast::<c_void>();
    // The cursor is used only here; only the callback above reads `data`.
    // SAFETY: `data` points to `scan`, alive for the whole loop.
    unsafe {
        let cursor = create();
        while scan_next(ctx.ctx, cursor, Some(on_scanned_key), data) != 0 {}
        destroy(cursor);
    }
    scan.found
}

// ------------------------------------------------------------------ replies

/// Replies to `LOCK.INFO` with the fields in their documented order (see
/// docs/INTERFACE.md): a map under RESP3, a flat field/value array under
/// RESP2 (Redis converts). Holders whose lease has passed at `now_ms` are
/// left out; the caller checked that one is live.
pub fn reply_lock_info(ctx: &Context, lock: &Lock, now_ms: u64, waiters: usize) {
    // SAFETY: reading function pointers Redis filled in at module load.
    let (Some(map), Some(array), Some(simple), Some(buf), Some(int)) = (unsafe {
        (
            raw::RedisModule_ReplyWithMap,
            raw::RedisModule_ReplyWithArray,
            raw::RedisModule_ReplyWithSimpleString,
            raw::RedisModule_ReplyWithStringBuffer,
            raw::RedisModule_ReplyWithLongLong,
        )
    }) else {
        return;
    };
    let c = ctx.ctx;
    let live: Vec<_> = lock
        .holders
        .iter()
        .filter(|h| !h.is_expired(now_ms))
        .collect();
    let mode = lock.mode();
    // SAFETY (every block below): `c` is the running command's context; each
    // map or array announces exactly the number of elements that follow it;
    // strings are copied by Redis.
    let field = |name: &CStr, v: u64| {
        // SAFETY: see above; one field name and its integer value.
        unsafe {
            simple(c, name.as_ptr());
            int(c, as_i64(v));
        }
    };
    match (mode, live.first()) {
        (Mode::Exclusive, Some(h)) => {
            // SAFETY: see above; a map of 6 pairs.
            unsafe {
                map(c, 6);
                simple(c, c"owner".as_ptr());
                buf(c, h.owner.as_ptr().cast(), h.owner.len());
            }
            field(c"holds", h.total());
            field(c"ttl", h.remaining_ms(now_ms));
            field(c"token", h.token);
            field(c"waiters", waiters as u64);
            // SAFETY: see above.
            unsafe {
                simple(c, c"mode".as_ptr());
                simple(c, c"exclusive".as_ptr());
            }
        }
        _ => {
            let semaphore = mode == Mode::Semaphore;
            let (pairs, mode_name, count_name) = if semaphore {
                (5, c"semaphore", c"permits")
            } else {
                (3, c"shared", c"holds")
            };
            // SAFETY: see above.
            unsafe {
                map(c, pairs);
                simple(c, c"mode".as_ptr());
                simple(c, mode_name.as_ptr());
            }
            if semaphore {
                let used = live.iter().map(|h| h.shared).fold(0, u64::saturating_add);
                field(c"limit", u64::from(lock.limit));
                field(c"available", u64::from(lock.limit).saturating_sub(used));
            }
            field(c"waiters", waiters as u64);
            // SAFETY: see above; one map of 4 pairs per live holder.
            unsafe {
                simple(c, c"holders".as_ptr());
                array(c, live.len() as std::os::raw::c_long);
            }
            for h in &live {
                // SAFETY: see above.
                unsafe {
                    map(c, 4);
                    simple(c, c"owner".as_ptr());
                    buf(c, h.owner.as_ptr().cast(), h.owner.len());
                }
                field(count_name, h.total());
                field(c"ttl", h.remaining_ms(now_ms));
                field(c"token", h.token);
            }
        }
    }
}
