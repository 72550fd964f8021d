//! One lock key: the lock stored there, and the one place where a change to
//! it is stored, put in the lease schedule, replicated (as its effect, with
//! absolute deadline and token) and announced. A lock freed here goes to the
//! first waiter in the same event.
//!
//! Arming the expiry timer for the schedule is left to the layer above:
//! every entry path (a command, a timer, a server event) calls
//! `expiry::ensure_armed` once at its end.

use std::ffi::CStr;

use redis_module::key::RedisKeyWritable;
use redis_module::{Context, RedisError, RedisString};

use crate::datatype::LOCK_TYPE;
use crate::metrics::{self, bump, STATS};
use crate::redis::calls::{self, WaitOutcome};
use crate::rules::lock::{Lock, TokensExhausted};
use crate::rules::queue::Waiter;
use crate::state;

/// The lock stored in `key`: `Ok(None)` when the key is empty, `WRONGTYPE`
/// when it holds another type.
pub fn lock_in(key: &RedisKeyWritable) -> Result<Option<&'static mut Lock>, RedisError> {
    key.get_value::<Lock>(&LOCK_TYPE)
        .map_err(|_| RedisError::WrongType)
}

/// What a key holds at a given moment.
pub enum Current {
    /// No lock.
    Free,
    /// A lock whose lease has not passed.
    Held(&'static mut Lock),
    /// A lock whose lease had passed: it was expired just now (and handed
    /// to the first waiter, if any), as the expiry timer would have done.
    Expired,
}

/// A lock key opened for writing in the context's selected database.
pub struct LockKey<'a> {
    ctx: &'a Context,
    db: i32,
    name: &'a RedisString,
    key: RedisKeyWritable,
}

impl<'a> LockKey<'a> {
    /// Opens `name` for writing in the context's selected database.
    pub fn open(ctx: &'a Context, name: &'a RedisString) -> Self {
        LockKey {
            ctx,
            db: calls::selected_db(ctx),
            name,
            key: ctx.open_key_writable(name),
        }
    }

    /// The database the key lives in.
    pub fn db(&self) -> i32 {
        self.db
    }

    /// The key's name.
    pub fn name(&self) -> &[u8] {
        self.name.as_slice()
    }

    /// The lock stored here, whatever its lease.
    pub fn lock(&self) -> Result<Option<&'static mut Lock>, RedisError> {
        lock_in(&self.key)
    }

    /// The live lock at this key: a lock whose lease has passed is expired
    /// first (the timer may not have run yet), so no command ever acts on a
    /// passed lease.
    pub fn current(&self, now_ms: u64) -> Result<Current, RedisError> {
        Ok(match self.lock()? {
            None => Current::Free,
            Some(lock) if lock.is_expired(now_ms) => {
                self.expire(lock.deadline_ms, lock.token, now_ms)?;
                Current::Expired
            }
            Some(lock) => Current::Held(lock),
        })
    }

    fn notify(&self, event: &CStr) {
        calls::notify(self.ctx, event, self.name);
    }

    /// Stores a fresh grant: value, schedule, replication, notification.
    pub fn store_grant(&self, lock: Lock) -> Result<(), RedisError> {
        calls::replicate_apply(self.ctx, self.name, &lock);
        let (deadline_ms, token) = (lock.deadline_ms, lock.token);
        self.key
            .set_value(&LOCK_TYPE, lock)
            .map_err(|_| RedisError::Str("ERR could not store the lock"))?;
        metrics::lock_stored();
        state::with(|s| s.track(deadline_ms, token, self.db, self.name()));
        self.notify(c"lock.acquire");
        Ok(())
    }

    /// A held lock changed in place (re-entry, renewal, partial release):
    /// move its lease in the schedule if needed and replicate its state.
    pub fn updated(&self, lock: &Lock, old_deadline_ms: u64) {
        if old_deadline_ms != lock.deadline_ms {
            state::with(|s| {
                s.retrack(
                    old_deadline_ms,
                    lock.deadline_ms,
                    lock.token,
                    self.db,
                    self.name(),
                );
            });
        }
        calls::replicate_apply(self.ctx, self.name, lock);
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
                .remove(lock_deadline_ms, lock_token, self.db, self.name());
            s.deleting = true;
        });
        // The key is open; deleting through it keeps it open for a new value.
        let deleted = self.key.delete();
        state::with(|s| s.deleting = false);
        deleted?;
        calls::replicate_del(self.ctx, self.name);
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
        let (h, token) = state::with(|s| {
            let h = s.queues.hand_off(self.db, self.name(), now_ms);
            let token = h.granted.as_ref().map(|_| s.tokens.next(now_ms));
            (h, token)
        });
        for w in &h.timed_out {
            bump(&STATS.wait_timeouts);
            calls::unblock_client(w.id, WaitOutcome::Nil);
        }
        let (Some(first), Some(token)) = (h.granted, token) else {
            return Ok(());
        };
        let served = std::iter::once(&first).chain(h.reentrant.iter());
        let Ok(token) = token else {
            // No token left to issue: never repeat one; the waiters learn
            // why (the lock stays free).
            for w in served {
                calls::unblock_client(w.id, WaitOutcome::Error(TokensExhausted::REPLY));
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
        for w in served {
            calls::unblock_client(w.id, WaitOutcome::Granted(token));
        }
        Ok(())
    }

    /// Waiters of `owner` queued on this key re-enter the lock it now holds.
    pub fn admit_same_owner(&self, lock: &mut Lock, now_ms: u64) {
        let same: Vec<Waiter> =
            state::with(|s| s.queues.take_owner(self.db, self.name(), &lock.owner));
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
            calls::unblock_client(w.id, WaitOutcome::Granted(lock.token));
        }
    }
}
