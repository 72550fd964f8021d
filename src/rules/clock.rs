//! The two clocks of a lease.
//!
//! A running server times leases by its *lease clock*: monotonic
//! milliseconds, anchored once to the wall clock (so its values look like
//! Unix milliseconds). A step of the wall clock (an NTP step, a VM resume,
//! an operator's `date -s`) then neither ends a lease early nor keeps it
//! alive late: a 30 s lease lasts 30 s.
//!
//! Whatever leaves the server — the RDB, the AOF, `LOCK.APPLY` to replicas,
//! `DUMP`/`MIGRATE`, `DEBUG DIGEST-VALUE` — carries absolute *wall-clock*
//! deadlines, as before, because another server (a replica, a restarted
//! process, a slot's new owner) shares the wall clock and not our
//! monotonic one. [`WallOffset`] converts at that boundary: a lease keeps
//! its remaining time across it, whatever the wall clock did here.
//!
//! Fencing tokens keep their wall-clock part: they must exceed the tokens
//! of another server, and the wall clock is the one servers share.

/// Wall clock minus lease clock, in milliseconds: 0 until the wall clock
/// is stepped, then the sum of the steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallOffset(pub i64);

impl WallOffset {
    /// The wall-clock time of a lease-clock time (for what leaves the
    /// server).
    pub fn to_wall(self, lease_ms: u64) -> u64 {
        lease_ms.saturating_add_signed(self.0)
    }

    /// The lease-clock time of a wall-clock time (for what comes in).
    pub fn to_lease(self, wall_ms: u64) -> u64 {
        match self.0.checked_neg() {
            Some(back) => wall_ms.saturating_add_signed(back),
            None => wall_ms.saturating_add(1 << 63),
        }
    }
}

/// "Now" on both clocks, read together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Lease clock: deadlines and waits.
    pub lease_ms: u64,
    /// Wall clock: the clock part of fencing tokens.
    pub wall_ms: u64,
}

impl Now {
    /// Both clocks at `ms` (no step yet; unit tests).
    #[cfg(test)]
    pub fn at(ms: u64) -> Now {
        Now {
            lease_ms: ms,
            wall_ms: ms,
        }
    }
}

/// The offset between two readings taken together, in nanoseconds since
/// the Unix epoch, rounded to the nearest millisecond (the two readings are
/// a few nanoseconds apart; NTP's slewing moves both clocks alike).
pub fn offset_of(wall_ns: u64, lease_ns: u64) -> WallOffset {
    let signed = |ns: u64| i64::try_from(ns).unwrap_or(i64::MAX);
    let diff = signed(wall_ns).saturating_sub(signed(lease_ns));
    WallOffset(diff.saturating_add(diff.signum() * 500_000) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_step_no_offset() {
        let w = WallOffset::default();
        assert_eq!(w.to_wall(1_700_000_000_000), 1_700_000_000_000);
        assert_eq!(w.to_lease(1_700_000_000_000), 1_700_000_000_000);
    }

    #[test]
    fn a_forward_step_moves_wall_deadlines_later_and_keeps_the_remaining_time() {
        // The wall clock jumped an hour ahead: a lease due in 10 s on the
        // lease clock is due 10 s after the new wall-clock now.
        let w = WallOffset(3_600_000);
        let lease_now = 1_000_000;
        let wall_now = lease_now + 3_600_000;
        let deadline = lease_now + 10_000;
        assert_eq!(w.to_wall(deadline) - wall_now, 10_000);
        assert_eq!(w.to_lease(w.to_wall(deadline)), deadline);
    }

    #[test]
    fn a_backward_step_moves_wall_deadlines_earlier() {
        let w = WallOffset(-3_600_000);
        assert_eq!(w.to_wall(5_000_000), 1_400_000);
        assert_eq!(w.to_lease(1_400_000), 5_000_000);
    }

    #[test]
    fn conversions_saturate_instead_of_wrapping() {
        assert_eq!(WallOffset(-10).to_wall(3), 0);
        assert_eq!(WallOffset(10).to_wall(u64::MAX - 3), u64::MAX);
        assert_eq!(WallOffset(10).to_lease(3), 0);
        assert_eq!(WallOffset(i64::MIN).to_lease(5), 5 + (1 << 63));
    }

    #[test]
    fn readings_a_moment_apart_round_to_no_offset() {
        let t = 1_796_000_000_123_456_789u64;
        assert_eq!(offset_of(t + 40, t), WallOffset(0));
        assert_eq!(offset_of(t, t + 40), WallOffset(0));
        assert_eq!(offset_of(t + 3_600_000_000_000, t), WallOffset(3_600_000));
        assert_eq!(offset_of(t, t + 1_600_000), WallOffset(-2));
        assert_eq!(offset_of(t + 1_400_000, t), WallOffset(1));
    }
}
