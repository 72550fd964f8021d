//! One lock key: the value stored there, and the one place where a change to
//! it is stored, put in the lease schedule, replicated (as its effect, with
//! absolute deadlines and tokens) and announced. Capacity freed here goes to
//! the key's waiters in the same event (`serve`).
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
use crate::rules::lock::{Holder, Lock, Want};
use crate::state::{self, State};

/// The lock stored in `key`: `Ok(None)` when the key is empty, `WRONGTYPE`
/// when it holds another type.
pub fn lock_in(key: &RedisKeyWritable) -> Result<Option<&'static mut Lock>, RedisError> {
    key.get_value::<Lock>(&LOCK_TYPE)
        .map_err(|_| RedisError::WrongType)
}

/// Counts a fresh grant of `want`'s kind.
pub fn count_grant(want: Want) {
    bump(&STATS.grants);
    match want {
        Want::Exclusive => {}
        Want::Shared => bump(&STATS.shared_grants),
        Want::Permits { .. } => bump(&STATS.semaphore_grants),
    }
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

    /// The value stored here, whatever its leases.
    pub fn lock(&self) -> Result<Option<&'static mut Lock>, RedisError> {
        lock_in(&self.key)
    }

    /// How many clients wait for this key.
    pub fn waiters(&self) -> usize {
        state::with(|s| s.queues.waiting(self.db, self.name()))
    }

    /// The live value at this key: holders whose lease has passed are
    /// expired first (the timer may not have run yet) and what they held
    /// goes to the waiters, so no command ever acts on a passed lease.
    /// `None` when nobody holds anything.
    pub fn current(&self, now_ms: u64) -> Result<Option<&'static mut Lock>, RedisError> {
        let Some(lock) = self.lock()? else {
            return Ok(None);
        };
        if !lock.holders.iter().any(|h| h.is_expired(now_ms)) {
            return Ok(Some(lock));
        }
        let mut i = 0;
        while i < lock.holders.len() {
            if lock.holders.get(i).is_some_and(|h| h.is_expired(now_ms)) {
                if let Some(h) = lock.remove(i) {
                    bump(&STATS.expired);
                    if self.holder_gone(lock, &h, c"lock.expire")? {
                        break;
                    }
                }
            } else {
                i += 1;
            }
        }
        self.serve(now_ms)?;
        self.lock()
    }

    /// Announces a keyspace event on this key.
    pub fn notify(&self, event: &CStr) {
        calls::notify(self.ctx, event, self.name);
    }

    /// Stores the first holder of a free key: value, schedule, replication,
    /// notification.
    pub fn store_new(&self, lock: Lock) -> Result<(), RedisError> {
        self.key
            .set_value(&LOCK_TYPE, lock)
            .map_err(|_| RedisError::Str("ERR could not store the lock"))?;
        metrics::lock_stored();
        if let Some(stored) = self.lock()? {
            for i in 0..stored.holders.len() {
                self.holder_changed(stored, i, None);
            }
        }
        Ok(())
    }

    /// The holder at `i` is new (`before` = `None`: tracked and announced)
    /// or changed in place (re-entry, renewal, partial release: its lease
    /// moves from `before` in the schedule if needed); its share is
    /// replicated.
    pub fn holder_changed(&self, lock: &Lock, i: usize, before: Option<u64>) {
        let Some(h) = lock.holders.get(i) else {
            return;
        };
        state::with(|s| match before {
            None => s.track(h.deadline_ms, h.token, self.db, self.name()),
            Some(old) if old != h.deadline_ms => {
                s.retrack(old, h.deadline_ms, h.token, self.db, self.name());
            }
            Some(_) => {}
        });
        calls::replicate_share(self.ctx, self.name, lock, i, state::wall_offset());
        if before.is_none() {
            self.notify(c"lock.acquire");
        }
    }

    /// `h` has just left `lock` (release to zero, expiry, force-release):
    /// its lease leaves the schedule, the change is replicated, `event` is
    /// announced. When nobody holds anything the key is deleted (and `true`
    /// returned: `lock` is gone). The caller serves the waiters after.
    pub fn holder_gone(&self, lock: &Lock, h: &Holder, event: &CStr) -> Result<bool, RedisError> {
        state::with(|s| {
            s.schedule
                .remove(h.deadline_ms, h.token, self.db, self.name())
        });
        let emptied = lock.is_empty();
        if emptied {
            self.delete(lock)?;
        } else {
            calls::replicate_drop(self.ctx, self.name, &h.owner);
        }
        self.notify(event);
        Ok(emptied)
    }

    /// Deletes the whole key, which holds `lock` (the last holder left, or
    /// `FORCERELEASE key`): every lease leaves the schedule; replicated as
    /// `DEL`. `lock` is gone afterwards.
    pub fn delete(&self, lock: &Lock) -> Result<(), RedisError> {
        state::with(|s| {
            for h in &lock.holders {
                s.schedule
                    .remove(h.deadline_ms, h.token, self.db, self.name());
            }
            s.deleting = true;
        });
        // The key is open; deleting through it keeps it open for a new value.
        let deleted = self.key.delete();
        state::with(|s| s.deleting = false);
        deleted?;
        calls::replicate_del(self.ctx, self.name);
        Ok(())
    }

    /// Serves this key's waiters in FIFO order with whatever is free now
    /// (see `WaitQueues::serve`): grants are stored, scheduled, replicated
    /// and announced, and every answered client is unblocked.
    pub fn serve(&self, now_ms: u64) -> Result<(), RedisError> {
        if self.waiters() == 0 {
            return Ok(());
        }
        let stored = self.lock()?;
        let is_new = stored.is_none();
        let mut fresh = Lock::default();
        let service = {
            let lock: &mut Lock = match stored {
                Some(lock) => lock,
                None => &mut fresh,
            };
            state::with(|s| {
                let State { queues, tokens, .. } = s;
                queues.serve(self.db, self.name(), lock, tokens, state::now_with(now_ms))
            })
        };
        for w in &service.timed_out {
            bump(&STATS.wait_timeouts);
            calls::unblock_client(w.id, WaitOutcome::Nil);
        }
        for (w, why) in &service.refused {
            calls::unblock_client(w.id, WaitOutcome::Error(why.reply()));
        }
        for (w, reply) in &service.answered {
            bump(&STATS.retries_answered);
            calls::unblock_client(w.id, WaitOutcome::Granted(*reply));
        }
        if service.granted.is_empty() {
            return Ok(());
        }
        let lock = if is_new {
            self.key
                .set_value(&LOCK_TYPE, fresh)
                .map_err(|_| RedisError::Str("ERR could not store the lock"))?;
            metrics::lock_stored();
            self.lock()?
        } else {
            self.lock()?
        };
        if let Some(lock) = lock {
            for (i, before) in &service.touched {
                self.holder_changed(lock, *i, *before);
            }
        }
        for (w, token, fresh_grant) in service.granted {
            if fresh_grant {
                count_grant(w.want);
                bump(&STATS.handoffs);
            } else {
                bump(&STATS.reentries);
            }
            calls::unblock_client(w.id, WaitOutcome::Granted(token));
        }
        Ok(())
    }
}
