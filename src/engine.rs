//! The keyspace side of the lock: reading a lock from its key, and the one
//! place where every change is stored, scheduled for expiry, replicated (as
//! its effect, with absolute deadline and token) and announced.
//!
//! Also the module's reactions to time and to the server: the expiry timer,
//! hand-off to waiters, and what generic commands (DEL, RENAME, FLUSHDB,
//! SWAPDB, ...) and role changes do to locks and their waiters.

use std::ffi::CStr;

use redis_module::key::RedisKeyWritable;
use std::sync::atomic::{AtomicBool, Ordering};

use redis_module::{Context, ContextFlags, RedisError, RedisString};

use crate::datatype::{self, LOCK_TYPE};
use crate::ffi::{self, TimerKind, WaitOutcome};
use crate::lock::{Lock, TokensExhausted};
use crate::queue::Waiter;
use crate::state::{self, now_ms};
use crate::stats::{bump, STATS};

/// The answer to cluster waiters whose lock was removed or moved by a
/// generic command (DEL, MIGRATE, FLUSHALL, ...).
const ERR_RETRY_ELSEWHERE: &str = "TRYAGAIN the lock was removed or moved to another node; retry";

/// How many leases one run of the expiry timer removes at most before it
/// yields to the event loop (it re-arms itself at once when more are due).
const EXPIRY_BATCH: usize = 1000;

/// While Redis pauses writes, the timers look again this often (the pause
/// ends at a time Redis does not announce).
const PAUSED_RETRY_MS: u64 = 10;

/// Databases are looked for up to this number (Redis stops at `databases`).
const MAX_DBS: i32 = 100_000;

/// The lock stored in `key`: `Ok(None)` when the key is empty, `WRONGTYPE`
/// when it holds another type.
pub fn lock_in(key: &RedisKeyWritable) -> Result<Option<&'static mut Lock>, RedisError> {
    key.get_value::<Lock>(&LOCK_TYPE)
        .map_err(|_| RedisError::WrongType)
}

/// Where a command operates: the context, its database and key.
pub struct Site<'a> {
    pub ctx: &'a Context,
    pub db: i32,
    pub name: &'a RedisString,
    pub key: RedisKeyWritable,
}

impl<'a> Site<'a> {
    /// Opens `name` for writing in the context's selected database.
    pub fn open(ctx: &'a Context, name: &'a RedisString) -> Self {
        Site {
            ctx,
            db: ffi::selected_db(ctx),
            name,
            key: ctx.open_key_writable(name),
        }
    }

    fn notify(&self, event: &CStr) {
        ffi::notify(self.ctx, event, self.name);
    }

    /// Replicates the lock's whole state with its absolute deadline.
    fn replicate_state(&self, lock: &Lock) {
        ffi::replicate_apply(self.ctx, self.name, lock);
    }

    /// Stores a fresh grant: value, schedule, replication, notification.
    pub fn store_grant(&self, lock: Lock) -> Result<(), RedisError> {
        self.replicate_state(&lock);
        let (deadline_ms, token) = (lock.deadline_ms, lock.token);
        self.key
            .set_value(&LOCK_TYPE, lock)
            .map_err(|_| RedisError::Str("ERR could not store the lock"))?;
        datatype::on_stored();
        schedule(self.ctx, deadline_ms, token, self.db, self.name.as_slice());
        self.notify(c"lock.acquire");
        Ok(())
    }

    /// A held lock changed in place (re-entry, renewal, partial release):
    /// move its lease in the schedule if needed and replicate its state.
    pub fn updated(&self, lock: &Lock, old_deadline_ms: u64) {
        if old_deadline_ms != lock.deadline_ms {
            let plan = state::with(|s| {
                s.schedule.reschedule(
                    old_deadline_ms,
                    lock.deadline_ms,
                    lock.token,
                    self.db,
                    self.name.as_slice(),
                );
                plan_expiry_timer(s)
            });
            rearm_expiry_timer(self.ctx, plan);
        }
        self.replicate_state(lock);
    }

    /// Deletes the lock (release to zero, expiry, force-release), announces
    /// `event`, then hands the now free lock to the first waiter.
    pub fn remove(
        &self,
        lock_deadline_ms: u64,
        lock_token: u64,
        event: &CStr,
        now_ms: u64,
    ) -> Result<(), RedisError> {
        state::with(|s| {
            s.schedule
                .remove(lock_deadline_ms, lock_token, self.db, self.name.as_slice());
            s.deleting = true;
        });
        // The key is open; deleting through it keeps it open for a new value.
        let deleted = self.key.delete();
        state::with(|s| s.deleting = false);
        deleted?;
        ffi::replicate_del(self.ctx, self.name);
        self.notify(event);
        self.hand_off(now_ms)
    }

    /// Expires a lock whose lease has passed.
    pub fn expire(
        &self,
        lock_deadline_ms: u64,
        lock_token: u64,
        now_ms: u64,
    ) -> Result<(), RedisError> {
        bump(&STATS.expired);
        self.remove(lock_deadline_ms, lock_token, c"lock.expire", now_ms)
    }

    /// The lock on this (now empty) key goes to the first waiter still within
    /// its wait, in the same event that freed it.
    pub fn hand_off(&self, now_ms: u64) -> Result<(), RedisError> {
        let handoff = state::with(|s| {
            let h = s.queues.hand_off(self.db, self.name.as_slice(), now_ms);
            let token = h.granted.as_ref().map(|_| s.tokens.next(now_ms));
            (h, token)
        });
        let (h, token) = handoff;
        for w in &h.timed_out {
            bump(&STATS.wait_timeouts);
            ffi::unblock_client(w.id, WaitOutcome::Nil);
        }
        let (Some(first), Some(token)) = (h.granted, token) else {
            return Ok(());
        };
        let Ok(token) = token else {
            // No token left to issue: never repeat one; the waiters learn
            // why (the lock stays free).
            for w in std::iter::once(&first).chain(h.reentrant.iter()) {
                ffi::unblock_client(w.id, WaitOutcome::Error(TokensExhausted::REPLY));
            }
            return Ok(());
        };
        let mut lock = Lock::grant(&first.owner, token, now_ms, first.ttl_ms);
        for w in &h.reentrant {
            let _ = lock.reenter(&w.owner, now_ms, w.ttl_ms);
            bump(&STATS.reentries);
        }
        self.store_grant(lock)?;
        bump(&STATS.grants);
        bump(&STATS.handoffs);
        for w in std::iter::once(&first).chain(h.reentrant.iter()) {
            ffi::unblock_client(w.id, WaitOutcome::Granted(token));
        }
        Ok(())
    }

    /// Waiters of `owner` queued on this key re-enter the lock it now holds.
    pub fn admit_same_owner(&self, lock: &mut Lock, now_ms: u64) {
        let same: Vec<Waiter> = state::with(|s| {
            s.queues
                .take_owner(self.db, self.name.as_slice(), &lock.owner)
        });
        if same.is_empty() {
            return;
        }
        let old = lock.deadline_ms;
        for w in &same {
            let _ = lock.reenter(&w.owner, now_ms, w.ttl_ms);
            bump(&STATS.reentries);
        }
        self.updated(lock, old);
        for w in &same {
            ffi::unblock_client(w.id, WaitOutcome::Granted(lock.token));
        }
    }
}

/// True when this server is a master (leases are expired by masters only;
/// a replica waits for the master's deletions).
pub fn is_master(ctx: &Context) -> bool {
    ctx.get_flags().contains(ContextFlags::MASTER)
}

/// Tracks a lease and makes sure the expiry timer fires by its deadline.
pub fn schedule(ctx: &Context, deadline_ms: u64, token: u64, db: i32, key: &[u8]) {
    let plan = state::with(|s| {
        s.schedule.insert(deadline_ms, token, db, key);
        plan_expiry_timer(s)
    });
    rearm_expiry_timer(ctx, plan);
}

/// (Re-)arms the expiry timer for the earliest tracked deadline, unless it
/// is already armed for that deadline or earlier.
pub fn arm_expiry_timer(ctx: &Context) {
    let plan = state::with(plan_expiry_timer);
    rearm_expiry_timer(ctx, plan);
}

/// Whether the expiry timer must be re-armed: `(timer to stop, deadline)`.
fn plan_expiry_timer(s: &mut state::State) -> Option<(Option<u64>, u64)> {
    let next = s.schedule.next_deadline()?;
    match s.expiry_timer {
        Some((_, armed_for)) if armed_for <= next => None,
        current => Some((current.map(|(id, _)| id), next)),
    }
}

fn rearm_expiry_timer(ctx: &Context, plan: Option<(Option<u64>, u64)>) {
    let Some((old, next)) = plan else {
        return;
    };
    if let Some(id) = old {
        ffi::stop_timer(ctx, id);
    }
    let id = ffi::start_timer(ctx, next.saturating_sub(now_ms()), TimerKind::Expiry);
    state::with(|s| s.expiry_timer = id.map(|id| (id, next)));
}

/// The expiry timer fired: remove every lease that is due (in batches), hand
/// each freed lock to its first waiter, and re-arm for the next deadline.
pub fn on_expiry_timer(ctx: &Context) {
    state::with(|s| s.expiry_timer = None);
    if !is_master(ctx) {
        state::with(|s| s.schedule = Default::default());
        return;
    }
    let now = now_ms();
    if ffi::writes_paused() {
        // Nothing may be written or propagated during a pause: the leases
        // stay due (reads never show them) and expire right after it.
        let id = ffi::start_timer(ctx, PAUSED_RETRY_MS, TimerKind::Expiry);
        state::with(|s| s.expiry_timer = id.map(|id| (id, now)));
        return;
    }
    let due = state::with(|s| s.schedule.pop_due(now, EXPIRY_BATCH));
    let more = due.len() == EXPIRY_BATCH;
    for lease in due {
        if !ffi::select_db(ctx, lease.at.db) {
            continue;
        }
        let name = ctx.create_string(&*lease.at.key);
        let site = Site::open(ctx, &name);
        // Act only on the very lock this entry was made for: a stale entry
        // (key deleted, overwritten, renewed) must never touch another lock.
        let current = match lock_in(&site.key) {
            Ok(Some(lock)) => lock.token == lease.token && lock.deadline_ms == lease.deadline_ms,
            _ => false,
        };
        if current {
            let _ = site.expire(lease.deadline_ms, lease.token, now);
        }
    }
    if more {
        // Yield to clients, then go on at once.
        let id = ffi::start_timer(ctx, 0, TimerKind::Expiry);
        state::with(|s| s.expiry_timer = id.map(|id| (id, now)));
    } else {
        arm_expiry_timer(ctx);
    }
}

// ------------------------------------------------------------ generic commands

/// True while Redis loads an RDB or AOF (or a full resync).
static LOADING: AtomicBool = AtomicBool::new(false);

/// True while this server is a master (kept from role-change events, for
/// callbacks that have no context to ask).
static MASTER: AtomicBool = AtomicBool::new(true);

/// True while `State::relocated` may be non-empty (spares the data type's
/// `free` callback a lock in the common case).
static RELOCATING: AtomicBool = AtomicBool::new(false);

/// Records the role the server starts in.
pub fn init_role(ctx: &Context) {
    MASTER.store(is_master(ctx), Ordering::Relaxed);
}

/// Whether Redis is loading data now.
pub fn is_loading() -> bool {
    LOADING.load(Ordering::Relaxed)
}

/// Loading (RDB, AOF or a full resync) started.
pub fn on_loading_started() {
    LOADING.store(true, Ordering::Relaxed);
}

/// A lock arrived by `RESTORE` (e.g. `MIGRATE` into this node): track its
/// lease under its key, so it expires on time here.
pub fn on_lock_restored(db: i32, key: &[u8], deadline_ms: u64, token: u64) {
    let plan = state::with(|s| {
        s.tokens.observe(token);
        s.schedule.insert(deadline_ms, token, db, key);
        plan_expiry_timer(s)
    });
    if let Some(ctx) = ffi::detached_context() {
        rearm_expiry_timer(&ctx, plan);
    }
}

/// A lock value left its key other than by the module's own hand (DEL,
/// UNLINK, overwrite by SET or RESTORE REPLACE, a native TTL that fired,
/// eviction, the source of RENAME or MOVE, MIGRATE).
/// - If clients wait for that name, the sweep timer looks at it right after
///   the command: the first waiter takes the free name, or all are told if
///   it now holds another type.
/// - The value may live on under another name (RENAME, MOVE): unless it is
///   freed first, the sweep timer finds it and tracks its lease there, so a
///   moved lock still expires on time.
pub fn on_lock_unlinked(db: i32, key: &[u8], value: usize, token: u64) {
    let arm = state::with(|s| {
        if s.deleting {
            return false;
        }
        let mut arm = false;
        if s.queues.waiting(db, key) > 0 {
            s.orphaned.insert((db, key.into()));
            arm = true;
        }
        if MASTER.load(Ordering::Relaxed) && !is_loading() {
            s.relocated.insert(value, token);
            RELOCATING.store(true, Ordering::Relaxed);
            arm = true;
        }
        arm && s.sweep_timer.is_none()
    });
    if arm {
        let id = ffi::start_detached_timer(0, TimerKind::Sweep);
        state::with(|s| s.sweep_timer = id);
    }
}

/// A lock value is being freed (maybe on a background thread): it did not
/// move anywhere.
pub fn on_lock_freed(value: usize) {
    if RELOCATING.load(Ordering::Relaxed) {
        state::with(|s| s.relocated.remove(&value));
    }
}

/// Finds the lock values that left their key but were not freed, and tracks
/// their leases where they are now: first under the same name in other
/// databases (MOVE), then by a scan of every database (RENAME).
fn track_relocated(ctx: &Context) {
    let wanted = state::with(|s| {
        RELOCATING.store(false, Ordering::Relaxed);
        std::mem::take(&mut s.relocated)
    });
    if wanted.is_empty() {
        return;
    }
    let original_db = ffi::selected_db(ctx);
    let mut db = 0;
    while db < MAX_DBS && ffi::select_db(ctx, db) {
        let found: Vec<ffi::ScannedLock> = ffi::scan_locks(ctx)
            .into_iter()
            .filter(|l| wanted.get(&l.value) == Some(&l.token))
            .collect();
        if !found.is_empty() {
            let plan = state::with(|s| {
                for l in &found {
                    s.schedule.insert(l.deadline_ms, l.token, db, &l.key);
                }
                plan_expiry_timer(s)
            });
            rearm_expiry_timer(ctx, plan);
        }
        db += 1;
    }
    ffi::select_db(ctx, original_db);
}

fn arm_sweep_timer(ctx: &Context) {
    if state::with(|s| s.sweep_timer.is_some()) {
        return;
    }
    let id = ffi::start_timer(ctx, 0, TimerKind::Sweep);
    state::with(|s| s.sweep_timer = id);
}

/// The sweep timer: for every key whose lock may have vanished under its
/// waiters, hand the free name to the first waiter, or answer the waiters
/// with WRONGTYPE if the name now holds another type.
pub fn on_sweep_timer(ctx: &Context) {
    if is_master(ctx) && ffi::writes_paused() {
        // Hand-offs write: they wait for the end of the pause.
        let id = ffi::start_timer(ctx, PAUSED_RETRY_MS, TimerKind::Sweep);
        state::with(|s| s.sweep_timer = id);
        return;
    }
    let keys: Vec<_> = state::with(|s| {
        s.sweep_timer = None;
        s.orphaned.drain().collect()
    });
    if !is_master(ctx) {
        return;
    }
    track_relocated(ctx);
    // In a cluster the name may have left this node (MIGRATE deletes it
    // here like DEL does), so granting it here could create a lock in a
    // slot this node no longer serves. Waiters are told to retry instead;
    // cluster clients re-route the retry (MOVED/ASK) to the key's node.
    let cluster = ctx.get_flags().contains(ContextFlags::CLUSTER);
    let now = now_ms();
    for (db, key) in keys {
        if cluster {
            for w in state::with(|s| s.queues.take_all(db, &key)) {
                ffi::unblock_client(w.id, WaitOutcome::Error(ERR_RETRY_ELSEWHERE));
            }
            continue;
        }
        if !ffi::select_db(ctx, db) {
            continue;
        }
        let name = ctx.create_string(&*key);
        let site = Site::open(ctx, &name);
        match lock_in(&site.key) {
            Ok(None) => {
                let _ = site.hand_off(now);
            }
            Ok(Some(lock)) if lock.is_expired(now) => {
                let _ = site.expire(lock.deadline_ms, lock.token, now);
            }
            Ok(Some(lock)) => site.admit_same_owner(lock, now),
            Err(_) => {
                for w in state::with(|s| s.queues.take_all(db, &key)) {
                    ffi::unblock_client(
                        w.id,
                        WaitOutcome::Error(
                            "WRONGTYPE the lock key now holds another kind of value",
                        ),
                    );
                }
            }
        }
    }
}

/// FLUSHDB / FLUSHALL finished: forget the leases of the flushed database(s)
/// and let waiters there take the now free names.
pub fn on_flushed(ctx: &Context, db: Option<i32>) {
    let any = state::with(|s| {
        s.schedule.forget_db(db);
        let keys = s.queues.keys(db);
        let any = !keys.is_empty();
        s.orphaned.extend(keys);
        any
    });
    if any {
        arm_sweep_timer(ctx);
    }
}

/// SWAPDB: leases follow their keys into the other database; waiters keep
/// waiting for the name in the database they asked in, which now holds
/// other data, so those names are looked at again.
pub fn on_swapdb(ctx: &Context, a: i32, b: i32) {
    let any = state::with(|s| {
        s.schedule.swap_dbs(a, b);
        let mut keys = s.queues.keys(Some(a));
        keys.extend(s.queues.keys(Some(b)));
        let any = !keys.is_empty();
        s.orphaned.extend(keys);
        any
    });
    if any {
        arm_sweep_timer(ctx);
    }
}

// ------------------------------------------------------- roles and loading

/// Rebuilds the lease schedule from the keyspace (every database), then
/// arms the expiry timer: overdue leases are expired at once.
pub fn rebuild_schedule(ctx: &Context) {
    state::with(|s| s.schedule = Default::default());
    let original_db = ffi::selected_db(ctx);
    let mut db = 0;
    // Redis has at most a few thousand databases; stop at the first that
    // does not exist.
    while db < MAX_DBS && ffi::select_db(ctx, db) {
        let found = ffi::scan_locks(ctx);
        state::with(|s| {
            for l in &found {
                s.tokens.observe(l.token);
                s.schedule.insert(l.deadline_ms, l.token, db, &l.key);
            }
        });
        db += 1;
    }
    ffi::select_db(ctx, original_db);
    arm_expiry_timer(ctx);
}

/// Loading (RDB, AOF or a full resync) ended.
pub fn on_loading_ended(ctx: &Context) {
    LOADING.store(false, Ordering::Relaxed);
    if is_master(ctx) {
        rebuild_schedule(ctx);
    }
}

/// This server became a master (promotion) or a replica (demotion).
pub fn on_role_changed(ctx: &Context, now_master: bool) {
    MASTER.store(now_master, Ordering::Relaxed);
    if now_master {
        // Tokens must exceed every token the old master granted, even those
        // that never reached us: the clock part of the generator covers
        // them; the keyspace scan raises the floor to every token we saw.
        rebuild_schedule(ctx);
    } else {
        // Redis answers and disconnects every blocked client on demotion;
        // our timers stop acting (the new master's deletions arrive by
        // replication).
        let timer = state::with(|s| {
            s.schedule = Default::default();
            s.expiry_timer.take()
        });
        if let Some((id, _)) = timer {
            ffi::stop_timer(ctx, id);
        }
    }
}
