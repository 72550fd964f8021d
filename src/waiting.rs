//! Blocked acquirers (`LOCK.ACQUIRE ... WAIT`): blocking a client into its
//! key's FIFO queue, and the four ways a wait ends — granted by a hand-off
//! (`key::LockKey::hand_off`), timed out, unblocked by `CLIENT UNBLOCK`, or
//! abandoned by a disconnect (`CLIENT KILL`, a closed socket, demotion).

use redis_module::{Context, RedisError, RedisResult, RedisValue};

use crate::events;
use crate::key::LockKey;
use crate::metrics::{bump, STATS};
use crate::redis::calls::{self, WaitHandlers, WaitOutcome};
use crate::rules::args::Acquire;
use crate::rules::queue::{Waiter, WaiterId};
use crate::state;

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
    let Some(id) = calls::block_client(ctx, wait_ms.unwrap_or(0), &HANDLERS) else {
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
    Ok(RedisValue::NoReply)
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

/// The wait timed out (or `CLIENT UNBLOCK` without ERROR): leave the queue,
/// answer nil.
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
