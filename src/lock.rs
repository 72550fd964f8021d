//! The lock state machine: one lock's holder, hold count, fencing token and
//! lease deadline, and the server-wide fencing-token generator.
//!
//! Plain Rust, no FFI: every rule of the lock lives here and is unit-tested
//! without a server. Times are wall-clock Unix milliseconds (`now_ms`,
//! `deadline_ms`), so that an effect can be replicated with absolute values.

/// Longest lease and longest wait a client may ask for: 30 days.
pub const MAX_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Longest owner string, in bytes.
pub const MAX_OWNER_LEN: usize = 1024;

/// Owner strings up to this many bytes are stored inside the lock itself
/// (one allocation per lock); longer ones spill to the heap.
pub const INLINE_OWNER_LEN: usize = 48;

/// The holder's owner string.
pub type Owner = smallvec::SmallVec<[u8; INLINE_OWNER_LEN]>;

/// A fencing token: positive, and for one key strictly greater than every
/// token granted before it on this server.
pub type FencingToken = u64;

/// One held lock, as stored in its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    /// The holder's opaque owner string.
    pub owner: Owner,
    /// How many times the holder has acquired it without releasing (≥ 1).
    pub holds: u64,
    /// The token issued at the fresh grant; re-entries return it again.
    pub token: FencingToken,
    /// Wall-clock Unix ms at which the lease ends unless renewed.
    pub deadline_ms: u64,
}

/// Why a holder-only operation did not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotHolder {
    /// Someone else holds the lock.
    OtherOwner,
}

/// What a release left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// The holder still holds it this many times; the lease is unchanged.
    StillHeld(u64),
    /// The hold count reached zero: the lock must be deleted.
    Free,
}

impl Lock {
    /// A fresh grant: one hold, lease `now + ttl`.
    pub fn grant(owner: &[u8], token: FencingToken, now_ms: u64, ttl_ms: u64) -> Lock {
        Lock {
            owner: Owner::from_slice(owner),
            holds: 1,
            token,
            deadline_ms: now_ms.saturating_add(ttl_ms),
        }
    }

    /// True once the lease has passed: a lock is held on `[grant, deadline)`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.deadline_ms
    }

    /// Remaining lease in ms (0 when expired).
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.deadline_ms.saturating_sub(now_ms)
    }

    /// Whether `owner` is the holder.
    pub fn is_held_by(&self, owner: &[u8]) -> bool {
        self.owner.as_slice() == owner
    }

    /// Re-entry by the holder: one more hold, lease reset to `now + ttl`,
    /// same token. The hold count saturates rather than overflow (2^64
    /// acquisitions cannot happen within a lease anyway).
    pub fn reenter(
        &mut self,
        owner: &[u8],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<FencingToken, NotHolder> {
        if !self.is_held_by(owner) {
            return Err(NotHolder::OtherOwner);
        }
        self.holds = self.holds.saturating_add(1);
        self.deadline_ms = now_ms.saturating_add(ttl_ms);
        Ok(self.token)
    }

    /// Renewal by the holder: lease becomes `now + ttl` (it may shorten it).
    pub fn renew(&mut self, owner: &[u8], now_ms: u64, ttl_ms: u64) -> Result<(), NotHolder> {
        if !self.is_held_by(owner) {
            return Err(NotHolder::OtherOwner);
        }
        self.deadline_ms = now_ms.saturating_add(ttl_ms);
        Ok(())
    }

    /// Release by the holder: one hold less; the lease is kept as it is.
    pub fn release(&mut self, owner: &[u8]) -> Result<Released, NotHolder> {
        if !self.is_held_by(owner) {
            return Err(NotHolder::OtherOwner);
        }
        self.holds = self.holds.saturating_sub(1);
        Ok(if self.holds == 0 {
            Released::Free
        } else {
            Released::StillHeld(self.holds)
        })
    }

    /// Bytes this lock occupies in memory (for `MEMORY USAGE`).
    pub fn mem_usage(&self) -> usize {
        let spilled = if self.owner.spilled() {
            self.owner.capacity()
        } else {
            0
        };
        std::mem::size_of::<Lock>() + spilled
    }
}

/// The server-wide source of fencing tokens.
///
/// `next = max(last + 1, now_ms << 20)`: the counter part makes tokens
/// strictly increasing while the process runs, the clock part keeps them
/// increasing across a restart that lost the last writes (a `kill -9` with
/// `appendfsync everysec`), across a failover to a replica that missed the
/// last grants, and across slot migration — as long as the new server's
/// clock is past the moment of the lost grant, and fewer than 2^20 tokens
/// (about a million) are issued in one millisecond. One generator serves all
/// keys, so tokens are unique server-wide; a token received through
/// replication, AOF, RDB or a migrated key is `observe`d so the generator
/// never goes below it.
#[derive(Clone, Debug, Default)]
pub struct TokenGenerator {
    last: FencingToken,
}

/// Bits below the clock part of a token.
pub const TOKEN_CLOCK_SHIFT: u32 = 20;

impl TokenGenerator {
    /// The next token, strictly greater than every token issued or observed.
    pub fn next(&mut self, now_ms: u64) -> FencingToken {
        let from_clock = now_ms.checked_shl(TOKEN_CLOCK_SHIFT).unwrap_or(u64::MAX);
        // Stay within i64 so every token is a positive RESP integer.
        let t = self
            .last
            .saturating_add(1)
            .max(from_clock)
            .min(i64::MAX as u64);
        self.last = t;
        t
    }

    /// Takes note of a token issued elsewhere (or earlier).
    pub fn observe(&mut self, token: FencingToken) {
        self.last = self.last.max(token);
    }

    /// The greatest token issued or observed so far.
    pub fn last(&self) -> FencingToken {
        self.last
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )]
    use super::*;

    #[test]
    fn grant_holds_once_with_lease_from_now() {
        let l = Lock::grant(b"a", 7, 1000, 500);
        assert_eq!(l.holds, 1);
        assert_eq!(l.token, 7);
        assert_eq!(l.deadline_ms, 1500);
        assert!(!l.is_expired(1499));
        assert!(l.is_expired(1500));
        assert_eq!(l.remaining_ms(1200), 300);
        assert_eq!(l.remaining_ms(2000), 0);
    }

    #[test]
    fn reentry_keeps_token_and_resets_lease() {
        let mut l = Lock::grant(b"a", 7, 1000, 500);
        assert_eq!(l.reenter(b"a", 1400, 100), Ok(7));
        assert_eq!(l.holds, 2);
        assert_eq!(l.deadline_ms, 1500);
        assert_eq!(l.reenter(b"a", 1450, 1000), Ok(7));
        assert_eq!(l.deadline_ms, 2450);
    }

    #[test]
    fn other_owner_changes_nothing() {
        let mut l = Lock::grant(b"a", 7, 1000, 500);
        let before = l.clone();
        assert_eq!(l.reenter(b"b", 1100, 500), Err(NotHolder::OtherOwner));
        assert_eq!(l.renew(b"b", 1100, 500), Err(NotHolder::OtherOwner));
        assert_eq!(l.release(b"b"), Err(NotHolder::OtherOwner));
        assert_eq!(l, before);
    }

    #[test]
    fn owner_comparison_is_binary_exact() {
        let l = Lock::grant(b"a\0b", 1, 0, 10);
        assert!(l.is_held_by(b"a\0b"));
        assert!(!l.is_held_by(b"a"));
        assert!(!l.is_held_by(b"A\0b"));
    }

    #[test]
    fn long_owners_are_kept_whole() {
        let long = vec![7u8; 1024];
        let l = Lock::grant(&long, 1, 0, 10);
        assert!(l.is_held_by(&long));
        assert!(l.mem_usage() >= 1024);
        assert!(Lock::grant(b"short", 1, 0, 10).mem_usage() < 128);
    }

    #[test]
    fn release_counts_down_and_keeps_lease() {
        let mut l = Lock::grant(b"a", 7, 1000, 500);
        l.reenter(b"a", 1100, 900).ok();
        assert_eq!(l.release(b"a"), Ok(Released::StillHeld(1)));
        assert_eq!(l.deadline_ms, 2000);
        assert_eq!(l.release(b"a"), Ok(Released::Free));
    }

    #[test]
    fn renew_sets_lease_from_now() {
        let mut l = Lock::grant(b"a", 7, 1000, 500);
        assert_eq!(l.renew(b"a", 1400, 50), Ok(()));
        assert_eq!(l.deadline_ms, 1450);
        assert_eq!(l.holds, 1);
    }

    #[test]
    fn tokens_strictly_increase_within_one_millisecond() {
        let mut g = TokenGenerator::default();
        let a = g.next(5);
        let b = g.next(5);
        let c = g.next(5);
        assert!(a < b && b < c);
        assert_eq!(a, 5 << TOKEN_CLOCK_SHIFT);
    }

    #[test]
    fn tokens_follow_the_clock_after_a_lost_counter() {
        // A restart that lost the counter: the clock part alone is larger
        // than anything issued a millisecond earlier.
        let mut before = TokenGenerator::default();
        let mut last = 0;
        for _ in 0..1000 {
            last = before.next(1_700_000_000_000);
        }
        let mut after = TokenGenerator::default();
        assert!(after.next(1_700_000_000_001) > last);
    }

    #[test]
    fn tokens_never_go_back_when_the_clock_does() {
        let mut g = TokenGenerator::default();
        let a = g.next(10_000);
        let b = g.next(5_000);
        assert!(b > a);
    }

    #[test]
    fn observed_tokens_raise_the_floor() {
        let mut g = TokenGenerator::default();
        g.observe(1 << 60);
        assert_eq!(g.next(1), (1 << 60) + 1);
        g.observe(3);
        assert_eq!(g.last(), (1 << 60) + 1);
    }

    #[test]
    fn tokens_stay_positive_i64() {
        let mut g = TokenGenerator::default();
        g.observe(i64::MAX as u64);
        assert_eq!(g.next(u64::MAX), i64::MAX as u64);
        let mut g = TokenGenerator::default();
        assert!(g.next(u64::MAX) <= i64::MAX as u64);
        assert!(TokenGenerator::default().next(0) >= 1);
    }
}
