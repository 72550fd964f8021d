//! Module-global state: the token generator, the lease schedule, the wait
//! queues and the ids of the module's timers. Redis runs every command,
//! timer and event callback on its main thread, so the mutex is never
//! contended; it exists to make the sharing explicit and sound.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::lock::TokenGenerator;
use crate::queue::{QueueKey, WaitQueues};
use crate::schedule::Schedule;

/// Everything the module keeps outside the keyspace.
#[derive(Debug, Default)]
pub struct State {
    /// Source of fencing tokens.
    pub tokens: TokenGenerator,
    /// Live leases by deadline (maintained on a master only).
    pub schedule: Schedule,
    /// Blocked `WAIT` acquirers.
    pub queues: WaitQueues,
    /// The expiry timer: its id and the deadline it was armed for.
    pub expiry_timer: Option<(u64, u64)>,
    /// Keys whose lock may have vanished under their waiters (DEL, RENAME,
    /// FLUSHDB, ...), looked at by the next run of the sweep timer.
    pub orphaned: HashSet<QueueKey>,
    /// The sweep timer, when armed.
    pub sweep_timer: Option<u64>,
    /// Lock values that left their key by a generic command and may live on
    /// under another name (RENAME, MOVE): value address → token. Found again
    /// by the sweep timer and tracked under their new name.
    pub relocated: HashMap<usize, u64>,
    /// Set while the module deletes a lock itself (it hands the lock off
    /// itself; the unlink callback must not treat it as orphaned).
    pub deleting: bool,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Runs `f` with the state. Never call Redis APIs that may call back into
/// the module from inside `f`.
pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard: MutexGuard<'_, Option<State>> = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(State::default))
}

/// Wall-clock time, Unix milliseconds (the clock leases are measured on).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
