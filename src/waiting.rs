//! Blocked acquirers (`LOCK.ACQUIRE ... WAIT`): blocking a client into its
//! key's FIFO queue, and the four ways a wait ends — granted by a hand-off
//! (`key::LockKey::serve`), timed out, unblocked by `CLIENT UNBLOCK`, or
//! abandoned by a disconnect (`CLIENT KILL`, a closed socket, demotion).
//!
//! Waits are timed out by the module's own timer, on the lease clock, not
//! by Redis's blocked-client timeout: in Redis 7.0 a client answered by the
//! module (`RedisModule_UnblockClient`) whose timeout passes before the
//! answer is written is unblocked with no reply at all (the timeout sees it
//! answered and skips the timeout callback, then detaches the client from
//! the pending answer) — a waiter granted in the event-loop turn its wait
//! ended would never hear of its grant. With one way to end a wait there
//! is no such race, and a step of the wall clock does not move waits.

use redis_module::{Context, RedisError, RedisResult, RedisValue};

use crate::key::LockKey;
use crate::metrics::{bump, STATS};
use crate::redis::calls::{self, WaitHandlers, WaitOutcome};
use crate::rules::args::Acquire;
use crate::rules::queue::{Waiter, WaiterId};
use crate::state::{self, now_ms};
use crate::{events, expiry};

/// What Redis's callbacks for a blocked acquirer do.
static HANDLERS: WaitHandlers = WaitHandlers {
    reply,
    timed_out,
    abandoned,
};

/// Blocks the client behind earlier waiters for the key. The reply comes
/// later: the token when granted, nil when the wait times out.
pub fn block(
    ctx: &Context,
    key: &LockKey<'_>,
    req: &Acquire<'_>,
    wait_ms: Option<u64>,
    now_ms: u64,
) -> RedisResult {
    // No timeout for Redis to enforce: ours is the wait timer below.
    let Some(id) = calls::block_client(ctx, 0, &HANDLERS) else {
        return Err(RedisError::Str("ERR could not block the client"));
    };
    let waiter = Waiter {
        id,
        owner: req.owner.to_vec(),
        want: req.want,
        request_id: req.id.map(<[u8]>::to_vec),
        ttl_ms: req.ttl_ms,
        wait_deadline_ms: wait_ms.map(|ms| now_ms.saturating_add(ms)),
    };
    state::with(|s| s.queues.push(key.db(), key.name(), waiter));
    arm_wait_timer(ctx);
    Ok(RedisValue::NoReply)
}

/// Makes sure the wait timer fires by the earliest wait deadline.
fn arm_wait_timer(ctx: &Context) {
    let next = state::with(|s| s.queues.next_wait_deadline());
    expiry::arm_deadline_timer(ctx, |s| &mut s.wait_timer, next, on_wait_timer);
}

/// Re-arms the wait timer (the wall clock was stepped, and Redis times
/// module timers by it: see `expiry::on_cron`).
pub fn rearm_wait_timer(ctx: &Context) {
    if let Some((id, _)) = state::with(|s| s.wait_timer.take()) {
        calls::stop_timer(ctx, id);
    }
    arm_wait_timer(ctx);
}

/// The wait timer fired: every wait that has ended leaves its queue and is
/// answered nil; then the timer is armed for the next wait deadline.
fn on_wait_timer(ctx: &Context) {
    state::with(|s| s.wait_timer = None);
    let ended = state::with(|s| s.queues.timed_out(now_ms()));
    for id in ended {
        if leave(id) {
            bump(&STATS.wait_timeouts);
            calls::unblock_client(id, WaitOutcome::Nil);
        }
    }
    arm_wait_timer(ctx);
}

/// Writes a blocked client's reply.
fn reply(ctx: &Context, outcome: WaitOutcome) {
    match outcome {
        WaitOutcome::Granted(token) => {
            ctx.reply(Ok(RedisValue::Integer(
                i64::try_from(token).unwrap_or(i64::MAX),
            )));
        }
        WaitOutcome::Nil => {
            ctx.reply(Ok(RedisValue::Null));
        }
        WaitOutcome::Error(msg) => {
            ctx.reply_error_string(&msg);
        }
    }
}

/// `CLIENT UNBLOCK` without ERROR (Redis calls it the timeout; the module's
/// own waits end by the wait timer): leave the queue, answer nil.
fn timed_out(ctx: &Context, id: WaiterId) {
    if leave(id) {
        bump(&STATS.wait_timeouts);
    }
    ctx.reply(Ok(RedisValue::Null));
}

/// The waiting client is gone (disconnect, `CLIENT KILL`, `CLIENT UNBLOCK
/// ... ERROR`, demotion): leave the queue so the lock is never handed to a
/// client that cannot receive it.
fn abandoned(id: WaiterId) {
    if leave(id) {
        bump(&STATS.wait_abandoned);
    }
}

/// Takes a waiter out of its queue; when it was the head and others still
/// wait, what it waited for may now fit someone behind it, so its key is
/// served right after this callback (by the sweep timer: these callbacks
/// may not write). False when it was not queued.
fn leave(id: WaiterId) -> bool {
    let Some((_, serve)) = state::with(|s| s.queues.remove(id)) else {
        return false;
    };
    if let Some(key) = serve {
        events::serve_soon(key);
    }
    true
}
