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

/// How far past now a deadline read from outside (RDB, RESTORE, AOF,
/// replication) may lie: the longest lease plus one day of allowance for a
/// writer whose clock ran ahead of this server's. Anything later would be a
/// lock that practically never expires.
pub const MAX_LOADED_DEADLINE_AHEAD_MS: u64 = MAX_TTL_MS + 24 * 60 * 60 * 1000;

/// The largest token this server ever issues: every token is a positive
/// RESP integer.
pub const MAX_TOKEN: FencingToken = i64::MAX as u64;

/// The largest token a `RESTORE` payload may carry (anyone may send one).
/// The clock part of the generator (`unix_ms << 20`) reaches it only in the
/// year 2213, and above it 2^60 − 1 tokens remain, so a restored token can
/// never leave the generator without a larger one to issue.
pub const MAX_RESTORED_TOKEN: FencingToken = 0x7000_0000_0000_0000;

/// Where a loaded lock comes from; it decides the largest token accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadedFrom {
    /// A `RESTORE` payload (also `MIGRATE`): tokens up to
    /// [`MAX_RESTORED_TOKEN`].
    Restore,
    /// What a fencelock server wrote: an RDB file, a full sync, the AOF, the
    /// master's stream. Tokens up to [`MAX_TOKEN`]: after a `RESTORE` near
    /// the limit a server issues tokens above it, and must be able to load
    /// its own files again (a file that claims every token is used leaves a
    /// server that refuses grants rather than repeat a token).
    Server,
}

impl LoadedFrom {
    /// The largest token accepted from this source.
    pub fn max_token(self) -> FencingToken {
        match self {
            LoadedFrom::Restore => MAX_RESTORED_TOKEN,
            LoadedFrom::Server => MAX_TOKEN,
        }
    }
}

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

/// Why a lock read from outside (RDB, RESTORE, AOF, replication) was
/// refused: each field must pass the rules the commands apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidLock {
    /// The owner is empty or longer than [`MAX_OWNER_LEN`].
    Owner,
    /// The hold count is 0 or not a positive RESP integer.
    Holds,
    /// The token is 0 or above what its source may carry
    /// ([`LoadedFrom::max_token`]).
    Token,
    /// The deadline is 0 or later than now + [`MAX_LOADED_DEADLINE_AHEAD_MS`].
    Deadline,
}

impl InvalidLock {
    /// What was wrong, for the server log.
    pub fn reason(self) -> &'static str {
        match self {
            InvalidLock::Owner => "owner must be 1 to 1024 bytes",
            InvalidLock::Holds => "holds must be from 1 to 2^63-1",
            InvalidLock::Token => {
                "token must be from 1 to 0x7000000000000000 in a RESTORE payload, to 2^63-1 elsewhere"
            }
            InvalidLock::Deadline => "deadline must be from 1 to now + 31 days",
        }
    }
}

/// The fencing-token generator has nothing larger left to issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokensExhausted;

impl TokensExhausted {
    /// The error reply of a grant refused for it.
    pub const REPLY: &'static str =
        "ERR no fencing token left to issue on this server (all up to 2^63-1 are used); nothing changed";
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

    /// A lock read from outside (RDB, RESTORE, AOF, replication), checked
    /// against the same rules the commands apply. A deadline in the past is
    /// accepted (the server was down past it; the lease is expired at once).
    pub fn from_loaded(
        from: LoadedFrom,
        owner: &[u8],
        holds: u64,
        token: FencingToken,
        deadline_ms: u64,
        now_ms: u64,
    ) -> Result<Lock, InvalidLock> {
        if owner.is_empty() || owner.len() > MAX_OWNER_LEN {
            return Err(InvalidLock::Owner);
        }
        if holds == 0 || holds > i64::MAX as u64 {
            return Err(InvalidLock::Holds);
        }
        if token == 0 || token > from.max_token() {
            return Err(InvalidLock::Token);
        }
        if deadline_ms == 0 || deadline_ms > now_ms.saturating_add(MAX_LOADED_DEADLINE_AHEAD_MS) {
            return Err(InvalidLock::Deadline);
        }
        Ok(Lock {
            owner: Owner::from_slice(owner),
            holds,
            token,
            deadline_ms,
        })
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
/// never goes below it. Past [`MAX_TOKEN`] it refuses to issue rather than
/// repeat a token.
#[derive(Clone, Debug, Default)]
pub struct TokenGenerator {
    last: FencingToken,
}

/// Bits below the clock part of a token.
pub const TOKEN_CLOCK_SHIFT: u32 = 20;

impl TokenGenerator {
    /// The next token, strictly greater than every token issued or observed;
    /// `Err` (and nothing changes) when no such token is left.
    pub fn next(&mut self, now_ms: u64) -> Result<FencingToken, TokensExhausted> {
        if self.last >= MAX_TOKEN {
            return Err(TokensExhausted);
        }
        let from_clock = now_ms
            .checked_shl(TOKEN_CLOCK_SHIFT)
            .filter(|t| *t >> TOKEN_CLOCK_SHIFT == now_ms)
            .unwrap_or(MAX_TOKEN);
        // `last < MAX_TOKEN`, so `last + 1` is a valid token; the clock part
        // is capped at MAX_TOKEN, and the result is > last either way.
        let t = (self.last + 1).max(from_clock.min(MAX_TOKEN));
        self.last = t;
        Ok(t)
    }

    /// Takes note of a token issued elsewhere (or earlier). Tokens from
    /// outside are checked against [`LoadedFrom::max_token`] before they get here;
    /// anything larger is capped at [`MAX_TOKEN`], which only stops issuing.
    pub fn observe(&mut self, token: FencingToken) {
        self.last = self.last.max(token.min(MAX_TOKEN));
    }

    /// The greatest token issued or observed so far.
    pub fn last(&self) -> FencingToken {
        self.last
    }
}

#[cfg(test)]
mod tests {
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
        let a = g.next(5).unwrap_or(0);
        let b = g.next(5).unwrap_or(0);
        let c = g.next(5).unwrap_or(0);
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
            last = before.next(1_700_000_000_000).unwrap_or(0);
        }
        let mut after = TokenGenerator::default();
        assert!(after.next(1_700_000_000_001).unwrap_or(0) > last);
    }

    #[test]
    fn tokens_never_go_back_when_the_clock_does() {
        let mut g = TokenGenerator::default();
        let a = g.next(10_000).unwrap_or(0);
        let b = g.next(5_000).unwrap_or(0);
        assert!(b > a);
    }

    #[test]
    fn observed_tokens_raise_the_floor() {
        let mut g = TokenGenerator::default();
        g.observe(1 << 60);
        assert_eq!(g.next(1), Ok((1 << 60) + 1));
        g.observe(3);
        assert_eq!(g.last(), (1 << 60) + 1);
    }

    #[test]
    fn tokens_stay_positive_i64() {
        let mut g = TokenGenerator::default();
        assert_eq!(g.next(u64::MAX), Ok(MAX_TOKEN));
        assert!(TokenGenerator::default().next(0).unwrap_or(0) >= 1);
        let mut g = TokenGenerator::default();
        g.observe(u64::MAX);
        assert_eq!(g.last(), MAX_TOKEN);
    }

    #[test]
    fn an_exhausted_generator_refuses_instead_of_repeating() {
        let mut g = TokenGenerator::default();
        g.observe(MAX_TOKEN - 2);
        assert_eq!(g.next(1), Ok(MAX_TOKEN - 1));
        assert_eq!(g.next(1), Ok(MAX_TOKEN));
        assert_eq!(g.next(1), Err(TokensExhausted));
        assert_eq!(g.next(u64::MAX), Err(TokensExhausted));
        assert_eq!(g.last(), MAX_TOKEN, "a refusal changes nothing");
    }

    #[test]
    fn the_largest_loaded_token_leaves_room_to_issue() {
        let mut g = TokenGenerator::default();
        g.observe(MAX_RESTORED_TOKEN);
        let t = g.next(1_800_000_000_000).unwrap_or(0);
        assert!(t > MAX_RESTORED_TOKEN);
        assert_eq!(MAX_TOKEN - MAX_RESTORED_TOKEN, (1 << 60) - 1);
        // The clock part alone stays below MAX_RESTORED_TOKEN until 2213.
        let year_2213_ms: u64 = 7_696_581_394_432;
        assert!(year_2213_ms << TOKEN_CLOCK_SHIFT <= MAX_RESTORED_TOKEN);
    }

    #[test]
    fn loaded_locks_obey_the_command_rules() {
        let now = 1_000_000;
        let ok = Lock::from_loaded(LoadedFrom::Restore, b"o", 2, 9, now + 5, now);
        assert_eq!(
            ok.map(|l| (l.holds, l.token, l.deadline_ms)),
            Ok((2, 9, now + 5))
        );
        // A deadline in the past is fine: expired at once.
        assert!(Lock::from_loaded(LoadedFrom::Restore, b"o", 1, 9, 1, now).is_ok());
        let max_ahead = now + MAX_LOADED_DEADLINE_AHEAD_MS;
        assert!(Lock::from_loaded(LoadedFrom::Restore, b"o", 1, 9, max_ahead, now).is_ok());
        assert!(
            Lock::from_loaded(LoadedFrom::Restore, &[0u8; MAX_OWNER_LEN], 1, 9, 5, now).is_ok()
        );
        assert!(Lock::from_loaded(
            LoadedFrom::Restore,
            b"o",
            i64::MAX as u64,
            MAX_RESTORED_TOKEN,
            5,
            now
        )
        .is_ok());
        let cases: &[(&[u8], u64, u64, u64, InvalidLock)] = &[
            (b"", 1, 9, 5, InvalidLock::Owner),
            (&[b'x'; MAX_OWNER_LEN + 1], 1, 9, 5, InvalidLock::Owner),
            (b"o", 0, 9, 5, InvalidLock::Holds),
            (b"o", i64::MAX as u64 + 1, 9, 5, InvalidLock::Holds),
            (b"o", 1, 0, 5, InvalidLock::Token),
            (b"o", 1, MAX_RESTORED_TOKEN + 1, 5, InvalidLock::Token),
            (b"o", 1, u64::MAX, 5, InvalidLock::Token),
            (b"o", 1, 9, 0, InvalidLock::Deadline),
            (b"o", 1, 9, max_ahead + 1, InvalidLock::Deadline),
            (b"o", 1, 9, 1 << 63, InvalidLock::Deadline),
        ];
        for (owner, holds, token, deadline, want) in cases {
            assert_eq!(
                Lock::from_loaded(LoadedFrom::Restore, owner, *holds, *token, *deadline, now),
                Err(*want),
                "{holds} {token} {deadline}"
            );
        }
    }

    #[test]
    fn a_server_reloads_every_token_it_can_issue_but_a_restore_stops_lower() {
        // After a RESTORE at the limit the server issues tokens above it;
        // its own files (and its replicas) must still take them.
        let mut g = TokenGenerator::default();
        g.observe(MAX_RESTORED_TOKEN);
        let issued = g.next(1).unwrap_or(0);
        assert!(issued > MAX_RESTORED_TOKEN);
        let now = 1_000;
        assert!(Lock::from_loaded(LoadedFrom::Server, b"o", 1, issued, 5, now).is_ok());
        assert!(Lock::from_loaded(LoadedFrom::Server, b"o", 1, MAX_TOKEN, 5, now).is_ok());
        assert_eq!(
            Lock::from_loaded(LoadedFrom::Restore, b"o", 1, issued, 5, now),
            Err(InvalidLock::Token)
        );
        assert_eq!(
            Lock::from_loaded(LoadedFrom::Server, b"o", 1, MAX_TOKEN + 1, 5, now),
            Err(InvalidLock::Token)
        );
        assert_eq!(
            Lock::from_loaded(LoadedFrom::Server, b"o", 1, 0, 5, now),
            Err(InvalidLock::Token)
        );
    }
}
