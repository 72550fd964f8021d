//! The Wing–Gong–Lowe linearizability search: a depth-first search over
//! the orders in which the operations of a history can take effect,
//! consistent with real time (an operation can be linearized next only if
//! no operation still to be linearized completed before it was invoked),
//! each step checked against a sequential model, with Lowe's memoisation:
//! a (linearized set, model state) pair already explored is never explored
//! again.
//!
//! Operations with an unknown outcome complete at infinity and need not be
//! linearized at all (they may not have happened). Models may be
//! nondeterministic: a step returns every state the operation may leave.

use std::collections::HashSet;
use std::hash::Hash;

/// One operation to linearize.
#[derive(Clone, Debug)]
pub struct Call<O> {
    pub op: O,
    pub invoke: u64,
    /// None: unknown outcome (may have happened at any point after invoke,
    /// or never).
    pub complete: Option<u64>,
    /// For an unknown outcome: if it happened, no later than this.
    pub latest: Option<u64>,
}

/// A sequential model.
pub trait Model {
    type Op;
    type State: Clone + Hash + Eq + std::fmt::Debug;
    /// Every state `op` (invoked at `invoke`, answered by `complete`) may
    /// leave when applied to `state`, the reply checked; empty when it
    /// cannot be applied there.
    fn step(&self, state: &Self::State, call: &Call<Self::Op>) -> Vec<Self::State>;
}

/// Where the search got furthest when it found no linearization.
#[derive(Clone, Debug)]
pub struct Stuck<S> {
    /// How many completed operations were linearized.
    pub linearized: usize,
    /// The indices linearized, in order.
    pub order: Vec<usize>,
    /// The model state there.
    pub state: S,
    /// The completed operations that could have come next but none of
    /// which the model accepts (indices into the calls).
    pub blocked: Vec<usize>,
}

/// The verdict on one history.
#[derive(Clone, Debug)]
pub enum Verdict<S> {
    Linearizable,
    /// No order of the operations explains the replies.
    Violation(Stuck<S>),
    /// The search gave up after exploring this many configurations.
    TooBig(usize),
}

/// The set of linearized operations (positions in invoke order), kept
/// small: every completed operation before `frontier` is in it and left
/// out of `extra`, which holds the rest of the set (the few operations
/// linearized beyond the frontier, and unknown ones before it).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Done {
    frontier: u32,
    extra: Vec<u32>,
}

impl Done {
    fn contains(&self, k: usize, completed: &[bool]) -> bool {
        (k < self.frontier as usize && completed[k])
            || self.extra.binary_search(&(k as u32)).is_ok()
    }

    fn with(&self, k: usize, completed: &[bool]) -> Done {
        let mut d = self.clone();
        if let Err(pos) = d.extra.binary_search(&(k as u32)) {
            d.extra.insert(pos, k as u32);
        }
        // Move the frontier to the first completed operation not in the
        // set (unknown ones may stay out for ever).
        while (d.frontier as usize) < completed.len() {
            let f = d.frontier;
            if completed[f as usize] {
                match d.extra.binary_search(&f) {
                    Ok(pos) => {
                        d.extra.remove(pos);
                    }
                    Err(_) => break,
                }
            }
            d.frontier += 1;
        }
        d
    }
}

struct Frame<S> {
    done: Done,
    completed_done: usize,
    next: Vec<(usize, S)>,
}

/// Searches for a linearization of `calls` from `init`; gives up after
/// `budget` explored configurations.
pub fn check<M: Model>(
    model: &M,
    init: M::State,
    calls: &[Call<M::Op>],
    budget: usize,
) -> Verdict<M::State> {
    // Positions in invoke order: the operations that may come next are a
    // short scan from the frontier, plus unknown ones left before it.
    let mut order: Vec<usize> = (0..calls.len()).collect();
    order.sort_by_key(|&i| calls[i].invoke);
    let c: Vec<&Call<M::Op>> = order.iter().map(|&i| &calls[i]).collect();
    let completed: Vec<bool> = c.iter().map(|x| x.complete.is_some()).collect();
    let unknown: Vec<usize> = (0..c.len()).filter(|&k| !completed[k]).collect();
    let total = completed.iter().filter(|&&x| x).count();

    let mut seen: HashSet<(Done, M::State)> = HashSet::new();
    let mut path: Vec<usize> = Vec::new();

    let expand = |done: &Done,
                  state: &M::State,
                  seen: &mut HashSet<(Done, M::State)>,
                  blocked: &mut Vec<usize>|
     -> Vec<(usize, M::State)> {
        let from = done.frontier as usize;
        // The earliest completion among operations still to linearize:
        // nothing invoked after it can come next.
        let mut horizon = u64::MAX;
        for (k, call) in c.iter().enumerate().skip(from) {
            if call.invoke > horizon {
                break;
            }
            if let Some(t) = call.complete {
                if !done.contains(k, &completed) {
                    horizon = horizon.min(t);
                }
            }
        }
        let before = unknown.iter().copied().take_while(|&k| k < from);
        let after = (from..c.len()).take_while(|&k| c[k].invoke <= horizon);
        let mut out = Vec::new();
        for k in before.chain(after) {
            if done.contains(k, &completed) {
                continue;
            }
            let next = model.step(state, c[k]);
            if next.is_empty() && completed[k] {
                blocked.push(order[k]);
            }
            for s in next {
                // An unknown operation that changes nothing never helps.
                if !completed[k] && &s == state {
                    continue;
                }
                let d = done.with(k, &completed);
                if seen.insert((d, s.clone())) {
                    out.push((k, s));
                }
            }
        }
        out
    };

    let root_done = Done {
        frontier: 0,
        extra: Vec::new(),
    }
    .with_frontier(&completed);
    let mut blocked = Vec::new();
    let root_next = expand(&root_done, &init, &mut seen, &mut blocked);
    if total == 0 {
        return Verdict::Linearizable;
    }
    let mut best = Stuck {
        linearized: 0,
        order: Vec::new(),
        state: init.clone(),
        blocked,
    };
    let mut stack = vec![Frame {
        done: root_done,
        completed_done: 0,
        next: root_next,
    }];
    while let Some(top) = stack.last_mut() {
        if seen.len() > budget {
            return Verdict::TooBig(seen.len());
        }
        let Some((k, state)) = top.next.pop() else {
            stack.pop();
            path.pop();
            continue;
        };
        let done = top.done.with(k, &completed);
        let completed_done = top.completed_done + usize::from(completed[k]);
        path.push(order[k]);
        if completed_done == total {
            return Verdict::Linearizable;
        }
        let mut blocked = Vec::new();
        let next = expand(&done, &state, &mut seen, &mut blocked);
        if completed_done > best.linearized {
            best = Stuck {
                linearized: completed_done,
                order: path.clone(),
                state: state.clone(),
                blocked,
            };
        }
        stack.push(Frame {
            done,
            completed_done,
            next,
        });
    }
    Verdict::Violation(best)
}

impl Done {
    /// The empty set with its frontier past leading unknown operations.
    fn with_frontier(mut self, completed: &[bool]) -> Done {
        while (self.frontier as usize) < completed.len() && !completed[self.frontier as usize] {
            self.frontier += 1;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register of one integer: writes, and reads that return it.
    struct Reg;

    #[derive(Clone, Debug)]
    enum RegOp {
        Write(i64),
        Read(i64),
    }

    impl Model for Reg {
        type Op = RegOp;
        type State = i64;
        fn step(&self, s: &i64, c: &Call<RegOp>) -> Vec<i64> {
            match c.op {
                RegOp::Write(v) => vec![v],
                RegOp::Read(v) if v == *s => vec![*s],
                RegOp::Read(_) => vec![],
            }
        }
    }

    fn call(op: RegOp, invoke: u64, complete: Option<u64>) -> Call<RegOp> {
        Call {
            op,
            invoke,
            complete,
            latest: None,
        }
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let h = [
            call(RegOp::Write(1), 0, Some(10)),
            call(RegOp::Read(1), 1, Some(2)),
            call(RegOp::Read(0), 3, Some(4)),
        ];
        // Read(0) after Read(1) cannot be explained: the write was seen.
        assert!(matches!(check(&Reg, 0, &h, 1000), Verdict::Violation(_)));
        let h = [
            call(RegOp::Write(1), 0, Some(10)),
            call(RegOp::Read(0), 1, Some(2)),
            call(RegOp::Read(1), 3, Some(4)),
        ];
        assert!(matches!(check(&Reg, 0, &h, 1000), Verdict::Linearizable));
    }

    #[test]
    fn real_time_order_is_respected() {
        let h = [
            call(RegOp::Write(1), 0, Some(1)),
            call(RegOp::Read(0), 2, Some(3)),
        ];
        match check(&Reg, 0, &h, 1000) {
            Verdict::Violation(stuck) => {
                assert_eq!(stuck.linearized, 1);
                assert_eq!(stuck.blocked, vec![1]);
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn unknown_operations_may_or_may_not_happen() {
        let happened = [
            call(RegOp::Write(1), 0, None),
            call(RegOp::Read(1), 5, Some(6)),
        ];
        assert!(matches!(
            check(&Reg, 0, &happened, 1000),
            Verdict::Linearizable
        ));
        let not = [
            call(RegOp::Write(1), 0, None),
            call(RegOp::Read(0), 5, Some(6)),
        ];
        assert!(matches!(check(&Reg, 0, &not, 1000), Verdict::Linearizable));
        let both = [
            call(RegOp::Write(1), 0, None),
            call(RegOp::Read(1), 5, Some(6)),
            call(RegOp::Read(0), 7, Some(8)),
        ];
        assert!(matches!(check(&Reg, 0, &both, 1000), Verdict::Violation(_)));
    }
}
