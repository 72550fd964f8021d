//! The command layer: one small function per command — parse, apply the lock
//! rules to the key, reply. Storing, replicating and announcing the change
//! happen in `engine::Site`.

use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};

use crate::args::{self, ArgError, Wait};
use crate::engine::{lock_in, Site};
use crate::ffi;
use crate::lock::{Lock, Released, TokensExhausted};
use crate::state::{self, now_ms};
use crate::stats::{bump, STATS};
use crate::waiting;

/// The reply to a `LOCK.APPLY` whose values are out of range.
const ERR_APPLY_RANGE: &str = "ERR LOCK.APPLY refused: owner 1..1024 bytes, holds >= 1, token <= 8070450532247928832, deadline-ms <= now + 31 days";

/// Maps a parse failure to its reply.
fn bad(e: ArgError) -> RedisError {
    match e {
        ArgError::Arity => RedisError::WrongArity,
        ArgError::Invalid(msg) => RedisError::Str(msg),
    }
}

/// The arguments after the command name, as byte slices, without
/// allocating. No command takes more than five; anything past eight is
/// dropped, which leaves the request invalid, as it was.
fn raw_args<'a, 'b>(args: &'a [RedisString], buf: &'b mut [&'a [u8]; 8]) -> &'b [&'a [u8]] {
    let rest = args.get(1..).unwrap_or_default();
    let n = rest.len().min(buf.len());
    for (slot, arg) in buf.iter_mut().zip(rest) {
        *slot = arg.as_slice();
    }
    buf.get(..n).unwrap_or_default()
}

fn token_reply(token: u64) -> RedisValue {
    RedisValue::Integer(i64::try_from(token).unwrap_or(i64::MAX))
}

/// `LOCK.ACQUIRE key owner ttl-ms [WAIT timeout-ms]`
pub fn acquire(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let mut buf = [&[][..]; 8];
    let raw = raw_args(&args, &mut buf);
    let req = args::acquire(raw).map_err(bad)?;
    let Some(name) = args.get(1) else {
        return Err(RedisError::WrongArity);
    };
    let site = Site::open(ctx, name);
    let now = now_ms();
    let mut current = lock_in(&site.key)?;
    if let Some(lock) = current.as_deref() {
        if lock.is_expired(now) {
            // The timer has not run yet: expire first (waiters come first),
            // then look again.
            site.expire(lock.deadline_ms, lock.token, now)?;
            current = lock_in(&site.key)?;
        }
    }
    match current {
        None => {
            let (token, others_wait) = state::with(|s| (s.tokens.next(now), !s.queues.is_empty()));
            let token = token.map_err(|_| RedisError::Str(TokensExhausted::REPLY))?;
            site.store_grant(Lock::grant(req.owner, token, now, req.ttl_ms))?;
            bump(&STATS.grants);
            if others_wait {
                if let Some(lock) = lock_in(&site.key)? {
                    site.admit_same_owner(lock, now);
                }
            }
            Ok(token_reply(token))
        }
        Some(lock) if lock.is_held_by(req.owner) => {
            let old = lock.deadline_ms;
            let token = lock
                .reenter(req.owner, now, req.ttl_ms)
                .map_err(|_| RedisError::Str("ERR lock changed hands"))?;
            site.updated(lock, old);
            bump(&STATS.reentries);
            Ok(token_reply(token))
        }
        Some(_) => {
            let may_block = !ctx
                .get_flags()
                .intersects(ContextFlags::DENY_BLOCKING | ContextFlags::MULTI | ContextFlags::LUA);
            match req.wait {
                Wait::No => {}
                _ if !may_block => {}
                Wait::Forever => return waiting::block(ctx, &site, &req, None, now),
                Wait::Ms(ms) => return waiting::block(ctx, &site, &req, Some(ms), now),
            }
            bump(&STATS.denied);
            Ok(RedisValue::Null)
        }
    }
}

/// `LOCK.RENEW key owner ttl-ms`
pub fn renew(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let mut buf = [&[][..]; 8];
    let raw = raw_args(&args, &mut buf);
    let req = args::renew(raw).map_err(bad)?;
    let Some(name) = args.get(1) else {
        return Err(RedisError::WrongArity);
    };
    let site = Site::open(ctx, name);
    let now = now_ms();
    match lock_in(&site.key)? {
        Some(lock) if lock.is_expired(now) => {
            site.expire(lock.deadline_ms, lock.token, now)?;
        }
        Some(lock) if lock.is_held_by(req.owner) => {
            let old = lock.deadline_ms;
            if lock.renew(req.owner, now, req.ttl_ms).is_ok() {
                site.updated(lock, old);
                bump(&STATS.renewals);
                return Ok(RedisValue::Integer(1));
            }
        }
        _ => {}
    }
    bump(&STATS.renew_misses);
    Ok(RedisValue::Integer(0))
}

/// `LOCK.RELEASE key owner`
pub fn release(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let mut buf = [&[][..]; 8];
    let raw = raw_args(&args, &mut buf);
    let req = args::release(raw).map_err(bad)?;
    let Some(name) = args.get(1) else {
        return Err(RedisError::WrongArity);
    };
    let site = Site::open(ctx, name);
    let now = now_ms();
    match lock_in(&site.key)? {
        Some(lock) if lock.is_expired(now) => {
            site.expire(lock.deadline_ms, lock.token, now)?;
        }
        Some(lock) if lock.is_held_by(req.owner) => {
            let (deadline, token) = (lock.deadline_ms, lock.token);
            match lock.release(req.owner) {
                Ok(Released::StillHeld(holds)) => {
                    site.updated(lock, deadline);
                    bump(&STATS.releases);
                    return Ok(RedisValue::Integer(
                        i64::try_from(holds).unwrap_or(i64::MAX),
                    ));
                }
                Ok(Released::Free) => {
                    site.remove(deadline, token, c"lock.release", now)?;
                    bump(&STATS.releases);
                    return Ok(RedisValue::Integer(0));
                }
                Err(_) => {}
            }
        }
        _ => {}
    }
    bump(&STATS.release_misses);
    Ok(RedisValue::Null)
}

/// `LOCK.FORCERELEASE key`
pub fn force_release(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let mut buf = [&[][..]; 8];
    let raw = raw_args(&args, &mut buf);
    args::key_only(raw).map_err(bad)?;
    let Some(name) = args.get(1) else {
        return Err(RedisError::WrongArity);
    };
    let site = Site::open(ctx, name);
    let now = now_ms();
    match lock_in(&site.key)? {
        Some(lock) if lock.is_expired(now) => {
            site.expire(lock.deadline_ms, lock.token, now)?;
            Ok(RedisValue::Integer(0))
        }
        Some(lock) => {
            site.remove(lock.deadline_ms, lock.token, c"lock.forcerelease", now)?;
            bump(&STATS.forced_releases);
            Ok(RedisValue::Integer(1))
        }
        None => Ok(RedisValue::Integer(0)),
    }
}

/// `LOCK.INFO key`: read-only; a lock whose lease has passed is never shown
/// (also on a replica, which waits for the master to delete it).
pub fn info(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let mut buf = [&[][..]; 8];
    let raw = raw_args(&args, &mut buf);
    args::key_only(raw).map_err(bad)?;
    let Some(name) = args.get(1) else {
        return Err(RedisError::WrongArity);
    };
    let key = ctx.open_key(name);
    let lock = key
        .get_value::<Lock>(&crate::datatype::LOCK_TYPE)
        .map_err(|_| RedisError::WrongType)?;
    let now = now_ms();
    match lock {
        Some(lock) if !lock.is_expired(now) => {
            let db = ffi::selected_db(ctx);
            let waiters = state::with(|s| s.queues.waiting(db, name.as_slice()));
            ffi::reply_lock_info(ctx, lock, lock.remaining_ms(now), waiters);
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
    let mut buf = [&[][..]; 8];
    let raw = raw_args(&args, &mut buf);
    let req = args::apply(raw).map_err(bad)?;
    let Some(name) = args.get(1) else {
        return Err(RedisError::WrongArity);
    };
    // The stream is checked like any other input: a value the commands
    // could never have produced is refused, and nothing changes.
    let lock = Lock::from_loaded(req.owner, req.holds, req.token, req.deadline_ms, now_ms())
        .map_err(|why| {
            ctx.log_warning(&format!("fencelock: refused LOCK.APPLY: {}", why.reason()));
            RedisError::Str(ERR_APPLY_RANGE)
        })?;
    state::with(|s| s.tokens.observe(lock.token));
    let key = ctx.open_key_writable(name);
    if lock_in(&key).is_err() {
        key.delete()?;
    }
    key.set_value(&crate::datatype::LOCK_TYPE, lock)
        .map_err(|_| RedisError::Str("ERR could not store the lock"))?;
    crate::datatype::on_stored();
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
