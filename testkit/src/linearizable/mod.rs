//! Checks a recorded [`History`] for linearizability: each key's
//! sub-history separately (keys are independent objects, which keeps each
//! search small) against the sequential model of that key
//! ([`models::LockModel`]) with the Wing–Gong–Lowe search ([`wgl`]), and
//! the fenced register's log for stale accepted writes and interleaved
//! holders.

pub mod models;
pub mod wgl;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::history::{Entry, History, Op, Outcome};
use crate::register::{interleavings, stale_accepts};

use models::{KeyState, LockModel, LockOp, Observed};
use wgl::{Call, Verdict};

/// Configurations the search may explore per key before it gives up.
pub const BUDGET: usize = 2_000_000;

/// The verdict on a whole history.
#[derive(Debug, Default)]
pub struct Report {
    /// Keys checked, with their operation count.
    pub keys: Vec<(String, usize)>,
    /// Keys with no linearization, each with an explanation.
    pub violations: Vec<(String, String)>,
    /// Keys whose search gave up.
    pub too_big: Vec<String>,
    /// Accepted register writes below an earlier accepted token.
    pub stale_writes: Vec<String>,
    /// Register writes of one holder interleaved with another's.
    pub interleaved_writes: Vec<String>,
}

impl Report {
    /// Every key linearizable and the register's log clean.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
            && self.too_big.is_empty()
            && self.stale_writes.is_empty()
            && self.interleaved_writes.is_empty()
    }

    /// What went wrong, for a failure message.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (k, why) in &self.violations {
            let _ = writeln!(s, "key {k}: not linearizable: {why}");
        }
        for k in &self.too_big {
            let _ = writeln!(s, "key {k}: search gave up after {BUDGET} configurations");
        }
        for w in self.stale_writes.iter().take(5) {
            let _ = writeln!(s, "register: stale write accepted: {w}");
        }
        for w in self.interleaved_writes.iter().take(5) {
            let _ = writeln!(s, "register: interleaved write: {w}");
        }
        let more = self.stale_writes.len().saturating_sub(5)
            + self.interleaved_writes.len().saturating_sub(5);
        if more > 0 {
            let _ = writeln!(s, "register: {more} more");
        }
        if s.is_empty() {
            s.push_str("linearizable; register log clean");
        }
        s
    }
}

fn lock_op(e: &Entry, owners: &mut BTreeMap<String, u32>) -> LockOp {
    let mut id = |o: &str| {
        let n = owners.len() as u32;
        *owners.entry(o.to_string()).or_insert(n)
    };
    match &e.op {
        Op::Acquire {
            owner,
            mode,
            ttl_ms,
            wait_ms,
            ..
        } => LockOp::Acquire {
            owner: id(owner),
            mode: mode.clone(),
            ttl_ns: ttl_ms * 1_000_000,
            waits: wait_ms.is_some(),
        },
        Op::Release {
            owner,
            count,
            retried,
            ..
        } => LockOp::Release {
            owner: id(owner),
            count: *count,
            retried: *retried,
        },
        Op::Renew { owner, ttl_ms } => LockOp::Renew {
            owner: id(owner),
            ttl_ns: ttl_ms * 1_000_000,
        },
        Op::Write { owner, .. } => LockOp::Write { owner: id(owner) },
    }
}

/// Checks one key's entries against `model`: Ok, or why not.
pub fn check_key(model: &LockModel, entries: &[Entry]) -> Result<(), Option<String>> {
    let mut owners = BTreeMap::new();
    let kept: Vec<&Entry> = entries
        .iter()
        .filter(|e| !matches!(e.outcome, Outcome::Fail(_)))
        .collect();
    let calls: Vec<Call<Observed>> = kept
        .iter()
        .map(|e| Call {
            op: Observed {
                op: lock_op(e, &mut owners),
                reply: match &e.outcome {
                    Outcome::Ok(r) => Some(r.clone()),
                    _ => None,
                },
            },
            invoke: e.invoke_ns,
            complete: match e.outcome {
                Outcome::Ok(_) => e.complete_ns,
                _ => None,
            },
            latest: e.applied_before_ns,
        })
        .collect();
    match wgl::check(model, KeyState::empty(), &calls, BUDGET) {
        Verdict::Linearizable => Ok(()),
        Verdict::TooBig(_) => Err(None),
        Verdict::Violation(stuck) => {
            let t0 = kept.iter().map(|e| e.invoke_ns).min().unwrap_or(0);
            let ms = |t: u64| (t.saturating_sub(t0)) as f64 / 1e6;
            let show = |e: &Entry| {
                format!(
                    "[p{} {:.3}..{} ms] {:?} -> {:?}",
                    e.process,
                    ms(e.invoke_ns),
                    e.complete_ns
                        .map_or("?".to_string(), |c| format!("{:.3}", ms(c))),
                    e.op,
                    e.outcome
                )
            };
            let mut s = format!(
                "{} of {} completed operations linearized at most; ",
                stuck.linearized,
                calls.iter().filter(|c| c.complete.is_some()).count()
            );
            let _ = write!(
                s,
                "state then: {} holder(s) {:?}, last token {}, now {:.3} ms; ",
                stuck.state.holders.len(),
                stuck
                    .state
                    .holders
                    .iter()
                    .map(|h| {
                        let name = owners
                            .iter()
                            .find(|(_, &n)| n == h.owner)
                            .map_or("?", |(o, _)| o.as_str());
                        format!(
                            "{name} x{} s{} token {:?} lease ends {:.3}..{} ms",
                            h.exclusive,
                            h.shared,
                            h.token,
                            ms(h.lo),
                            if h.hi == u64::MAX {
                                "inf".to_string()
                            } else {
                                format!("{:.3}", ms(h.hi))
                            }
                        )
                    })
                    .collect::<Vec<_>>(),
                stuck.state.last_token,
                ms(stuck.state.now)
            );
            let last: Vec<String> = stuck
                .order
                .iter()
                .rev()
                .take(4)
                .rev()
                .map(|&i| show(kept[i]))
                .collect();
            let _ = write!(s, "last linearized: {last:?}; ");
            let blocked: Vec<String> = stuck.blocked.iter().map(|&i| show(kept[i])).collect();
            let _ = write!(s, "none of these can come next: {blocked:?}");
            Err(Some(s))
        }
    }
}

/// Checks every key that has a model, and the register's log.
pub fn check(history: &History) -> Report {
    let mut report = Report::default();
    for (key, spec) in &history.models {
        let entries = history.of_key(key);
        report.keys.push((key.clone(), entries.len()));
        let model = LockModel { spec: spec.clone() };
        match check_key(&model, &entries) {
            Ok(()) => {}
            Err(Some(why)) => report.violations.push((key.clone(), why)),
            Err(None) => report.too_big.push(key.clone()),
        }
    }
    if history.register_fenced {
        report.stale_writes = stale_accepts(&history.register)
            .into_iter()
            .map(|(i, w, h)| format!("#{i} {w:?} after token {h}"))
            .collect();
    }
    report.interleaved_writes = interleavings(&history.register)
        .into_iter()
        .map(|(i, w)| format!("#{i} {w:?}"))
        .collect();
    report
}

/// Writes `history` to a file for replay and returns its path
/// (`<dir>/<label>-<seed>.json`, dir from [`crate::history::history_dir`]).
pub fn save_for_replay(history: &History) -> PathBuf {
    let name: String = history
        .label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = crate::history::history_dir().join(format!("{name}-{}.json", history.seed));
    history.save(&path);
    path
}

/// Loads a saved history and checks it again.
pub fn replay(path: &Path) -> Report {
    check(&History::load(path))
}
