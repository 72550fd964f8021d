//! Argument parsing for every command: the one place that turns raw argument
//! bytes into typed requests, or into an error reply that starts with `ERR`.
//! Plain Rust; nothing here touches the server.

use super::lock::{MAX_OWNER_LEN, MAX_TTL_MS};

/// A rejected command: the full error reply text (it starts with a code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgError {
    /// Wrong number of arguments (Redis's own wording is used for it).
    Arity,
    /// Any other bad input, with its `ERR ...` message.
    Invalid(&'static str),
}

/// How long an acquire may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// No `WAIT`: answer at once.
    No,
    /// `WAIT 0`: wait without limit.
    Forever,
    /// `WAIT n`: wait at most n ms.
    Ms(u64),
}

/// `LOCK.ACQUIRE key owner ttl-ms [WAIT timeout-ms]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquire<'a> {
    pub owner: &'a [u8],
    pub ttl_ms: u64,
    pub wait: Wait,
}

/// `LOCK.RENEW key owner ttl-ms`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renew<'a> {
    pub owner: &'a [u8],
    pub ttl_ms: u64,
}

/// `LOCK.RELEASE key owner`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release<'a> {
    pub owner: &'a [u8],
}

/// `LOCK.APPLY key owner holds token deadline-ms` — the replicated effect
/// of every change: the lock's whole state with an absolute deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Apply<'a> {
    pub owner: &'a [u8],
    pub holds: u64,
    pub token: u64,
    pub deadline_ms: u64,
}

pub const ERR_TTL: &str = "ERR ttl-ms must be an integer from 1 to 2592000000 (30 days)";
pub const ERR_WAIT: &str =
    "ERR WAIT timeout-ms must be an integer from 0 (no limit) to 2592000000 (30 days)";
pub const ERR_OWNER: &str = "ERR owner must be 1 to 1024 bytes long";
pub const ERR_OPTION: &str = "ERR syntax error: the only option is WAIT timeout-ms";
pub const ERR_APPLY: &str =
    "ERR LOCK.APPLY needs holds >= 1, token >= 1 and deadline-ms >= 1 as integers";

/// A non-negative decimal integer, strictly digits (no sign, no spaces).
fn parse_u64(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

fn parse_ttl(raw: &[u8]) -> Result<u64, ArgError> {
    match parse_u64(raw) {
        Some(t) if (1..=MAX_TTL_MS).contains(&t) => Ok(t),
        _ => Err(ArgError::Invalid(ERR_TTL)),
    }
}

fn parse_owner(raw: &[u8]) -> Result<&[u8], ArgError> {
    if raw.is_empty() || raw.len() > MAX_OWNER_LEN {
        return Err(ArgError::Invalid(ERR_OWNER));
    }
    Ok(raw)
}

/// Parses the arguments after the command name (the key comes first; the
/// command layer reads it from the argument list itself).
pub fn acquire<'a>(args: &[&'a [u8]]) -> Result<Acquire<'a>, ArgError> {
    let (owner, ttl, rest) = match args {
        [_key, owner, ttl, rest @ ..] => (*owner, *ttl, rest),
        _ => return Err(ArgError::Arity),
    };
    let owner = parse_owner(owner)?;
    let ttl_ms = parse_ttl(ttl)?;
    let wait = match rest {
        [] => Wait::No,
        [opt, timeout] if opt.eq_ignore_ascii_case(b"WAIT") => match parse_u64(timeout) {
            Some(0) => Wait::Forever,
            Some(t) if t <= MAX_TTL_MS => Wait::Ms(t),
            _ => return Err(ArgError::Invalid(ERR_WAIT)),
        },
        [opt] if opt.eq_ignore_ascii_case(b"WAIT") => return Err(ArgError::Invalid(ERR_WAIT)),
        _ => return Err(ArgError::Invalid(ERR_OPTION)),
    };
    Ok(Acquire {
        owner,
        ttl_ms,
        wait,
    })
}

/// Parses the arguments after the command name.
pub fn renew<'a>(args: &[&'a [u8]]) -> Result<Renew<'a>, ArgError> {
    match args {
        [_key, owner, ttl] => Ok(Renew {
            owner: parse_owner(owner)?,
            ttl_ms: parse_ttl(ttl)?,
        }),
        _ => Err(ArgError::Arity),
    }
}

/// Parses the arguments after the command name.
pub fn release<'a>(args: &[&'a [u8]]) -> Result<Release<'a>, ArgError> {
    match args {
        [_key, owner] => Ok(Release {
            owner: parse_owner(owner)?,
        }),
        _ => Err(ArgError::Arity),
    }
}

/// Parses the arguments after the command name (`FORCERELEASE`, `INFO`):
/// the key alone.
pub fn key_only(args: &[&[u8]]) -> Result<(), ArgError> {
    match args {
        [_key] => Ok(()),
        _ => Err(ArgError::Arity),
    }
}

/// Parses the arguments after the command name.
pub fn apply<'a>(args: &[&'a [u8]]) -> Result<Apply<'a>, ArgError> {
    let [_key, owner, holds, token, deadline] = args else {
        return Err(ArgError::Arity);
    };
    let owner = parse_owner(owner)?;
    let num = |raw: &[u8]| match parse_u64(raw) {
        Some(n) if n >= 1 && n <= i64::MAX as u64 => Ok(n),
        _ => Err(ArgError::Invalid(ERR_APPLY)),
    };
    Ok(Apply {
        owner,
        holds: num(holds)?,
        token: num(token)?,
        deadline_ms: num(deadline)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&'static str]) -> Vec<&'static [u8]> {
        s.iter().map(|a| a.as_bytes()).collect()
    }

    #[test]
    fn acquire_parses_with_and_without_wait() {
        let a = acquire(&v(&["k", "o", "100"])).ok();
        assert_eq!(a.map(|a| (a.ttl_ms, a.wait)), Some((100, Wait::No)));
        let a = acquire(&v(&["k", "o", "100", "wait", "0"])).ok();
        assert_eq!(a.map(|a| a.wait), Some(Wait::Forever));
        let a = acquire(&v(&["k", "o", "100", "WAIT", "250"])).ok();
        assert_eq!(a.map(|a| a.wait), Some(Wait::Ms(250)));
    }

    #[test]
    fn bad_inputs_are_rejected_with_err_codes() {
        let cases: &[(&[&str], ArgError)] = &[
            (&["k", "o"], ArgError::Arity),
            (&["k", "o", "0"], ArgError::Invalid(ERR_TTL)),
            (&["k", "o", "-1"], ArgError::Invalid(ERR_TTL)),
            (&["k", "o", "+5"], ArgError::Invalid(ERR_TTL)),
            (&["k", "o", " 5"], ArgError::Invalid(ERR_TTL)),
            (&["k", "o", "1.5"], ArgError::Invalid(ERR_TTL)),
            (&["k", "o", "abc"], ArgError::Invalid(ERR_TTL)),
            (&["k", "o", ""], ArgError::Invalid(ERR_TTL)),
            (&["k", "o", "2592000001"], ArgError::Invalid(ERR_TTL)),
            (
                &["k", "o", "99999999999999999999999"],
                ArgError::Invalid(ERR_TTL),
            ),
            (
                &["k", "o", "18446744073709551616"],
                ArgError::Invalid(ERR_TTL),
            ),
            (&["k", "", "5"], ArgError::Invalid(ERR_OWNER)),
            (&["k", "o", "5", "WAIT"], ArgError::Invalid(ERR_WAIT)),
            (&["k", "o", "5", "WAIT", "-1"], ArgError::Invalid(ERR_WAIT)),
            (&["k", "o", "5", "WAIT", "x"], ArgError::Invalid(ERR_WAIT)),
            (
                &["k", "o", "5", "WAIT", "2592000001"],
                ArgError::Invalid(ERR_WAIT),
            ),
            (
                &["k", "o", "5", "NOWAIT", "1"],
                ArgError::Invalid(ERR_OPTION),
            ),
            (
                &["k", "o", "5", "WAIT", "1", "WAIT", "1"],
                ArgError::Invalid(ERR_OPTION),
            ),
            (&["k", "o", "5", "extra"], ArgError::Invalid(ERR_OPTION)),
        ];
        for (args, want) in cases {
            assert_eq!(acquire(&v(args)).err().as_ref(), Some(want), "{args:?}");
        }
    }

    #[test]
    fn owner_length_limits() {
        let long = vec![b'x'; MAX_OWNER_LEN];
        let too_long = vec![b'x'; MAX_OWNER_LEN + 1];
        assert!(acquire(&[b"k", &long, b"5"]).is_ok());
        assert_eq!(
            acquire(&[b"k", &too_long, b"5"]).err(),
            Some(ArgError::Invalid(ERR_OWNER))
        );
        assert!(release(&[b"k", b"\0\xff"]).is_ok());
    }

    #[test]
    fn renew_release_key_only_arity() {
        assert!(renew(&v(&["k", "o", "5"])).is_ok());
        assert_eq!(renew(&v(&["k", "o"])).err(), Some(ArgError::Arity));
        assert_eq!(
            renew(&v(&["k", "o", "5", "6"])).err(),
            Some(ArgError::Arity)
        );
        assert_eq!(release(&v(&["k"])).err(), Some(ArgError::Arity));
        assert_eq!(key_only(&v(&["k", "x"])).err(), Some(ArgError::Arity));
        assert_eq!(key_only(&v(&[])).err(), Some(ArgError::Arity));
    }

    #[test]
    fn apply_requires_positive_integers() {
        assert!(apply(&v(&["k", "o", "1", "2", "3"])).is_ok());
        assert!(apply(&v(&["k", "o", "0", "2", "3"])).is_err());
        assert!(apply(&v(&["k", "o", "1", "9223372036854775808", "3"])).is_err());
        assert_eq!(
            apply(&v(&["k", "o", "1", "2"])).err(),
            Some(ArgError::Arity)
        );
    }
}
