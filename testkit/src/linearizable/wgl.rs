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

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn with(&self, i: usize) -> Bits {
        let mut b = self.clone();
        b.0[i / 64] |= 1 << (i % 64);
        b
    }
}

struct Frame<S> {
    done: Bits,
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
    // Sorted by invoke, so that the operations that may come next are a
    // short scan from the first one not yet linearized.
    let mut by_invoke: Vec<usize> = (0..calls.len()).collect();
    by_invoke.sort_by_key(|&i| calls[i].invoke);
    let mut by_complete: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i].complete.is_some())
        .collect();
    by_complete.sort_by_key(|&i| calls[i].complete);
    let completed = by_complete.len();

    let mut seen: HashSet<(Bits, M::State)> = HashSet::new();
    let mut path: Vec<usize> = Vec::new();

    let expand = |done: &Bits,
                  state: &M::State,
                  seen: &mut HashSet<(Bits, M::State)>,
                  blocked: &mut Vec<usize>|
     -> Vec<(usize, M::State)> {
        let horizon = by_complete
            .iter()
            .find(|&&i| !done.get(i))
            .and_then(|&i| calls[i].complete)
            .unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for &i in &by_invoke {
            if done.get(i) {
                continue;
            }
            if calls[i].invoke > horizon {
                break;
            }
            let next = model.step(state, &calls[i]);
            if next.is_empty() && calls[i].complete.is_some() {
                blocked.push(i);
            }
            for s in next {
                // An unknown operation that changes nothing never helps.
                if calls[i].complete.is_none() && &s == state {
                    continue;
                }
                let d = done.with(i);
                if seen.insert((d, s.clone())) {
                    out.push((i, s));
                }
            }
        }
        out
    };

    let root_done = Bits::new(calls.len());
    let mut blocked = Vec::new();
    let root_next = expand(&root_done, &init, &mut seen, &mut blocked);
    if completed == 0 {
        return Verdict::Linearizable;
    }
    let mut best = Some(Stuck {
        linearized: 0,
        order: Vec::new(),
        state: init.clone(),
        blocked,
    });
    let mut stack = vec![Frame {
        done: root_done,
        completed_done: 0,
        next: root_next,
    }];
    while let Some(top) = stack.last_mut() {
        if seen.len() > budget {
            return Verdict::TooBig(seen.len());
        }
        let Some((i, state)) = top.next.pop() else {
            stack.pop();
            path.pop();
            continue;
        };
        let done = top.done.with(i);
        let completed_done = top.completed_done + usize::from(calls[i].complete.is_some());
        path.push(i);
        if completed_done == completed {
            return Verdict::Linearizable;
        }
        let mut blocked = Vec::new();
        let next = expand(&done, &state, &mut seen, &mut blocked);
        if best.as_ref().is_none_or(|b| completed_done > b.linearized) {
            best = Some(Stuck {
                linearized: completed_done,
                order: path.clone(),
                state: state.clone(),
                blocked,
            });
        }
        stack.push(Frame {
            done,
            completed_done,
            next,
        });
    }
    Verdict::Violation(best.expect("a root was explored"))
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
