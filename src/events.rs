//! The module's reactions to the server: a lock that arrives by `RESTORE`,
//! a lock that leaves its key by a generic command (DEL, RENAME, MOVE,
//! overwrite, FLUSHDB, SWAPDB) — found again under its new name, its
//! waiters served by the sweep timer — loading, and role changes.

use redis_module::{Context, ContextFlags};

use crate::datatype::LOCK_TYPE;
use crate::expiry;
use crate::key::LockKey;
use crate::redis::calls::{self, ScannedLock, WaitOutcome};
use crate::rules::lock::Lock;
use crate::rules::queue::QueueKey;
use crate::state::{self, is_master, now_ms};

/// The answer to cluster waiters whose lock was removed or moved by a
/// generic command (DEL, MIGRATE, FLUSHALL, ...).
const ERR_RETRY_ELSEWHERE: &str = "TRYAGAIN the lock was removed or moved to another node; retry";

/// The answer to waiters whose key now holds another type.
const ERR_NOW_OTHER_TYPE: &str = "WRONGTYPE the lock key now holds another kind of value";

/// Databases are looked for up to this number (Redis stops at `databases`).
const MAX_DBS: i32 = 100_000;

/// Records the role the server starts in.
pub fn init_role(ctx: &Context) {
    state::set_master_role(is_master(ctx));
}

/// A lock arrived by `RESTORE` (e.g. `MIGRATE` into this node): track its
/// holders' leases under its key, so they expire on time here.
pub fn on_lock_restored(db: i32, key: &[u8], lock: &Lock) {
    state::with(|s| {
        for h in &lock.holders {
            s.tokens.observe(h.token);
            s.track(h.deadline_ms, h.token, db, key);
        }
    });
    expiry::ensure_armed_detached();
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
        if state::is_master_role() && !state::is_loading() {
            s.relocated.insert(value, token);
            state::set_relocating(true);
            arm = true;
        }
        arm && s.sweep_timer.is_none()
    });
    if arm {
        let id = calls::start_detached_timer(0, on_sweep_timer);
        state::with(|s| s.sweep_timer = id);
    }
}

/// The queue of `key` lost its head waiter while others wait: serve it
/// right after the callback that saw it (the sweep timer).
pub fn serve_soon(key: QueueKey) {
    let arm = state::with(|s| {
        s.unserved.insert(key);
        s.sweep_timer.is_none()
    });
    if arm {
        let id = calls::start_detached_timer(0, on_sweep_timer);
        state::with(|s| s.sweep_timer = id);
    }
}

/// A lock value is being freed (maybe on a background thread): it did not
/// move anywhere.
pub fn on_lock_freed(value: usize) {
    if state::relocating() {
        state::with(|s| s.relocated.remove(&value));
    }
}

/// Every lock in every database, database by database.
fn for_each_db(ctx: &Context, mut f: impl FnMut(i32, Vec<ScannedLock>)) {
    let lock_type = *LOCK_TYPE.raw_type.borrow();
    let original_db = calls::selected_db(ctx);
    let mut db = 0;
    // Redis has at most a few thousand databases; stop at the first that
    // does not exist.
    while db < MAX_DBS && calls::select_db(ctx, db) {
        f(db, calls::scan_locks(ctx, lock_type));
        db += 1;
    }
    calls::select_db(ctx, original_db);
}

/// Finds the lock values that left their key but were not freed, and tracks
/// their leases where they are now (MOVE: another database; RENAME: another
/// name).
fn track_relocated(ctx: &Context) {
    let wanted = state::with(|s| {
        state::set_relocating(false);
        std::mem::take(&mut s.relocated)
    });
    if wanted.is_empty() {
        return;
    }
    for_each_db(ctx, |db, found| {
        state::with(|s| {
            for l in found
                .iter()
                .filter(|l| wanted.get(&l.value) == Some(&l.first_token))
            {
                for (deadline, token) in &l.leases {
                    s.track(*deadline, *token, db, &l.key);
                }
            }
        });
    });
}

fn arm_sweep_timer(ctx: &Context) {
    if state::with(|s| s.sweep_timer.is_some()) {
        return;
    }
    let id = calls::start_timer(ctx, 0, on_sweep_timer);
    state::with(|s| s.sweep_timer = id);
}

/// Re-arms an armed sweep timer at once (the wall clock was stepped: see
/// `expiry::on_cron`).
pub fn rearm_sweep_timer(ctx: &Context) {
    let Some(old) = state::with(|s| s.sweep_timer.take()) else {
        return;
    };
    calls::stop_timer(ctx, old);
    arm_sweep_timer(ctx);
}

/// The sweep timer: for every key whose lock may have vanished under its
/// waiters, hand the free name to the first waiter, or answer the waiters
/// with WRONGTYPE if the name now holds another type.
fn on_sweep_timer(ctx: &Context) {
    if is_master(ctx) && calls::writes_paused() {
        // Hand-offs write: they wait for the end of the pause.
        let id = calls::start_timer(ctx, expiry::PAUSED_RETRY_MS, on_sweep_timer);
        state::with(|s| s.sweep_timer = id);
        return;
    }
    let (keys, unserved): (Vec<_>, Vec<_>) = state::with(|s| {
        s.sweep_timer = None;
        (s.orphaned.drain().collect(), s.unserved.drain().collect())
    });
    if !is_master(ctx) {
        return;
    }
    track_relocated(ctx);
    let now = now_ms();
    // Queues whose head waiter left: whoever fits now is served (the key
    // is where it was; nothing moved).
    for (db, name) in unserved {
        if !calls::select_db(ctx, db) {
            continue;
        }
        let name_string = calls::key_string(ctx, &name);
        let key = LockKey::open(ctx, &name_string);
        if key.current(now).is_ok() {
            let _ = key.serve(now);
        }
    }
    // In a cluster the name may have left this node (MIGRATE deletes it
    // here like DEL does), so granting it here could create a lock in a
    // slot this node no longer serves. Waiters are told to retry instead;
    // cluster clients re-route the retry (MOVED/ASK) to the key's node.
    let cluster = ctx.get_flags().contains(ContextFlags::CLUSTER);
    for (db, name) in keys {
        let answer_all = |error: &'static str| {
            for w in state::with(|s| s.queues.take_all(db, &name)) {
                calls::unblock_client(w.id, WaitOutcome::Error(error.into()));
            }
        };
        if cluster {
            answer_all(ERR_RETRY_ELSEWHERE);
            continue;
        }
        if !calls::select_db(ctx, db) {
            continue;
        }
        let name_string = calls::key_string(ctx, &name);
        let key = LockKey::open(ctx, &name_string);
        // Passed leases expire first (serving the waiters); then whatever
        // is free (the whole name, or room beside the holders) goes to them.
        match key.current(now) {
            Ok(_) => {
                let _ = key.serve(now);
            }
            Err(_) => answer_all(ERR_NOW_OTHER_TYPE),
        }
    }
    expiry::ensure_armed(ctx);
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

/// Rebuilds the lease schedule from the keyspace (every database), then
/// arms the expiry timer: overdue leases are expired at once.
fn rebuild_schedule(ctx: &Context) {
    state::with(|s| s.schedule = Default::default());
    for_each_db(ctx, |db, found| {
        state::with(|s| {
            for l in &found {
                for (deadline, token) in &l.leases {
                    s.tokens.observe(*token);
                    s.track(*deadline, *token, db, &l.key);
                }
            }
        });
    });
    expiry::ensure_armed(ctx);
}

/// Loading (RDB, AOF or a full resync) started.
pub fn on_loading_started() {
    state::set_loading(true);
}

/// Loading (RDB, AOF or a full resync) ended.
pub fn on_loading_ended(ctx: &Context) {
    state::set_loading(false);
    if is_master(ctx) {
        rebuild_schedule(ctx);
    }
}

/// This server became a master (promotion) or a replica (demotion).
pub fn on_role_changed(ctx: &Context, now_master: bool) {
    state::set_master_role(now_master);
    if now_master {
        // Tokens must exceed every token the old master granted, even those
        // that never reached us: the clock part of the generator covers
        // them; the keyspace scan raises the floor to every token we saw.
        rebuild_schedule(ctx);
    } else {
        // Redis answers and disconnects every blocked client on demotion;
        // our timers stop acting (the new master's deletions arrive by
        // replication).
        expiry::stop(ctx);
    }
}
