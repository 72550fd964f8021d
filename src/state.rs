//! All module-global state, in one place.
//!
//! - [`State`]: the token generator, the lease schedule, the wait queues
//!   and the module's timers, behind one mutex. Redis runs every command,
//!   timer and event callback on its main thread, so the mutex is never
//!   contended; it makes the sharing explicit and sound.
//! - Flags read by callbacks that have no context to ask, or that may run
//!   on a background thread (the data type's `free`): atomics.
//! - The detached context, for timers armed from such callbacks.

use std::collections::{HashMap, HashSet};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redis_module::raw;

use crate::rules::clock::{self, Now, WallOffset};
use crate::rules::lock::TokenGenerator;
use crate::rules::queue::{QueueKey, WaitQueues};
use crate::rules::schedule::Schedule;

/// Everything the module keeps outside the keyspace.
///
/// Leases enter the schedule through [`State::track`] and
/// [`State::retrack`], which note when the expiry timer must be re-armed
/// for an earlier deadline; `expiry::ensure_armed` acts on that note.
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
    /// Keys whose head waiter left (timed out, unblocked, disconnected)
    /// while others wait: the sweep timer serves their queues.
    pub unserved: HashSet<QueueKey>,
    /// The sweep timer, when armed.
    pub sweep_timer: Option<u64>,
    /// The wait timer (ends `WAIT`s that time out): its id and the wait
    /// deadline it was armed for.
    pub wait_timer: Option<(u64, u64)>,
    /// Lock values that left their key by a generic command and may live on
    /// under another name (RENAME, MOVE): value address → token. Found again
    /// by the sweep timer and tracked under their new name.
    pub relocated: HashMap<usize, u64>,
    /// Set while the module deletes a lock itself (it hands the lock off
    /// itself; the unlink callback must not treat it as orphaned).
    pub deleting: bool,
    /// A lease was tracked that the expiry timer, as armed, would fire
    /// after (or no timer is armed).
    pub arm_needed: bool,
}

impl State {
    /// Tracks a lease in the schedule.
    pub fn track(&mut self, deadline_ms: u64, token: u64, db: i32, key: &[u8]) {
        self.schedule.insert(deadline_ms, token, db, key);
        self.note_deadline(deadline_ms);
    }

    /// Moves a tracked lease to a new deadline (renewal, re-entry).
    pub fn retrack(
        &mut self,
        old_deadline_ms: u64,
        deadline_ms: u64,
        token: u64,
        db: i32,
        key: &[u8],
    ) {
        self.schedule
            .reschedule(old_deadline_ms, deadline_ms, token, db, key);
        self.note_deadline(deadline_ms);
    }

    fn note_deadline(&mut self, deadline_ms: u64) {
        if self
            .expiry_timer
            .is_none_or(|(_, armed_for)| deadline_ms < armed_for)
        {
            self.arm_needed = true;
        }
    }
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Runs `f` with the state. Never call Redis APIs that may call back into
/// the module from inside `f`.
pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard: MutexGuard<'_, Option<State>> = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(State::default))
}

/// The wall clock, nanoseconds since the Unix epoch.
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The lease clock's anchor: the wall clock and the monotonic clock, read
/// together once (see `rules::clock`).
static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();

/// The lease clock, nanoseconds: monotonic, anchored to the wall clock.
fn lease_ns() -> u64 {
    let (wall, mono) = ANCHOR.get_or_init(|| (wall_ns(), Instant::now()));
    let elapsed = u64::try_from(mono.elapsed().as_nanos()).unwrap_or(u64::MAX);
    wall.saturating_add(elapsed)
}

/// The lease clock in milliseconds: what every deadline on this server is
/// measured on (a step of the wall clock does not move it).
pub fn now_ms() -> u64 {
    lease_ns() / 1_000_000
}

/// Both clocks, with the lease clock at `lease_ms` (read just before).
pub fn now_with(lease_ms: u64) -> Now {
    Now {
        lease_ms,
        wall_ms: wall_offset().to_wall(lease_ms),
    }
}

/// Wall clock minus lease clock (ms), as [`refresh_wall_offset`] last
/// measured it: 0 from the anchor on, until the wall clock is stepped.
static WALL_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Wall clock minus lease clock: converts the deadlines that leave or
/// enter the server (RDB, AOF, replication, RESTORE, digests) and gives
/// tokens their wall-clock part. Measured by Redis's cron (`hz` times a
/// second), so commands read no second clock; within one cron tick of a
/// step, what leaves the server still uses the offset from before it.
pub fn wall_offset() -> WallOffset {
    WallOffset(WALL_OFFSET_MS.load(Ordering::Relaxed))
}

/// Measures the offset again (both clocks read together); `true` when it
/// changed, i.e. the wall clock was stepped since the last measurement.
pub fn refresh_wall_offset() -> bool {
    let lease = lease_ns();
    let now = clock::offset_of(wall_ns(), lease);
    WALL_OFFSET_MS.swap(now.0, Ordering::Relaxed) != now.0
}

/// Starts the lease clock (module load), so its anchor is taken before any
/// lease exists, and measures the offset (0 unless the anchor's two reads
/// straddled a step).
pub fn start_clock() {
    refresh_wall_offset();
}

/// True while Redis loads an RDB or AOF (or a full resync).
static LOADING: AtomicBool = AtomicBool::new(false);

/// True while this server is a master (kept from role-change events, for
/// callbacks that have no context to ask).
static MASTER: AtomicBool = AtomicBool::new(true);

/// True while `State::relocated` may be non-empty (spares the data type's
/// `free` callback the mutex in the common case).
static RELOCATING: AtomicBool = AtomicBool::new(false);

/// Whether Redis is loading data now.
pub fn is_loading() -> bool {
    LOADING.load(Ordering::Relaxed)
}

/// Loading started (`true`) or ended.
pub fn set_loading(loading: bool) {
    LOADING.store(loading, Ordering::Relaxed);
}

/// Whether this server was a master at the last role change.
pub fn is_master_role() -> bool {
    MASTER.load(Ordering::Relaxed)
}

/// Records the server's role.
pub fn set_master_role(master: bool) {
    MASTER.store(master, Ordering::Relaxed);
}

/// Whether lock values may be waiting to be found under a new name.
pub fn relocating() -> bool {
    RELOCATING.load(Ordering::Relaxed)
}

/// Says whether lock values may be waiting to be found under a new name.
pub fn set_relocating(on: bool) {
    RELOCATING.store(on, Ordering::Relaxed);
}

/// A context made once at load, for timers armed by callbacks that have no
/// context of their own (the data type's unlink, RESTORE's `rdb_load`).
static DETACHED: AtomicPtr<raw::RedisModuleCtx> = AtomicPtr::new(ptr::null_mut());

/// Keeps the detached context.
pub fn set_detached_context(ctx: *mut raw::RedisModuleCtx) {
    DETACHED.store(ctx, Ordering::Release);
}

/// The detached context (null before the module's init made it).
pub fn detached_context() -> *mut raw::RedisModuleCtx {
    DETACHED.load(Ordering::Acquire)
}

/// True when this server is a master (leases are expired by masters only;
/// a replica waits for the master's deletions).
pub fn is_master(ctx: &redis_module::Context) -> bool {
    ctx.get_flags().contains(redis_module::ContextFlags::MASTER)
}
