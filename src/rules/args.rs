//! Argument parsing for every command: the one place that turns raw argument
//! bytes into typed requests, or into an error reply that starts with `ERR`.
//! Plain Rust; nothing here touches the server.

use super::effect::{parse_state, Kind};
use super::lock::{Want, MAX_HOLDS, MAX_OWNER_LEN, MAX_PERMITS, MAX_REQUEST_ID_LEN, MAX_TTL_MS};

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

/// `LOCK.ACQUIRE key owner ttl-ms [SHARED | LIMIT permits [COUNT n]] [WAIT timeout-ms]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquire<'a> {
    pub owner: &'a [u8],
    pub ttl_ms: u64,
    pub want: Want,
    pub wait: Wait,
    /// `ID request-id`: a retry with the same id is answered, not applied.
    pub id: Option<&'a [u8]>,
}

/// `LOCK.RENEW key owner ttl-ms`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renew<'a> {
    pub owner: &'a [u8],
    pub ttl_ms: u64,
}

/// `LOCK.RELEASE key owner [COUNT n]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release<'a> {
    pub owner: &'a [u8],
    pub count: u64,
    /// `ID request-id`.
    pub id: Option<&'a [u8]>,
}

/// `LOCK.FORCERELEASE key [owner]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForceRelease<'a> {
    /// Only this owner's share; `None`: the whole key.
    pub owner: Option<&'a [u8]>,
}

/// `LOCK.APPLY ...` — the replicated effect of every change, with absolute
/// deadlines (see docs/INTERFACE.md and `rules::effect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Apply<'a> {
    /// `key owner holds token deadline-ms` (the first release's form): the
    /// key holds exactly this exclusive holder.
    Exclusive {
        owner: &'a [u8],
        holds: u64,
        token: u64,
        deadline_ms: u64,
    },
    /// `key owner state`: one holder's share (`only`: the key
    /// holds exactly this read/write holder).
    Share {
        owner: &'a [u8],
        only: bool,
        limit: u32,
        exclusive: u64,
        shared: u64,
        token: u64,
        deadline_ms: u64,
        /// The owner's last request id and its reply.
        memo: Option<(&'a [u8], u64)>,
    },
    /// `key owner DROP`: this owner's share leaves the key.
    Drop { owner: &'a [u8] },
}

pub const ERR_TTL: &str = "ERR ttl-ms must be an integer from 1 to 2592000000 (30 days)";
pub const ERR_WAIT: &str =
    "ERR WAIT timeout-ms must be an integer from 0 (no limit) to 2592000000 (30 days)";
pub const ERR_OWNER: &str = "ERR owner must be 1 to 1024 bytes long";
pub const ERR_OPTION: &str = "ERR syntax error: options are SHARED, LIMIT permits [COUNT n], WAIT timeout-ms and ID request-id, each once, SHARED and LIMIT not together";
pub const ERR_ID: &str = "ERR ID request-id must be 1 to 64 bytes long";
pub const ERR_LIMIT: &str = "ERR LIMIT permits must be an integer from 1 to 1000000";
pub const ERR_COUNT: &str = "ERR COUNT n must be an integer from 1 to the LIMIT";
pub const ERR_RELEASE_OPTION: &str =
    "ERR syntax error: the options are COUNT n and ID request-id, each once";
pub const ERR_RELEASE_COUNT: &str = "ERR COUNT n must be an integer from 1 to 2^63-1";
pub const ERR_APPLY: &str =
    "ERR LOCK.APPLY needs holds, token and deadline-ms >= 1 as integers, or a state 'x|s|p n m token deadline-ms [reply request-id]', or DROP";

/// A non-negative decimal integer, strictly digits (no sign, no spaces).
fn parse_u64(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 {
        return None;
    }
    raw.iter().try_fold(0u64, |n, &b| {
        let digit = b.wrapping_sub(b'0');
        (digit <= 9).then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

fn parse_ttl(raw: &[u8]) -> Result<u64, ArgError> {
    match parse_u64(raw) {
        Some(t) if (1..=MAX_TTL_MS).contains(&t) => Ok(t),
        _ => Err(ArgError::Invalid(ERR_TTL)),
    }
}

fn parse_id(raw: &[u8]) -> Result<&[u8], ArgError> {
    if raw.is_empty() || raw.len() > MAX_REQUEST_ID_LEN {
        return Err(ArgError::Invalid(ERR_ID));
    }
    Ok(raw)
}

fn parse_owner(raw: &[u8]) -> Result<&[u8], ArgError> {
    if raw.is_empty() || raw.len() > MAX_OWNER_LEN {
        return Err(ArgError::Invalid(ERR_OWNER));
    }
    Ok(raw)
}

/// Parses the arguments after the command name (the key comes first; the
/// command layer reads it from the argument list itself). Options come in
/// any order, each at most once.
pub fn acquire<'a>(args: &[&'a [u8]]) -> Result<Acquire<'a>, ArgError> {
    let (owner, ttl, mut rest) = match args {
        [_key, owner, ttl, rest @ ..] => (*owner, *ttl, rest),
        _ => return Err(ArgError::Arity),
    };
    let owner = parse_owner(owner)?;
    let ttl_ms = parse_ttl(ttl)?;
    let syntax = Err(ArgError::Invalid(ERR_OPTION));
    let (mut shared, mut limit, mut count, mut wait, mut id) = (false, None, None, None, None);
    while let [opt, tail @ ..] = rest {
        let value = tail.first().copied();
        rest = tail;
        if opt.eq_ignore_ascii_case(b"SHARED") {
            if shared || limit.is_some() {
                return syntax;
            }
            shared = true;
            continue;
        }
        let Some(value) = value else {
            return Err(ArgError::Invalid(if opt.eq_ignore_ascii_case(b"WAIT") {
                ERR_WAIT
            } else if opt.eq_ignore_ascii_case(b"LIMIT") {
                ERR_LIMIT
            } else if opt.eq_ignore_ascii_case(b"COUNT") {
                ERR_COUNT
            } else if opt.eq_ignore_ascii_case(b"ID") {
                ERR_ID
            } else {
                ERR_OPTION
            }));
        };
        rest = tail.get(1..).unwrap_or_default();
        if opt.eq_ignore_ascii_case(b"WAIT") && wait.is_none() {
            wait = Some(match parse_u64(value) {
                Some(0) => Wait::Forever,
                Some(t) if t <= MAX_TTL_MS => Wait::Ms(t),
                _ => return Err(ArgError::Invalid(ERR_WAIT)),
            });
        } else if opt.eq_ignore_ascii_case(b"LIMIT") && limit.is_none() && !shared {
            limit = Some(match parse_u64(value) {
                Some(p) if (1..=u64::from(MAX_PERMITS)).contains(&p) => p as u32,
                _ => return Err(ArgError::Invalid(ERR_LIMIT)),
            });
        } else if opt.eq_ignore_ascii_case(b"ID") && id.is_none() {
            id = Some(parse_id(value)?);
        } else if opt.eq_ignore_ascii_case(b"COUNT") && count.is_none() {
            count = Some(match parse_u64(value) {
                Some(n) if (1..=u64::from(MAX_PERMITS)).contains(&n) => n as u32,
                _ => return Err(ArgError::Invalid(ERR_COUNT)),
            });
        } else {
            return syntax;
        }
    }
    let want = match (shared, limit, count) {
        (true, None, None) => Want::Shared,
        (false, None, None) => Want::Exclusive,
        (false, Some(limit), count) => {
            let count = count.unwrap_or(1);
            if count > limit {
                return Err(ArgError::Invalid(ERR_COUNT));
            }
            Want::Permits { limit, count }
        }
        _ => return syntax,
    };
    Ok(Acquire {
        owner,
        ttl_ms,
        want,
        wait: wait.unwrap_or(Wait::No),
        id,
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

/// Parses the arguments after the command name: `key owner [COUNT n] [ID
/// request-id]`, the options in any order.
pub fn release<'a>(args: &[&'a [u8]]) -> Result<Release<'a>, ArgError> {
    let (owner, mut rest) = match args {
        [_key, owner, rest @ ..] => (parse_owner(owner)?, rest),
        _ => return Err(ArgError::Arity),
    };
    let (mut count, mut id) = (None, None);
    while let [opt, tail @ ..] = rest {
        let is_count = opt.eq_ignore_ascii_case(b"COUNT");
        let is_id = opt.eq_ignore_ascii_case(b"ID");
        let Some(value) = tail.first().copied() else {
            return Err(ArgError::Invalid(match (is_count, is_id) {
                (true, _) => ERR_RELEASE_COUNT,
                (_, true) => ERR_ID,
                _ => ERR_RELEASE_OPTION,
            }));
        };
        rest = tail.get(1..).unwrap_or_default();
        if is_count && count.is_none() {
            count = Some(match parse_u64(value) {
                Some(n) if (1..=MAX_HOLDS).contains(&n) => n,
                _ => return Err(ArgError::Invalid(ERR_RELEASE_COUNT)),
            });
        } else if is_id && id.is_none() {
            id = Some(parse_id(value)?);
        } else {
            return Err(ArgError::Invalid(ERR_RELEASE_OPTION));
        }
    }
    Ok(Release {
        owner,
        count: count.unwrap_or(1),
        id,
    })
}

/// Parses the arguments after the command name (`INFO`): the key alone.
pub fn key_only(args: &[&[u8]]) -> Result<(), ArgError> {
    match args {
        [_key] => Ok(()),
        _ => Err(ArgError::Arity),
    }
}

/// Parses the arguments after the command name.
pub fn force_release<'a>(args: &[&'a [u8]]) -> Result<ForceRelease<'a>, ArgError> {
    match args {
        [_key] => Ok(ForceRelease { owner: None }),
        [_key, owner] => Ok(ForceRelease {
            owner: Some(parse_owner(owner)?),
        }),
        _ => Err(ArgError::Arity),
    }
}

/// Parses the arguments after the command name.
pub fn apply<'a>(args: &[&'a [u8]]) -> Result<Apply<'a>, ArgError> {
    let bad = || ArgError::Invalid(ERR_APPLY);
    let positive = |raw: &[u8]| match parse_u64(raw) {
        Some(n) if (1..=MAX_HOLDS).contains(&n) => Ok(n),
        _ => Err(bad()),
    };
    match args {
        [_key, owner, drop] if drop.eq_ignore_ascii_case(b"DROP") => Ok(Apply::Drop {
            owner: parse_owner(owner)?,
        }),
        [_key, owner, state] => {
            let owner = parse_owner(owner)?;
            let state = parse_state(state).ok_or_else(bad)?;
            let memo = state.memo.map(|(reply, id)| (id, reply));
            let (limit, exclusive, shared) = state.shape();
            if exclusive == 0 && shared == 0 || state.token == 0 || state.deadline_ms == 0 {
                return Err(bad());
            }
            Ok(Apply::Share {
                owner,
                only: state.kind == Kind::Only,
                limit,
                exclusive,
                shared,
                token: state.token,
                deadline_ms: state.deadline_ms,
                memo,
            })
        }
        [_key, owner, holds, token, deadline] => Ok(Apply::Exclusive {
            owner: parse_owner(owner)?,
            holds: positive(holds)?,
            token: positive(token)?,
            deadline_ms: positive(deadline)?,
        }),
        _ => Err(ArgError::Arity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_plain_decimal_digits_within_u64() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"007"), Some(7));
        assert_eq!(parse_u64(b"3600000"), Some(3_600_000));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"99999999999999999999",
            b"000000000000000000001",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1a",
            b"0x10",
            b"1.0",
            b"\xd9\xa1",
        ] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }

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
        assert!(apply(&v(&["k", "o", "1", "2"])).is_err());
        assert_eq!(apply(&v(&["k", "o"])).err(), Some(ArgError::Arity));
    }

    #[test]
    fn acquire_options_come_in_any_order_once_each() {
        let want = |a: &[&'static str]| acquire(&v(a)).map(|a| (a.want, a.wait));
        assert_eq!(
            want(&["k", "o", "5", "shared"]),
            Ok((Want::Shared, Wait::No))
        );
        assert_eq!(
            want(&["k", "o", "5", "WAIT", "7", "SHARED"]),
            Ok((Want::Shared, Wait::Ms(7)))
        );
        assert_eq!(
            want(&["k", "o", "5", "count", "3", "wait", "0", "limit", "4"]),
            Ok((Want::Permits { limit: 4, count: 3 }, Wait::Forever))
        );
        assert_eq!(
            want(&["k", "o", "5", "LIMIT", "1000000"]),
            Ok((
                Want::Permits {
                    limit: 1_000_000,
                    count: 1
                },
                Wait::No
            ))
        );
        let syntax = Err(ArgError::Invalid(ERR_OPTION));
        type Case = (&'static [&'static str], Result<(Want, Wait), ArgError>);
        let cases: &[Case] = &[
            (&["k", "o", "5", "SHARED", "SHARED"], syntax.clone()),
            (&["k", "o", "5", "SHARED", "LIMIT", "2"], syntax.clone()),
            (&["k", "o", "5", "LIMIT", "2", "SHARED"], syntax.clone()),
            (&["k", "o", "5", "COUNT", "2"], syntax.clone()),
            (&["k", "o", "5", "SHARED", "COUNT", "1"], syntax.clone()),
            (&["k", "o", "5", "LIMIT", "2", "LIMIT", "2"], syntax.clone()),
            (
                &["k", "o", "5", "LIMIT", "4", "COUNT", "1", "COUNT", "1"],
                syntax.clone(),
            ),
            (&["k", "o", "5", "LIMIT"], Err(ArgError::Invalid(ERR_LIMIT))),
            (
                &["k", "o", "5", "LIMIT", "0"],
                Err(ArgError::Invalid(ERR_LIMIT)),
            ),
            (
                &["k", "o", "5", "LIMIT", "1000001"],
                Err(ArgError::Invalid(ERR_LIMIT)),
            ),
            (
                &["k", "o", "5", "LIMIT", "-1"],
                Err(ArgError::Invalid(ERR_LIMIT)),
            ),
            (
                &["k", "o", "5", "LIMIT", "2", "COUNT"],
                Err(ArgError::Invalid(ERR_COUNT)),
            ),
            (
                &["k", "o", "5", "LIMIT", "2", "COUNT", "3"],
                Err(ArgError::Invalid(ERR_COUNT)),
            ),
            (
                &["k", "o", "5", "LIMIT", "2", "COUNT", "0"],
                Err(ArgError::Invalid(ERR_COUNT)),
            ),
            (
                &["k", "o", "5", "COUNT", "x", "LIMIT", "2"],
                Err(ArgError::Invalid(ERR_COUNT)),
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(&want(args), expected, "{args:?}");
        }
    }

    #[test]
    fn release_and_force_release_take_their_options() {
        let r = |a: &[&'static str]| release(&v(a)).map(|r| r.count);
        let id = |a: &[&'static str]| release(&v(a)).map(|r| (r.count, r.id));
        assert_eq!(id(&["k", "o", "ID", "r1"]), Ok((1, Some(&b"r1"[..]))));
        assert_eq!(
            id(&["k", "o", "id", "r1", "count", "2"]),
            Ok((2, Some(&b"r1"[..])))
        );
        assert_eq!(id(&["k", "o", "ID", ""]), Err(ArgError::Invalid(ERR_ID)));
        assert_eq!(id(&["k", "o", "ID"]), Err(ArgError::Invalid(ERR_ID)));
        assert_eq!(
            id(&["k", "o", "ID", "a", "ID", "b"]),
            Err(ArgError::Invalid(ERR_RELEASE_OPTION))
        );
        let acq = |a: &[&'static str]| acquire(&v(a)).map(|a| a.id);
        assert_eq!(
            acq(&["k", "o", "5", "ID", "x", "SHARED"]),
            Ok(Some(&b"x"[..]))
        );
        assert!(acquire(&[b"k", b"o", b"5", b"ID", &[b'i'; 64]]).is_ok());
        assert_eq!(
            acquire(&[b"k", b"o", b"5", b"ID", &[b'i'; 65]]).err(),
            Some(ArgError::Invalid(ERR_ID))
        );
        assert_eq!(
            acq(&["k", "o", "5", "ID", "x", "ID", "y"]),
            Err(ArgError::Invalid(ERR_OPTION))
        );
        assert_eq!(acq(&["k", "o", "5", "ID"]), Err(ArgError::Invalid(ERR_ID)));
        assert_eq!(
            acq(&["k", "o", "5", "ID", ""]),
            Err(ArgError::Invalid(ERR_ID))
        );
        assert_eq!(r(&["k", "o"]), Ok(1));
        assert_eq!(r(&["k", "o", "count", "9"]), Ok(9));
        assert_eq!(
            r(&["k", "o", "COUNT", "9223372036854775807"]),
            Ok(MAX_HOLDS)
        );
        assert_eq!(
            r(&["k", "o", "COUNT", "9223372036854775808"]),
            Err(ArgError::Invalid(ERR_RELEASE_COUNT))
        );
        assert_eq!(
            r(&["k", "o", "COUNT", "0"]),
            Err(ArgError::Invalid(ERR_RELEASE_COUNT))
        );
        assert_eq!(
            r(&["k", "o", "COUNT"]),
            Err(ArgError::Invalid(ERR_RELEASE_COUNT))
        );
        assert_eq!(
            r(&["k", "o", "x"]),
            Err(ArgError::Invalid(ERR_RELEASE_OPTION))
        );
        assert_eq!(
            r(&["k", "o", "COUNT", "1", "x"]),
            Err(ArgError::Invalid(ERR_RELEASE_OPTION))
        );
        assert_eq!(force_release(&v(&["k"])).map(|f| f.owner), Ok(None));
        assert_eq!(
            force_release(&v(&["k", "o"])).map(|f| f.owner),
            Ok(Some(&b"o"[..]))
        );
        assert_eq!(
            force_release(&v(&["k", ""])).err(),
            Some(ArgError::Invalid(ERR_OWNER))
        );
        assert_eq!(
            force_release(&v(&["k", "o", "x"])).err(),
            Some(ArgError::Arity)
        );
    }

    #[test]
    fn apply_takes_every_effect_form() {
        assert_eq!(
            apply(&v(&["k", "o", "DROP"])),
            Ok(Apply::Drop { owner: b"o" })
        );
        assert_eq!(
            apply(&v(&["k", "o", "s 0 4 2 3"])),
            Ok(Apply::Share {
                owner: b"o",
                only: false,
                limit: 0,
                exclusive: 0,
                shared: 4,
                token: 2,
                deadline_ms: 3,
                memo: None
            })
        );
        assert_eq!(
            apply(&v(&["k", "o", "p 5 9 2 3 2 req"])),
            Ok(Apply::Share {
                owner: b"o",
                only: false,
                limit: 9,
                exclusive: 0,
                shared: 5,
                token: 2,
                deadline_ms: 3,
                memo: Some((b"req", 2))
            })
        );
        assert!(matches!(
            apply(&v(&["k", "o", "x 1 0 2 3"])),
            Ok(Apply::Share { only: true, .. })
        ));
        for bad in [
            &["k", "o", "s 0 0 2 3"][..],
            &["k", "o", "x 1 0 0 3"],
            &["k", "o", "x 1 0 2 0"],
            &["k", "o", "x 1 0 2 3 5"],
            &["k", "o", "x 1 0 2 3 5 "],
            &["k", "o", "p 1 0 2 3"],
            &["k", "o", "y 1 0 2 3"],
        ] {
            assert_eq!(
                apply(&v(bad)).err(),
                Some(ArgError::Invalid(ERR_APPLY)),
                "{bad:?}"
            );
        }
        assert!(apply(&v(&["k", "o", "x 1 0 2 3 5", "r", "z"])).is_err());
        assert_eq!(
            apply(&v(&["k", "o", "x 1 0 2 3 5", "r", "z", "w"])).err(),
            Some(ArgError::Arity)
        );
    }
}
