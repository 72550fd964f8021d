//! Sequential models of one key of the lock family, with leases in time.
//!
//! - The exclusive lock: an owner-aware reentrant mutex whose acquire
//!   returns a fence — equal on re-entry, greater than every earlier fence
//!   of the key (Jepsen's `ReentrantFencedMutex`, with leases).
//! - The read/write lock: `SHARED` holds beside each other, the exclusive
//!   hold alone; the exclusive holder may take shared holds (downgrade), a
//!   shared-only holder asking for the exclusive lock gets the upgrade
//!   error; a release takes exclusive holds first.
//! - The semaphore: `LIMIT p COUNT n`, permits per owner, their sum at most
//!   p.
//! - `SET NX PX` (the canary): the exclusive lock without re-entry or
//!   tokens.
//!
//! Leases: every holder has a deadline known only within a window,
//! `[lo, hi]`: the server applied its last grant or renewal at some time in
//! that operation's window, no earlier than the operations linearized
//! before it. An operation taking effect at time t may see a holder gone
//! when t ≥ lo and must see it gone when t ≥ hi. The state carries the
//! earliest time the last linearized operation can have taken effect
//! (linearization points never go back), and each operation is placed as
//! early as it can be — later never allows more, since every constraint is
//! "no earlier than".
//!
//! Times are nanoseconds on the history's monotonic clock.

use crate::history::{Mode, ModelSpec, Reply};

use super::wgl::{Call, Model};

/// The operation, its owner as a small number.
#[derive(Clone, Debug)]
pub enum LockOp {
    Acquire {
        owner: u32,
        mode: Mode,
        ttl_ns: u64,
        waits: bool,
    },
    Release {
        owner: u32,
        count: u64,
        retried: bool,
    },
    Renew {
        owner: u32,
        ttl_ns: u64,
    },
    Write {
        owner: u32,
    },
}

/// An operation with the reply it got (None: unknown outcome).
#[derive(Clone, Debug)]
pub struct Observed {
    pub op: LockOp,
    pub reply: Option<Reply>,
}

/// One holder of the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    pub owner: u32,
    pub exclusive: u64,
    /// Shared holds, or permits on a semaphore.
    pub shared: u64,
    /// None: granted by an operation whose reply was lost.
    pub token: Option<i64>,
    /// The lease may have ended from `lo` on, and has ended by `hi`.
    pub lo: u64,
    pub hi: u64,
}

/// The state of one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyState {
    /// The semaphore's permits while the key is one.
    pub limit: Option<u64>,
    pub holders: Vec<Holder>,
    /// The highest token granted on the key.
    pub last_token: i64,
    /// The earliest time the last linearized operation can have taken
    /// effect.
    pub now: u64,
}

impl KeyState {
    pub fn empty() -> KeyState {
        KeyState {
            limit: None,
            holders: Vec::new(),
            last_token: 0,
            now: 0,
        }
    }
}

/// The model of one key.
pub struct LockModel {
    pub spec: ModelSpec,
}

/// How much earlier than `t + ttl` the server may end a lease (its
/// deadline is whole milliseconds of a clock that may run slightly
/// differently from the test's), and how much later it may still show it:
/// 3 ms plus 0.1% of the lease.
pub fn lease_slack(ttl_ns: u64) -> u64 {
    3_000_000 + ttl_ns / 1000
}

/// The upgrade error's start.
pub const UPGRADE_ERROR: &str = "ERR the owner holds this lock shared";
/// A release of more than the owner holds.
pub const COUNT_ERROR: &str = "ERR COUNT is more than the owner holds";

fn reply_matches(predicted: &Reply, observed: &Option<Reply>) -> bool {
    match (predicted, observed) {
        (_, None) => true,
        (Reply::Error(p), Some(Reply::Error(o))) => o.starts_with(p.as_str()),
        (p, Some(o)) => p == o,
    }
}

impl LockModel {
    fn lease(&self, s: &KeyState, ttl_ns: u64, call: &Call<Observed>) -> (u64, u64) {
        let slack = lease_slack(ttl_ns);
        let lo = (s.now + ttl_ns).saturating_sub(slack);
        let hi = call
            .complete
            .or(call.latest)
            .map_or(u64::MAX, |c| c.saturating_add(ttl_ns + slack));
        (lo, hi)
    }

    /// A fresh grant: the token the reply shows, which must be greater
    /// than every earlier one.
    fn fresh_token(&self, s: &KeyState, reply: &Option<Reply>) -> Result<Option<i64>, ()> {
        match reply {
            None => Ok(None),
            Some(Reply::Token(Some(t))) => {
                if self.spec.fenced && *t <= s.last_token {
                    Err(())
                } else {
                    Ok(Some(*t))
                }
            }
            Some(_) => Err(()),
        }
    }

    /// The operation applied at `s.now` to a state whose expiries are
    /// settled: the states it may leave.
    fn apply(&self, mut s: KeyState, call: &Call<Observed>) -> Vec<KeyState> {
        let reply = &call.op.reply;
        let pos = |s: &KeyState, owner: u32| s.holders.iter().position(|h| h.owner == owner);
        let keep = |ok: bool, s: KeyState| if ok { vec![s] } else { vec![] };
        match &call.op.op {
            LockOp::Acquire {
                owner,
                mode,
                ttl_ns,
                waits: _,
            } => {
                let (lo, hi) = self.lease(&s, *ttl_ns, call);
                let mine = pos(&s, *owner);
                let refused = |s: KeyState| {
                    // Not granted now. With WAIT, a nil reply says the
                    // waiter was queued behind a holder and timed out; a
                    // grant from the queue is a grant at its hand-off.
                    keep(reply_matches(&Reply::Token(None), reply), s)
                };
                match mode {
                    Mode::Exclusive | Mode::Shared if s.limit.is_some() => {
                        let e = Reply::Error("WRONGTYPE".into());
                        keep(reply_matches(&e, reply), s)
                    }
                    Mode::Permits { .. } if s.limit.is_none() && !s.holders.is_empty() => {
                        let e = Reply::Error("WRONGTYPE".into());
                        keep(reply_matches(&e, reply), s)
                    }
                    Mode::Permits { limit, .. } if s.limit.is_some_and(|l| l != *limit) => {
                        let e = Reply::Error("WRONGTYPE".into());
                        keep(reply_matches(&e, reply), s)
                    }
                    Mode::Exclusive => match mine {
                        Some(_) if !self.spec.reentrant => refused(s),
                        Some(i) if s.holders[i].exclusive == 0 => {
                            let e = Reply::Error(UPGRADE_ERROR.into());
                            keep(reply_matches(&e, reply), s)
                        }
                        Some(i) => self.reenter(s, i, reply, lo, hi, |h| h.exclusive += 1),
                        None if !s.holders.is_empty() => refused(s),
                        None => self.grant(s, *owner, 1, 0, reply, lo, hi),
                    },
                    Mode::Shared => match mine {
                        Some(i) => self.reenter(s, i, reply, lo, hi, |h| h.shared += 1),
                        None if s.holders.iter().any(|h| h.exclusive > 0) => refused(s),
                        None => self.grant(s, *owner, 0, 1, reply, lo, hi),
                    },
                    Mode::Permits { limit, count } => {
                        let used: u64 = s.holders.iter().map(|h| h.shared).sum();
                        if used + count > *limit {
                            return refused(s);
                        }
                        s.limit = Some(*limit);
                        match mine {
                            Some(i) => {
                                let c = *count;
                                self.reenter(s, i, reply, lo, hi, move |h| h.shared += c)
                            }
                            None => self.grant(s, *owner, 0, *count, reply, lo, hi),
                        }
                    }
                }
            }
            LockOp::Release {
                owner,
                count,
                retried,
            } => {
                let Some(i) = pos(&s, *owner) else {
                    return keep(reply_matches(&Reply::Remaining(None), reply), s);
                };
                let h = &s.holders[i];
                let total = h.exclusive + h.shared;
                if *count > total {
                    let e = Reply::Error(COUNT_ERROR.into());
                    return keep(reply_matches(&e, reply), s);
                }
                let left = total - count;
                // A retried release whose first attempt removed the last
                // hold is answered as one of an owner holding nothing.
                let answered = reply_matches(&Reply::Remaining(Some(left as i64)), reply)
                    || (*retried && left == 0 && *reply == Some(Reply::Remaining(None)));
                if !answered {
                    return vec![];
                }
                if left == 0 {
                    s.holders.remove(i);
                    if s.holders.is_empty() {
                        s.limit = None;
                    }
                } else {
                    let h = &mut s.holders[i];
                    let from_exclusive = (*count).min(h.exclusive);
                    h.exclusive -= from_exclusive;
                    h.shared -= count - from_exclusive;
                }
                vec![s]
            }
            LockOp::Renew { owner, ttl_ns } => {
                let (lo, hi) = self.lease(&s, *ttl_ns, call);
                match pos(&s, *owner) {
                    Some(i) => {
                        if !reply_matches(&Reply::Renewed(true), reply) {
                            return vec![];
                        }
                        s.holders[i].lo = lo;
                        s.holders[i].hi = hi;
                        vec![s]
                    }
                    None => keep(reply_matches(&Reply::Renewed(false), reply), s),
                }
            }
            LockOp::Write { owner } => {
                let accepted = *reply == Some(Reply::Written(true));
                if !self.spec.holder_writes || !accepted {
                    return vec![s];
                }
                let holds = pos(&s, *owner).is_some_and(|i| s.holders[i].exclusive > 0);
                keep(holds, s)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &self,
        mut s: KeyState,
        owner: u32,
        exclusive: u64,
        shared: u64,
        reply: &Option<Reply>,
        lo: u64,
        hi: u64,
    ) -> Vec<KeyState> {
        let Ok(token) = self.fresh_token(&s, reply) else {
            return vec![];
        };
        if let Some(t) = token {
            s.last_token = s.last_token.max(t);
        }
        s.holders.push(Holder {
            owner,
            exclusive,
            shared,
            token: token.filter(|_| self.spec.fenced),
            lo,
            hi,
        });
        s.holders.sort_by_key(|h| h.owner);
        vec![s]
    }

    fn reenter(
        &self,
        mut s: KeyState,
        i: usize,
        reply: &Option<Reply>,
        lo: u64,
        hi: u64,
        add: impl FnOnce(&mut Holder),
    ) -> Vec<KeyState> {
        let h = &mut s.holders[i];
        match (reply, h.token) {
            (None, _) => {}
            (Some(Reply::Token(Some(t))), Some(mine)) if !self.spec.fenced || *t == mine => {}
            (Some(Reply::Token(Some(t))), None) if self.spec.fenced => h.token = Some(*t),
            (Some(Reply::Token(Some(_))), None) => {}
            _ => return vec![],
        }
        add(h);
        h.lo = lo;
        h.hi = hi;
        vec![s]
    }
}

impl Model for LockModel {
    type Op = Observed;
    type State = KeyState;

    fn step(&self, state: &KeyState, call: &Call<Observed>) -> Vec<KeyState> {
        let t0 = state.now.max(call.invoke);
        let end = call.complete.or(call.latest).unwrap_or(u64::MAX);
        if t0 > end {
            return vec![];
        }
        let mut base = state.clone();
        base.now = t0;
        // Leases that have certainly ended by t0.
        base.holders.retain(|h| h.hi > t0);
        // Leases that may have ended before the operation took effect:
        // every subset of them (a key has few holders).
        let optional: Vec<usize> = (0..base.holders.len())
            .filter(|&i| base.holders[i].lo <= end)
            .collect();
        let mut out: Vec<KeyState> = Vec::new();
        for mask in 0u32..(1 << optional.len().min(10)) {
            let mut s = base.clone();
            let mut at = t0;
            let mut gone = vec![false; s.holders.len()];
            for (bit, &i) in optional.iter().enumerate().take(10) {
                if mask & (1 << bit) != 0 {
                    gone[i] = true;
                    at = at.max(s.holders[i].lo);
                }
            }
            if at > end {
                continue;
            }
            // A holder kept must still be there at `at`; if not, another
            // subset (with it gone) covers the case.
            if s.holders.iter().zip(&gone).any(|(h, &g)| !g && h.hi <= at) {
                continue;
            }
            let mut g = gone.iter();
            s.holders.retain(|_| !*g.next().unwrap_or(&false));
            if s.holders.is_empty() {
                s.limit = None;
            }
            s.now = at;
            for next in self.apply(s, call) {
                if !out.contains(&next) {
                    out.push(next);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizable::wgl::{check, Verdict};

    const MS: u64 = 1_000_000;

    fn acq(owner: u32, mode: Mode, ttl_ms: u64, reply: Option<Reply>) -> Observed {
        Observed {
            op: LockOp::Acquire {
                owner,
                mode,
                ttl_ns: ttl_ms * MS,
                waits: false,
            },
            reply,
        }
    }

    fn x(owner: u32, token: Option<i64>) -> Observed {
        acq(owner, Mode::Exclusive, 100, Some(Reply::Token(token)))
    }

    fn rel(owner: u32, count: u64, left: Option<i64>) -> Observed {
        Observed {
            op: LockOp::Release {
                owner,
                count,
                retried: false,
            },
            reply: Some(Reply::Remaining(left)),
        }
    }

    fn at(op: Observed, from_ms: u64, to_ms: u64) -> Call<Observed> {
        Call {
            op,
            invoke: from_ms * MS,
            complete: Some(to_ms * MS),
            latest: None,
        }
    }

    fn linearizable(spec: ModelSpec, calls: &[Call<Observed>]) -> bool {
        match check(&LockModel { spec }, KeyState::empty(), calls, 100_000) {
            Verdict::Linearizable => true,
            Verdict::Violation(_) => false,
            Verdict::TooBig(n) => panic!("search gave up after {n}"),
        }
    }

    fn module(calls: &[Call<Observed>]) -> bool {
        linearizable(ModelSpec::module(), calls)
    }

    #[test]
    fn a_reentry_returns_the_same_fence() {
        let ok = [at(x(0, Some(5)), 0, 1), at(x(0, Some(5)), 2, 3)];
        assert!(module(&ok));
        let other = [at(x(0, Some(5)), 0, 1), at(x(0, Some(6)), 2, 3)];
        assert!(!module(&other));
    }

    #[test]
    fn fences_grow_across_grants() {
        let base = [at(x(0, Some(5)), 0, 1), at(rel(0, 1, Some(0)), 2, 3)];
        let lower = [base[0].clone(), base[1].clone(), at(x(1, Some(4)), 4, 5)];
        assert!(!module(&lower));
        let higher = [base[0].clone(), base[1].clone(), at(x(1, Some(9)), 4, 5)];
        assert!(module(&higher));
    }

    #[test]
    fn a_held_lock_refuses_others_until_its_lease_may_have_ended() {
        // A 100 ms lease granted in [0, 1] ms may end from about 97 ms on
        // and has ended by about 104 ms.
        let grant = at(x(0, Some(5)), 0, 1);
        assert!(!module(&[grant.clone(), at(x(1, Some(6)), 50, 51)]));
        assert!(module(&[grant.clone(), at(x(1, None), 50, 51)]));
        assert!(module(&[grant.clone(), at(x(1, Some(6)), 99, 100)]));
        assert!(module(&[grant.clone(), at(x(1, None), 99, 100)]));
        assert!(!module(&[grant.clone(), at(x(1, None), 150, 151)]));
        let renewed = Observed {
            op: LockOp::Renew {
                owner: 0,
                ttl_ns: 100 * MS,
            },
            reply: Some(Reply::Renewed(true)),
        };
        assert!(!module(&[grant.clone(), at(renewed.clone(), 150, 151)]));
        // Renewed in time, the lease runs on.
        assert!(module(&[
            grant,
            at(renewed, 60, 61),
            at(x(1, None), 150, 151)
        ]));
    }

    #[test]
    fn readers_share_and_exclude_a_writer() {
        let r = |o, t| acq(o, Mode::Shared, 100, Some(Reply::Token(Some(t))));
        let readers = [at(r(0, 5), 0, 1), at(r(1, 6), 2, 3)];
        let mut refused = readers.to_vec();
        refused.push(at(x(2, None), 4, 5));
        assert!(module(&refused));
        let mut granted = readers.to_vec();
        granted.push(at(x(2, Some(7)), 4, 5));
        assert!(!module(&granted));
        let upgrade = [
            at(r(0, 5), 0, 1),
            at(
                acq(
                    0,
                    Mode::Exclusive,
                    100,
                    Some(Reply::Error(UPGRADE_ERROR.into())),
                ),
                2,
                3,
            ),
        ];
        assert!(module(&upgrade));
        // Release takes exclusive holds first: after a downgrade and one
        // release the owner holds one shared hold.
        let downgrade = [
            at(x(0, Some(5)), 0, 1),
            at(r(0, 5), 2, 3),
            at(rel(0, 1, Some(1)), 4, 5),
            at(r(1, 6), 6, 7),
        ];
        assert!(module(&downgrade));
    }

    #[test]
    fn permits_never_exceed_the_limit() {
        let p = |o, n, reply| {
            acq(
                o,
                Mode::Permits { limit: 3, count: n },
                100,
                Some(Reply::Token(reply)),
            )
        };
        assert!(module(&[
            at(p(0, 2, Some(5)), 0, 1),
            at(p(1, 2, None), 2, 3)
        ]));
        assert!(!module(&[
            at(p(0, 2, Some(5)), 0, 1),
            at(p(1, 2, Some(6)), 2, 3)
        ]));
        assert!(module(&[
            at(p(0, 2, Some(5)), 0, 1),
            at(p(1, 1, Some(6)), 2, 3)
        ]));
    }

    #[test]
    fn an_unknown_grant_may_or_may_not_have_happened() {
        let lost = Call {
            op: acq(0, Mode::Exclusive, 100, None),
            invoke: 0,
            complete: None,
            latest: None,
        };
        assert!(module(&[lost.clone(), at(x(1, None), 10, 11)]));
        assert!(module(&[lost.clone(), at(x(1, Some(6)), 10, 11)]));
        // Both cannot be: a refusal (the lost grant happened) and then a
        // grant while its lease still ran.
        assert!(!module(&[
            lost,
            at(x(1, None), 10, 11),
            at(x(2, Some(7)), 20, 21)
        ]));
    }

    #[test]
    fn an_unfenced_resource_needs_a_live_holder() {
        let write = |o| Observed {
            op: LockOp::Write { owner: o },
            reply: Some(Reply::Written(true)),
        };
        let grant = at(x(0, Some(0)), 0, 1);
        assert!(linearizable(
            ModelSpec::setnx(),
            &[grant.clone(), at(write(0), 10, 11)]
        ));
        assert!(!linearizable(
            ModelSpec::setnx(),
            &[grant, at(write(0), 200, 201)]
        ));
        // The module's runs leave writes to the fenced register's check.
        assert!(module(&[at(x(0, Some(5)), 0, 1), at(write(0), 200, 201)]));
    }
}
