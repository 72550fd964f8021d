//! The command layer: one small function per command over one shared
//! preamble (`on_key`: parse, open the key, one `now`, run, make sure the
//! expiry timer covers what was scheduled). The lock rules are in `rules`;
//! storing, replicating and announcing a change happen in `key::LockKey`.

use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};

use crate::datatype::LOCK_TYPE;
use crate::expiry;
use crate::key::{lock_in, Current, LockKey};
use crate::metrics::{self, bump, STATS};
use crate::redis::calls;
use crate::rules::args::{self, ArgError, Wait};
use crate::rules::lock::{LoadedFrom, Lock, Released, TokensExhausted};
use crate::state::{self, now_ms};
use crate::waiting;

/// The reply to a `LOCK.APPLY` whose values are out of range.
const ERR_APPLY_RANGE: &str = "ERR LOCK.APPLY refused: owner 1..1024 bytes, holds >= 1, token 1..2^63-1, deadline-ms <= now + 31 days";

/// Maps a parse failure to its reply.
fn bad(e: ArgError) -> RedisError {
    match e {
        ArgError::Arity => RedisError::WrongArity,
        ArgError::Invalid(msg) => RedisError::Str(msg),
    }
}

/// Parses the arguments after the command name with `parse`, without
/// allocating (no command takes more than five; anything past eight is
/// dropped, which leaves the request invalid, as it was); returns the key
/// name with the request.
fn parsed<'a, R>(
    args: &'a [RedisString],
    parse: impl FnOnce(&[&'a [u8]]) -> Result<R, ArgError>,
) -> Result<(&'a RedisString, R), RedisError> {
    let mut buf: [&'a [u8]; 8] = [&[]; 8];
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

/// `LOCK.ACQUIRE key owner ttl-ms [WAIT timeout-ms]`
pub fn acquire(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    on_key(ctx, &args, args::acquire, |key, req, now| {
        let current = match key.current(now)? {
            Current::Free => None,
            Current::Held(lock) => Some(lock),
            // Expired just now (waiters come first): look again.
            Current::Expired => key.lock()?,
        };
        match current {
            None => {
                let (token, others_wait) =
                    state::with(|s| (s.tokens.next(now), !s.queues.is_empty()));
                let token = token.map_err(|_| RedisError::Str(TokensExhausted::REPLY))?;
                key.store_grant(Lock::grant(req.owner, token, now, req.ttl_ms))?;
                bump(&STATS.grants);
                if others_wait {
                    if let Some(lock) = key.lock()? {
                        key.admit_same_owner(lock, now);
                    }
                }
                Ok(integer(token))
            }
            Some(lock) if lock.is_held_by(req.owner) => {
                let old = lock.deadline_ms;
                let token = lock
                    .reenter(req.owner, now, req.ttl_ms)
                    .map_err(|_| RedisError::Str("ERR lock changed hands"))?;
                key.updated(lock, old);
                bump(&STATS.reentries);
                Ok(integer(token))
            }
            Some(_) => {
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
pub fn renew(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    on_key(ctx, &args, args::renew, |key, req, now| {
        if let Current::Held(lock) = key.current(now)? {
            let old = lock.deadline_ms;
            if lock.renew(req.owner, now, req.ttl_ms).is_ok() {
                key.updated(lock, old);
                bump(&STATS.renewals);
                return Ok(RedisValue::Integer(1));
            }
        }
        bump(&STATS.renew_misses);
        Ok(RedisValue::Integer(0))
    })
}

/// `LOCK.RELEASE key owner`
pub fn release(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    on_key(ctx, &args, args::release, |key, req, now| {
        if let Current::Held(lock) = key.current(now)? {
            let (deadline, token) = (lock.deadline_ms, lock.token);
            match lock.release(req.owner) {
                Ok(Released::StillHeld(holds)) => {
                    key.updated(lock, deadline);
                    bump(&STATS.releases);
                    return Ok(integer(holds));
                }
                Ok(Released::Free) => {
                    key.remove(deadline, token, c"lock.release", now)?;
                    bump(&STATS.releases);
                    return Ok(RedisValue::Integer(0));
                }
                Err(_) => {}
            }
        }
        bump(&STATS.release_misses);
        Ok(RedisValue::Null)
    })
}

/// `LOCK.FORCERELEASE key`
pub fn force_release(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    on_key(ctx, &args, args::key_only, |key, (), now| {
        match key.current(now)? {
            Current::Held(lock) => {
                key.remove(lock.deadline_ms, lock.token, c"lock.forcerelease", now)?;
                bump(&STATS.forced_releases);
                Ok(RedisValue::Integer(1))
            }
            Current::Free | Current::Expired => Ok(RedisValue::Integer(0)),
        }
    })
}

/// `LOCK.INFO key`: read-only; a lock whose lease has passed is never shown
/// (also on a replica, which waits for the master to delete it).
pub fn info(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let (name, ()) = parsed(&args, args::key_only)?;
    let key = ctx.open_key(name);
    let lock = key
        .get_value::<Lock>(&LOCK_TYPE)
        .map_err(|_| RedisError::WrongType)?;
    let now = now_ms();
    match lock {
        Some(lock) if !lock.is_expired(now) => {
            let db = calls::selected_db(ctx);
            let waiters = state::with(|s| s.queues.waiting(db, name.as_slice()));
            calls::reply_lock_info(ctx, lock, lock.remaining_ms(now), waiters);
            Ok(RedisValue::NoReply)
        }
        _ => Ok(RedisValue::Null),
    }
}

/// `LOCK.APPLY key owner holds token deadline-ms` — internal: the effect of
/// a change as the master replicates it and as the AOF records it. Accepted
/// only from the master's replication stream or while loading the AOF.
pub fn apply(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if !ctx
        .get_flags()
        .intersects(ContextFlags::REPLICATED | ContextFlags::LOADING)
    {
        return Err(RedisError::Str(
            "ERR LOCK.APPLY is internal: accepted only from the replication stream or the AOF",
        ));
    }
    let (name, req) = parsed(&args, args::apply)?;
    // The stream is checked like any other input: a value the commands
    // could never have produced is refused, and nothing changes.
    let lock = Lock::from_loaded(
        LoadedFrom::Server,
        req.owner,
        req.holds,
        req.token,
        req.deadline_ms,
        now_ms(),
    )
    .map_err(|why| {
        ctx.log_warning(&format!("fencelock: refused LOCK.APPLY: {}", why.reason()));
        RedisError::Str(ERR_APPLY_RANGE)
    })?;
    state::with(|s| s.tokens.observe(lock.token));
    let key = ctx.open_key_writable(name);
    if lock_in(&key).is_err() {
        key.delete()?;
    }
    key.set_value(&LOCK_TYPE, lock)
        .map_err(|_| RedisError::Str("ERR could not store the lock"))?;
    metrics::lock_stored();
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
