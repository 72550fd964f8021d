//! Issue #9, arguments: no argument vector of any `LOCK.*` command can
//! crash the server, a refused one changes nothing, and an accepted one
//! does what a model of the lock family says.
//!
//! ≥ 10,000 seeded vectors over `LOCK.ACQUIRE` (with `SHARED`, `LIMIT p`,
//! `COUNT n`, `WAIT t` and `ID id` in any order, repeated, missing their
//! value, mixed case), `LOCK.RENEW`, `LOCK.RELEASE` (`COUNT n`, `ID id`),
//! `LOCK.FORCERELEASE` (with and without an owner), `LOCK.INFO` and every
//! form of `LOCK.APPLY` (the first release's, the `x`/`s`/`p` states with
//! and without a request id, `DROP`): random arity 0..=10 or the command's
//! own shape with an argument dropped, added or replaced; binary and empty
//! strings, huge, signed and malformed numbers (spaces, plus signs, leading
//! zeros, exponents, full-width digits), 1024- and 1025-byte owners, 64- and 65-byte request
//! ids; keys that hold an exclusive lock, a shared one, a semaphore with a
//! permit free and a full one, a remembered request, a string, a list, and
//! nothing. Some vectors run inside `MULTI`/`EXEC` or a Lua script.
//!
//! For every vector: the server answers; every error reply starts with an
//! uppercase code; an error or a reply that means "nothing done" (nil, 0,
//! `LOCK.INFO`) leaves `DEBUG DIGEST` unchanged (unless a lease expired in
//! that instant: `lock_expired` moved); `LOCK.APPLY` from a client is always
//! refused with `ERR`. A valid `WAIT` on a held key blocks: a second
//! connection keeps sending `CLIENT UNBLOCK` for the fuzzing client, so the
//! wait ends (nil, or an `UNBLOCKED` error) and the pipeline goes on.
//!
//! The model (`Model`) knows every key of a batch (each batch starts from
//! `FLUSHALL` and the fixtures) as long as its leases are long: for those it
//! predicts each reply exactly — a fresh token above every token seen, the
//! same token on re-entry, nil when busy, the documented errors for a
//! request of the wrong kind (`WRONGTYPE ...`), an upgrade, `COUNT` above
//! what the owner holds and bad options, the remembered reply for a retried
//! `ID` — and after the batch `LOCK.INFO` of every key must show the kind,
//! holders, holds or permits, tokens and free permits it computed. A key
//! given a short lease is no longer predicted in that batch.
//!
//! Seeded (`FENCELOCK_FUZZ_SEED`), bounded in count (`FENCELOCK_FUZZ_COUNT`)
//! and time (`FENCELOCK_FUZZ_SECONDS`, default 120).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::hostile::{
    err_release_count, err_semaphore, has_error_code, info_value, lock_info_violations,
    log_excerpt, parse_lock_info, Cmd, HolderSummary, InfoMode, RawConn, Reply, Rng, TimeBudget,
    ERR_ACQUIRE_SYNTAX, ERR_COUNT, ERR_ID, ERR_LIMIT, ERR_NOT_SEMAPHORE, ERR_UPGRADE, MAX_HOLDS,
    MAX_OWNER, MAX_PERMITS, MAX_REQUEST_ID, MAX_SERVER_TOKEN,
};
use testkit::Server;

const DEFAULT_SEED: u64 = 0xa7a5_f00d_0009;
const BATCH: usize = 100;
const MAX_REPORTED: usize = 40;
/// The longest lease and wait (30 days).
const MAX_TTL_MS: u64 = 2_592_000_000;
/// A lease at least this long cannot end within a batch: the model keeps
/// predicting its key.
const SURE_TTL_MS: u64 = 600_000;
/// Redis's reply to a wrong number of arguments starts so.
const ARITY: &str = "ERR wrong number of arguments";

const COMMANDS: [&str; 6] = [
    "LOCK.ACQUIRE",
    "LOCK.RENEW",
    "LOCK.RELEASE",
    "LOCK.FORCERELEASE",
    "LOCK.INFO",
    "LOCK.APPLY",
];

/// How a vector is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wrap {
    Plain,
    Multi,
    Script,
}

struct Vector {
    n: usize,
    command: &'static str,
    args: Vec<Vec<u8>>,
    wrap: Wrap,
}

impl Vector {
    fn cmd(&self) -> Cmd {
        Cmd::from_args(self.args.clone())
    }

    /// The commands that carry it.
    fn wrapped(&self) -> Vec<Cmd> {
        match self.wrap {
            Wrap::Plain => vec![self.cmd()],
            Wrap::Multi => vec![Cmd::new("MULTI"), self.cmd(), Cmd::new("EXEC")],
            Wrap::Script => {
                let mut c = Cmd::new("EVAL")
                    .arg("return redis.pcall(unpack(ARGV))")
                    .arg("0");
                for a in &self.args {
                    c = c.arg(a);
                }
                vec![c]
            }
        }
    }

    fn show(&self) -> String {
        format!("vector {} ({:?}): {}", self.n, self.wrap, self.cmd().show())
    }
}

// -------------------------------------------------------------- generators

fn mixed_case(rng: &mut Rng, s: &str) -> Vec<u8> {
    match rng.below(10) {
        0 => s.to_ascii_lowercase().into_bytes(),
        1 => s
            .bytes()
            .map(|b| {
                if rng.percent(50) {
                    b.to_ascii_lowercase()
                } else {
                    b
                }
            })
            .collect(),
        _ => s.as_bytes().to_vec(),
    }
}

fn key(rng: &mut Rng) -> Vec<u8> {
    match rng.below(20) {
        0 | 1 => b"held:a".to_vec(),
        2 => b"held:bin".to_vec(),
        3 => b"held:long".to_vec(),
        4 | 5 => b"held:shared".to_vec(),
        6 | 7 => b"held:sem".to_vec(),
        8 => b"held:full".to_vec(),
        9 => b"held:id".to_vec(),
        10 => b"free".to_vec(),
        11 => b"str".to_vec(),
        12 => b"list".to_vec(),
        13 => b"k0".to_vec(),
        14 => b"k1".to_vec(),
        15 => Vec::new(),
        16 => rng.blob(1, 16),
        17 => vec![b'K'; 1000],
        18 => b"k\x00ey\xff".to_vec(),
        _ => b"HELD:A".to_vec(),
    }
}

fn owner(rng: &mut Rng) -> Vec<u8> {
    match rng.below(14) {
        0..=2 => b"A".to_vec(),
        3 | 4 => b"B".to_vec(),
        5 => b"\x00B\xff".to_vec(),
        6 => vec![b'L'; 1024],
        7 => vec![b'L'; 1025],
        8 => Vec::new(),
        9 => b"a".to_vec(),
        10 => b" A".to_vec(),
        11 => rng.blob(1, 40),
        12 => {
            if rng.percent(5) {
                vec![b'x'; 100_000]
            } else {
                vec![b'L'; 1023]
            }
        }
        _ => b"A\x00".to_vec(),
    }
}

fn number(rng: &mut Rng) -> Vec<u8> {
    const FIXED: [&str; 38] = [
        "0",
        "1",
        "-1",
        "-0",
        "+5",
        " 5",
        "5 ",
        "05",
        "007",
        "1.5",
        "1e3",
        "0x10",
        "2592000000",
        "2592000001",
        "2591999999",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999",
        "8070450532247928832",
        "8070450532247928833",
        "",
        "abc",
        "\u{ff15}",
        "5\u{0}",
        "\t5",
        "1_000",
        "١٢",
        "100",
        "5000",
        "1000",
        "60000",
        "3600000",
        "1 2",
        "-",
        "+",
    ];
    match rng.below(4) {
        0 => rng.range(1, 5000).to_string().into_bytes(),
        1 => rng.range(1, 2_592_000_000).to_string().into_bytes(),
        _ => rng.pick(&FIXED).as_bytes().to_vec(),
    }
}

/// An owner for a command of the right shape: mostly one that holds a
/// fixture (so that re-entries, releases and kind errors happen), else any.
fn holder_owner(rng: &mut Rng) -> Vec<u8> {
    if rng.percent(80) {
        match rng.below(6) {
            0..=2 => b"A".to_vec(),
            3 => b"B".to_vec(),
            4 => b"\x00B\xff".to_vec(),
            _ => vec![b'L'; 1024],
        }
    } else {
        owner(rng)
    }
}

/// A ttl: mostly a long valid one (so the model keeps its key), else any
/// number.
fn ttl(rng: &mut Rng) -> Vec<u8> {
    if rng.percent(85) {
        rng.pick(&["3600000", "600000", "2592000000"])
            .as_bytes()
            .to_vec()
    } else {
        number(rng)
    }
}

/// A `WAIT` timeout: mostly a valid short one (so that waits really
/// block), else any number.
fn wait_timeout(rng: &mut Rng) -> Vec<u8> {
    if rng.percent(60) {
        rng.range(0, 50).to_string().into_bytes()
    } else {
        number(rng)
    }
}

/// A `LIMIT` or `COUNT` value: mostly small, sometimes out of range.
fn small_number(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0..=7 => rng.range(1, 4).to_string().into_bytes(),
        8 => rng.pick(&["1000000", "1000001", "0"]).as_bytes().to_vec(),
        _ => number(rng),
    }
}

fn request_id(rng: &mut Rng) -> Vec<u8> {
    match rng.below(12) {
        0..=3 => b"r1".to_vec(),
        4..=6 => b"r2".to_vec(),
        7 => Vec::new(),
        8 => vec![b'i'; 64],
        9 => vec![b'i'; 65],
        _ => rng.blob(1, 70),
    }
}

fn keyword(rng: &mut Rng) -> Vec<u8> {
    const FIXED: [&str; 14] = [
        "WAIT",
        "SHARED",
        "LIMIT",
        "COUNT",
        "ID",
        "WAITS",
        "WAI",
        "NOWAIT",
        "",
        "WAIT\u{0}",
        "ＷＡＩＴ",
        "SHARE",
        "DROP",
        "EXCLUSIVE",
    ];
    if rng.percent(60) {
        let k = *rng.pick(&["WAIT", "SHARED", "LIMIT", "COUNT", "ID", "DROP"]);
        mixed_case(rng, k)
    } else {
        rng.pick(&FIXED).as_bytes().to_vec()
    }
}

fn any_atom(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => key(rng),
        1 => owner(rng),
        2 => number(rng),
        3 => keyword(rng),
        4 => request_id(rng),
        _ => rng.blob(0, 63),
    }
}

/// `ACQUIRE` options: each of SHARED, LIMIT p, COUNT n, WAIT t, ID id
/// picked now and then (sometimes twice), in a random order; sometimes a
/// value is missing or a word is unknown.
fn acquire_options(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut opts: Vec<Vec<Vec<u8>>> = Vec::new();
    let kind = rng.below(10);
    if kind < 3 || rng.percent(3) {
        opts.push(vec![mixed_case(rng, "SHARED")]);
    }
    if (3..7).contains(&kind) || rng.percent(3) {
        // Mostly the limits of the fixtures' semaphores.
        let p = if rng.percent(60) {
            rng.pick(&["3", "2"]).as_bytes().to_vec()
        } else {
            small_number(rng)
        };
        opts.push(vec![mixed_case(rng, "LIMIT"), p]);
        if rng.percent(50) {
            let n = if rng.percent(70) {
                b"1".to_vec()
            } else {
                small_number(rng)
            };
            opts.push(vec![mixed_case(rng, "COUNT"), n]);
        }
    } else if rng.percent(3) {
        opts.push(vec![mixed_case(rng, "COUNT"), small_number(rng)]);
    }
    if rng.percent(30) {
        opts.push(vec![mixed_case(rng, "WAIT"), wait_timeout(rng)]);
    }
    if rng.percent(25) {
        opts.push(vec![mixed_case(rng, "ID"), request_id(rng)]);
    }
    if rng.percent(5) && !opts.is_empty() {
        let dup = opts[rng.index(opts.len())].clone();
        opts.push(dup);
    }
    if rng.percent(4) {
        opts.push(vec![keyword(rng), number(rng)]);
    }
    // A random order.
    for i in (1..opts.len()).rev() {
        let j = rng.index(i + 1);
        opts.swap(i, j);
    }
    let mut flat: Vec<Vec<u8>> = opts.into_iter().flatten().collect();
    if rng.percent(4) && !flat.is_empty() {
        flat.pop();
    }
    flat
}

fn gen_vector(rng: &mut Rng, n: usize) -> Vector {
    let command = *rng.pick(&COMMANDS);
    let mut args = vec![mixed_case(rng, command)];
    if rng.percent(25) {
        for _ in 0..rng.below(11) {
            args.push(any_atom(rng));
        }
    } else {
        let mut shaped: Vec<Vec<u8>> = match command {
            "LOCK.ACQUIRE" => {
                let mut a = vec![key(rng), holder_owner(rng), ttl(rng)];
                a.extend(acquire_options(rng));
                a
            }
            "LOCK.RENEW" => vec![key(rng), holder_owner(rng), ttl(rng)],
            "LOCK.RELEASE" => {
                let mut a = vec![key(rng), holder_owner(rng)];
                let mut opts = Vec::new();
                if rng.percent(40) {
                    let n = if rng.percent(60) {
                        rng.range(1, 3).to_string().into_bytes()
                    } else {
                        number(rng)
                    };
                    opts.push(vec![mixed_case(rng, "COUNT"), n]);
                }
                if rng.percent(30) {
                    opts.push(vec![mixed_case(rng, "ID"), request_id(rng)]);
                }
                if rng.percent(10) {
                    opts.reverse();
                }
                a.extend(opts.into_iter().flatten());
                a
            }
            "LOCK.FORCERELEASE" => {
                let mut a = vec![key(rng)];
                if rng.percent(50) {
                    a.push(holder_owner(rng));
                }
                a
            }
            "LOCK.INFO" => vec![key(rng)],
            _ => {
                let mut a = vec![key(rng), owner(rng)];
                match rng.below(4) {
                    0 => a.push(mixed_case(rng, "DROP")),
                    1 => a.extend([number(rng), number(rng), number(rng)]),
                    _ => {
                        // A state `kind n m token deadline [reply
                        // request-id]`; now and then an argument more.
                        let mut state =
                            rng.pick(&["x", "s", "p", "q", "X", ""]).as_bytes().to_vec();
                        for _ in 0..rng.range(3, 6) {
                            state.push(b' ');
                            state.extend(small_number(rng));
                        }
                        if rng.percent(30) {
                            state.push(b' ');
                            state.extend(request_id(rng));
                        }
                        a.push(state);
                        if rng.percent(10) {
                            a.push(request_id(rng));
                        }
                    }
                }
                a
            }
        };
        if rng.percent(15) {
            match rng.below(3) {
                0 if !shaped.is_empty() => {
                    let i = rng.index(shaped.len());
                    shaped.remove(i);
                }
                1 => {
                    let i = rng.index(shaped.len() + 1);
                    shaped.insert(i, any_atom(rng));
                }
                _ if !shaped.is_empty() => {
                    let i = rng.index(shaped.len());
                    shaped[i] = any_atom(rng);
                }
                _ => {}
            }
        }
        args.extend(shaped);
    }
    let wrap = match rng.below(100) {
        0..=11 => Wrap::Multi,
        12..=19 => Wrap::Script,
        _ => Wrap::Plain,
    };
    Vector {
        n,
        command,
        args,
        wrap,
    }
}

// ------------------------------------------------------------------- model

/// A non-negative decimal integer, strictly digits.
fn int(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

fn owner_ok(o: &[u8]) -> bool {
    !o.is_empty() && o.len() <= MAX_OWNER
}

fn ttl_ok(raw: &[u8]) -> Option<u64> {
    int(raw).filter(|t| (1..=MAX_TTL_MS).contains(t))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Exclusive,
    Shared,
    Permits { limit: u64, count: u64 },
}

/// A parsed `LOCK.ACQUIRE`.
struct Acquire {
    owner: Vec<u8>,
    ttl: u64,
    want: Want,
    wait: bool,
    id: Option<Vec<u8>>,
}

/// A parsed request, or the error replies it may get (prefixes: when a
/// vector has several faults, any of theirs).
enum Req {
    Acquire(Acquire),
    Renew {
        owner: Vec<u8>,
        ttl: u64,
    },
    Release {
        owner: Vec<u8>,
        count: u64,
        id: Option<Vec<u8>>,
    },
    ForceRelease {
        owner: Option<Vec<u8>>,
    },
    Info,
    /// `LOCK.APPLY` from a client.
    Apply,
}

/// `LOCK.ACQUIRE key owner ttl [SHARED | LIMIT p [COUNT n]] [WAIT t] [ID
/// id]` as docs/INTERFACE.md describes it: options in any order, each
/// once, keywords in any case; a keyword that takes a value takes the next
/// argument.
fn parse_acquire(a: &[Vec<u8>]) -> Result<Acquire, Vec<String>> {
    let [_key, owner, ttl, rest @ ..] = a else {
        return Err(vec![ARITY.into()]);
    };
    let mut errs: Vec<String> = Vec::new();
    if !owner_ok(owner) {
        errs.push("ERR owner".into());
    }
    let ttl = ttl_ok(ttl);
    if ttl.is_none() {
        errs.push("ERR ttl-ms".into());
    }
    let syntax = || ERR_ACQUIRE_SYNTAX.to_string();
    let (mut shared, mut limit, mut count, mut wait, mut id) = (false, None, None, None, None);
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut i = 0;
    while let Some(word) = rest.get(i) {
        let w = word.to_ascii_uppercase();
        let again = seen.contains(&w);
        seen.push(w.clone());
        if w == b"SHARED" {
            if again || limit.is_some() {
                errs.push(syntax());
            }
            shared = true;
            i += 1;
            continue;
        }
        let specific = match w.as_slice() {
            b"LIMIT" => ERR_LIMIT,
            b"COUNT" => ERR_COUNT,
            b"WAIT" => "ERR WAIT timeout-ms",
            b"ID" => ERR_ID,
            _ => {
                errs.push(syntax());
                break;
            }
        };
        let Some(v) = rest.get(i + 1) else {
            errs.extend([specific.to_string(), syntax()]);
            break;
        };
        i += 2;
        if again {
            errs.push(syntax());
        }
        match w.as_slice() {
            b"LIMIT" => {
                if shared {
                    errs.push(syntax());
                }
                match int(v).filter(|p| (1..=MAX_PERMITS).contains(p)) {
                    Some(p) => limit = Some(p),
                    None => errs.push(specific.into()),
                }
            }
            b"COUNT" => match int(v).filter(|n| (1..=MAX_PERMITS).contains(n)) {
                Some(n) => count = Some(n),
                None => errs.push(specific.into()),
            },
            b"WAIT" => match int(v).filter(|t| *t <= MAX_TTL_MS) {
                Some(_) => wait = Some(()),
                None => errs.push(specific.into()),
            },
            _ => {
                if v.is_empty() || v.len() > MAX_REQUEST_ID {
                    errs.push(specific.into());
                } else {
                    id = Some(v.clone());
                }
            }
        }
    }
    let want = match (shared, limit, count) {
        (true, Some(_), _) | (true, None, Some(_)) | (false, None, Some(_)) => {
            errs.push(syntax());
            Want::Exclusive
        }
        (true, None, None) => Want::Shared,
        (false, None, None) => Want::Exclusive,
        (false, Some(limit), count) => {
            let count = count.unwrap_or(1);
            if count > limit {
                errs.push(ERR_COUNT.into());
            }
            Want::Permits { limit, count }
        }
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Acquire {
        owner: owner.clone(),
        ttl: ttl.unwrap_or(1),
        want,
        wait: wait.is_some(),
        id,
    })
}

/// `LOCK.RELEASE key owner [COUNT n] [ID id]`; the texts of its option
/// errors are not documented: any `ERR`.
fn parse_release(a: &[Vec<u8>]) -> Result<Req, Vec<String>> {
    let [_key, owner, rest @ ..] = a else {
        return Err(vec![ARITY.into()]);
    };
    let mut ok = owner_ok(owner);
    let (mut count, mut id) = (None, None);
    let mut pairs = rest.chunks(2);
    for p in pairs.by_ref() {
        let [word, v] = p else {
            ok = false;
            break;
        };
        let w = word.to_ascii_uppercase();
        if w == b"COUNT" && count.is_none() {
            count = int(v).filter(|n| (1..=MAX_HOLDS).contains(n));
            ok &= count.is_some();
            count = count.or(Some(0));
        } else if w == b"ID" && id.is_none() {
            ok &= !v.is_empty() && v.len() <= MAX_REQUEST_ID;
            id = Some(v.clone());
        } else {
            ok = false;
            break;
        }
    }
    if !ok {
        return Err(vec!["ERR".into()]);
    }
    Ok(Req::Release {
        owner: owner.clone(),
        count: count.unwrap_or(1),
        id,
    })
}

/// Parses a vector as the command it names (the name is its first word).
fn parse(v: &Vector) -> Result<Req, Vec<String>> {
    let a = &v.args[1..];
    if a.len() > 12 {
        // The module reads at most twelve arguments; no command takes more
        // than eleven.
        return Err(vec!["ERR".into()]);
    }
    let arity = || vec![ARITY.to_string()];
    let loose = || vec!["ERR".to_string()];
    match v.command {
        "LOCK.ACQUIRE" => parse_acquire(a).map(Req::Acquire),
        "LOCK.RENEW" => match a {
            [_k, owner, t] => match (owner_ok(owner), ttl_ok(t)) {
                (true, Some(ttl)) => Ok(Req::Renew {
                    owner: owner.clone(),
                    ttl,
                }),
                _ => Err(loose()),
            },
            _ => Err(arity()),
        },
        "LOCK.RELEASE" => parse_release(a),
        "LOCK.FORCERELEASE" => match a {
            [_k] => Ok(Req::ForceRelease { owner: None }),
            [_k, owner] if owner_ok(owner) => Ok(Req::ForceRelease {
                owner: Some(owner.clone()),
            }),
            [_k, _] => Err(loose()),
            _ => Err(arity()),
        },
        "LOCK.INFO" => match a {
            [_k] => Ok(Req::Info),
            _ => Err(arity()),
        },
        _ => Ok(Req::Apply),
    }
}

/// One holder as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    owner: Vec<u8>,
    exclusive: u64,
    shared: u64,
    token: i64,
    /// The last request id it applied, and its reply.
    memo: Option<(Vec<u8>, u64)>,
}

impl Holder {
    fn total(&self) -> u64 {
        self.exclusive.saturating_add(self.shared)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyState {
    Absent,
    /// A key of another type (`TYPE` says which).
    Other(&'static str),
    Lock {
        limit: u64,
        holders: Vec<Holder>,
    },
    /// Not predicted any more in this batch (a short lease, or a reply the
    /// model did not expect).
    Unknown,
}

/// What the model says a vector's reply must be.
#[derive(Debug)]
enum Expect {
    /// Exactly this.
    Exactly(Reply),
    /// An integer above every token seen.
    FreshToken,
    /// An error starting with one of these.
    Error(Vec<String>),
    /// A wait that ended by timeout or `CLIENT UNBLOCK`: nil, or an
    /// `UNBLOCKED` error.
    WaitEnded,
    /// The `LOCK.INFO` of this state.
    Info(KeyState),
    /// Not predicted.
    Any,
}

/// The keys of one batch and the highest token seen.
#[derive(Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, KeyState>,
    max_token: i64,
}

/// A change the model makes when the server's reply is what it expected:
/// the new state of the key (None: unchanged), and whether the reply is a
/// fresh token.
struct Outcome {
    expect: Expect,
    next: Option<KeyState>,
}

impl Outcome {
    fn same(expect: Expect) -> Outcome {
        Outcome { expect, next: None }
    }
}

impl Model {
    fn state(&self, key: &[u8]) -> KeyState {
        self.keys.get(key).cloned().unwrap_or(KeyState::Absent)
    }

    /// The prediction for a parsed request on `key`.
    fn predict(&self, key: &[u8], req: &Req, wrap: Wrap) -> Outcome {
        if let Req::Apply = req {
            return Outcome::same(Expect::Error(vec!["ERR".into()]));
        }
        match self.state(key) {
            KeyState::Unknown => Outcome::same(Expect::Any),
            KeyState::Other(_) => Outcome::same(Expect::Error(vec!["WRONGTYPE".into()])),
            KeyState::Absent => self.on_absent(req),
            KeyState::Lock { limit, holders } => self.on_lock(limit, holders, req, wrap),
        }
    }

    fn on_absent(&self, req: &Req) -> Outcome {
        match req {
            Req::Acquire(a) => {
                let (limit, exclusive, shared) = match a.want {
                    Want::Exclusive => (0, 1, 0),
                    Want::Shared => (0, 0, 1),
                    Want::Permits { limit, count } => (limit, 0, count),
                };
                let h = Holder {
                    owner: a.owner.clone(),
                    exclusive,
                    shared,
                    token: 0, // set from the reply
                    memo: a.id.clone().map(|i| (i, 0)),
                };
                Outcome {
                    expect: Expect::FreshToken,
                    next: Some(leased(
                        a.ttl,
                        KeyState::Lock {
                            limit,
                            holders: vec![h],
                        },
                    )),
                }
            }
            Req::Renew { .. } | Req::ForceRelease { .. } => {
                Outcome::same(Expect::Exactly(Reply::Int(0)))
            }
            Req::Release { .. } | Req::Info => Outcome::same(Expect::Exactly(Reply::Nil)),
            Req::Apply => unreachable!(),
        }
    }

    fn on_lock(&self, limit: u64, mut holders: Vec<Holder>, req: &Req, wrap: Wrap) -> Outcome {
        let find = |holders: &[Holder], o: &[u8]| holders.iter().position(|h| h.owner == o);
        let lock = |holders: Vec<Holder>| KeyState::Lock { limit, holders };
        match req {
            Req::Info => Outcome::same(Expect::Info(lock(holders))),
            Req::Acquire(a) => {
                let mine = find(&holders, &a.owner);
                if let (Some(i), Some(id)) = (mine, &a.id) {
                    if let Some((mid, reply)) = &holders[i].memo {
                        if mid == id {
                            return Outcome::same(Expect::Exactly(Reply::Int(*reply as i64)));
                        }
                    }
                }
                enum Admit {
                    Fresh,
                    Reenter(usize),
                    Busy,
                    Refused(String),
                }
                let admit = match (limit, a.want) {
                    (0, Want::Permits { .. }) => Admit::Refused(ERR_NOT_SEMAPHORE.into()),
                    (0, Want::Exclusive) => match mine {
                        Some(i) if holders[i].exclusive > 0 => Admit::Reenter(i),
                        Some(_) => Admit::Refused(ERR_UPGRADE.into()),
                        None => Admit::Busy,
                    },
                    (0, Want::Shared) => match mine {
                        Some(i) => Admit::Reenter(i),
                        None if holders[0].exclusive > 0 => Admit::Busy,
                        None => Admit::Fresh,
                    },
                    (l, Want::Permits { limit: p, count }) if l == p => {
                        let used: u64 = holders.iter().map(|h| h.shared).sum();
                        if l.saturating_sub(used) < count {
                            Admit::Busy
                        } else {
                            mine.map_or(Admit::Fresh, Admit::Reenter)
                        }
                    }
                    (l, _) => Admit::Refused(err_semaphore(l)),
                };
                match admit {
                    Admit::Refused(e) => Outcome::same(Expect::Error(vec![e])),
                    Admit::Busy if a.wait && wrap == Wrap::Plain => {
                        Outcome::same(Expect::WaitEnded)
                    }
                    Admit::Busy => Outcome::same(Expect::Exactly(Reply::Nil)),
                    Admit::Fresh => {
                        let (exclusive, shared) = match a.want {
                            Want::Exclusive => (1, 0),
                            Want::Shared => (0, 1),
                            Want::Permits { count, .. } => (0, count),
                        };
                        holders.push(Holder {
                            owner: a.owner.clone(),
                            exclusive,
                            shared,
                            token: 0,
                            memo: a.id.clone().map(|i| (i, 0)),
                        });
                        Outcome {
                            expect: Expect::FreshToken,
                            next: Some(leased(a.ttl, lock(holders))),
                        }
                    }
                    Admit::Reenter(i) => {
                        let h = &mut holders[i];
                        match a.want {
                            Want::Exclusive => {
                                h.exclusive = h.exclusive.saturating_add(1).min(MAX_HOLDS)
                            }
                            Want::Shared => h.shared = h.shared.saturating_add(1).min(MAX_HOLDS),
                            Want::Permits { count, .. } => h.shared += count,
                        }
                        let token = h.token;
                        if let Some(id) = &a.id {
                            h.memo = Some((id.clone(), token as u64));
                        }
                        Outcome {
                            expect: Expect::Exactly(Reply::Int(token)),
                            next: Some(leased(a.ttl, lock(holders))),
                        }
                    }
                }
            }
            Req::Renew { owner, ttl } => match find(&holders, owner) {
                Some(_) => Outcome {
                    expect: Expect::Exactly(Reply::Int(1)),
                    next: Some(leased(*ttl, lock(holders))),
                },
                None => Outcome::same(Expect::Exactly(Reply::Int(0))),
            },
            Req::Release { owner, count, id } => {
                let Some(i) = find(&holders, owner) else {
                    return Outcome::same(Expect::Exactly(Reply::Nil));
                };
                if let (Some(id), Some((mid, reply))) = (id, &holders[i].memo) {
                    if mid == id {
                        return Outcome::same(Expect::Exactly(Reply::Int(*reply as i64)));
                    }
                }
                let total = holders[i].total();
                if *count > total {
                    return Outcome::same(Expect::Error(vec![err_release_count(total)]));
                }
                let h = &mut holders[i];
                let from_exclusive = (*count).min(h.exclusive);
                h.exclusive -= from_exclusive;
                h.shared -= count - from_exclusive;
                let left = h.total();
                if left > 0 {
                    if let Some(id) = id {
                        h.memo = Some((id.clone(), left));
                    }
                } else {
                    holders.remove(i);
                }
                let next = if holders.is_empty() {
                    KeyState::Absent
                } else {
                    lock(holders)
                };
                Outcome {
                    expect: Expect::Exactly(Reply::Int(left as i64)),
                    next: Some(next),
                }
            }
            Req::ForceRelease { owner } => match owner {
                None => Outcome {
                    expect: Expect::Exactly(Reply::Int(1)),
                    next: Some(KeyState::Absent),
                },
                Some(o) => match find(&holders, o) {
                    None => Outcome::same(Expect::Exactly(Reply::Int(0))),
                    Some(i) => {
                        holders.remove(i);
                        let next = if holders.is_empty() {
                            KeyState::Absent
                        } else {
                            lock(holders)
                        };
                        Outcome {
                            expect: Expect::Exactly(Reply::Int(1)),
                            next: Some(next),
                        }
                    }
                },
            },
            Req::Apply => unreachable!(),
        }
    }

    /// Compares the reply with the prediction and moves the model on;
    /// returns what did not match.
    fn apply(&mut self, key: &[u8], out: Outcome, reply: &Reply, wrap: Wrap) -> Result<(), String> {
        if wrap == Wrap::Script {
            return self.apply_in_lua(key, out, reply);
        }
        let ok = match &out.expect {
            Expect::Any => true,
            Expect::Exactly(r) => reply == r,
            Expect::FreshToken => matches!(reply, Reply::Int(t) if *t > self.max_token),
            Expect::Error(prefixes) => {
                matches!(reply, Reply::Error(e) if prefixes.iter().any(|p| e.starts_with(p.as_str())))
            }
            Expect::WaitEnded => match reply {
                Reply::Nil => true,
                Reply::Error(e) => e.starts_with("UNBLOCKED"),
                _ => false,
            },
            Expect::Info(state) => match info_differs(state, reply, false) {
                None => true,
                Some(why) => return self.mismatch(key, format!("LOCK.INFO {why}: {reply:?}")),
            },
        };
        if !ok {
            return self.mismatch(key, format!("expected {:?}, got {reply:?}", out.expect));
        }
        if let Reply::Int(t) = reply {
            if matches!(out.expect, Expect::FreshToken) {
                self.max_token = *t;
            }
        }
        if let Some(mut next) = out.next {
            if let (Expect::FreshToken, KeyState::Lock { holders, .. }, Reply::Int(t)) =
                (&out.expect, &mut next, reply)
            {
                // The new holder is the last one: its token, and the
                // remembered request's reply.
                if let Some(h) = holders.last_mut() {
                    h.token = *t;
                    if let Some(m) = &mut h.memo {
                        m.1 = *t as u64;
                    }
                }
            }
            self.keys.insert(key.to_vec(), next);
        }
        Ok(())
    }

    /// As [`Model::apply`] for a reply that went through Lua, whose numbers
    /// are doubles: integers above 2^53 (every token) come back rounded. A
    /// fresh grant's token is then unknown, and so is its key from there on.
    fn apply_in_lua(&mut self, key: &[u8], out: Outcome, reply: &Reply) -> Result<(), String> {
        let ok = match &out.expect {
            Expect::Any => true,
            Expect::Exactly(Reply::Int(t)) => reply == &Reply::Int(lua(*t)),
            Expect::Exactly(r) => reply == r,
            Expect::FreshToken => {
                if !matches!(reply, Reply::Int(t) if *t >= lua(self.max_token)) {
                    return self.mismatch(key, format!("expected a fresh token, got {reply:?}"));
                }
                self.keys.insert(key.to_vec(), KeyState::Unknown);
                return Ok(());
            }
            Expect::Error(prefixes) => {
                matches!(reply, Reply::Error(e) if prefixes.iter().any(|p| e.starts_with(p.as_str())))
            }
            Expect::WaitEnded => reply == &Reply::Nil,
            Expect::Info(state) => match info_differs(state, reply, true) {
                None => true,
                Some(why) => return self.mismatch(key, format!("LOCK.INFO {why}: {reply:?}")),
            },
        };
        if !ok {
            return self.mismatch(
                key,
                format!("expected {:?} (through Lua), got {reply:?}", out.expect),
            );
        }
        if let Some(next) = out.next {
            self.keys.insert(key.to_vec(), next);
        }
        Ok(())
    }

    fn mismatch(&mut self, key: &[u8], why: String) -> Result<(), String> {
        self.keys.insert(key.to_vec(), KeyState::Unknown);
        Err(why)
    }
}

/// A lease of `ttl` keeps the state predictable only when it outlasts the
/// batch.
fn leased(ttl: u64, state: KeyState) -> KeyState {
    if ttl >= SURE_TTL_MS {
        state
    } else {
        KeyState::Unknown
    }
}

/// An integer as a Lua script returns it (through a double).
fn lua(x: i64) -> i64 {
    x as f64 as i64
}

/// Where a `LOCK.INFO` reply differs from the model's state of the key
/// (`in_lua`: the reply went through a Lua script, tokens rounded).
fn info_differs(state: &KeyState, reply: &Reply, in_lua: bool) -> Option<String> {
    let info = match parse_lock_info(reply) {
        Ok(i) => i,
        Err(e) => return Some(e),
    };
    match (state, info) {
        (KeyState::Absent, None) => None,
        (KeyState::Lock { limit, holders }, Some(i)) => {
            let mode = if *limit > 0 {
                InfoMode::Semaphore
            } else if holders[0].exclusive > 0 {
                InfoMode::Exclusive
            } else {
                InfoMode::Shared
            };
            let want: HolderSummary = holders
                .iter()
                .map(|h| {
                    let t = if in_lua { lua(h.token) } else { h.token };
                    (h.owner.clone(), h.total().min(MAX_HOLDS) as i64, t)
                })
                .collect();
            let used: u64 = holders.iter().map(|h| h.shared).sum();
            let mut bad = if in_lua {
                Vec::new()
            } else {
                lock_info_violations(&i, MAX_SERVER_TOKEN)
            };
            if i.mode != mode || i.summary() != want || i.waiters != 0 {
                bad.push(format!("the model has {mode:?} {want:?}"));
            }
            if *limit > 0
                && (i.limit, i.available)
                    != (Some(*limit as i64), Some(limit.saturating_sub(used) as i64))
            {
                let free = limit.saturating_sub(used);
                bad.push(format!("the model has {free} of {limit} permits free"));
            }
            (!bad.is_empty()).then(|| bad.join("; "))
        }
        (s, i) => Some(format!("shows {i:?}, the model has {s:?}")),
    }
}

// ---------------------------------------------------------------- fixtures

/// The fixtures every batch starts from (after `FLUSHALL`): exclusive
/// locks held by `A`, a binary and a 1024-byte owner; a shared lock (`A`,
/// `B`); a semaphore of 3 with `A` holding 2; a full one of 2 held by `B`;
/// a lock `A` acquired with `ID r1`; a string, a list. With the model's
/// state of each (tokens from the replies).
fn fixtures() -> Vec<(Cmd, &'static [u8], Holder, u64)> {
    let hour = "3600000";
    let acq = |k: &str, o: &[u8]| Cmd::new("LOCK.ACQUIRE").arg(k).arg(o).arg(hour);
    let h = |o: &[u8], e: u64, s: u64| Holder {
        owner: o.to_vec(),
        exclusive: e,
        shared: s,
        token: 0,
        memo: None,
    };
    let mut with_id = h(b"A", 1, 0);
    with_id.memo = Some((b"r1".to_vec(), 0));
    vec![
        (acq("held:a", b"A"), b"held:a", h(b"A", 1, 0), 0),
        (
            acq("held:bin", b"\x00B\xff"),
            b"held:bin",
            h(b"\x00B\xff", 1, 0),
            0,
        ),
        (
            acq("held:long", &[b'L'; 1024]),
            b"held:long",
            h(&[b'L'; 1024], 1, 0),
            0,
        ),
        (
            acq("held:shared", b"A").arg("SHARED"),
            b"held:shared",
            h(b"A", 0, 1),
            0,
        ),
        (
            acq("held:shared", b"B").arg("shared"),
            b"held:shared",
            h(b"B", 0, 1),
            0,
        ),
        (
            acq("held:sem", b"A")
                .arg("LIMIT")
                .arg("3")
                .arg("COUNT")
                .arg("2"),
            b"held:sem",
            h(b"A", 0, 2),
            3,
        ),
        (
            acq("held:full", b"B")
                .arg("count")
                .arg("2")
                .arg("limit")
                .arg("2"),
            b"held:full",
            h(b"B", 0, 2),
            2,
        ),
        (
            acq("held:id", b"A").arg("ID").arg("r1"),
            b"held:id",
            with_id,
            0,
        ),
    ]
}

fn set_up(c: &mut RawConn) -> Model {
    let mut cmds = vec![
        Cmd::new("FLUSHALL").arg("SYNC"),
        Cmd::new("SET").arg("str").arg("v"),
        Cmd::new("RPUSH").arg("list").arg("a").arg("b"),
    ];
    let fx = fixtures();
    cmds.extend(fx.iter().map(|f| f.0.clone()));
    let replies = c.pipeline(&cmds).expect("fixtures");
    for r in &replies {
        assert!(!r.is_error(), "fixture command failed: {r:?}");
    }
    let mut m = Model::default();
    m.keys.insert(b"str".to_vec(), KeyState::Other("string"));
    m.keys.insert(b"list".to_vec(), KeyState::Other("list"));
    for ((_, key, mut holder, limit), r) in fx.into_iter().zip(&replies[3..]) {
        let t = r.as_int().expect("a fixture grant");
        holder.token = t;
        if let Some(m) = &mut holder.memo {
            m.1 = t as u64;
        }
        m.max_token = m.max_token.max(t);
        match m.keys.entry(key.to_vec()).or_insert(KeyState::Lock {
            limit,
            holders: Vec::new(),
        }) {
            KeyState::Lock { holders, .. } => holders.push(holder),
            _ => unreachable!(),
        }
    }
    m
}

#[derive(Default)]
struct Counts {
    run: usize,
    /// command → (integer/ok, nil, array, error)
    by_command: BTreeMap<&'static str, [usize; 4]>,
    multi: usize,
    script: usize,
    with_wait: usize,
    digest_checked: usize,
    digest_skipped_expiry: usize,
    /// Replies the model predicted exactly (not `Any`), and of those the
    /// errors it predicted.
    predicted: usize,
    predicted_errors: usize,
    /// Parse errors, and documented errors for kinds, upgrades, counts.
    parse_errors: usize,
    kind_errors: usize,
    fresh_grants: usize,
    retries_answered: usize,
    /// Keys compared with `LOCK.INFO` after their batch.
    keys_compared: usize,
}

/// Every error inside a reply (nested in arrays too).
fn errors_in(r: &Reply, out: &mut Vec<String>) {
    match r {
        Reply::Error(e) => out.push(e.clone()),
        Reply::Array(items) => items.iter().for_each(|i| errors_in(i, out)),
        _ => {}
    }
}

/// The reply of the vector's own command, out of its wrapper's replies.
fn inner_reply(v: &Vector, r: &[Reply]) -> Reply {
    match v.wrap {
        Wrap::Plain | Wrap::Script => r[0].clone(),
        Wrap::Multi => match &r[2] {
            Reply::Array(items) if items.len() == 1 => items[0].clone(),
            other => other.clone(),
        },
    }
}

/// Whether a reply means "nothing was done" for that command.
fn is_noop(command: &str, r: &Reply) -> bool {
    match command {
        "LOCK.INFO" => true,
        "LOCK.ACQUIRE" | "LOCK.RELEASE" => r == &Reply::Nil,
        "LOCK.RENEW" | "LOCK.FORCERELEASE" => r == &Reply::Int(0),
        _ => false,
    }
}

/// Replays vectors one by one on a new server to find the one that stops it.
fn locate_crash(vectors: &[Vector]) -> String {
    let s = Server::start();
    let Ok(mut c) = RawConn::connect(s.port) else {
        return "could not connect to replay".into();
    };
    set_up(&mut c);
    for (i, v) in vectors.iter().enumerate() {
        let mut one = v.wrapped();
        one.push(Cmd::new("PING"));
        let _ = c.set_read_timeout(Duration::from_secs(2));
        let stopped = match c.pipeline(&one) {
            Ok(r) => r.last() != Some(&Reply::Status("PONG".into())),
            // A blocked wait: go on with a new connection.
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                match RawConn::connect(s.port) {
                    Ok(n) => {
                        c = n;
                        false
                    }
                    Err(_) => true,
                }
            }
            Err(_) => true,
        };
        if stopped {
            let before: String = vectors[i.saturating_sub(10)..i]
                .iter()
                .map(|v| format!("\n    {}", v.show()))
                .collect();
            return format!(
                "replayed one by one, the server stopped after {} (or a lease timer set by one of the vectors before it fired:{before})\n--- replay log:\n{}",
                v.show(),
                log_excerpt(&s.log())
            );
        }
    }
    // A lease set by one of them may stop it when its timer fires.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        let alive = RawConn::connect(s.port)
            .and_then(|mut c| c.call(&Cmd::new("PING")))
            .map(|r| r == Reply::Status("PONG".into()))
            .unwrap_or(false);
        if !alive {
            return format!(
                "replayed one by one, the server stopped after the last vector, when a lease set by one of them expired\n--- replay log:\n{}",
                log_excerpt(&s.log())
            );
        }
    }
    "replaying the vectors one by one did not stop a new server (state-dependent)".into()
}

fn report(violations: &mut Vec<String>, text: String) {
    if violations.len() < MAX_REPORTED {
        eprintln!("VIOLATION: {text}");
    }
    violations.push(text);
}

/// A second connection that keeps unblocking the fuzzing client so that a
/// valid `WAIT` on a held key never hangs the test.
struct Unblocker {
    stop: Arc<AtomicBool>,
    unblocked: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Unblocker {
    fn start(port: u16, client_id: i64, seed: u64) -> Unblocker {
        let stop = Arc::new(AtomicBool::new(false));
        let unblocked = Arc::new(AtomicUsize::new(0));
        let (s2, u2) = (stop.clone(), unblocked.clone());
        let handle = std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ 0x5a5a);
            let mut c = RawConn::connect(port).expect("unblocker connection");
            while !s2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                let mut cmd = Cmd::new("CLIENT").arg("UNBLOCK").arg(client_id.to_string());
                if rng.percent(10) {
                    cmd = cmd.arg("ERROR");
                }
                match c.call(&cmd) {
                    Ok(Reply::Int(1)) => {
                        u2.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Unblocker {
            stop,
            unblocked,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.unblocked.load(Ordering::Relaxed)
    }
}

#[test]
fn random_lock_command_arguments_never_crash_errors_change_nothing_and_the_model_holds() {
    let seed = testkit::hostile::fuzz_seed(DEFAULT_SEED);
    let count = testkit::hostile::env_u64("FENCELOCK_FUZZ_COUNT", 10_000) as usize;
    let s = Server::start();
    let mut c = RawConn::connect(s.port).unwrap();
    let id = c
        .call(&Cmd::new("CLIENT").arg("ID"))
        .unwrap()
        .as_int()
        .unwrap();
    let unblocker = Unblocker::start(s.port, id, seed);
    let mut rng = Rng::new(seed);
    let mut counts = Counts::default();
    let mut violations: Vec<String> = Vec::new();
    let mut budget = TimeBudget::start();
    let mut max_token = 0;
    let mut n = 0;
    while n < count {
        if budget.spent(n, count, "vectors") {
            break;
        }
        let mut model = set_up(&mut c);
        if model.max_token <= max_token {
            report(
                &mut violations,
                format!(
                    "a fixture grant got token {:#x}, not above {max_token:#x} seen before",
                    model.max_token
                ),
            );
        }
        let batch: Vec<Vector> = (n..(n + BATCH).min(count))
            .map(|i| gen_vector(&mut rng, i))
            .collect();
        let mut cmds = Vec::new();
        let mut spans = Vec::new();
        for v in &batch {
            cmds.push(Cmd::new("INFO").arg("lock"));
            cmds.push(Cmd::new("DEBUG").arg("DIGEST"));
            let w = v.wrapped();
            spans.push(w.len());
            cmds.extend(w);
            cmds.push(Cmd::new("DEBUG").arg("DIGEST"));
            cmds.push(Cmd::new("INFO").arg("lock"));
        }
        cmds.push(Cmd::new("PING"));
        let replies = match c.pipeline(&cmds) {
            Ok(r) => r,
            Err(e) => panic!(
                "the server stopped answering ({e}) during vectors {}..{} (seed {seed:#x}).\n{}\n--- server log:\n{}",
                n,
                n + batch.len(),
                locate_crash(&batch),
                log_excerpt(&s.log())
            ),
        };
        if replies.last() != Some(&Reply::Status("PONG".into())) {
            panic!(
                "PING after vectors ..{}: {:?}",
                n + batch.len(),
                replies.last()
            );
        }
        let mut at = 0;
        for (v, span) in batch.iter().zip(spans) {
            let info1 = &replies[at];
            let d1 = &replies[at + 1];
            let own = &replies[at + 2..at + 2 + span];
            let d2 = &replies[at + 2 + span];
            let info2 = &replies[at + 3 + span];
            at += span + 4;
            counts.run += 1;
            match v.wrap {
                Wrap::Multi => counts.multi += 1,
                Wrap::Script => counts.script += 1,
                Wrap::Plain => {}
            }
            if v.args.iter().any(|a| a.eq_ignore_ascii_case(b"WAIT")) {
                counts.with_wait += 1;
            }
            let mut errors = Vec::new();
            own.iter().for_each(|r| errors_in(r, &mut errors));
            for e in &errors {
                if !has_error_code(e) {
                    report(
                        &mut violations,
                        format!("error reply without an uppercase code {e:?}: {}", v.show()),
                    );
                }
            }
            let inner = inner_reply(v, own);
            let slot = match &inner {
                Reply::Int(_) | Reply::Status(_) | Reply::Bulk(_) => 0,
                Reply::Nil => 1,
                Reply::Array(_) => 2,
                Reply::Error(_) => 3,
            };
            counts.by_command.entry(v.command).or_default()[slot] += 1;
            if v.command == "LOCK.APPLY"
                && !matches!(&inner, Reply::Error(e) if e.starts_with("ERR"))
            {
                report(
                    &mut violations,
                    format!(
                        "LOCK.APPLY from a client was not refused with ERR: {inner:?}: {}",
                        v.show()
                    ),
                );
            }
            // The model.
            let key = v.args.get(1).cloned().unwrap_or_default();
            let outcome = match parse(v) {
                Err(prefixes) => {
                    counts.parse_errors += 1;
                    Outcome::same(Expect::Error(prefixes))
                }
                Ok(req) => model.predict(&key, &req, v.wrap),
            };
            match &outcome.expect {
                Expect::Any => {}
                Expect::Error(p) => {
                    counts.predicted += 1;
                    counts.predicted_errors += 1;
                    if p.iter().any(|e| {
                        e.starts_with("WRONGTYPE the")
                            || e.contains("COUNT is more")
                            || e == ERR_UPGRADE
                    }) {
                        counts.kind_errors += 1;
                    }
                }
                Expect::FreshToken => {
                    counts.predicted += 1;
                    counts.fresh_grants += 1;
                }
                _ => counts.predicted += 1,
            }
            let retry = matches!(&outcome.expect, Expect::Exactly(Reply::Int(_)))
                && v.args.iter().any(|a| a.eq_ignore_ascii_case(b"ID"));
            match model.apply(&key, outcome, &inner, v.wrap) {
                Ok(()) => counts.retries_answered += usize::from(retry),
                Err(why) => report(
                    &mut violations,
                    format!("the model disagrees: {why}: {}", v.show()),
                ),
            }
            if inner.is_error() || is_noop(v.command, &inner) {
                let expired1 = info_value(info1, "lock_expired");
                let expired2 = info_value(info2, "lock_expired");
                if expired1.is_none() || expired1 != expired2 {
                    counts.digest_skipped_expiry += 1;
                } else {
                    counts.digest_checked += 1;
                    if d1 != d2 || d1.is_error() {
                        report(
                            &mut violations,
                            format!(
                                "the dataset changed ({d1:?} -> {d2:?}) on reply {inner:?}: {}",
                                v.show()
                            ),
                        );
                    }
                }
            }
        }
        max_token = max_token.max(model.max_token);
        // Every key the model still knows holds what it says.
        let known: Vec<(Vec<u8>, KeyState)> = model
            .keys
            .iter()
            .filter(|(_, s)| matches!(s, KeyState::Lock { .. } | KeyState::Absent))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let infos = c
            .pipeline(
                &known
                    .iter()
                    .map(|(k, _)| Cmd::new("LOCK.INFO").arg(k))
                    .collect::<Vec<_>>(),
            )
            .expect("LOCK.INFO after the batch");
        for ((k, state), info) in known.iter().zip(&infos) {
            counts.keys_compared += 1;
            if let Some(why) = info_differs(state, info, false) {
                report(
                    &mut violations,
                    format!(
                        "after vectors ..{}: key {:?}: {why}: {info:?}",
                        n + batch.len(),
                        String::from_utf8_lossy(k)
                    ),
                );
            }
        }
        n += batch.len();
    }
    let elapsed = budget.started.elapsed();
    let unblocked = unblocker.finish();
    assert_eq!(
        c.call(&Cmd::new("PING")).unwrap(),
        Reply::Status("PONG".into())
    );
    let signs = testkit::hostile::crash_signs(&s.log());
    if !signs.is_empty() {
        violations.push(format!("crash signatures in the server log: {signs:?}"));
    }
    println!(
        "argument fuzz (seed {seed:#x}): {} vectors in {:.1} s; {} in MULTI/EXEC, {} in Lua, {} with WAIT, {} waits ended by CLIENT UNBLOCK; \
         dataset compared {} times ({} skipped: a lease expired meanwhile)\n  \
         model: {} replies predicted ({} errors: {} parse errors, {} of a kind, upgrade or count; {} fresh grants; {} retries answered), {} keys compared after their batch",
        counts.run,
        elapsed.as_secs_f64(),
        counts.multi,
        counts.script,
        counts.with_wait,
        unblocked,
        counts.digest_checked,
        counts.digest_skipped_expiry,
        counts.predicted,
        counts.predicted_errors,
        counts.parse_errors,
        counts.kind_errors,
        counts.fresh_grants,
        counts.retries_answered,
        counts.keys_compared
    );
    for (cmd, [ok, nil, arr, err]) in &counts.by_command {
        println!("  {cmd:<18} integer/ok {ok:>5}  nil {nil:>5}  array {arr:>5}  error {err:>5}");
    }
    assert!(
        violations.is_empty(),
        "{} violations (seed {seed:#x}), by kind:\n{}\nthe first ones:\n{}",
        violations.len(),
        testkit::hostile::violation_kinds(&violations),
        violations
            .iter()
            .take(MAX_REPORTED)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let errors: usize = counts.by_command.values().map(|v| v[3]).sum();
    let fine: usize = counts.by_command.values().map(|v| v[0] + v[1] + v[2]).sum();
    assert!(
        errors > 0 && fine > 0,
        "both refused and accepted vectors ran"
    );
    assert!(counts.digest_checked > 0);
    assert!(
        counts.kind_errors > 0
            && counts.fresh_grants > 0
            && counts.retries_answered > 0
            && counts.keys_compared > 0,
        "the model checked every kind of reply"
    );
    if !budget.cut_short {
        assert_eq!(counts.run, count, "every vector was run");
        assert!(
            counts.predicted * 2 > counts.run,
            "the model predicted most replies"
        );
    }
}
