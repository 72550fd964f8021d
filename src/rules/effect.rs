//! The replicated effect of a change to one holder, as `LOCK.APPLY` carries
//! it to replicas and the AOF: `LOCK.APPLY key owner state`, where `state`
//! is one readable text argument, `kind n m token deadline-ms [reply id]`:
//! - `x n m ...`: the key holds exactly this one holder of a read/write lock
//!   (`n` exclusive and `m` shared holds) — the value is replaced;
//! - `s n m ...`: this owner's share of a read/write lock (others stay);
//! - `p n m ...`: this owner's `n` permits of a semaphore of `m`;
//! - `reply id`: the owner's last request and what it answered (`=`: the
//!   token, what an acquire answers); the id is the rest of the argument,
//!   as sent (it may hold any byte, spaces too).
//!
//! One argument instead of five: every argument of `RedisModule_Replicate`
//! is an object Redis creates, formats and frees, which made up half the
//! cost of a grant. (The first release's `LOCK.APPLY key owner holds token
//! deadline-ms` and `LOCK.APPLY key owner DROP` are parsed in `args`.)

use super::clock::WallOffset;
use super::lock::{Holder, Lock, Mode, MAX_HOLDS, MAX_PERMITS, MAX_REQUEST_ID_LEN};

/// What a state argument says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The whole value: this one read/write holder.
    Only,
    /// One share of a read/write lock.
    Shared,
    /// One holder's permits of a semaphore.
    Permits,
}

/// A parsed state argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State<'a> {
    pub kind: Kind,
    /// Exclusive holds, or permits.
    pub n: u64,
    /// Shared holds, or the semaphore's limit.
    pub m: u64,
    pub token: u64,
    pub deadline_ms: u64,
    /// The remembered request: its reply and its id.
    pub memo: Option<(u64, &'a [u8])>,
}

impl State<'_> {
    /// The semaphore limit (0 for a read/write lock) and the holder's
    /// exclusive and shared counts.
    pub fn shape(&self) -> (u32, u64, u64) {
        match self.kind {
            Kind::Permits => (u32::try_from(self.m).unwrap_or(u32::MAX), 0, self.n),
            Kind::Only | Kind::Shared => (0, self.n, self.m),
        }
    }
}

/// Longest state text: a kind, five numbers of up to 20 digits with their
/// spaces, and a request id with its space.
pub const MAX_STATE_LEN: usize = 1 + 5 * (1 + 20) + 1 + MAX_REQUEST_ID_LEN;

/// A state argument, formatted on the stack.
#[derive(Clone, Copy, Debug)]
pub struct StateText {
    buf: [u8; MAX_STATE_LEN],
    len: usize,
}

impl StateText {
    /// The text.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(MAX_STATE_LEN);
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes.get(..end - self.len).unwrap_or_default());
        }
        self.len = end;
    }

    fn number(&mut self, v: u64) {
        self.push(b" ");
        self.push(itoa::Buffer::new().format(v).as_bytes());
    }
}

/// The state argument that carries the holder at `i` of `lock`, its
/// deadline on the wall clock (`wall`: see `rules::clock`).
pub fn state_of(lock: &Lock, i: usize, wall: WallOffset) -> Option<StateText> {
    let h: &Holder = lock.holders.get(i)?;
    let (kind, n, m) = match lock.mode() {
        Mode::Semaphore => (b'p', h.shared, u64::from(lock.limit)),
        _ if lock.holders.len() == 1 => (b'x', h.exclusive, h.shared),
        _ => (b's', h.exclusive, h.shared),
    };
    let mut text = StateText {
        buf: [0; MAX_STATE_LEN],
        len: 0,
    };
    text.push(&[kind]);
    for v in [n, m, h.token, wall.to_wall(h.deadline_ms)] {
        text.number(v);
    }
    if let Some(memo) = &h.memo {
        if memo.reply == h.token {
            // An acquire's reply is the token: `=` says so in one byte.
            text.push(b" =");
        } else {
            text.number(memo.reply);
        }
        text.push(b" ");
        text.push(&memo.id);
    }
    Some(text)
}

/// A decimal field: digits only, at most 2^63 − 1.
fn number(p: &[u8]) -> Option<u64> {
    if p.is_empty() || p.len() > 20 || !p.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v: u64 = std::str::from_utf8(p).ok()?.parse().ok()?;
    (v <= MAX_HOLDS).then_some(v)
}

/// Parses a state argument; `None` when it is not one. Numbers are checked
/// for form and for the ranges of their fields; the values a holder must
/// have are checked by `Holder::from_loaded`.
pub fn parse_state(raw: &[u8]) -> Option<State<'_>> {
    let mut parts = raw.splitn(7, |b| *b == b' ');
    let kind = match parts.next()? {
        b"x" => Kind::Only,
        b"s" => Kind::Shared,
        b"p" => Kind::Permits,
        _ => return None,
    };
    let mut num = || parts.next().and_then(number);
    let (n, m, token, deadline_ms) = (num()?, num()?, num()?, num()?);
    let reply = match parts.next() {
        None => None,
        Some(b"=") => Some(token),
        Some(p) => Some(number(p)?),
    };
    let memo = match reply {
        None => None,
        Some(reply) => {
            let id = parts.next()?;
            if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
                return None;
            }
            Some((reply, id))
        }
    };
    let state = State {
        kind,
        n,
        m,
        token,
        deadline_ms,
        memo,
    };
    match kind {
        Kind::Permits if m == 0 || m > u64::from(MAX_PERMITS) => None,
        _ => Some(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::lock::Want;

    fn text(lock: &Lock, i: usize) -> String {
        String::from_utf8(
            state_of(lock, i, WallOffset(0)).map_or(Vec::new(), |t| t.as_bytes().to_vec()),
        )
        .unwrap_or_default()
    }

    #[test]
    fn every_kind_has_its_readable_state() {
        let mut l = Lock::grant(b"w", Want::Exclusive, 77, 0, 5000);
        assert_eq!(text(&l, 0), "x 1 0 77 5000");
        l.holders[0].remember(Some(b"r 1"), 77);
        assert_eq!(text(&l, 0), "x 1 0 77 5000 = r 1");
        assert_eq!(
            parse_state(b"x 1 0 77 5000 = r 1").and_then(|s| s.memo),
            Some((77, &b"r 1"[..]))
        );
        l.holders[0].remember(Some(b"r2"), 3);
        assert_eq!(text(&l, 0), "x 1 0 77 5000 3 r2");
        let mut r = Lock::grant(b"a", Want::Shared, 1, 0, 10);
        r.add(b"b", Want::Shared, 2, 0, 20);
        assert_eq!(text(&r, 1), "s 0 1 2 20");
        let s = Lock::grant(b"a", Want::Permits { limit: 9, count: 4 }, 3, 0, 30);
        assert_eq!(text(&s, 0), "p 4 9 3 30");
        assert!(state_of(&s, 1, WallOffset(0)).is_none());
        let max = Lock {
            limit: 0,
            holders: smallvec::smallvec![Holder {
                owner: b"o".as_slice().into(),
                exclusive: MAX_HOLDS,
                shared: MAX_HOLDS,
                token: MAX_HOLDS,
                deadline_ms: MAX_HOLDS,
                memo: None,
            }],
        };
        let mut full = max.clone();
        let id = [b' '; MAX_REQUEST_ID_LEN];
        full.holders[0].remember(Some(&id), MAX_HOLDS);
        let t = state_of(&full, 0, WallOffset(0))
            .map(|t| t.as_bytes().to_vec())
            .unwrap_or_default();
        assert!(t.len() <= MAX_STATE_LEN);
        assert_eq!(
            parse_state(&t).and_then(|s| s.memo),
            Some((MAX_HOLDS, &id[..]))
        );
    }

    #[test]
    fn states_round_trip_and_garbage_is_refused() {
        for t in [
            "x 1 0 77 5000",
            "x 2 3 77 5000 77 id",
            "s 0 1 2 20",
            "p 4 9 3 30 3 a b",
        ] {
            let s = parse_state(t.as_bytes());
            assert!(s.is_some(), "{t}");
        }
        assert_eq!(
            parse_state(b"p 4 9 3 30"),
            Some(State {
                kind: Kind::Permits,
                n: 4,
                m: 9,
                token: 3,
                deadline_ms: 30,
                memo: None
            })
        );
        assert_eq!(
            parse_state(b"p 4 9 3 30").map(|s| s.shape()),
            Some((9, 0, 4))
        );
        for bad in [
            "",
            "x",
            "x 1 0 77",
            "q 1 0 77 5000",
            "x 1 0 77 5000 1",
            "x 1 0 77 5000 1 ",
            "x  1 0 77 5000",
            "x 1 0 77 5000 ",
            "x -1 0 77 5000",
            "x 1 0 77 +5000",
            "p 1 0 3 30",
            "p 1 1000001 3 30",
            "x 1 0 9223372036854775808 5",
            "X 1 0 77 5000",
        ] {
            assert_eq!(parse_state(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
