//! Leases end on time: one module timer, armed for the earliest deadline in
//! the lease schedule, expires every lease that is due (in batches) and
//! hands each freed lock to its first waiter. While Redis pauses writes it
//! waits, and expires everything due right after the pause.

use std::time::Instant;

use redis_module::Context;

use crate::key::LockKey;
use crate::metrics::{bump, STATS};
use crate::redis::calls;
use crate::rules::schedule::DueLease;
use crate::state::{self, is_master, now_ms, State};

/// Leases one run of the expiry timer takes from the schedule at a time;
/// it looks at the clock after each such chunk.
const EXPIRY_CHUNK: usize = 64;

/// How long one run of the expiry timer may go on before it yields to the
/// event loop (and re-arms itself at once): a burst of many leases ending
/// together delays other clients' commands by about this much, not by the
/// whole burst. Redis's own fast expiry cycle uses the same budget.
const EXPIRY_SLICE_NS: u128 = 1_000_000;

/// The longer slice of a run that starts behind: when the earliest due lease
/// is already [`BEHIND_MS`] late. Redis 7.0 runs a module timer re-armed
/// "at once" no sooner than 1 ms later, so 1 ms slices cap expiry at half
/// the server's time, which a steady stream of expiries on a slow machine
/// can exceed; 3 ms slices raise the cap to three quarters while keeping
/// other clients' waits within a few milliseconds.
const BEHIND_SLICE_NS: u128 = 3_000_000;

/// See [`BEHIND_SLICE_NS`].
const BEHIND_MS: u64 = 2;

/// While Redis pauses writes, the timers look again this often (the pause
/// ends at a time Redis does not announce).
pub const PAUSED_RETRY_MS: u64 = 10;

/// Makes sure the expiry timer fires by the earliest tracked deadline.
/// Every entry path that may have tracked a lease calls this once at its
/// end; it costs nothing unless a lease earlier than the armed timer (or
/// the first lease) was tracked.
pub fn ensure_armed(ctx: &Context) {
    let next = state::with(|s| {
        std::mem::take(&mut s.arm_needed)
            .then(|| s.schedule.next_deadline())
            .flatten()
    });
    arm_deadline_timer(ctx, |s| &mut s.expiry_timer, next, on_expiry_timer);
}

/// Arms the deadline timer kept in `slot` (its id and the deadline it is
/// armed for) to fire at `next`, unless it is armed for `next` or earlier
/// already; an armed timer for a later deadline is stopped first. Shared by
/// the expiry timer and the wait timer (`waiting`).
pub fn arm_deadline_timer(
    ctx: &Context,
    slot: fn(&mut State) -> &mut Option<(u64, u64)>,
    next: Option<u64>,
    callback: calls::TimerCallback,
) {
    let Some(next) = next else {
        return;
    };
    let old = state::with(|s| match *slot(s) {
        Some((_, armed_for)) if armed_for <= next => None,
        current => Some(current.map(|(id, _)| id)),
    });
    let Some(old) = old else {
        return;
    };
    if let Some(id) = old {
        calls::stop_timer(ctx, id);
    }
    let id = calls::start_timer(ctx, next.saturating_sub(now_ms()), callback);
    state::with(|s| *slot(s) = id.map(|id| (id, next)));
}

/// Redis's cron (`hz` times a second, on the monotonic clock) measures the
/// wall clock's offset from the lease clock (`state::wall_offset`). Redis 7.0
/// times module timers by the wall clock, so after a step of it an armed
/// timer fires early (harmless: nothing is due on the lease clock, and it
/// re-arms) or late by the whole step back — leases would outlive their
/// deadline by that much. The cron notices the step and re-arms the timers
/// on the new wall clock.
pub fn on_cron(ctx: &Context) {
    if !state::refresh_wall_offset() {
        return;
    }
    if is_master(ctx) {
        let old = state::with(|s| {
            s.arm_needed = true;
            s.expiry_timer.take()
        });
        if let Some((id, _)) = old {
            calls::stop_timer(ctx, id);
        }
        ensure_armed(ctx);
    }
    crate::events::rearm_sweep_timer(ctx);
    crate::waiting::rearm_wait_timer(ctx);
}

/// [`ensure_armed`] from a callback that has no context of its own.
pub fn ensure_armed_detached() {
    let ctx = state::detached_context();
    if !ctx.is_null() {
        ensure_armed(&Context::new(ctx));
    }
}

/// Stops the expiry timer and forgets every lease (demotion: the new
/// master's deletions arrive by replication).
pub fn stop(ctx: &Context) {
    let timer = state::with(|s| {
        s.schedule = Default::default();
        s.expiry_timer.take()
    });
    if let Some((id, _)) = timer {
        calls::stop_timer(ctx, id);
    }
}

/// Re-arms the timer to run again at once (after a batch) or shortly
/// (during a pause), whatever the schedule says.
fn again_in(ctx: &Context, delay_ms: u64, now: u64) {
    let id = calls::start_timer(ctx, delay_ms, on_expiry_timer);
    state::with(|s| s.expiry_timer = id.map(|id| (id, now)));
}

/// Removes the lease `lease` if a holder still carries it (a stale entry —
/// key deleted, overwritten, renewed — must never touch another), hands
/// what it freed to the waiters.
fn expire(ctx: &Context, lease: DueLease, now: u64) {
    if !calls::select_db(ctx, lease.at.db) {
        return;
    }
    let name = calls::key_string(ctx, &lease.at.key);
    let key = LockKey::open(ctx, &name);
    if let Ok(Some(lock)) = key.lock() {
        if let Some(holder) = lock
            .find_lease(lease.token, lease.deadline_ms)
            .and_then(|i| lock.remove(i))
        {
            bump(&STATS.expired);
            if key.holder_gone(lock, &holder, c"lock.expire").is_ok() {
                let _ = key.serve(now);
            }
        }
    }
}

/// The expiry timer fired: remove every lease that is due (for at most
/// [`EXPIRY_SLICE_NS`] per run), hand each freed lock to its first waiter,
/// and re-arm for the next deadline.
fn on_expiry_timer(ctx: &Context) {
    state::with(|s| s.expiry_timer = None);
    if !is_master(ctx) {
        state::with(|s| s.schedule = Default::default());
        return;
    }
    let now = now_ms();
    if calls::writes_paused() {
        // Nothing may be written or propagated during a pause: the leases
        // stay due (reads never show them) and expire right after it.
        again_in(ctx, PAUSED_RETRY_MS, now);
        return;
    }
    let started = Instant::now();
    let behind = state::with(|s| s.schedule.next_deadline())
        .is_some_and(|first| now.saturating_sub(first) >= BEHIND_MS);
    let slice = if behind {
        BEHIND_SLICE_NS
    } else {
        EXPIRY_SLICE_NS
    };
    let mut more = true;
    while more && started.elapsed().as_nanos() < slice {
        let due = state::with(|s| s.schedule.pop_due(now, EXPIRY_CHUNK));
        more = due.len() == EXPIRY_CHUNK;
        for lease in due {
            expire(ctx, lease, now);
        }
    }
    if more {
        // Yield to clients, then go on at once.
        again_in(ctx, 0, now);
    } else {
        // No timer is armed now: arm one for the next deadline, if any.
        state::with(|s| s.arm_needed = true);
        ensure_armed(ctx);
    }
}
