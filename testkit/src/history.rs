//! Recorded histories of lock operations for the linearizability checker
//! ([`crate::linearizable`]): every client operation logged with its invoke
//! and complete times on one monotonic clock (CLOCK_MONOTONIC, the clock
//! `std::time::Instant` reads on Linux, read directly so that a separate
//! client process records on the same time line) and its outcome — ok with
//! the reply, fail (it certainly did not take effect), or unknown (the
//! connection broke, or the process ended, before the answer came).
//!
//! A history is saved as JSON with the fenced register's log and the model
//! of each key, so that a violation found in a run can be replayed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::register::RegisterWrite;

/// Nanoseconds on CLOCK_MONOTONIC (system-wide: comparable across the
/// processes of one machine).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What an acquire asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// The exclusive (write) lock.
    Exclusive,
    /// `SHARED`: a read lock.
    Shared,
    /// `LIMIT permits COUNT count`.
    Permits { limit: u64, count: u64 },
}

/// One client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `LOCK.ACQUIRE key owner ttl [mode] [WAIT ms] [ID id]` (or the
    /// `SET NX PX` recipe of the canary).
    Acquire {
        owner: String,
        mode: Mode,
        ttl_ms: u64,
        wait_ms: Option<u64>,
        id: Option<String>,
    },
    /// `LOCK.RELEASE key owner [COUNT n] [ID id]` (or the canary's
    /// compare-and-delete). `retried`: the answer came to a retry with the
    /// same ID, which answers nil when the first attempt removed the last
    /// hold.
    Release {
        owner: String,
        count: u64,
        id: Option<String>,
        retried: bool,
    },
    /// `LOCK.RENEW key owner ttl`.
    Renew { owner: String, ttl_ms: u64 },
    /// A write to the resource the key guards (the fenced register), sent
    /// by `owner` while it believed it held the key with `token`.
    Write { owner: String, token: i64 },
}

impl Op {
    /// The owner the operation is made for.
    pub fn owner(&self) -> &str {
        match self {
            Op::Acquire { owner, .. }
            | Op::Release { owner, .. }
            | Op::Renew { owner, .. }
            | Op::Write { owner, .. } => owner,
        }
    }
}

/// A reply, as the model predicts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Acquire: the token (`Some(0)` for the canary's untokened `OK`), or
    /// nil.
    Token(Option<i64>),
    /// Release: what the owner still holds, or nil when it held nothing.
    Remaining(Option<i64>),
    /// Renew: 1 or 0.
    Renewed(bool),
    /// Write: whether the register accepted it.
    Written(bool),
    /// An error reply of the command itself (`ERR ...`, `WRONGTYPE ...`):
    /// part of the model, like any reply.
    Error(String),
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Answered.
    Ok(Reply),
    /// Certainly not applied (not sent, refused before it ran: LOADING,
    /// READONLY, MOVED, ...).
    Fail(String),
    /// May or may not have been applied.
    Unknown,
}

/// One operation of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The client (thread or process) that ran it; one operation at a time
    /// per process.
    pub process: u32,
    pub key: String,
    pub op: Op,
    pub invoke_ns: u64,
    /// None while pending, and for unknown outcomes.
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
    /// For an unknown outcome whose connection the server closed (it died,
    /// or dropped the client) rather than one that timed out: if the
    /// operation took effect, it did before this time, when the client saw
    /// the connection end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_before_ns: Option<u64>,
}

/// Which sequential model a key's sub-history is checked against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// A re-entered acquire by the holder is a re-entry (the module) rather
    /// than a refusal (`SET NX`).
    pub reentrant: bool,
    /// Grants carry fencing tokens, strictly increasing per key, equal on
    /// re-entry.
    pub fenced: bool,
    /// A write the register accepted is only valid while its owner holds
    /// the key (an unfenced resource relies on mutual exclusion alone).
    /// Off for a fenced register, whose own log check (monotonic tokens,
    /// no interleaving) is the property: fencing accepts a late write of an
    /// expired holder as long as no newer holder has written.
    pub holder_writes: bool,
}

impl ModelSpec {
    /// The module's lock family (tokens, re-entry), writes checked by the
    /// fenced register's log.
    pub fn module() -> ModelSpec {
        ModelSpec {
            reentrant: true,
            fenced: true,
            holder_writes: false,
        }
    }

    /// The `SET NX PX` recipe guarding an unfenced resource.
    pub fn setnx() -> ModelSpec {
        ModelSpec {
            reentrant: false,
            fenced: false,
            holder_writes: true,
        }
    }
}

/// A whole recorded run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// What ran: fault, seed, module.
    pub label: String,
    pub seed: u64,
    /// The model of each key (keys without one are not checked).
    pub models: BTreeMap<String, ModelSpec>,
    pub entries: Vec<Entry>,
    /// The register's log (in the order it applied the writes).
    pub register: Vec<RegisterWrite>,
    /// Whether the register checked tokens.
    pub register_fenced: bool,
}

impl History {
    /// The entries of one key, unknown outcomes made explicit.
    pub fn of_key(&self, key: &str) -> Vec<Entry> {
        self.entries
            .iter()
            .filter(|e| e.key == key)
            .cloned()
            .collect()
    }

    /// How many operations ended ok, failed and unknown.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for e in &self.entries {
            match e.outcome {
                Outcome::Ok(_) => c.0 += 1,
                Outcome::Fail(_) => c.1 += 1,
                Outcome::Unknown => c.2 += 1,
            }
        }
        c
    }

    /// Writes the history as JSON.
    pub fn save(&self, path: &Path) {
        let text = serde_json::to_string_pretty(self).expect("history to JSON");
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("write history {}: {e}", path.display()));
    }

    /// Reads a history written by [`History::save`].
    pub fn load(path: &Path) -> History {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read history {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("parse history {}: {e}", path.display()))
    }
}

/// Entries as one line of JSON (what a client process reports).
pub fn entries_to_json(entries: &[Entry]) -> String {
    serde_json::to_string(entries).expect("entries to JSON")
}

/// Entries from [`entries_to_json`].
pub fn entries_from_json(text: &str) -> Vec<Entry> {
    serde_json::from_str(text).expect("entries from JSON")
}

/// Where failing histories go: `$FENCELOCK_HISTORY_DIR`, or the system's
/// temporary folder.
pub fn history_dir() -> PathBuf {
    std::env::var_os("FENCELOCK_HISTORY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Collects the entries of many client threads.
#[derive(Clone, Default)]
pub struct Recorder {
    entries: Arc<Mutex<Vec<Entry>>>,
    pending: Arc<Mutex<std::collections::BTreeSet<usize>>>,
}

/// An invoked operation; complete it with [`Pending::ok`],
/// [`Pending::fail`] or [`Pending::unknown`] (dropping it leaves it
/// unknown).
pub struct Pending {
    entries: Arc<Mutex<Vec<Entry>>>,
    pending: Arc<Mutex<std::collections::BTreeSet<usize>>>,
    index: usize,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Logs the invocation of `op` now.
    pub fn invoke(&self, process: u32, key: &str, op: Op) -> Pending {
        let mut entries = self.entries.lock().expect("recorder lock");
        entries.push(Entry {
            process,
            key: key.to_string(),
            op,
            invoke_ns: mono_ns(),
            complete_ns: None,
            outcome: Outcome::Unknown,
            applied_before_ns: None,
        });
        self.pending
            .lock()
            .expect("recorder lock")
            .insert(entries.len() - 1);
        Pending {
            pending: Arc::clone(&self.pending),
            entries: Arc::clone(&self.entries),
            index: entries.len() - 1,
        }
    }

    /// Adds entries recorded elsewhere (a client process).
    pub fn extend(&self, more: impl IntoIterator<Item = Entry>) {
        self.entries.lock().expect("recorder lock").extend(more);
    }

    /// Everything recorded so far (pending operations as unknown).
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().expect("recorder lock").clone()
    }

    /// The operations still waiting for their outcome.
    pub fn pending(&self) -> Vec<(usize, Entry)> {
        let pending: Vec<usize> = self
            .pending
            .lock()
            .expect("recorder lock")
            .iter()
            .copied()
            .collect();
        let entries = self.entries.lock().expect("recorder lock");
        pending
            .into_iter()
            .map(|i| (i, entries[i].clone()))
            .collect()
    }
}

impl Pending {
    fn finish(self, outcome: Outcome, applied_before_ns: Option<u64>) {
        let now = mono_ns();
        let mut entries = self.entries.lock().expect("recorder lock");
        let e = &mut entries[self.index];
        if outcome != Outcome::Unknown {
            e.complete_ns = Some(now);
        }
        e.outcome = outcome;
        e.applied_before_ns = applied_before_ns;
        self.pending
            .lock()
            .expect("recorder lock")
            .remove(&self.index);
    }

    /// Answered with `reply`.
    pub fn ok(self, reply: Reply) {
        self.finish(Outcome::Ok(reply), None);
    }

    /// Certainly not applied.
    pub fn fail(self, why: &str) {
        self.finish(Outcome::Fail(why.to_string()), None);
    }

    /// Maybe applied, at any time after the invocation.
    pub fn unknown(self) {
        self.finish(Outcome::Unknown, None);
    }

    /// Maybe applied; if so, before `before_ns` (see
    /// [`Entry::applied_before_ns`]); None: at any time.
    pub fn unknown_before(self, before_ns: Option<u64>) {
        self.finish(Outcome::Unknown, before_ns);
    }

    /// Changes the operation before completing it (a release answered by
    /// a retry).
    pub fn set_op(&self, op: Op) {
        self.entries.lock().expect("recorder lock")[self.index].op = op;
    }
}
