//! The `fencelock` data type: how a lock is stored in its key and saved to
//! and loaded from RDB. The encoding and the checks a loaded value must pass
//! are in `rules::encoding`; the callbacks Redis calls are in
//! `redis::entry` (the one knot: the type needs them, they call back here).
//!
//! The module-global aux field carries the highest fencing token issued, so
//! a restart from RDB never reissues a token even if the clock went back.

use redis_module::native_types::RedisType;

use crate::metrics;
use crate::redis::calls::{RdbReader, RdbWriter};
use crate::redis::entry;
use crate::rules::encoding::{self, DecodeError, FieldSink, ENCODING_VERSION};
use crate::rules::lock::{LoadedFrom, Lock};
use crate::state::{self, now_ms};

/// The data type; its name is exactly nine characters, as Redis requires.
pub static LOCK_TYPE: RedisType =
    RedisType::new("fencelock", ENCODING_VERSION, entry::type_methods());

/// Reads one lock (`rdb_load`: RDB file, full sync, RESTORE). A value that
/// is short, of an unknown encoding or out of range is refused: Redis then
/// answers RESTORE with an error, or reports the file as corrupt.
pub fn load(rdb: &mut RdbReader, encver: i32) -> Result<Lock, DecodeError> {
    // Outside of loading, `rdb_load` serves RESTORE (and MIGRATE).
    let from = if state::is_loading() {
        LoadedFrom::Server
    } else {
        LoadedFrom::Restore
    };
    let lock = encoding::decode(rdb, encver, from, now_ms(), state::wall_offset())?;
    state::with(|s| {
        for h in &lock.holders {
            s.tokens.observe(h.token);
        }
    });
    metrics::lock_stored();
    Ok(lock)
}

/// Writes one lock (`rdb_save`) in the current encoding.
pub fn save(rdb: &mut RdbWriter, lock: &Lock) {
    encoding::encode(lock, rdb, state::wall_offset());
}

impl FieldSink for RdbWriter {
    fn u64(&mut self, v: u64) {
        RdbWriter::u64(self, v);
    }
    fn bytes(&mut self, v: &[u8]) {
        RdbWriter::bytes(self, v);
    }
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
