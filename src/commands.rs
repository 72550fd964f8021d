//! The command layer: one small function per command over one shared
//! preamble (`on_key`: parse, open the key, one `now`, run, make sure the
//! expiry timer covers what was scheduled). The lock rules are in `rules`;
//! storing, replicating and announcing a change happen in `key::LockKey`.

use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};

use crate::datatype::LOCK_TYPE;
use crate::expiry;
use crate::key::{count_grant, lock_in, LockKey};
use crate::metrics::{self, bump, STATS};
use crate::redis::calls;
use crate::rules::args::{self, Apply, ArgError, Wait};
use crate::rules::lock::{
    Admit, Holder, LoadedFrom, Lock, ReleaseError, Released, TokensExhausted,
};
use crate::state::{self, now_ms};
use crate::waiting;

/// The reply to a `LOCK.APPLY` whose values are out of range.
const ERR_APPLY_RANGE: &str = "ERR LOCK.APPLY refused: owner 1..1024 bytes, holds >= 1, token 1..2^63-1, deadline-ms <= now + 31 days, and the key's rules (one exclusive holder alone, permits within the limit, one kind)";

/// Maps a parse failure to its reply.
fn bad(e: ArgError) -> RedisError {
    match e {
        ArgError::Arity => RedisError::WrongArity,
        ArgError::Invalid(msg) => RedisError::Str(msg),
    }
}

/// Parses the arguments after the command name with `parse`, without
/// allocating (no command takes more than eleven; anything past twelve is
/// dropped, which leaves the request invalid, as it was); returns the key
/// name with the request.
fn parsed<'a, R>(
    args: &'a [RedisString],
    parse: impl FnOnce(&[&'a [u8]]) -> Result<R, ArgError>,
) -> Result<(&'a RedisString, R), RedisError> {
    let mut buf: [&'a [u8]; 12] = [&[]; 12];
    let rest = args.get(1..).unwrap_or_default();
    let n = rest.len().min(buf.len());
    for (slot, arg) in buf.iter_mut().zip(rest) {
        *slot = arg.as_slice();
    }
    let req = parse(buf.get(..n).unwrap_or_default()).map_err(bad)?;
    let name = args.get(1).ok_or(RedisError::WrongArity)?;
    Ok((name, req))
}

/// The preamble every writing command shares: parse, open the key, run
/// `body` at one `now`, then arm the expiry timer for whatever it scheduled.
fn on_key<'a, R>(
    ctx: &Context,
    args: &'a [RedisString],
    parse: impl FnOnce(&[&'a [u8]]) -> Result<R, ArgError>,
    body: impl FnOnce(&LockKey<'_>, R, u64) -> RedisResult,
) -> RedisResult {
    let (name, req) = parsed(args, parse)?;
    let key = LockKey::open(ctx, name);
    let reply = body(&key, req, now_ms());
    expiry::ensure_armed(ctx);
    reply
}

fn integer(v: u64) -> RedisValue {
    RedisValue::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

/// `LOCK.ACQUIRE key owner ttl-ms [SHARED | LIMIT permits [COUNT n]] [WAIT timeout-ms]`
pub fn acquire(ctx: &Context, args: &[RedisString]) -> RedisResult {
    on_key(ctx, args, args::acquire, |key, req, now| {
        let current = key.current(now)?;
        if let (Some(id), Some(lock)) = (req.id, current.as_deref()) {
            if let Some(reply) = lock.answered(req.owner, id) {
                // A retry of an acquire this owner already had applied.
                bump(&STATS.retries_answered);
                return Ok(integer(reply));
            }
        }
        let Some(lock) = current else {
            // A free key: the first grant sets its kind.
            let wall = state::wall_offset().to_wall(now);
            let (token, others_wait) = state::with(|s| (s.tokens.next(wall), !s.queues.is_empty()));
            let token = token.map_err(|_| RedisError::Str(TokensExhausted::REPLY))?;
            let mut lock = Lock::grant(req.owner, req.want, token, now, req.ttl_ms);
            if let Some(h) = lock.holders.first_mut() {
                h.remember(req.id, token);
            }
            key.store_new(lock)?;
            count_grant(req.want);
            if others_wait {
                // Waiters of this owner re-enter at once.
                key.serve(now)?;
            }
            return Ok(integer(token));
        };
        match lock.admit(req.owner, req.want, key.waiters() == 0) {
            Admit::Fresh => {
                let wall = state::wall_offset().to_wall(now);
                let token = state::with(|s| s.tokens.next(wall))
                    .map_err(|_| RedisError::Str(TokensExhausted::REPLY))?;
                let i = lock.add(req.owner, req.want, token, now, req.ttl_ms);
                if let Some(h) = lock.holders.get_mut(i) {
                    h.remember(req.id, token);
                }
                key.holder_changed(lock, i, None);
                count_grant(req.want);
                Ok(integer(token))
            }
            Admit::Reenter(i) => {
                let before = lock.holders.get(i).map(|h| h.deadline_ms);
                let token = lock
                    .reenter(i, req.want, now, req.ttl_ms)
                    .ok_or(RedisError::Str("ERR lock changed hands"))?;
                if let Some(h) = lock.holders.get_mut(i) {
                    h.remember(req.id, token);
                }
                key.holder_changed(lock, i, before);
                bump(&STATS.reentries);
                Ok(integer(token))
            }
            Admit::Refused(why) => Err(RedisError::String(why.reply().into_owned())),
            Admit::Busy => {
                let may_block = !ctx.get_flags().intersects(
                    ContextFlags::DENY_BLOCKING | ContextFlags::MULTI | ContextFlags::LUA,
                );
                match req.wait {
                    Wait::No => {}
                    _ if !may_block => {}
                    Wait::Forever => return waiting::block(ctx, key, &req, None, now),
                    Wait::Ms(ms) => return waiting::block(ctx, key, &req, Some(ms), now),
                }
                bump(&STATS.denied);
                Ok(RedisValue::Null)
            }
        }
    })
}

/// `LOCK.RENEW key owner ttl-ms`
pub fn renew(ctx: &Context, args: &[RedisString]) -> RedisResult {
    on_key(ctx, args, args::renew, |key, req, now| {
        if let Some(lock) = key.current(now)? {
            if let Some((i, before)) = lock.renew(req.owner, now, req.ttl_ms) {
                key.holder_changed(lock, i, Some(before));
                bump(&STATS.renewals);
                return Ok(RedisValue::Integer(1));
            }
        }
        bump(&STATS.renew_misses);
        Ok(RedisValue::Integer(0))
    })
}

/// `LOCK.RELEASE key owner [COUNT n] [ID request-id]`
pub fn release(ctx: &Context, args: &[RedisString]) -> RedisResult {
    on_key(ctx, args, args::release, |key, req, now| {
        if let Some(lock) = key.current(now)? {
            if let Some(reply) = req.id.and_then(|id| lock.answered(req.owner, id)) {
                // A retry of a release this owner already had applied.
                bump(&STATS.retries_answered);
                return Ok(integer(reply));
            }
            match lock.release(req.owner, req.count) {
                Ok((i, Released::StillHeld(left))) => {
                    let deadline = lock.holders.get(i).map(|h| h.deadline_ms);
                    if let Some(h) = lock.holders.get_mut(i) {
                        h.remember(req.id, left);
                    }
                    key.holder_changed(lock, i, deadline);
                    bump(&STATS.releases);
                    // Permits returned, or an exclusive hold given up:
                    // waiters may fit now.
                    key.serve(now)?;
                    return Ok(integer(left));
                }
                Ok((_, Released::Gone(holder))) => {
                    key.holder_gone(lock, &holder, c"lock.release")?;
                    bump(&STATS.releases);
                    key.serve(now)?;
                    return Ok(RedisValue::Integer(0));
                }
                Err(ReleaseError::TooMany(held)) => {
                    return Err(RedisError::String(ReleaseError::reply(held)));
                }
                Err(ReleaseError::NotHolder) => {}
            }
        }
        bump(&STATS.release_misses);
        Ok(RedisValue::Null)
    })
}

/// `LOCK.FORCERELEASE key [owner]`
pub fn force_release(ctx: &Context, args: &[RedisString]) -> RedisResult {
    on_key(ctx, args, args::force_release, |key, req, now| {
        let Some(lock) = key.current(now)? else {
            return Ok(RedisValue::Integer(0));
        };
        match req.owner {
            None => {
                key.delete(lock)?;
                key.notify(c"lock.forcerelease");
            }
            Some(owner) => {
                let Some(holder) = lock.find(owner).and_then(|i| lock.remove(i)) else {
                    return Ok(RedisValue::Integer(0));
                };
                key.holder_gone(lock, &holder, c"lock.forcerelease")?;
            }
        }
        bump(&STATS.forced_releases);
        key.serve(now)?;
        Ok(RedisValue::Integer(1))
    })
}

/// `LOCK.INFO key`: read-only; a lease that has passed is never shown (also
/// on a replica, which waits for the master to remove it).
pub fn info(ctx: &Context, args: &[RedisString]) -> RedisResult {
    let (name, ()) = parsed(args, args::key_only)?;
    let key = ctx.open_key(name);
    let lock = key
        .get_value::<Lock>(&LOCK_TYPE)
        .map_err(|_| RedisError::WrongType)?;
    let now = now_ms();
    match lock {
        Some(lock) if lock.holders.iter().any(|h| !h.is_expired(now)) => {
            let db = calls::selected_db(ctx);
            let waiters = state::with(|s| s.queues.waiting(db, name.as_slice()));
            calls::reply_lock_info(ctx, lock, now, waiters);
            Ok(RedisValue::NoReply)
        }
        _ => Ok(RedisValue::Null),
    }
}

/// `LOCK.APPLY key ...` — internal: the effect of a change as the master
/// replicates it and as the AOF records it (see docs/INTERFACE.md).
/// Accepted only from the master's replication stream or while loading the
/// AOF.
pub fn apply(ctx: &Context, args: &[RedisString]) -> RedisResult {
    if !ctx
        .get_flags()
        .intersects(ContextFlags::REPLICATED | ContextFlags::LOADING)
    {
        return Err(RedisError::Str(
            "ERR LOCK.APPLY is internal: accepted only from the replication stream or the AOF",
        ));
    }
    let (name, req) = parsed(args, args::apply)?;
    let now = now_ms();
    // The stream's deadlines are wall-clock times (`rules::clock`).
    let wall = state::wall_offset();
    // The stream is checked like any other input: a value the commands
    // could never have produced is refused, and nothing changes.
    let refused = |why: crate::rules::lock::InvalidLock| {
        ctx.log_warning(&format!("fencelock: refused LOCK.APPLY: {}", why.reason()));
        RedisError::Str(ERR_APPLY_RANGE)
    };
    let key = ctx.open_key_writable(name);
    let store = |lock: Lock| -> Result<(), RedisError> {
        if lock_in(&key).is_err() {
            key.delete()?;
        }
        key.set_value(&LOCK_TYPE, lock)
            .map_err(|_| RedisError::Str("ERR could not store the lock"))?;
        metrics::lock_stored();
        Ok(())
    };
    match req {
        Apply::Exclusive {
            owner,
            holds,
            token,
            deadline_ms,
        } => {
            let deadline_ms = wall.to_lease(deadline_ms);
            let lock = Lock::from_loaded(LoadedFrom::Server, owner, holds, token, deadline_ms, now)
                .map_err(refused)?;
            state::with(|s| s.tokens.observe(token));
            store(lock)?;
        }
        Apply::Share {
            owner,
            only,
            limit,
            exclusive,
            shared,
            token,
            deadline_ms,
            memo,
        } => {
            let holder = Holder::from_loaded(
                LoadedFrom::Server,
                owner,
                exclusive,
                shared,
                token,
                wall.to_lease(deadline_ms),
                memo,
                now,
            )
            .map_err(refused)?;
            match lock_in(&key) {
                Ok(Some(lock)) if !only => lock.upsert(limit, holder).map_err(refused)?,
                _ => {
                    let mut lock = Lock::default();
                    lock.upsert(limit, holder).map_err(refused)?;
                    store(lock)?;
                }
            }
            state::with(|s| s.tokens.observe(token));
        }
        Apply::Drop { owner } => {
            if let Ok(Some(lock)) = lock_in(&key) {
                if lock.find(owner).and_then(|i| lock.remove(i)).is_some() && lock.is_empty() {
                    key.delete()?;
                }
            }
        }
    }
    // Redis never propagates module commands by itself: without this, a
    // replica's own AOF would miss every lock it received, and a replica
    // restarted from it would lose them. (A replica feeds only its AOF from
    // here; its sub-replicas get the master's stream as is. Nothing is
    // propagated while loading.)
    ctx.replicate_verbatim();
    // A replica keeps no schedule (it never expires leases itself); the
    // schedule is rebuilt from the keyspace when loading ends and on
    // promotion.
    Ok(RedisValue::SimpleStringStatic("OK"))
}
