//! The `fencelock` data type: how a lock is stored in its key, saved to and
//! loaded from RDB, rewritten into the AOF, and counted. The encoding and
//! the checks a loaded value must pass are in `encoding`.
//!
//! The module-global aux field carries the highest fencing token issued, so
//! a restart from RDB never reissues a token even if the clock went back.

use std::sync::atomic::Ordering;

use redis_module::native_types::RedisType;

use crate::encoding::{self, DecodeError, ENCODING_VERSION};
use crate::ffi::{self, RdbReader, RdbWriter};
use crate::lock::Lock;
use crate::state::{self, now_ms};
use crate::stats::STATS;

/// The data type; its name is exactly nine characters, as Redis requires.
pub static LOCK_TYPE: RedisType =
    RedisType::new("fencelock", ENCODING_VERSION, ffi::type_methods());

/// Reads one lock (`rdb_load`: RDB file, full sync, RESTORE). A value that
/// is short, of an unknown encoding or out of range is refused: Redis then
/// answers RESTORE with an error, or reports the file as corrupt.
pub fn load(rdb: &mut RdbReader, encver: i32) -> Result<Lock, DecodeError> {
    let lock = encoding::decode(rdb, encver, now_ms())?;
    state::with(|s| s.tokens.observe(lock.token));
    on_stored();
    Ok(lock)
}

/// Writes one lock (`rdb_save`).
pub fn save(rdb: &RdbWriter, lock: &Lock) {
    let (owner, holds, token, deadline_ms) = encoding::fields(lock);
    rdb.bytes(owner);
    rdb.u64(holds);
    rdb.u64(token);
    rdb.u64(deadline_ms);
}

/// Reads the module-global aux field: the highest token issued.
pub fn aux_load(rdb: &mut RdbReader, encver: i32, _when: i32) -> Result<(), DecodeError> {
    let last = encoding::decode_aux(rdb, encver)?;
    state::with(|s| s.tokens.observe(last));
    Ok(())
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
