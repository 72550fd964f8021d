//! The lock family's state machine: a key's kind (read/write lock or
//! semaphore) and its holders, each with its holds or permits, fencing token
//! and lease deadline; the admission rule of every kind; and the server-wide
//! fencing-token generator.
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

/// The largest semaphore (`LIMIT permits`).
pub const MAX_PERMITS: u32 = 1_000_000;

/// The most holders one key may have when loaded from outside (a semaphore
/// has at most [`MAX_PERMITS`] holders; readers are held to the same bound).
pub const MAX_HOLDERS: u64 = MAX_PERMITS as u64;

/// The largest hold count (a positive RESP integer).
pub const MAX_HOLDS: u64 = i64::MAX as u64;

/// A holder's owner string.
pub type Owner = smallvec::SmallVec<[u8; INLINE_OWNER_LEN]>;

/// Longest request id (`ID request-id`), in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// The last operation an owner applied with a request id, and its reply: a
/// retry with the same id is answered from here and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memo {
    /// The request id (1 ..= [`MAX_REQUEST_ID_LEN`] bytes).
    pub id: smallvec::SmallVec<[u8; 40]>,
    /// What it answered: the token (acquire) or what the owner still held
    /// (release).
    pub reply: u64,
}

/// A fencing token: positive, and for one key strictly greater than every
/// token granted before it on this server.
pub type FencingToken = u64;

/// What an acquire asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// The exclusive (write) lock.
    Exclusive,
    /// A shared (read) hold.
    Shared,
    /// `count` permits of a semaphore of `limit`.
    Permits { limit: u32, count: u32 },
}

/// The kind of a held key, as `LOCK.INFO` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One owner holds it exclusively (maybe with shared holds too, after a
    /// downgrade).
    Exclusive,
    /// Only shared holders.
    Shared,
    /// A semaphore.
    Semaphore,
}

/// One owner's share of a key, with its own lease and token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The holder's opaque owner string.
    pub owner: Owner,
    /// Exclusive holds (read/write lock only).
    pub exclusive: u64,
    /// Shared holds of a read/write lock, or permits of a semaphore.
    pub shared: u64,
    /// The token issued at this owner's fresh grant; its re-entries (and a
    /// downgrade) return it again.
    pub token: FencingToken,
    /// Wall-clock Unix ms at which this owner's lease ends unless renewed.
    pub deadline_ms: u64,
    /// The last operation this owner applied with a request id (boxed: most
    /// holders never send one).
    pub memo: Option<Box<Memo>>,
}

impl Holder {
    /// The reply of this owner's last operation if it carried request id
    /// `id`.
    pub fn answered(&self, id: &[u8]) -> Option<u64> {
        self.memo
            .as_ref()
            .filter(|m| m.id.as_slice() == id)
            .map(|m| m.reply)
    }

    /// Remembers the operation with request id `id` (if any) and its reply.
    pub fn remember(&mut self, id: Option<&[u8]>, reply: u64) {
        let Some(id) = id else {
            return;
        };
        match &mut self.memo {
            Some(m) => {
                m.id = smallvec::SmallVec::from_slice(id);
                m.reply = reply;
            }
            None => {
                self.memo = Some(Box::new(Memo {
                    id: smallvec::SmallVec::from_slice(id),
                    reply,
                }));
            }
        }
    }

    /// Everything this owner holds at the key: holds, or permits.
    pub fn total(&self) -> u64 {
        self.exclusive.saturating_add(self.shared)
    }

    /// True once the lease has passed: a share is held on `[grant, deadline)`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.deadline_ms
    }

    /// Remaining lease in ms (0 when expired).
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.deadline_ms.saturating_sub(now_ms)
    }
}

/// The value stored in a lock key: its kind and its holders, oldest grant
/// first. An exclusive holder is always the only holder; a semaphore's
/// permits never exceed its limit. A key with no holders does not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    /// 0: a read/write lock; otherwise a semaphore of this many permits.
    pub limit: u32,
    /// Who holds it, oldest grant first.
    pub holders: smallvec::SmallVec<[Holder; 1]>,
}

/// Why an acquire is refused outright (an error reply; nothing changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A shared-only holder asked for the exclusive lock.
    Upgrade,
    /// The key is a semaphore of this many permits.
    Semaphore(u32),
    /// The key is a read/write lock, and the request is for permits.
    NotSemaphore,
    /// No fencing token is left to issue.
    TokensExhausted,
}

/// The reply to an upgrade attempt.
pub const ERR_UPGRADE: &str = "ERR the owner holds this lock shared: upgrading to exclusive would deadlock when two readers try; release the shared holds first";

/// The reply to a request for permits on a read/write lock.
pub const ERR_NOT_SEMAPHORE: &str =
    "WRONGTYPE the key holds a read/write lock, not a semaphore: acquire it without LIMIT";

impl Refusal {
    /// The error reply.
    pub fn reply(self) -> std::borrow::Cow<'static, str> {
        match self {
            Refusal::Upgrade => ERR_UPGRADE.into(),
            Refusal::NotSemaphore => ERR_NOT_SEMAPHORE.into(),
            Refusal::Semaphore(p) => format!(
                "WRONGTYPE the key holds a semaphore of {p} permits: acquire it with LIMIT {p}"
            )
            .into(),
            Refusal::TokensExhausted => TokensExhausted::REPLY.into(),
        }
    }
}

/// What an acquire would get now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// A fresh grant: a new holder with a new token.
    Fresh,
    /// A re-entry of the holder at this index (same token).
    Reenter(usize),
    /// Not now: it must wait (or be answered nil).
    Busy,
    /// Never: an error reply.
    Refused(Refusal),
}

/// Why a release did not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseError {
    /// The owner holds nothing here.
    NotHolder,
    /// It holds less than asked (what it holds).
    TooMany(u64),
}

impl ReleaseError {
    /// The error reply for [`ReleaseError::TooMany`].
    pub fn reply(held: u64) -> String {
        format!("ERR COUNT is more than the owner holds ({held}); nothing changed")
    }
}

/// What a release left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released {
    /// The owner still holds this much; its lease is unchanged.
    StillHeld(u64),
    /// The owner holds nothing more: its share (returned) left the key.
    Gone(Holder),
}

/// Why a value read from outside (RDB, RESTORE, AOF, replication) was
/// refused: each field must pass the rules the commands apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidLock {
    /// The owner is empty or longer than [`MAX_OWNER_LEN`].
    Owner,
    /// A hold or permit count is 0 or above 2^63 − 1.
    Holds,
    /// The token is 0 or above what its source may carry
    /// ([`LoadedFrom::max_token`]).
    Token,
    /// The deadline is 0 or later than now + [`MAX_LOADED_DEADLINE_AHEAD_MS`].
    Deadline,
    /// The semaphore limit is above [`MAX_PERMITS`].
    Limit,
    /// No holders, or more than [`MAX_HOLDERS`].
    HolderCount,
    /// Two holders with one owner or one token.
    Duplicate,
    /// Holders that break the kind's rules (an exclusive holder beside
    /// others, exclusive holds on a semaphore, permits above the limit).
    Shape,
    /// A remembered request id longer than [`MAX_REQUEST_ID_LEN`], or a
    /// remembered reply above 2^63 − 1 (or one without an id).
    RequestId,
}

impl InvalidLock {
    /// What was wrong, for the server log.
    pub fn reason(self) -> &'static str {
        match self {
            InvalidLock::Owner => "owner must be 1 to 1024 bytes",
            InvalidLock::Holds => "holds (exclusive and shared together) must be from 1 to 2^63-1",
            InvalidLock::Token => {
                "token must be from 1 to 0x7000000000000000 in a RESTORE payload, to 2^63-1 elsewhere"
            }
            InvalidLock::Deadline => "deadline must be from 1 to now + 31 days",
            InvalidLock::Limit => "limit must be 0 (read/write lock) or 1 to 1000000 permits",
            InvalidLock::HolderCount => "a key has 1 to 1000000 holders",
            InvalidLock::Duplicate => "two holders with the same owner or token",
            InvalidLock::Shape => {
                "an exclusive holder is the only holder; a semaphore holds only permits, at most its limit"
            }
            InvalidLock::RequestId => {
                "a remembered request id is 1 to 64 bytes with a reply up to 2^63-1 (none: empty, 0)"
            }
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

impl Lock {
    /// A key's first grant: `want` sets its kind.
    pub fn grant(owner: &[u8], want: Want, token: FencingToken, now_ms: u64, ttl_ms: u64) -> Lock {
        let mut lock = Lock::default();
        lock.add(owner, want, token, now_ms, ttl_ms);
        lock
    }

    /// The single exclusive holder of a lock written by the first release
    /// (encoding version 1, the 5-argument `LOCK.APPLY`), checked against
    /// the rules the commands apply. A deadline in the past is accepted
    /// (the server was down past it; the lease is expired at once).
    pub fn from_loaded(
        from: LoadedFrom,
        owner: &[u8],
        holds: u64,
        token: FencingToken,
        deadline_ms: u64,
        now_ms: u64,
    ) -> Result<Lock, InvalidLock> {
        let holder = Holder::from_loaded(from, owner, holds, 0, token, deadline_ms, None, now_ms)?;
        Ok(Lock {
            limit: 0,
            holders: smallvec::smallvec![holder],
        })
    }

    /// The kind of the key.
    pub fn mode(&self) -> Mode {
        if self.limit > 0 {
            Mode::Semaphore
        } else if self.holders.first().is_some_and(|h| h.exclusive > 0) {
            Mode::Exclusive
        } else {
            Mode::Shared
        }
    }

    /// True when nobody holds anything (the key must be deleted).
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// Where `owner`'s share is.
    pub fn find(&self, owner: &[u8]) -> Option<usize> {
        self.holders
            .iter()
            .position(|h| h.owner.as_slice() == owner)
    }

    /// The reply of `owner`'s last operation if it carried request id `id`
    /// (its retry is answered from it).
    pub fn answered(&self, owner: &[u8], id: &[u8]) -> Option<u64> {
        self.holders
            .get(self.find(owner)?)
            .and_then(|h| h.answered(id))
    }

    /// Where the share with this token and deadline is (a lease in the
    /// schedule names its share so).
    pub fn find_lease(&self, token: FencingToken, deadline_ms: u64) -> Option<usize> {
        self.holders
            .iter()
            .position(|h| h.token == token && h.deadline_ms == deadline_ms)
    }

    /// Permits taken (a semaphore).
    pub fn used(&self) -> u64 {
        self.holders
            .iter()
            .map(|h| h.shared)
            .fold(0, u64::saturating_add)
    }

    /// Permits free now (0 for a read/write lock).
    pub fn available(&self) -> u64 {
        u64::from(self.limit).saturating_sub(self.used())
    }

    /// What `owner` asking for `want` would get now. `nobody_waits`: the
    /// key's queue is empty (or the asker is at its head): a fresh shared
    /// or permit grant never overtakes a waiter.
    pub fn admit(&self, owner: &[u8], want: Want, nobody_waits: bool) -> Admit {
        if self.holders.is_empty() {
            return Admit::Fresh;
        }
        let mine = self.find(owner);
        match (self.limit, want) {
            (0, Want::Permits { .. }) => Admit::Refused(Refusal::NotSemaphore),
            (0, Want::Exclusive) => match mine {
                Some(i) if self.holders.get(i).is_some_and(|h| h.exclusive > 0) => {
                    Admit::Reenter(i)
                }
                Some(_) => Admit::Refused(Refusal::Upgrade),
                None => Admit::Busy,
            },
            (0, Want::Shared) => match mine {
                Some(i) => Admit::Reenter(i),
                // At most MAX_HOLDERS readers at once (what a file may hold
                // and load again); more wait for one to leave.
                None if self.mode() == Mode::Exclusive
                    || !nobody_waits
                    || self.holders.len() as u64 >= MAX_HOLDERS =>
                {
                    Admit::Busy
                }
                None => Admit::Fresh,
            },
            (l, Want::Permits { limit, count }) if l == limit => {
                if !nobody_waits || self.available() < u64::from(count) {
                    Admit::Busy
                } else {
                    mine.map_or(Admit::Fresh, Admit::Reenter)
                }
            }
            (l, _) => Admit::Refused(Refusal::Semaphore(l)),
        }
    }

    /// Adds a fresh holder (after [`Admit::Fresh`]); returns its index. On
    /// an empty lock `want` sets the kind.
    pub fn add(
        &mut self,
        owner: &[u8],
        want: Want,
        token: FencingToken,
        now_ms: u64,
        ttl_ms: u64,
    ) -> usize {
        if self.holders.is_empty() {
            self.limit = match want {
                Want::Permits { limit, .. } => limit,
                _ => 0,
            };
        }
        let (exclusive, shared) = match want {
            Want::Exclusive => (1, 0),
            Want::Shared => (0, 1),
            Want::Permits { count, .. } => (0, u64::from(count)),
        };
        self.holders.push(Holder {
            owner: Owner::from_slice(owner),
            exclusive,
            shared,
            token,
            deadline_ms: now_ms.saturating_add(ttl_ms),
            memo: None,
        });
        self.holders.len() - 1
    }

    /// Re-entry of the holder at `i` (after [`Admit::Reenter`]): one more
    /// hold of the kind asked for (or `count` more permits), lease reset to
    /// `now + ttl`, same token. Counts saturate rather than overflow.
    pub fn reenter(
        &mut self,
        i: usize,
        want: Want,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Option<FencingToken> {
        let h = self.holders.get_mut(i)?;
        // All of an owner's holds together stay a positive RESP integer
        // (what a file may hold and load again): at 2^63 − 1 they saturate.
        let room = MAX_HOLDS.saturating_sub(h.total());
        match want {
            Want::Exclusive => h.exclusive += room.min(1),
            Want::Shared => h.shared += room.min(1),
            Want::Permits { count, .. } => h.shared += room.min(u64::from(count)),
        }
        h.deadline_ms = now_ms.saturating_add(ttl_ms);
        Some(h.token)
    }

    /// Renewal of `owner`'s lease: `now + ttl` (it may shorten it). Returns
    /// the holder's index and its old deadline.
    pub fn renew(&mut self, owner: &[u8], now_ms: u64, ttl_ms: u64) -> Option<(usize, u64)> {
        let i = self.find(owner)?;
        let h = self.holders.get_mut(i)?;
        let old = h.deadline_ms;
        h.deadline_ms = now_ms.saturating_add(ttl_ms);
        Some((i, old))
    }

    /// Release of `count` of `owner`'s holds, exclusive holds first (or
    /// `count` permits); the lease is kept as it is. Nothing changes on an
    /// error.
    pub fn release(&mut self, owner: &[u8], count: u64) -> Result<(usize, Released), ReleaseError> {
        let i = self.find(owner).ok_or(ReleaseError::NotHolder)?;
        let h = self.holders.get_mut(i).ok_or(ReleaseError::NotHolder)?;
        let total = h.total();
        if count > total {
            return Err(ReleaseError::TooMany(total));
        }
        let from_exclusive = count.min(h.exclusive);
        h.exclusive -= from_exclusive;
        h.shared -= count - from_exclusive;
        if h.total() > 0 {
            return Ok((i, Released::StillHeld(h.total())));
        }
        Ok((i, Released::Gone(self.holders.remove(i))))
    }

    /// Removes the holder at `i` (its lease expired, or it was forced out).
    pub fn remove(&mut self, i: usize) -> Option<Holder> {
        (i < self.holders.len()).then(|| self.holders.remove(i))
    }

    /// Checks a value read from outside against the rules of its kind
    /// (each holder was checked on its own by [`Holder::from_loaded`]).
    pub fn check(&self) -> Result<(), InvalidLock> {
        if self.limit > MAX_PERMITS {
            return Err(InvalidLock::Limit);
        }
        let n = self.holders.len();
        if n == 0 || n as u64 > MAX_HOLDERS {
            return Err(InvalidLock::HolderCount);
        }
        if self.limit > 0 {
            if self
                .holders
                .iter()
                .any(|h| h.exclusive > 0 || h.shared == 0)
            {
                return Err(InvalidLock::Shape);
            }
            if self.used() > u64::from(self.limit) {
                return Err(InvalidLock::Shape);
            }
        } else if n > 1 && self.holders.iter().any(|h| h.exclusive > 0) {
            return Err(InvalidLock::Shape);
        }
        if n > 1 {
            let mut owners: Vec<&[u8]> = self.holders.iter().map(|h| h.owner.as_slice()).collect();
            owners.sort_unstable();
            let mut tokens: Vec<FencingToken> = self.holders.iter().map(|h| h.token).collect();
            tokens.sort_unstable();
            if owners.windows(2).any(|w| w.first() == w.get(1))
                || tokens.windows(2).any(|w| w.first() == w.get(1))
            {
                return Err(InvalidLock::Duplicate);
            }
        }
        Ok(())
    }

    /// Sets `owner`'s share as a replicated effect says (`LOCK.APPLY ...
    /// SHARED` / `LIMIT`): the key's kind must match; the result must pass
    /// [`Lock::check`]. Nothing changes on an error.
    pub fn upsert(&mut self, limit: u32, holder: Holder) -> Result<(), InvalidLock> {
        if !self.holders.is_empty() && self.limit != limit {
            return Err(InvalidLock::Shape);
        }
        let mut next = self.clone();
        next.limit = limit;
        match next.find(&holder.owner) {
            Some(i) => {
                if let Some(h) = next.holders.get_mut(i) {
                    *h = holder;
                }
            }
            None => next.holders.push(holder),
        }
        next.check()?;
        *self = next;
        Ok(())
    }

    /// Bytes this value occupies in memory (for `MEMORY USAGE`).
    pub fn mem_usage(&self) -> usize {
        let holders = if self.holders.spilled() {
            self.holders.capacity() * std::mem::size_of::<Holder>()
        } else {
            0
        };
        let owners: usize = self
            .holders
            .iter()
            .filter(|h| h.owner.spilled())
            .map(|h| h.owner.capacity())
            .sum();
        let memos: usize = self
            .holders
            .iter()
            .filter(|h| h.memo.is_some())
            .map(|_| std::mem::size_of::<Memo>())
            .sum();
        std::mem::size_of::<Lock>() + holders + owners + memos
    }
}

impl Holder {
    /// One holder read from outside, each field checked against the rules
    /// the commands apply (1 ≤ `exclusive + shared` ≤ 2^63 − 1; a
    /// remembered request: id 1..=64 bytes, reply ≤ 2^63 − 1).
    #[allow(clippy::too_many_arguments)] // the fields of one record, in order
    pub fn from_loaded(
        from: LoadedFrom,
        owner: &[u8],
        exclusive: u64,
        shared: u64,
        token: FencingToken,
        deadline_ms: u64,
        memo: Option<(&[u8], u64)>,
        now_ms: u64,
    ) -> Result<Holder, InvalidLock> {
        if owner.is_empty() || owner.len() > MAX_OWNER_LEN {
            return Err(InvalidLock::Owner);
        }
        match exclusive.checked_add(shared) {
            Some(total) if (1..=MAX_HOLDS).contains(&total) => {}
            _ => return Err(InvalidLock::Holds),
        }
        if token == 0 || token > from.max_token() {
            return Err(InvalidLock::Token);
        }
        if deadline_ms == 0 || deadline_ms > now_ms.saturating_add(MAX_LOADED_DEADLINE_AHEAD_MS) {
            return Err(InvalidLock::Deadline);
        }
        let memo = match memo {
            None => None,
            Some((id, reply)) => {
                if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN || reply > MAX_HOLDS {
                    return Err(InvalidLock::RequestId);
                }
                Some(Box::new(Memo {
                    id: smallvec::SmallVec::from_slice(id),
                    reply,
                }))
            }
        };
        Ok(Holder {
            owner: Owner::from_slice(owner),
            exclusive,
            shared,
            token,
            deadline_ms,
            memo,
        })
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
    /// `Err` (and nothing changes) when no such token is left. `now_ms` is
    /// the wall clock (the clock servers share; see `rules::clock`).
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

    const X: Want = Want::Exclusive;
    const S: Want = Want::Shared;
    fn p(limit: u32, count: u32) -> Want {
        Want::Permits { limit, count }
    }

    #[test]
    fn a_first_grant_sets_the_kind_and_the_lease() {
        let l = Lock::grant(b"a", X, 7, 1000, 500);
        assert_eq!(l.mode(), Mode::Exclusive);
        let h = &l.holders[0];
        assert_eq!(
            (h.exclusive, h.shared, h.token, h.deadline_ms),
            (1, 0, 7, 1500)
        );
        assert!(!h.is_expired(1499) && h.is_expired(1500));
        assert_eq!(h.remaining_ms(1200), 300);
        assert_eq!(h.remaining_ms(2000), 0);
        assert_eq!(Lock::grant(b"a", S, 7, 0, 1).mode(), Mode::Shared);
        let sem = Lock::grant(b"a", p(4, 3), 7, 0, 1);
        assert_eq!(
            (sem.mode(), sem.limit, sem.available()),
            (Mode::Semaphore, 4, 1)
        );
    }

    #[test]
    fn exclusive_reentry_keeps_token_and_resets_lease() {
        let mut l = Lock::grant(b"a", X, 7, 1000, 500);
        assert_eq!(l.admit(b"a", X, false), Admit::Reenter(0));
        assert_eq!(l.reenter(0, X, 1400, 100), Some(7));
        assert_eq!(
            (l.holders[0].exclusive, l.holders[0].deadline_ms),
            (2, 1500)
        );
        assert_eq!(l.admit(b"b", X, true), Admit::Busy);
        assert_eq!(l.admit(b"b", S, true), Admit::Busy);
    }

    #[test]
    fn readers_share_until_a_writer_waits() {
        let mut l = Lock::grant(b"r1", S, 1, 0, 100);
        assert_eq!(l.admit(b"r2", S, true), Admit::Fresh);
        l.add(b"r2", S, 2, 0, 100);
        // A writer is queued: later readers wait behind it ...
        assert_eq!(l.admit(b"r3", S, false), Admit::Busy);
        // ... but a reader that already holds re-enters at once.
        assert_eq!(l.admit(b"r2", S, false), Admit::Reenter(1));
        assert_eq!(l.admit(b"w", X, true), Admit::Busy);
        // No more readers than a file may hold and load again.
        let mut full = Lock::grant(b"r0", S, 1, 0, 100);
        for i in 1..MAX_HOLDERS {
            full.holders.push(Holder {
                owner: Owner::from_slice(&i.to_le_bytes()),
                ..full.holders[0].clone()
            });
        }
        assert_eq!(full.admit(b"one-more", S, true), Admit::Busy);
        assert_eq!(full.admit(b"r0", S, true), Admit::Reenter(0));
    }

    #[test]
    fn upgrade_is_refused_and_downgrade_allowed() {
        let l = Lock::grant(b"r", S, 1, 0, 100);
        assert_eq!(l.admit(b"r", X, true), Admit::Refused(Refusal::Upgrade));
        let mut w = Lock::grant(b"w", X, 9, 0, 100);
        assert_eq!(w.admit(b"w", S, false), Admit::Reenter(0));
        assert_eq!(w.reenter(0, S, 10, 100), Some(9));
        assert_eq!(w.mode(), Mode::Exclusive);
        // Exclusive holds go first: one release leaves it shared.
        assert_eq!(w.release(b"w", 1), Ok((0, Released::StillHeld(1))));
        assert_eq!(w.mode(), Mode::Shared);
        assert_eq!(w.admit(b"other", S, true), Admit::Fresh);
    }

    #[test]
    fn semaphores_count_permits_in_fifo_order() {
        let mut l = Lock::grant(b"a", p(4, 3), 1, 0, 100);
        assert_eq!(l.admit(b"b", p(4, 1), true), Admit::Fresh);
        assert_eq!(l.admit(b"b", p(4, 2), true), Admit::Busy);
        // Someone waits ahead: even one free permit is not taken.
        assert_eq!(l.admit(b"b", p(4, 1), false), Admit::Busy);
        // The same owner adds under the same rule, keeping its token.
        assert_eq!(l.admit(b"a", p(4, 1), true), Admit::Reenter(0));
        assert_eq!(l.reenter(0, p(4, 1), 5, 100), Some(1));
        assert_eq!((l.used(), l.available()), (4, 0));
        assert_eq!(l.admit(b"a", p(4, 1), true), Admit::Busy);
        assert_eq!(l.release(b"a", 2), Ok((0, Released::StillHeld(2))));
        assert_eq!(l.available(), 2);
    }

    #[test]
    fn a_key_keeps_its_kind_while_it_exists() {
        let sem = Lock::grant(b"a", p(4, 1), 1, 0, 100);
        for want in [X, S, p(5, 1)] {
            assert_eq!(
                sem.admit(b"a", want, true),
                Admit::Refused(Refusal::Semaphore(4))
            );
            assert_eq!(
                sem.admit(b"z", want, true),
                Admit::Refused(Refusal::Semaphore(4))
            );
        }
        let rw = Lock::grant(b"a", S, 1, 0, 100);
        assert_eq!(
            rw.admit(b"z", p(4, 1), true),
            Admit::Refused(Refusal::NotSemaphore)
        );
        // An empty value (a free key) takes any kind.
        assert_eq!(Lock::default().admit(b"z", p(4, 1), false), Admit::Fresh);
        assert!(Refusal::Semaphore(4).reply().contains("LIMIT 4"));
    }

    #[test]
    fn release_counts_down_exclusive_first_and_keeps_the_lease() {
        let mut l = Lock::grant(b"a", X, 7, 1000, 500);
        l.reenter(0, X, 1100, 900);
        l.reenter(0, S, 1100, 900);
        let before = l.clone();
        assert_eq!(l.release(b"a", 4), Err(ReleaseError::TooMany(3)));
        assert_eq!(l.release(b"b", 1), Err(ReleaseError::NotHolder));
        assert_eq!(l, before, "a refused release changes nothing");
        assert_eq!(l.release(b"a", 2), Ok((0, Released::StillHeld(1))));
        assert_eq!((l.holders[0].exclusive, l.holders[0].shared), (0, 1));
        assert_eq!(l.holders[0].deadline_ms, 2000);
        let gone = l.release(b"a", 1);
        assert!(
            matches!(&gone, Ok((0, Released::Gone(h))) if h.token == 7),
            "the last hold frees the share: {gone:?}"
        );
        assert!(l.is_empty());
    }

    #[test]
    fn each_owner_has_its_own_lease() {
        let mut l = Lock::grant(b"a", S, 1, 0, 100);
        l.add(b"b", S, 2, 0, 300);
        assert_eq!(l.renew(b"a", 50, 1000), Some((0, 100)));
        assert_eq!(l.holders[1].deadline_ms, 300);
        assert_eq!(l.renew(b"c", 50, 1000), None);
        assert_eq!(l.find_lease(2, 300), Some(1));
        assert_eq!(l.find_lease(2, 301), None);
        assert_eq!(l.remove(0).map(|h| h.token), Some(1));
        assert_eq!(l.find(b"b"), Some(0));
        assert_eq!(l.remove(5), None);
    }

    #[test]
    fn the_last_request_of_an_owner_is_remembered_with_its_reply() {
        let mut l = Lock::grant(b"a", X, 7, 0, 100);
        assert_eq!(l.answered(b"a", b"r1"), None);
        l.holders[0].remember(None, 7);
        assert_eq!(l.holders[0].memo, None, "no id: nothing to remember");
        l.holders[0].remember(Some(b"r1"), 7);
        assert_eq!(l.answered(b"a", b"r1"), Some(7));
        assert_eq!(l.answered(b"b", b"r1"), None, "ids are per owner");
        l.holders[0].remember(Some(b"r2"), 1);
        assert_eq!(l.answered(b"a", b"r1"), None, "only the last one");
        assert_eq!(l.answered(b"a", b"r2"), Some(1));
        assert!(l.mem_usage() >= std::mem::size_of::<Memo>());
    }

    #[test]
    fn owner_comparison_is_binary_exact() {
        let l = Lock::grant(b"a\0b", X, 1, 0, 10);
        assert_eq!(l.find(b"a\0b"), Some(0));
        assert_eq!(l.find(b"a"), None);
        assert_eq!(l.find(b"A\0b"), None);
    }

    #[test]
    fn long_owners_are_kept_whole() {
        let long = vec![7u8; 1024];
        let l = Lock::grant(&long, X, 1, 0, 10);
        assert_eq!(l.find(&long), Some(0));
        assert!(l.mem_usage() >= 1024);
        assert!(Lock::grant(b"short", X, 1, 0, 10).mem_usage() < 160);
        let mut many = Lock::grant(b"r0", S, 1, 0, 10);
        for i in 1..10u64 {
            many.add(format!("r{i}").as_bytes(), S, 1 + i, 0, 10);
        }
        assert!(many.mem_usage() >= 10 * std::mem::size_of::<Holder>());
    }

    #[test]
    fn loaded_values_obey_the_rules_of_their_kind() {
        let h = |owner: &[u8], e: u64, s: u64, token: u64| Holder {
            owner: Owner::from_slice(owner),
            exclusive: e,
            shared: s,
            token,
            deadline_ms: 5,
            memo: None,
        };
        let ok = |limit, holders: Vec<Holder>| {
            Lock {
                limit,
                holders: holders.into(),
            }
            .check()
        };
        assert_eq!(ok(0, vec![h(b"a", 2, 1, 1)]), Ok(()));
        assert_eq!(ok(0, vec![h(b"a", 0, 1, 1), h(b"b", 0, 3, 2)]), Ok(()));
        assert_eq!(ok(4, vec![h(b"a", 0, 1, 1), h(b"b", 0, 3, 2)]), Ok(()));
        assert_eq!(ok(0, vec![]), Err(InvalidLock::HolderCount));
        assert_eq!(
            ok(0, vec![h(b"a", 1, 0, 1), h(b"b", 0, 1, 2)]),
            Err(InvalidLock::Shape)
        );
        assert_eq!(ok(4, vec![h(b"a", 1, 0, 1)]), Err(InvalidLock::Shape));
        assert_eq!(
            ok(4, vec![h(b"a", 0, 3, 1), h(b"b", 0, 2, 2)]),
            Err(InvalidLock::Shape)
        );
        assert_eq!(
            ok(MAX_PERMITS + 1, vec![h(b"a", 0, 1, 1)]),
            Err(InvalidLock::Limit)
        );
        assert_eq!(
            ok(0, vec![h(b"a", 0, 1, 1), h(b"a", 0, 1, 2)]),
            Err(InvalidLock::Duplicate)
        );
        assert_eq!(
            ok(0, vec![h(b"a", 0, 1, 1), h(b"b", 0, 1, 1)]),
            Err(InvalidLock::Duplicate)
        );
    }

    #[test]
    fn upsert_sets_one_share_and_refuses_what_breaks_the_key() {
        let holder = |owner: &[u8], e, s, token| Holder {
            owner: Owner::from_slice(owner),
            exclusive: e,
            shared: s,
            token,
            deadline_ms: 9,
            memo: None,
        };
        let mut l = Lock::default();
        assert_eq!(l.upsert(0, holder(b"a", 0, 1, 1)), Ok(()));
        assert_eq!(l.upsert(0, holder(b"b", 0, 2, 2)), Ok(()));
        assert_eq!(l.upsert(0, holder(b"a", 0, 5, 1)), Ok(()));
        assert_eq!(l.holders.len(), 2);
        assert_eq!(l.holders[0].shared, 5);
        let before = l.clone();
        assert_eq!(l.upsert(0, holder(b"c", 1, 0, 3)), Err(InvalidLock::Shape));
        assert_eq!(l.upsert(4, holder(b"c", 0, 1, 3)), Err(InvalidLock::Shape));
        assert_eq!(
            l.upsert(0, holder(b"c", 0, 1, 2)),
            Err(InvalidLock::Duplicate)
        );
        assert_eq!(l, before);
    }

    #[test]
    fn loaded_holders_obey_the_command_rules() {
        let now = 1_000_000;
        let ok = Lock::from_loaded(LoadedFrom::Restore, b"o", 2, 9, now + 5, now);
        assert_eq!(
            ok.map(|l| (
                l.holders[0].exclusive,
                l.holders[0].token,
                l.holders[0].deadline_ms
            )),
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
        assert_eq!(
            Holder::from_loaded(LoadedFrom::Server, b"o", 0, 0, 1, 5, None, now),
            Err(InvalidLock::Holds)
        );
        assert!(Holder::from_loaded(LoadedFrom::Server, b"o", 0, 3, 1, 5, None, now).is_ok());
        let half = MAX_HOLDS / 2;
        assert!(
            Holder::from_loaded(LoadedFrom::Server, b"o", half, half + 1, 1, 5, None, now).is_ok()
        );
        assert_eq!(
            Holder::from_loaded(LoadedFrom::Server, b"o", MAX_HOLDS, 1, 1, 5, None, now),
            Err(InvalidLock::Holds),
            "all of an owner's holds together are at most 2^63 - 1"
        );
        let mut at_cap =
            Lock::from_loaded(LoadedFrom::Server, b"o", MAX_HOLDS, 1, 5, now).unwrap_or_default();
        at_cap.reenter(0, Want::Shared, now, 10);
        assert_eq!(at_cap.holders[0].total(), MAX_HOLDS, "re-entries saturate");
        let with = |id: &[u8], reply| {
            Holder::from_loaded(LoadedFrom::Server, b"o", 1, 0, 1, 5, Some((id, reply)), now)
                .map(|h| h.answered(id))
        };
        assert_eq!(with(b"req-1", 7), Ok(Some(7)));
        assert_eq!(with(&[b'i'; MAX_REQUEST_ID_LEN], 7), Ok(Some(7)));
        assert_eq!(with(b"", 7), Err(InvalidLock::RequestId));
        assert_eq!(
            with(&[b'i'; MAX_REQUEST_ID_LEN + 1], 7),
            Err(InvalidLock::RequestId)
        );
        assert_eq!(with(b"req-1", MAX_HOLDS + 1), Err(InvalidLock::RequestId));
    }

    #[test]
    fn a_server_reloads_every_token_it_can_issue_but_a_restore_stops_lower() {
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
}
