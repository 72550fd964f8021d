//! The `fencelock` data type: how a lock is stored in its key, saved to and
//! loaded from RDB, rewritten into the AOF, and counted.
//!
//! Encoding version 1: owner (string), holds, token, deadline (Unix ms) as
//! unsigned integers. A newer encoding than this build knows is refused
//! (load fails cleanly instead of misreading data). The module-global aux
//! field carries the highest fencing token issued, so a restart from RDB
//! never reissues a token even if the clock went back.

use std::sync::atomic::Ordering;

use redis_module::native_types::RedisType;

use crate::ffi::{self, RdbReader, RdbWriter};
use crate::lock::Lock;
use crate::state;
use crate::stats::STATS;

/// Current encoding version of a lock value.
pub const ENCODING_VERSION: i32 = 1;

/// The data type; its name is exactly nine characters, as Redis requires.
pub static LOCK_TYPE: RedisType =
    RedisType::new("fencelock", ENCODING_VERSION, ffi::type_methods());

/// Reads one lock (`rdb_load`); `None` on a short read or unknown encoding.
pub fn load(rdb: &RdbReader, encver: i32) -> Option<Lock> {
    if encver != ENCODING_VERSION {
        return None;
    }
    let owner = rdb.bytes()?;
    let holds = rdb.u64()?;
    let token = rdb.u64()?;
    let deadline_ms = rdb.u64()?;
    if owner.is_empty() || holds == 0 || token == 0 {
        return None;
    }
    state::with(|s| s.tokens.observe(token));
    on_stored();
    Some(Lock {
        owner: owner.into(),
        holds,
        token,
        deadline_ms,
    })
}

/// Writes one lock (`rdb_save`).
pub fn save(rdb: &RdbWriter, lock: &Lock) {
    rdb.bytes(&lock.owner);
    rdb.u64(lock.holds);
    rdb.u64(lock.token);
    rdb.u64(lock.deadline_ms);
}

/// Reads the module-global aux field: the highest token issued.
pub fn aux_load(rdb: &RdbReader, encver: i32, _when: i32) -> bool {
    if encver != ENCODING_VERSION {
        return false;
    }
    match rdb.u64() {
        Some(last) => {
            state::with(|s| s.tokens.observe(last));
            true
        }
        None => false,
    }
}

/// Writes the module-global aux field.
pub fn aux_save(rdb: &RdbWriter, _when: i32) {
    rdb.u64(state::with(|s| s.tokens.last()));
}

/// The numeric arguments of the `LOCK.APPLY` that rebuilds a lock from AOF.
pub fn aof_fields(lock: &Lock) -> (String, String, String) {
    (
        lock.holds.to_string(),
        lock.token.to_string(),
        lock.deadline_ms.to_string(),
    )
}

/// A lock value was stored in the keyspace.
pub fn on_stored() {
    STATS.held.fetch_add(1, Ordering::Relaxed);
}

/// A lock value was freed (possibly on a background thread).
pub fn on_freed() {
    STATS.held.fetch_sub(1, Ordering::Relaxed);
}
