//! The pure rules of the lock: no FFI, no server, unit tests beside each.
//! Everything above this layer applies these rules to keys, timers and
//! clients; nothing here calls up.
//!
//! - `clock`: the lease clock (monotonic) and the wall clock, and the
//!   conversion of deadlines between them;
//! - `lock`: one lock's holder, holds, token and lease, and the token
//!   generator;
//! - `schedule`: live leases ordered by deadline, for the expiry timer;
//! - `queue`: the FIFO wait queues and the hand-off rule;
//! - `args`: turning argument bytes into typed requests or coded errors;
//! - `encoding`: the value's RDB encoding and the checks a loaded value
//!   must pass;
//! - `effect`: the replicated effect of a change (`LOCK.APPLY`'s state
//!   argument).

pub mod args;
pub mod clock;
pub mod effect;
pub mod encoding;
pub mod lock;
pub mod queue;
pub mod schedule;
