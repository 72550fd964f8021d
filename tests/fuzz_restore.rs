//! Issue #9, `RESTORE`: no payload can crash the server or make a fencing
//! token repeat, whatever kind of lock it claims to hold.
//!
//! Starting from real `DUMP`s of every kind (exclusive locks with short,
//! binary, integer-looking, compressible and incompressible 1024-byte
//! owners, holds > 1 by re-entry, a downgrade; shared locks with a few and
//! with sixty readers; semaphores of 5, 100 and 1,000,000 permits with one
//! to forty holders; holders that remember a request id; short and long
//! leases) and from hand-built values of encoding 2 (any limit, 1 to 2,000
//! holders, duplicate owners and tokens, permits over the limit, an
//! exclusive holder beside others, exclusive holds in a semaphore, a
//! declared holder count that does not match, up to 2^64-1, remembered
//! requests without an id or with a 65-byte one) and of encoding 1 (the
//! first release's, which must still restore), the fuzzer sends ≥ 10,000
//! payloads with a correct CRC64 (and some with a wrong one): bit flips,
//! byte changes, truncations, inserted and extra bytes, extra, duplicated,
//! dropped and swapped fields and holders, huge string lengths, extreme
//! integers, wrong opcodes, other module ids and encoding versions (0, 3,
//! 1023; 1 with the fields of 2), other type bytes (the pre-release module
//! framing without opcodes, unknown types; never one of Redis's own
//! types, which would test Redis — it can hang on some), other RDB
//! versions, non-minimal length encodings, binary key names (the lease
//! timer must cope). Each payload is also judged by a model of how Redis
//! 7.0 and the module rules read it (`hostile::restore_verdict`): a payload
//! the rules accept must be stored, one they refuse must get an error reply.
//!
//! For every payload: the server answers; a refused payload stores nothing
//! (and a refused `RESTORE ... REPLACE` leaves the old lock as it was); a
//! stored one is a lock that obeys the rules of its kind
//! (`hostile::lock_info_violations`) and, when the model accepted it,
//! `LOCK.INFO` shows exactly what the payload holds (`hostile::info_matches`:
//! kind, limit, available permits, each live holder in order with its holds
//! or permits, token and ttl; passed leases never); the token of a fresh
//! grant made right after is above every token seen so far; `INFO lock`
//! `lock_held` equals the number of lock keys. Restored locks with long
//! leases are then used by their holders: a request of the wrong kind (or
//! an upgrade) is refused with the documented error and changes nothing; a
//! re-entry keeps the token and adds one hold or permit, a release takes it
//! back. Holders with short or past deadlines disappear on their own.
//!
//! Seeded (`FENCELOCK_FUZZ_SEED`), bounded in count (`FENCELOCK_FUZZ_COUNT`,
//! default 10,000) and time (`FENCELOCK_FUZZ_SECONDS`, default 120: the run
//! stops early with a message, still checking everything it did).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use testkit::hostile::{
    dump_payload, err_semaphore, fencelock_type_id, fencelock_type_id_v, has_error_code, hex,
    holder_field, info_matches, info_value, lock_info_violations, log_excerpt, module_type_id,
    now_ms, parse_lock_info, rdb_int_str, rdb_len, rdb_len_variant, rdb_lzf_literal_str, rdb_str,
    restore_verdict, Cmd, HolderFields, HolderSummary, InfoMode, LockFields, ModuleValue, RawConn,
    RawField, RawLockInfo, RdbReader, Reply, Rng, TimeBudget, Verdict, DAY_MS, ENCVER, ENCVER_V1,
    HOLDER_FIELDS, H_DEADLINE, H_EXCLUSIVE, H_ID, H_OWNER, H_REPLY, H_SHARED, H_TOKEN, MAX_HOLDS,
    MAX_PERMITS, MAX_TOKEN, OP_DOUBLE, OP_FLOAT, OP_SINT, OP_UINT, RDB_VERSION, TYPE_MODULE_1,
    V2_HEADER_FIELDS,
};
use testkit::hostile::{ERR_NOT_SEMAPHORE, ERR_UPGRADE};
use testkit::Server;

const DEFAULT_SEED: u64 = 0x5eed_f00d_0009;
const BATCH: usize = 50;
/// Live locks kept as `REPLACE` targets and for re-entry checks.
const POOL: usize = 200;
/// A restored holder with at most this ttl must be seen to disappear.
const SHORT_TTL_MS: i64 = 20_000;
/// Holders of pool locks have at least this ttl.
const LONG_TTL_MS: i64 = 3_600_000;
/// How long after its deadline a holder may still be seen (a slow machine).
const VANISH_SLACK: Duration = Duration::from_secs(60);
const MAX_REPORTED: usize = 40;

/// How a payload is sent.
#[derive(Clone, Debug)]
enum Mode {
    /// `RESTORE fz:<n> 0 payload`
    Fresh,
    /// `RESTORE <live lock> 0 payload REPLACE`
    Replace(Vec<u8>),
    /// `RESTORE fz:<n> 1 payload ABSTTL`: Redis loads it, then drops it as
    /// already expired.
    PastAbsTtl,
}

struct Case {
    n: usize,
    key: Vec<u8>,
    payload: Vec<u8>,
    how: String,
    handmade: bool,
    mode: Mode,
    verdict: Verdict,
}

impl Case {
    fn restore(&self) -> Cmd {
        let c = Cmd::new("RESTORE").arg(&self.key);
        match self.mode {
            Mode::Fresh => c.arg("0").arg(&self.payload),
            Mode::Replace(_) => c.arg("0").arg(&self.payload).arg("REPLACE"),
            Mode::PastAbsTtl => c.arg("1").arg(&self.payload).arg("ABSTTL"),
        }
    }

    fn describe(&self) -> String {
        let verdict = format!("{:?}", self.verdict);
        format!(
            "case {} ({}; {:?}; rules: {}) RESTORE {:?} payload {}",
            self.n,
            self.how,
            self.mode,
            verdict.chars().take(300).collect::<String>(),
            String::from_utf8_lossy(&self.key),
            hex(&self.payload, 160)
        )
    }
}

#[derive(Default, Debug)]
struct Counts {
    run: usize,
    handmade: usize,
    refused: usize,
    accepted_shown: usize,
    accepted_expired_at_once: usize,
    accepted_discarded_by_abs_ttl: usize,
    accepted_other_type: usize,
    replace_refused_kept_old: usize,
    reentries: usize,
    kind_refusals: usize,
    /// Accepted and shown, by kind: exclusive, shared, semaphore.
    shown_by_mode: [usize; 3],
    /// Accepted with more than one holder.
    shown_multi_holder: usize,
    /// Accepted payloads of encoding 1.
    accepted_v1: usize,
    rules_accept: usize,
    rules_refuse: usize,
    rules_either: usize,
}

/// A restored lock whose holders all have long leases: what `LOCK.INFO`
/// showed.
#[derive(Clone, Debug)]
struct PoolLock {
    mode: InfoMode,
    limit: i64,
    available: i64,
    /// (owner, holds or permits, token), in order.
    holders: HolderSummary,
}

/// A key and one of its holders' owner.
type KeyOwner = (Vec<u8>, Vec<u8>);

/// Everything the fuzzer tracks between batches.
struct State {
    rng: Rng,
    bases: Vec<ModuleValue>,
    counts: Counts,
    violations: Vec<String>,
    /// The highest token granted or accepted so far.
    max_token: i64,
    pool: VecDeque<Vec<u8>>,
    pool_info: BTreeMap<Vec<u8>, PoolLock>,
    /// Keys that must disappear: key → latest time they may still exist.
    vanish: BTreeMap<Vec<u8>, Instant>,
    /// Holders that must leave a key that stays: (key, owner) → latest
    /// time they may still be shown.
    shed: BTreeMap<KeyOwner, Instant>,
}

impl State {
    fn violation(&mut self, case: &Case, what: String) {
        let text = format!("{what}\n    {}", case.describe());
        self.report(text);
    }

    fn report(&mut self, text: String) {
        if self.violations.len() < MAX_REPORTED {
            eprintln!("VIOLATION: {text}");
        }
        self.violations.push(text);
    }

    /// The key holds something else now (replaced, deleted).
    fn forget(&mut self, key: &[u8]) {
        self.pool.retain(|x| x != key);
        self.pool_info.remove(key);
        self.vanish.remove(key);
        self.shed.retain(|(k, _), _| k != key);
    }
}

// ------------------------------------------------------------ field values

fn interesting_owner(rng: &mut Rng) -> Vec<u8> {
    match rng.below(14) {
        0 => b"o".to_vec(),
        1 => b"worker-1:thread-7".to_vec(),
        2 => vec![b'x'; 1024],
        3 => rng.bytes(1024),
        4 => vec![b'y'; 1025],
        5 => Vec::new(),
        6 => b"\x00\r\n\xff binary".to_vec(),
        7 => b"12345".to_vec(),
        8 => b"-1".to_vec(),
        9 => b"0".to_vec(),
        10 => {
            if rng.percent(10) {
                vec![b'z'; 100_000]
            } else {
                vec![b'z'; 4096]
            }
        }
        11 => rng.blob(1, 64),
        12 => vec![b'q'; 1023],
        _ => b"abcabcabcabcabcabcabcabc".to_vec(),
    }
}

fn holds_value(rng: &mut Rng) -> u64 {
    let random = 1 + rng.below(1 << 40);
    *rng.pick(&[
        0,
        1,
        1,
        2,
        3,
        1000,
        MAX_HOLDS - 1,
        MAX_HOLDS,
        MAX_HOLDS + 1,
        u64::MAX,
        random,
    ])
}

fn token_value(rng: &mut Rng, now: u64) -> u64 {
    let (r1, r2) = (1 + rng.below(MAX_TOKEN), rng.next_u64());
    *rng.pick(&[
        0,
        1,
        2,
        MAX_TOKEN - 1,
        MAX_TOKEN,
        MAX_TOKEN + 1,
        i64::MAX as u64,
        i64::MAX as u64 + 1,
        u64::MAX,
        now << 20,
        (now << 20) + 1_000_000_000,
        r1,
        r2,
    ])
}

fn deadline_value(rng: &mut Rng, now: u64) -> u64 {
    let (s1, s2) = (now + rng.range(300, 4000), now + rng.range(300, 4000));
    *rng.pick(&[
        0,
        1,
        now - DAY_MS,
        now - 1,
        s1,
        s2,
        now + 3_600_000,
        now + 30 * DAY_MS,
        now + 31 * DAY_MS - 3_600_000,
        now + 31 * DAY_MS + 3_600_000,
        now + 40 * DAY_MS,
        1 << 62,
        i64::MAX as u64,
        u64::MAX,
    ])
}

fn limit_value(rng: &mut Rng) -> u64 {
    let random = rng.range(1, MAX_PERMITS);
    *rng.pick(&[
        0,
        0,
        1,
        2,
        5,
        100,
        MAX_PERMITS,
        MAX_PERMITS + 1,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        u64::MAX,
        random,
    ])
}

fn holder_count_value(rng: &mut Rng, actual: u64) -> u64 {
    *rng.pick(&[
        0,
        actual.saturating_sub(1),
        actual.saturating_add(1),
        actual.saturating_add(2),
        MAX_PERMITS,
        MAX_PERMITS + 1,
        1 << 40,
        u64::MAX,
    ])
}

/// A remembered request (id, reply): mostly none or valid, else broken.
fn memo_value(rng: &mut Rng, token: u64) -> (Vec<u8>, u64) {
    match rng.below(12) {
        0..=5 => (Vec::new(), 0),
        6 | 7 => (b"req-7".to_vec(), token),
        8 => (vec![b'i'; 64], rng.below(10)),
        9 => (Vec::new(), rng.range(1, 9)),
        10 => (vec![b'i'; 65], token),
        _ => (
            b"\x00id\xff".to_vec(),
            *rng.pick(&[MAX_HOLDS, MAX_HOLDS + 1, u64::MAX]),
        ),
    }
}

fn interesting_u64(rng: &mut Rng, now: u64) -> u64 {
    match rng.below(5) {
        0 => holds_value(rng),
        1 => token_value(rng, now),
        2 => deadline_value(rng, now),
        3 => limit_value(rng),
        _ => *rng.pick(&[
            63,
            64,
            16383,
            16384,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
        ]),
    }
}

/// A string in one of the encodings Redis reads.
fn encode_string(rng: &mut Rng, s: &[u8]) -> Vec<u8> {
    match rng.below(10) {
        0 => rdb_int_str(s).unwrap_or_else(|| rdb_str(s)),
        1 if !s.is_empty() => rdb_lzf_literal_str(s),
        2 => {
            // An LZF header with garbage inside.
            let mut v = vec![0xc3];
            let clen = 1 + rng.index(40);
            v.extend(rdb_len(clen as u64));
            v.extend(rdb_len(s.len() as u64));
            v.extend(rng.bytes(clen));
            v
        }
        _ => rdb_str(s),
    }
}

fn uint_encoded(rng: &mut Rng, v: u64) -> Vec<u8> {
    if rng.percent(80) {
        rdb_len(v)
    } else {
        rdb_len_variant(v, rng)
    }
}

// -------------------------------------------------------- hand-made values

/// A value of encoding 1 (the first release's) built from chosen fields.
fn handmade_v1(rng: &mut Rng, now: u64) -> (ModuleValue, String) {
    let owner = interesting_owner(rng);
    let holds = holds_value(rng);
    let token = token_value(rng, now);
    let deadline = deadline_value(rng, now);
    let mut v = ModuleValue::lock(&owner, holds, token, deadline);
    v.fields[0].value = encode_string(rng, &owner);
    for (i, x) in [(1, holds), (2, token), (3, deadline)] {
        v.fields[i].value = uint_encoded(rng, x);
    }
    let how = format!(
        "handmade v1 owner {} bytes, holds {holds}, token {token:#x}, deadline {}",
        owner.len(),
        deadline as i128 - now as i128
    );
    (v, how)
}

/// A value of encoding 2 of some kind, mostly valid, often with one rule
/// broken.
fn handmade_v2(rng: &mut Rng, now: u64) -> (ModuleValue, String) {
    let kind = rng.below(4);
    let n = match kind {
        0 => 1,
        _ => *rng.pick(&[1, 2, 2, 3, 5, 20, 200]) + usize::from(rng.percent(1)) * 1800,
    };
    let mut limit = match kind {
        0 | 1 => 0,
        2 => {
            let at_least = n as u64;
            *rng.pick(&[at_least, at_least + 3, 100.max(at_least), MAX_PERMITS])
        }
        _ => limit_value(rng),
    };
    if rng.percent(5) {
        limit = limit_value(rng);
    }
    let base_token = 1 + rng.below(MAX_TOKEN - 10_000);
    let common_deadline = if rng.percent(70) {
        now + 3_600_000
    } else {
        deadline_value(rng, now)
    };
    let mut holders = Vec::new();
    let mut budget = limit;
    for i in 0..n {
        let owner = if rng.percent(97) {
            format!("holder-{i}").into_bytes()
        } else {
            interesting_owner(rng)
        };
        let (exclusive, shared) = match kind {
            0 => (
                if rng.percent(90) {
                    1 + rng.below(3)
                } else {
                    holds_value(rng)
                },
                if rng.percent(80) { 0 } else { rng.below(3) },
            ),
            1 => (
                0,
                if rng.percent(90) {
                    1 + rng.below(3)
                } else {
                    holds_value(rng)
                },
            ),
            2 => {
                let left = budget.saturating_sub((n - i - 1) as u64).max(1);
                let p = if rng.percent(90) {
                    1 + rng.below(left.min(3))
                } else {
                    holds_value(rng)
                };
                budget = budget.saturating_sub(p);
                (0, p)
            }
            _ => (holds_value(rng), holds_value(rng)),
        };
        let token = if rng.percent(97) {
            base_token + i as u64
        } else {
            token_value(rng, now)
        };
        let deadline = if rng.percent(95) {
            common_deadline
        } else {
            deadline_value(rng, now)
        };
        let (id, reply) = memo_value(rng, token);
        holders.push(HolderFields {
            owner,
            exclusive,
            shared,
            token,
            deadline_ms: deadline,
            id,
            reply,
        });
    }
    let mut how = vec![format!(
        "handmade v2 kind {kind}, limit {limit}, {n} holders"
    )];
    // One rule broken on purpose now and then.
    if n > 1 {
        let (a, b) = (rng.index(n), rng.index(n));
        match rng.below(12) {
            0 if a != b => {
                holders[b].owner = holders[a].owner.clone();
                how.push("duplicate owner".into());
            }
            1 if a != b => {
                holders[b].token = holders[a].token;
                how.push("duplicate token".into());
            }
            2 => {
                holders[a].exclusive = 1;
                how.push("exclusive beside others".into());
            }
            3 if limit > 0 => {
                holders[a].shared = holders[a].shared.saturating_add(limit);
                how.push("permits over the limit".into());
            }
            _ => {}
        }
    }
    let lock = LockFields { limit, holders };
    let mut v = ModuleValue::lock_v2(&lock);
    if rng.percent(8) {
        v.fields[1] = RawField::uint(holder_count_value(rng, n as u64));
        how.push("declared holder count changed".into());
    }
    // Other encodings of the same fields.
    for f in v.fields.iter_mut() {
        if rng.percent(10) {
            let mut r = RdbReader::new(&f.value);
            match f.opcode {
                OP_UINT => {
                    if let Some(x) = r.read_len() {
                        f.value = uint_encoded(rng, x);
                    }
                }
                _ => {
                    if let Some(s) = r.string() {
                        f.value = encode_string(rng, &s);
                    }
                }
            }
        }
    }
    (v, how.join(", "))
}

// --------------------------------------------------------------- mutations

/// What a field of a lock value is, by its place in the layout of the
/// encoding its module id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Limit,
    Count,
    Owner,
    Exclusive,
    Shared,
    Token,
    Deadline,
    Id,
    Reply,
}

fn role_of(encver: Option<u64>, i: usize) -> Option<Role> {
    if encver == Some(ENCVER_V1) {
        return [Role::Owner, Role::Exclusive, Role::Token, Role::Deadline]
            .get(i)
            .copied();
    }
    match i {
        0 => Some(Role::Limit),
        1 => Some(Role::Count),
        _ => Some(
            [
                Role::Owner,
                Role::Exclusive,
                Role::Shared,
                Role::Token,
                Role::Deadline,
                Role::Id,
                Role::Reply,
            ][(i - V2_HEADER_FIELDS) % HOLDER_FIELDS],
        ),
    }
}

/// A random field of `role`.
fn field_of(rng: &mut Rng, v: &ModuleValue, role: Role) -> Option<usize> {
    let encver = v.encver();
    let all: Vec<usize> = (0..v.fields.len())
        .filter(|&i| role_of(encver, i) == Some(role))
        .collect();
    (!all.is_empty()).then(|| *rng.pick(&all))
}

/// Holders of a version-2 value (as laid out, whatever the count says).
fn holders_in(v: &ModuleValue) -> usize {
    if v.encver() == Some(ENCVER_V1) {
        return 0;
    }
    v.fields.len().saturating_sub(V2_HEADER_FIELDS) / HOLDER_FIELDS
}

fn set_uint(rng: &mut Rng, v: &mut ModuleValue, i: usize, x: u64) {
    v.fields[i].value = uint_encoded(rng, x);
}

/// A change of the holders of a version-2 value; its name (None: it does
/// not apply to this value).
fn mutate_holders(rng: &mut Rng, v: &mut ModuleValue, now: u64) -> Option<&'static str> {
    let h = holders_in(v);
    if h == 0 {
        return None;
    }
    let a = rng.index(h);
    let b = rng.index(h);
    let uint_at = |v: &ModuleValue, i: usize| RdbReader::new(&v.fields[i].value).read_len();
    Some(match rng.below(11) {
        0 if h > 1 && a != b => {
            v.fields[holder_field(b, H_OWNER)] = v.fields[holder_field(a, H_OWNER)].clone();
            "duplicate-owner"
        }
        1 if h > 1 && a != b => {
            v.fields[holder_field(b, H_TOKEN)] = v.fields[holder_field(a, H_TOKEN)].clone();
            "duplicate-token"
        }
        2 => {
            let x = *rng.pick(&[1, 2, MAX_HOLDS]);
            set_uint(rng, v, holder_field(a, H_EXCLUSIVE), x);
            "exclusive-holds"
        }
        3 => {
            let limit = uint_at(v, 0).unwrap_or(0);
            let x = *rng.pick(&[
                0,
                1,
                limit,
                limit.saturating_add(1),
                MAX_PERMITS + 1,
                MAX_HOLDS,
            ]);
            set_uint(rng, v, holder_field(a, H_SHARED), x);
            "shared-or-permits"
        }
        4 => {
            // A holder more: a copy with its own owner and token, or not.
            let start = holder_field(a, 0);
            let mut copy: Vec<RawField> = v.fields[start..start + HOLDER_FIELDS].to_vec();
            if rng.percent(80) {
                copy[H_OWNER] = RawField::string(format!("extra-{}", rng.below(1000)).as_bytes());
                copy[H_TOKEN] = RawField::uint(1 + rng.below(MAX_TOKEN));
            }
            let at = holder_field(rng.index(h + 1), 0);
            v.fields.splice(at..at, copy);
            if rng.percent(85) {
                let n = uint_at(v, 1).unwrap_or(0);
                set_uint(rng, v, 1, n.saturating_add(1));
            }
            "add-holder"
        }
        5 => {
            let start = holder_field(a, 0);
            v.fields.drain(start..start + HOLDER_FIELDS);
            if rng.percent(85) {
                let n = uint_at(v, 1).unwrap_or(0);
                set_uint(rng, v, 1, n.saturating_sub(1));
            }
            "drop-holder"
        }
        6 if h > 1 => {
            for m in 0..HOLDER_FIELDS {
                v.fields.swap(holder_field(a, m), holder_field(b, m));
            }
            "swap-holders"
        }
        7 => {
            let token = uint_at(v, holder_field(a, H_TOKEN)).unwrap_or(1);
            let (id, reply) = memo_value(rng, token);
            v.fields[holder_field(a, H_ID)].value = encode_string(rng, &id);
            set_uint(rng, v, holder_field(a, H_REPLY), reply);
            "remembered-request"
        }
        8 => {
            // Flip the kind: a read/write lock becomes a semaphore or back.
            let limit = uint_at(v, 0).unwrap_or(0);
            let x = if limit == 0 {
                *rng.pick(&[1, h as u64, 1000])
            } else {
                0
            };
            set_uint(rng, v, 0, x);
            "kind-flip"
        }
        9 => {
            let n = uint_at(v, 1).unwrap_or(1);
            let x = holder_count_value(rng, n);
            set_uint(rng, v, 1, x);
            "holder-count"
        }
        _ => {
            let soon = now + rng.range(200, 4000);
            let x = *rng.pick(&[1, now - 10_000, soon]);
            set_uint(rng, v, holder_field(a, H_DEADLINE), x);
            "holder-deadline"
        }
    })
}

/// Removes the length prefix of an encoded string (what follows it).
fn string_content(value: &[u8]) -> Vec<u8> {
    let mut r = RdbReader::new(value);
    if r.read_len_enc().is_none() {
        return Vec::new();
    }
    value[r.pos..].to_vec()
}

fn random_field(rng: &mut Rng, now: u64) -> RawField {
    match rng.below(7) {
        0 => RawField::uint(interesting_u64(rng, now)),
        1 => RawField {
            opcode: OP_SINT,
            value: rdb_len(interesting_u64(rng, now)),
        },
        2 => RawField {
            opcode: OP_FLOAT,
            value: rng.bytes(4),
        },
        3 => RawField {
            opcode: OP_DOUBLE,
            value: rng.bytes(8),
        },
        4 => RawField::string(&interesting_owner(rng)),
        5 => RawField {
            opcode: rng.range(6, 70),
            value: rng.blob(0, 8),
        },
        _ => RawField::uint(rng.next_u64()),
    }
}

/// One structured change of a value; its name.
fn mutate_value(rng: &mut Rng, v: &mut ModuleValue, now: u64) -> &'static str {
    if rng.percent(35) {
        if let Some(name) = mutate_holders(rng, v, now) {
            return name;
        }
    }
    let nf = v.fields.len();
    let field = |rng: &mut Rng| rng.index(nf.max(1));
    let value_of = |rng: &mut Rng, role: Role| match role {
        Role::Limit => limit_value(rng),
        Role::Count => holder_count_value(rng, 1),
        Role::Exclusive | Role::Shared | Role::Reply => holds_value(rng),
        Role::Token => token_value(rng, now),
        _ => deadline_value(rng, now),
    };
    match rng.below(18) {
        0 => {
            let role = *rng.pick(&[Role::Owner, Role::Owner, Role::Id]);
            if let Some(i) = field_of(rng, v, role) {
                let s = if role == Role::Owner {
                    interesting_owner(rng)
                } else {
                    memo_value(rng, 1).0
                };
                v.fields[i].value = encode_string(rng, &s);
            }
            "string"
        }
        1..=3 => {
            let role = *rng.pick(&[
                Role::Limit,
                Role::Count,
                Role::Exclusive,
                Role::Shared,
                Role::Token,
                Role::Deadline,
                Role::Reply,
            ]);
            if let Some(i) = field_of(rng, v, role) {
                let x = value_of(rng, role);
                set_uint(rng, v, i, x);
            }
            "field-value"
        }
        4 => {
            if let Some(i) = field_of(rng, v, Role::Deadline) {
                let soon = now + rng.range(200, 4000);
                set_uint(rng, v, i, soon);
            }
            "deadline-short"
        }
        5 => {
            if let Some(i) = field_of(rng, v, Role::Deadline) {
                let x = *rng.pick(&[1, now - DAY_MS, now - 10_000]);
                set_uint(rng, v, i, x);
            }
            "deadline-past"
        }
        6 if nf > 0 => {
            let i = field_of(rng, v, Role::Owner)
                .or_else(|| field_of(rng, v, Role::Id))
                .unwrap_or(0);
            let huge: Vec<u8> = match rng.below(8) {
                0 => vec![0x80, 0xff, 0xff, 0xff, 0xff],
                1 => vec![0x80, 0x7f, 0xff, 0xff, 0xff],
                2 => rdb_len(1 << 40),
                3 => rdb_len(1 << 62),
                4 => rdb_len(u64::MAX),
                5 => rdb_len(1025),
                6 => rdb_len(100_000),
                _ => rdb_len(rng.range(1, 2048)),
            };
            let mut nv = huge;
            nv.extend(string_content(&v.fields[i].value));
            v.fields[i].value = nv;
            "huge-length"
        }
        7 if nf > 0 => {
            let i = field(rng);
            let random = rng.next_u64();
            v.fields[i].opcode = *rng.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 63, 64, 1000, random]);
            "wrong-opcode"
        }
        8 if nf > 0 => {
            let i = field(rng);
            let f = v.fields[i].clone();
            let at = rng.index(nf + 1);
            v.fields.insert(at, f);
            "duplicated-field"
        }
        9 if nf > 0 => {
            let i = field(rng);
            v.fields.remove(i);
            "dropped-field"
        }
        10 if nf > 1 => {
            let a = field(rng);
            let b = field(rng);
            v.fields.swap(a, b);
            "swapped-fields"
        }
        11 => {
            let f = random_field(rng, now);
            let at = if rng.percent(50) {
                nf
            } else {
                rng.index(nf + 1)
            };
            v.fields.insert(at, f);
            "extra-field"
        }
        12 => {
            let id = fencelock_type_id();
            v.module_id = match rng.below(11) {
                0 => rdb_len(id & !1023),
                1 => rdb_len(fencelock_type_id_v(ENCVER_V1)),
                2 => rdb_len(fencelock_type_id_v(ENCVER)),
                3 => rdb_len(fencelock_type_id_v(3)),
                4 => rdb_len(id | 1023),
                5 => rdb_len(module_type_id("fencelocl", ENCVER)),
                6 => rdb_len(module_type_id("otherlock", ENCVER)),
                7 => rdb_len(rng.next_u64()),
                8 => vec![0x81, 0x01, 0x02],
                9 => rdb_len(id ^ (1 << (10 + rng.below(54)))),
                _ => rdb_len_variant(fencelock_type_id_v(ENCVER), rng),
            };
            "module-id"
        }
        13 => {
            match rng.below(6) {
                0 => v.eof = Vec::new(),
                1 => v.eof = vec![*rng.pick(&[1, 2, 5, 0x3f])],
                2 => v.eof = vec![0xc0],
                3 => v.eof = vec![0x40, 0x00],
                _ => v.tail = rng.blob(1, 16),
            }
            "eof-marker"
        }
        14 => {
            v.type_byte = *rng.pick(&[TYPE_MODULE_1, 8, 20, 100, 255]);
            "type-byte"
        }
        15 if nf > 0 => {
            let i = field(rng);
            let mut r = RdbReader::new(&v.fields[i].value);
            if v.fields[i].opcode == OP_UINT {
                if let Some(x) = r.read_len() {
                    v.fields[i].value = rdb_len_variant(x, rng);
                }
            }
            "length-encoding"
        }
        _ => {
            if nf > 0 {
                let i = field(rng);
                v.fields[i].value = {
                    let x = interesting_u64(rng, now);
                    uint_encoded(rng, x)
                };
                if rng.percent(50) {
                    v.fields[i].opcode = OP_UINT;
                }
            }
            "extreme-integer"
        }
    }
}

/// One byte-level change of a payload body; its name.
fn mutate_bytes(rng: &mut Rng, body: &mut Vec<u8>, other: &[u8]) -> &'static str {
    if body.is_empty() {
        body.extend(rng.blob(1, 8));
        return "append";
    }
    let pos = |rng: &mut Rng, len: usize| {
        if len > 1 && rng.percent(95) {
            1 + rng.index(len - 1)
        } else {
            rng.index(len)
        }
    };
    match rng.below(7) {
        0 | 1 => {
            for _ in 0..rng.range(1, 8) {
                let p = pos(rng, body.len());
                body[p] ^= 1 << rng.below(8);
            }
            "bit-flip"
        }
        2 => {
            let p = pos(rng, body.len());
            let random = rng.next_u64() as u8;
            body[p] = *rng.pick(&[
                0, 0xff, 0x7f, 0x80, 0x81, 0xc0, 0xc1, 0xc2, 0xc3, 0x05, 0x02, random,
            ]);
            "byte-set"
        }
        3 => {
            let n = rng.index(body.len());
            body.truncate(n);
            "truncate"
        }
        4 => {
            let p = rng.index(body.len() + 1);
            let ins = rng.blob(1, 8);
            body.splice(p..p, ins);
            "insert-bytes"
        }
        5 => {
            let p = pos(rng, body.len());
            let n = (rng.range(1, 8) as usize).min(body.len() - p);
            body.drain(p..p + n);
            "delete-bytes"
        }
        _ => {
            if rng.percent(50) || other.is_empty() {
                body.extend(rng.blob(1, 32));
                "append"
            } else {
                let i = rng.index(body.len());
                let j = rng.index(other.len());
                body.truncate(i);
                body.extend_from_slice(&other[j..]);
                "splice"
            }
        }
    }
}

/// The payload around a body: mostly right, sometimes a wrong CRC, another
/// RDB version or a cut trailer.
fn finish_payload(rng: &mut Rng, body: &[u8], ops: &mut Vec<String>) -> Vec<u8> {
    match rng.below(100) {
        0..=2 => {
            let mut p = dump_payload(body, RDB_VERSION);
            let n = p.len();
            p[n - 1 - rng.index(8)] ^= 1 << rng.below(8);
            ops.push("bad-crc".into());
            p
        }
        3..=4 => {
            ops.push("rdb-version".into());
            dump_payload(body, *rng.pick(&[0, 1, 9, 11, 12, 0xffff]))
        }
        5 => {
            let mut p = dump_payload(body, RDB_VERSION);
            p.truncate(rng.index(p.len().min(12)));
            ops.push("cut-trailer".into());
            p
        }
        _ => dump_payload(body, RDB_VERSION),
    }
}

/// A case whose payload does not name one of Redis's own object types:
/// those test Redis, not the module, and Redis 7.0 itself can hang on them
/// (a set that declares 2^40 members makes it allocate, then walk, a
/// table of that size).
fn gen_case(st: &mut State, n: usize, now: u64) -> Case {
    loop {
        let case = gen_any_case(st, n, now);
        if !matches!(&case.verdict, Verdict::Either(r) if r.starts_with("Redis object type")) {
            return case;
        }
    }
}

fn gen_any_case(st: &mut State, n: usize, now: u64) -> Case {
    let rng = &mut st.rng;
    let mut ops: Vec<String> = Vec::new();
    let (payload, handmade_case) = if rng.percent(20) {
        let (v, how) = if rng.percent(35) {
            handmade_v1(rng, now)
        } else {
            handmade_v2(rng, now)
        };
        let p = if rng.percent(95) {
            v.payload()
        } else {
            let mut body = v.encode();
            if rng.percent(50) {
                ops.push(mutate_bytes(rng, &mut body, &[]).into());
            }
            finish_payload(rng, &body, &mut ops)
        };
        ops.insert(0, how);
        (p, true)
    } else {
        let b = rng.index(st.bases.len());
        let mut v = st.bases[b].clone();
        let rounds = rng.range(1, 3);
        let mut body: Option<Vec<u8>> = None;
        for _ in 0..rounds {
            match body.as_mut() {
                None if rng.percent(65) => ops.push(mutate_value(rng, &mut v, now).into()),
                None => {
                    let mut bytes = v.encode();
                    let other = st.bases[rng.index(st.bases.len())].encode();
                    ops.push(mutate_bytes(rng, &mut bytes, &other).into());
                    body = Some(bytes);
                }
                Some(bytes) => {
                    let other = st.bases[rng.index(st.bases.len())].encode();
                    ops.push(mutate_bytes(rng, bytes, &other).into());
                }
            }
        }
        ops.insert(0, format!("base {b}"));
        let body = body.unwrap_or_else(|| v.encode());
        (finish_payload(rng, &body, &mut ops), false)
    };
    let mode = match rng.below(100) {
        0..=7 if !st.pool.is_empty() => {
            let k = st.pool[rng.index(st.pool.len())].clone();
            // Out of the pool while its case is in flight: a second case of
            // the same batch must not target it (an accepted first one could
            // leave a short holder there, whose expiry would then show up as
            // a change in the second one). A refused replacement puts it back.
            st.pool.retain(|x| x != &k);
            Mode::Replace(k)
        }
        8..=11 => Mode::PastAbsTtl,
        _ => Mode::Fresh,
    };
    let key = match &mode {
        Mode::Replace(k) => k.clone(),
        // Some names are binary (NUL, 0xff): the lease timer must cope.
        _ if rng.percent(10) => {
            let mut k = b"fz:\x00".to_vec();
            k.extend(n.to_string().bytes());
            k.push(0xff);
            k
        }
        _ => format!("fz:{n}").into_bytes(),
    };
    let verdict = restore_verdict(&payload, now);
    Case {
        n,
        key,
        payload,
        how: ops.join("+"),
        handmade: handmade_case,
        mode,
        verdict,
    }
}

// ------------------------------------------------------------------- bases

/// How a base lock is built: (owner, extra acquire options) per grant, in
/// order, all with `ttl`.
struct BaseSpec {
    grants: Vec<(Vec<u8>, Vec<&'static str>)>,
    ttl: u64,
}

fn exclusive(owner: &[u8], holds: usize, ttl: u64) -> BaseSpec {
    BaseSpec {
        grants: vec![(owner.to_vec(), vec![]); holds],
        ttl,
    }
}

fn base_specs() -> Vec<BaseSpec> {
    let mut rng = Rng::new(7);
    let hour = 3_600_000;
    let readers = |n: usize, prefix: &str| -> Vec<(Vec<u8>, Vec<&'static str>)> {
        (0..n)
            .map(|i| (format!("{prefix}{i}").into_bytes(), vec!["SHARED"]))
            .collect()
    };
    let permits = |n: usize, limit: &'static str, count: &'static str| {
        (0..n)
            .map(|i| {
                (
                    format!("permit-{i}").into_bytes(),
                    vec!["LIMIT", limit, "COUNT", count],
                )
            })
            .collect::<Vec<_>>()
    };
    let mut specs = vec![
        exclusive(b"a", 1, hour),
        exclusive(b"worker-1:thread-7", 3, hour),
        exclusive(b"\x00\xff\r\n\x01binary", 1, 600_000),
        exclusive(b"12345", 2, hour),
        exclusive(b"-7", 1, hour),
        exclusive(b"4294967296", 1, hour),
        exclusive(&[b'x'; 1024], 2, hour),
        exclusive(&rng.bytes(1024), 1, hour),
        exclusive(b"abcabcabcabcabcabcabcabc", 4, hour),
        exclusive(b"month", 1, 2_592_000_000),
        exclusive(b"soon", 1, 3000),
        exclusive(b"soon-reentered", 5, 4000),
        // A downgrade: exclusive holds with shared ones.
        BaseSpec {
            grants: vec![
                (b"down".to_vec(), vec![]),
                (b"down".to_vec(), vec![]),
                (b"down".to_vec(), vec!["SHARED"]),
            ],
            ttl: hour,
        },
        // A holder that remembers its request.
        BaseSpec {
            grants: vec![(b"idem".to_vec(), vec!["ID", "request-0001"])],
            ttl: hour,
        },
        BaseSpec {
            grants: {
                let mut g = readers(3, "reader-");
                g.push((b"reader-1".to_vec(), vec!["SHARED"]));
                g.push((b"reader-1".to_vec(), vec!["SHARED", "ID", "r-2"]));
                g
            },
            ttl: hour,
        },
        BaseSpec {
            grants: vec![
                (vec![b'r'; 1024], vec!["SHARED"]),
                (rng.bytes(1024), vec!["SHARED"]),
            ],
            ttl: hour,
        },
        BaseSpec {
            grants: readers(60, "many-readers-"),
            ttl: hour,
        },
        BaseSpec {
            grants: readers(2, "short-reader-"),
            ttl: 3500,
        },
        BaseSpec {
            grants: vec![
                (b"p1".to_vec(), vec!["LIMIT", "5", "COUNT", "2"]),
                (b"p2".to_vec(), vec!["LIMIT", "5", "COUNT", "3"]),
            ],
            ttl: hour,
        },
        BaseSpec {
            grants: vec![(b"big".to_vec(), vec!["LIMIT", "1000000", "COUNT", "999999"])],
            ttl: hour,
        },
        BaseSpec {
            grants: permits(40, "100", "1"),
            ttl: hour,
        },
        BaseSpec {
            grants: vec![
                (b"sp".to_vec(), vec!["LIMIT", "3"]),
                (b"sp".to_vec(), vec!["LIMIT", "3", "ID", "again"]),
            ],
            ttl: 3500,
        },
    ];
    specs.push(BaseSpec {
        grants: permits(3, "3", "1"),
        ttl: hour,
    });
    specs
}

/// Real `DUMP`s of locks of every kind, each checked against the model of
/// the encoding: version 2, and the model reads back what `LOCK.INFO`
/// showed.
fn make_bases(c: &mut RawConn) -> Vec<ModuleValue> {
    let mut bases = Vec::new();
    for (i, spec) in base_specs().iter().enumerate() {
        let key = format!("base:{i}");
        let mut cmds = Vec::new();
        for (owner, opts) in &spec.grants {
            let mut cmd = Cmd::new("LOCK.ACQUIRE")
                .arg(&key)
                .arg(owner)
                .arg(spec.ttl.to_string());
            for o in opts {
                cmd = cmd.arg(o);
            }
            cmds.push(cmd);
        }
        let t_before = now_ms();
        let replies = c.pipeline(&cmds).unwrap();
        for (r, cmd) in replies.iter().zip(&cmds) {
            assert!(r.as_int().is_some(), "{}: {r:?}", cmd.show());
        }
        let info = c.call(&Cmd::new("LOCK.INFO").arg(&key)).unwrap();
        let dump = c.call(&Cmd::new("DUMP").arg(&key)).unwrap();
        let t_after = now_ms();
        let Reply::Bulk(payload) = dump else {
            panic!("DUMP {key}: {dump:?}");
        };
        let value = ModuleValue::parse_payload(&payload).unwrap_or_else(|| {
            panic!(
                "the DUMP of a lock is not a module value with opcodes: {}",
                hex(&payload, 200)
            )
        });
        assert_eq!(
            value.encver(),
            Some(ENCVER),
            "{key} is dumped in encoding 2"
        );
        let fields = LockFields::from_value(&value)
            .unwrap_or_else(|| panic!("{key}: not the layout of encoding 2: {value:?}"));
        let info = parse_lock_info(&info)
            .unwrap()
            .expect("a base lock is held");
        assert_eq!(
            info_matches(Some(&info), &fields, t_before, t_after),
            Ok(()),
            "the DUMP of {key} holds what LOCK.INFO shows"
        );
        match restore_verdict(&payload, t_before) {
            Verdict::Accept(f) => assert_eq!(f, fields, "{key}"),
            other => panic!("the model refuses the real DUMP of {key}: {other:?}"),
        }
        bases.push(value);
        c.call(&Cmd::new("DEL").arg(&key)).unwrap();
    }
    bases
}

// ------------------------------------------------------------------ checks

fn cmds_for(case: &Case) -> Vec<Cmd> {
    vec![
        Cmd::new("EXISTS").arg(&case.key),
        Cmd::new("DEBUG").arg("DIGEST-VALUE").arg(&case.key),
        case.restore(),
        Cmd::new("EXISTS").arg(&case.key),
        Cmd::new("TYPE").arg(&case.key),
        Cmd::new("LOCK.INFO").arg(&case.key),
        Cmd::new("DEBUG").arg("DIGEST-VALUE").arg(&case.key),
        Cmd::new("LOCK.ACQUIRE")
            .arg(format!("probe:{}", case.n))
            .arg("prober")
            .arg("60000"),
        Cmd::new("DEL").arg(format!("probe:{}", case.n)),
    ]
}
const CMDS_PER_CASE: usize = 9;

/// Checks the replies of one case; updates the state.
fn check_case(st: &mut State, case: &Case, r: &[Reply], t_before: u64, t_after: u64) {
    st.counts.run += 1;
    if case.handmade {
        st.counts.handmade += 1;
    }
    match case.verdict {
        Verdict::Accept(_) => st.counts.rules_accept += 1,
        Verdict::Refuse(_) => st.counts.rules_refuse += 1,
        Verdict::Either(_) => st.counts.rules_either += 1,
    }
    let (pre_exists, pre_digest, restore, exists, typ, info, digest, probe) =
        (&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6], &r[7]);
    let accepted = match restore {
        Reply::Status(s) if s == "OK" => true,
        Reply::Error(e) => {
            if !has_error_code(e) {
                st.violation(
                    case,
                    format!("error reply without an uppercase code: {e:?}"),
                );
            }
            false
        }
        other => {
            st.violation(case, format!("RESTORE answered {other:?}"));
            return;
        }
    };
    match (&case.verdict, accepted) {
        (Verdict::Refuse(why), true) => st.violation(
            case,
            format!("RESTORE accepted a payload the rules refuse ({why})"),
        ),
        (Verdict::Accept(_), false) => st.violation(
            case,
            format!("RESTORE refused a payload the rules accept: {restore:?}"),
        ),
        _ => {}
    }
    if !accepted {
        st.counts.refused += 1;
        if exists != pre_exists || digest != pre_digest {
            st.violation(
                case,
                format!(
                    "a refused RESTORE changed the key: EXISTS {pre_exists:?} -> {exists:?}, digest {pre_digest:?} -> {digest:?}"
                ),
            );
        } else if matches!(case.mode, Mode::Replace(_)) {
            st.counts.replace_refused_kept_old += 1;
        }
        if let Mode::Replace(k) = &case.mode {
            // Still the old pool lock (or, if it changed, reported above).
            if st.pool_info.contains_key(k) && !st.pool.contains(k) {
                st.pool.push_back(k.clone());
            }
        }
    } else {
        // A refused replacement keeps its pool entry; an accepted one does not.
        if let Mode::Replace(k) = &case.mode {
            st.forget(k);
        }
        if let Verdict::Accept(f) = &case.verdict {
            st.max_token = st.max_token.max(f.max_token() as i64);
            if ModuleValue::parse_payload(&case.payload).and_then(|v| v.encver()) == Some(ENCVER_V1)
            {
                st.counts.accepted_v1 += 1;
            }
        }
        check_accepted(st, case, exists, typ, info, t_before, t_after);
    }
    // The fresh grant right after.
    match probe {
        Reply::Int(t) if *t > st.max_token => st.max_token = *t,
        Reply::Int(t) => st.violation(
            case,
            format!(
                "a fresh grant got token {t:#x}, not above the highest token seen {:#x}",
                st.max_token
            ),
        ),
        other => st.violation(case, format!("a fresh grant answered {other:?}")),
    }
}

fn check_accepted(
    st: &mut State,
    case: &Case,
    exists: &Reply,
    typ: &Reply,
    info: &Reply,
    t_before: u64,
    t_after: u64,
) {
    if matches!(case.mode, Mode::PastAbsTtl) {
        st.counts.accepted_discarded_by_abs_ttl += 1;
        if exists != &Reply::Int(0) {
            st.violation(
                case,
                format!("RESTORE ... ABSTTL in the past stored the key: EXISTS {exists:?}"),
            );
        }
        return;
    }
    let typ = typ.as_text();
    let expected = match &case.verdict {
        Verdict::Accept(f) => Some(f),
        _ => None,
    };
    if typ == "none" {
        // Gone already: only a lock whose deadlines had all passed may be.
        st.counts.accepted_expired_at_once += 1;
        if let Some(f) = expected {
            if f.holders.iter().any(|h| h.deadline_ms > t_after) {
                st.violation(
                    case,
                    "an accepted lock with a future deadline was not stored".into(),
                );
            }
        }
        return;
    }
    if typ != "fencelock" {
        st.counts.accepted_other_type += 1;
        if expected.is_some() {
            st.violation(
                case,
                format!("an accepted lock payload stored a key of type {typ:?}"),
            );
        }
        return;
    }
    let i = match parse_lock_info(info) {
        Err(e) => {
            st.violation(case, format!("LOCK.INFO of a restored lock: {e}"));
            return;
        }
        Ok(i) => i,
    };
    if let Some(f) = expected {
        if let Err(e) = info_matches(i.as_ref(), f, t_before, t_after) {
            st.violation(case, format!("restored as {i:?}, but {e}"));
        }
    }
    let Some(i) = i else {
        st.counts.accepted_expired_at_once += 1;
        st.vanish
            .insert(case.key.clone(), Instant::now() + VANISH_SLACK);
        return;
    };
    st.counts.accepted_shown += 1;
    st.counts.shown_by_mode[match i.mode {
        InfoMode::Exclusive => 0,
        InfoMode::Shared => 1,
        InfoMode::Semaphore => 2,
    }] += 1;
    if i.holders.len() > 1 {
        st.counts.shown_multi_holder += 1;
    }
    for v in lock_info_violations(&i, MAX_TOKEN) {
        st.violation(
            case,
            format!("a restored lock breaks the rules: {v} ({i:?})"),
        );
    }
    if let Some(t) = i.holders.iter().map(|h| h.token).max() {
        st.max_token = st.max_token.max(t);
    }
    let until = |ttl: i64| Instant::now() + Duration::from_millis(ttl.max(0) as u64) + VANISH_SLACK;
    let short: Vec<_> = i.holders.iter().filter(|h| h.ttl <= SHORT_TTL_MS).collect();
    if short.len() == i.holders.len() {
        let longest = short.iter().map(|h| h.ttl).max().unwrap_or(0);
        st.vanish.insert(case.key.clone(), until(longest));
    } else {
        for h in short {
            st.shed
                .insert((case.key.clone(), h.owner.clone()), until(h.ttl));
        }
        // A pool lock must not change by itself: besides what is shown, the
        // value holds no holder whose lease ended (the expiry timer removes
        // those a moment later).
        let stable = expected.is_some_and(|f| f.holders.len() == i.holders.len());
        if stable && i.holders.iter().all(|h| h.ttl >= LONG_TTL_MS) {
            st.pool.push_back(case.key.clone());
            st.pool_info.insert(case.key.clone(), pool_lock(&i));
        }
    }
}

fn pool_lock(i: &RawLockInfo) -> PoolLock {
    PoolLock {
        mode: i.mode,
        limit: i.limit.unwrap_or(0),
        available: i.available.unwrap_or(0),
        holders: i.summary(),
    }
}

/// The holders of some pool locks use them: a request of the wrong kind
/// (or an upgrade) is refused with its documented error and changes
/// nothing; a re-entry keeps the token and adds one hold or permit; a
/// release takes it back.
fn reentries(st: &mut State, c: &mut RawConn) -> io::Result<()> {
    let keys: Vec<Vec<u8>> = st
        .pool
        .iter()
        .filter(|_| st.rng.percent(10))
        .take(10)
        .cloned()
        .collect();
    let mut plan = Vec::new();
    let mut cmds = Vec::new();
    for k in &keys {
        let p = st.pool_info[k].clone();
        let j = st.rng.index(p.holders.len());
        let owner = p.holders[j].0.clone();
        let acquire = || Cmd::new("LOCK.ACQUIRE").arg(k).arg(&owner).arg("3600000");
        let limit = p.limit.to_string();
        let (wrong, wrong_reply, reenter) = match p.mode {
            InfoMode::Exclusive => (
                acquire().arg("LIMIT").arg("2"),
                ERR_NOT_SEMAPHORE.to_string(),
                acquire(),
            ),
            InfoMode::Shared => (acquire(), ERR_UPGRADE.to_string(), acquire().arg("SHARED")),
            InfoMode::Semaphore => (
                acquire().arg("SHARED"),
                err_semaphore(p.limit as u64),
                acquire().arg("LIMIT").arg(&limit).arg("COUNT").arg("1"),
            ),
        };
        // A full semaphore would answer nil, and the release then take one
        // of the owner's permits: only the refusal is tried there.
        let use_it = p.mode != InfoMode::Semaphore || p.available >= 1;
        cmds.push(wrong);
        cmds.push(Cmd::new("LOCK.INFO").arg(k));
        if use_it {
            cmds.push(reenter);
            cmds.push(Cmd::new("LOCK.INFO").arg(k));
            cmds.push(Cmd::new("LOCK.RELEASE").arg(k).arg(&owner));
            cmds.push(Cmd::new("LOCK.INFO").arg(k));
        }
        plan.push((k.clone(), p, j, wrong_reply, use_it));
    }
    if cmds.is_empty() {
        return Ok(());
    }
    let r = c.pipeline(&cmds)?;
    let mut at = 0;
    for (k, p, j, wrong_reply, use_it) in plan {
        let n = if use_it { 6 } else { 2 };
        let got = &r[at..at + n];
        at += n;
        st.counts.reentries += usize::from(use_it);
        st.counts.kind_refusals += 1;
        let (owner, holds, token) = p.holders[j].clone();
        let mut bad = Vec::new();
        let infos: Vec<Result<Option<RawLockInfo>, String>> =
            got.iter().skip(1).step_by(2).map(parse_lock_info).collect();
        for i in &infos {
            match i {
                Ok(Some(i)) => {
                    for v in lock_info_violations(i, MAX_TOKEN) {
                        bad.push(format!("after use: {v}"));
                    }
                }
                other => bad.push(format!("LOCK.INFO after use: {other:?}")),
            }
        }
        let summary = |i: &Result<Option<RawLockInfo>, String>| match i {
            Ok(Some(i)) => Some(i.summary()),
            _ => None,
        };
        if got[0] != Reply::Error(wrong_reply.clone()) {
            bad.push(format!(
                "a request of the wrong kind answered {:?}, not {wrong_reply:?}",
                got[0]
            ));
        }
        if summary(&infos[0]).as_ref() != Some(&p.holders) {
            bad.push(format!(
                "a refused request changed the lock: {:?}",
                infos[0]
            ));
        }
        if use_it {
            let (reenter, release) = (&got[2], &got[4]);
            if reenter != &Reply::Int(token) {
                bad.push(format!(
                    "a re-entry answered {reenter:?}, not the token {token:#x}"
                ));
            }
            if holds < i64::MAX - 1 {
                let mut more = p.holders.clone();
                more[j].1 += 1;
                if summary(&infos[1]).as_ref() != Some(&more) {
                    bad.push(format!("after the re-entry: {:?}", infos[1]));
                }
                if release != &Reply::Int(holds) {
                    bad.push(format!("the release after it answered {release:?}"));
                }
                if summary(&infos[2]).as_ref() != Some(&p.holders) {
                    bad.push(format!("after the release: {:?}", infos[2]));
                }
            }
        }
        if let Some(Ok(Some(last))) = infos.last() {
            if last.holders.iter().all(|h| h.ttl >= LONG_TTL_MS - 600_000) {
                st.pool_info.insert(k.clone(), pool_lock(last));
            } else {
                st.forget(&k);
            }
        }
        for b in bad {
            st.report(format!(
                "{b}\n    pool lock {:?} ({:?}, owner {}, holds {holds}): {:?}",
                String::from_utf8_lossy(&k),
                p.mode,
                hex(&owner, 40),
                p.holders
                    .iter()
                    .map(|(o, h, t)| (hex(o, 16), *h, *t))
                    .collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

/// `INFO lock` `lock_held` equals the number of keys of type fencelock
/// (retried while leases are expiring in between).
fn lock_count_matches(c: &mut RawConn) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..400 {
        let r = c
            .pipeline(&[
                Cmd::new("INFO").arg("lock"),
                Cmd::new("SCAN")
                    .arg("0")
                    .arg("TYPE")
                    .arg("fencelock")
                    .arg("COUNT")
                    .arg("100000000"),
                Cmd::new("INFO").arg("lock"),
            ])
            .map_err(|e| format!("server gone: {e}"))?;
        let h1 = info_value(&r[0], "lock_held");
        let h2 = info_value(&r[2], "lock_held");
        let scanned = match &r[1] {
            Reply::Array(a) if a.len() == 2 && a[0].as_text() == "0" => match &a[1] {
                Reply::Array(keys) => Some(keys.len() as i64),
                _ => None,
            },
            _ => None,
        };
        if h1.is_some() && h1 == h2 && h1 == scanned {
            return Ok(());
        }
        last = format!("lock_held {h1:?} / {h2:?}, keys of type fencelock {scanned:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!("INFO lock disagrees with the keyspace: {last}"))
}

/// Waits until every key that must vanish is gone and every holder that
/// must leave is no longer shown.
fn wait_for_expiries(st: &mut State, c: &mut RawConn) {
    let mut keys: Vec<(Vec<u8>, Instant)> =
        st.vanish.iter().map(|(k, t)| (k.clone(), *t)).collect();
    let mut holders: Vec<(KeyOwner, Instant)> =
        st.shed.iter().map(|(k, t)| (k.clone(), *t)).collect();
    while !keys.is_empty() || !holders.is_empty() {
        let mut cmds: Vec<Cmd> = keys
            .iter()
            .map(|(k, _)| Cmd::new("EXISTS").arg(k))
            .collect();
        cmds.extend(
            holders
                .iter()
                .map(|((k, _), _)| Cmd::new("LOCK.INFO").arg(k)),
        );
        let r = c.pipeline(&cmds).unwrap();
        let (rk, rh) = r.split_at(keys.len());
        let now = Instant::now();
        let mut still = Vec::new();
        for ((k, until), e) in keys.into_iter().zip(rk) {
            if e == &Reply::Int(0) {
                continue;
            }
            if now > until {
                let info = c.call(&Cmd::new("LOCK.INFO").arg(&k)).unwrap();
                st.report(format!(
                    "restored lock {:?} still exists long after its deadlines: LOCK.INFO {info:?}",
                    String::from_utf8_lossy(&k)
                ));
            } else {
                still.push((k, until));
            }
        }
        keys = still;
        let mut still = Vec::new();
        for (((k, owner), until), info) in holders.into_iter().zip(rh) {
            let shown = match parse_lock_info(info) {
                Ok(Some(i)) => i.holder(&owner).is_some(),
                _ => false,
            };
            if !shown {
                continue;
            }
            if now > until {
                st.report(format!(
                    "holder {} of restored lock {:?} is still shown long after its deadline: {info:?}",
                    hex(&owner, 40),
                    String::from_utf8_lossy(&k)
                ));
            } else {
                still.push(((k, owner), until));
            }
        }
        holders = still;
        if !keys.is_empty() || !holders.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Replays a batch one payload at a time on a new server to find the one
/// that stopped the server.
fn locate_crash(cases: &[Case]) -> String {
    let s = fuzz_server();
    for case in cases {
        let Ok(mut c) = RawConn::connect(s.port) else {
            return "could not reconnect to replay".into();
        };
        let _ = c.call(&case.restore());
        if !matches!(c.call(&Cmd::new("PING")), Ok(Reply::Status(_))) {
            return format!(
                "replayed one by one, the server stopped right after this payload (or at the lease timer of a lock restored before it):\n  {}\n--- log of the replay server:\n{}",
                case.describe(),
                log_excerpt(&s.log())
            );
        }
    }
    "replaying the batch one by one did not stop a new server (state-dependent)".into()
}

/// The server the fuzzer runs against (Redis checks its own types' dumps
/// deeply, so a changed type byte tests Redis, not a Redis bug).
fn fuzz_server() -> Server {
    Server::config().arg("sanitize-dump-payload", "yes").start()
}

#[test]
fn mutated_restore_payloads_never_crash_and_refused_ones_store_nothing() {
    let seed = testkit::hostile::fuzz_seed(DEFAULT_SEED);
    let count = testkit::hostile::env_u64("FENCELOCK_FUZZ_COUNT", 10_000) as usize;
    // FENCELOCK_FUZZ_KEEP_GOING=1: after a crash, note it, start a new
    // server and go on (to list every crashing payload at once).
    let keep_going = testkit::hostile::env_u64("FENCELOCK_FUZZ_KEEP_GOING", 0) != 0;
    let mut s = fuzz_server();
    let mut c = RawConn::connect(s.port).unwrap();
    let mut crashes: Vec<String> = Vec::new();
    let mut budget = TimeBudget::start();
    let bases = make_bases(&mut c);
    let mut st = State {
        rng: Rng::new(seed),
        bases,
        counts: Counts::default(),
        violations: Vec::new(),
        max_token: 0,
        pool: VecDeque::new(),
        pool_info: BTreeMap::new(),
        vanish: BTreeMap::new(),
        shed: BTreeMap::new(),
    };
    let mut n = 0;
    while n < count {
        if budget.spent(n, count, "payloads") {
            break;
        }
        let now = now_ms();
        let batch: Vec<Case> = (n..(n + BATCH).min(count))
            .map(|i| gen_case(&mut st, i, now))
            .collect();
        let cmds: Vec<Cmd> = batch.iter().flat_map(cmds_for).collect();
        let t_before = now_ms();
        let replies = c.pipeline(&cmds);
        let t_after = now_ms();
        let replies = match replies {
            Ok(r) => r,
            Err(e) => {
                let text = format!(
                    "the server stopped answering ({e}) during payloads {}..{} (seed {seed:#x}).\n{}\n--- server log:\n{}",
                    n,
                    n + batch.len(),
                    locate_crash(&batch),
                    log_excerpt(&s.log())
                );
                if !keep_going || crashes.len() >= 20 {
                    panic!("{text}");
                }
                eprintln!("CRASH: {text}");
                crashes.push(text);
                // Locks, pool and tokens lived in the dead server.
                s = fuzz_server();
                c = RawConn::connect(s.port).unwrap();
                st.pool.clear();
                st.pool_info.clear();
                st.vanish.clear();
                st.shed.clear();
                st.max_token = 0;
                n += batch.len();
                continue;
            }
        };
        for (case, r) in batch.iter().zip(replies.chunks(CMDS_PER_CASE)) {
            check_case(&mut st, case, r, t_before, t_after);
        }
        n += batch.len();
        if let Err(e) = reentries(&mut st, &mut c) {
            panic!(
                "the server stopped answering during re-entries ({e})\n{}",
                log_excerpt(&s.log())
            );
        }
        // Keep the pool bounded.
        let mut dels = Vec::new();
        while st.pool.len() > POOL {
            let k = st.pool.pop_front().unwrap();
            st.forget(&k);
            dels.push(Cmd::new("DEL").arg(k));
        }
        dels.push(Cmd::new("PING"));
        match c.pipeline(&dels) {
            Ok(r) if r.last() == Some(&Reply::Status("PONG".into())) => {}
            other => panic!(
                "PING after payloads ..{n}: {other:?}\n{}",
                log_excerpt(&s.log())
            ),
        }
        if n % (BATCH * 10) == 0 || n >= count {
            if let Err(e) = lock_count_matches(&mut c) {
                st.violations.push(format!("after payload {n}: {e}"));
            }
        }
    }
    let fuzz_time = budget.started.elapsed();

    // Holders with short or past deadlines disappear on their own.
    wait_for_expiries(&mut st, &mut c);
    if let Err(e) = lock_count_matches(&mut c) {
        st.violations.push(format!("at the end: {e}"));
    }
    let last = c
        .call(
            &Cmd::new("LOCK.ACQUIRE")
                .arg("probe:last")
                .arg("p")
                .arg("1000"),
        )
        .unwrap();
    match last.as_int() {
        Some(t) if t > st.max_token => {}
        _ => st.violations.push(format!(
            "the last fresh grant {last:?} is not above the highest token seen {:#x}",
            st.max_token
        )),
    }
    assert_eq!(
        c.call(&Cmd::new("PING")).unwrap(),
        Reply::Status("PONG".into())
    );
    let signs = testkit::hostile::crash_signs(&s.log());
    if !signs.is_empty() {
        st.violations
            .push(format!("crash signatures in the server log: {signs:?}"));
    }

    let k = &st.counts;
    println!(
        "RESTORE fuzz (seed {seed:#x}): {} payloads ({} hand-built) in {:.1} s (+{:.1} s waiting for expiries)\n  \
         refused {} | accepted {} = shown {} + expired at once {} + dropped by a past ABSTTL {} + other Redis types {}\n  \
         shown: exclusive {}, shared {}, semaphore {}; with several holders {}; accepted of encoding 1: {}\n  \
         rules said: accept {}, refuse {}, either {}; refused REPLACE kept the old lock {} times; \
         wrong-kind refusals {}, re-entry checks {}",
        k.run,
        k.handmade,
        fuzz_time.as_secs_f64(),
        (budget.started.elapsed() - fuzz_time).as_secs_f64(),
        k.refused,
        k.accepted_shown + k.accepted_expired_at_once + k.accepted_discarded_by_abs_ttl + k.accepted_other_type,
        k.accepted_shown,
        k.accepted_expired_at_once,
        k.accepted_discarded_by_abs_ttl,
        k.accepted_other_type,
        k.shown_by_mode[0],
        k.shown_by_mode[1],
        k.shown_by_mode[2],
        k.shown_multi_holder,
        k.accepted_v1,
        k.rules_accept,
        k.rules_refuse,
        k.rules_either,
        k.replace_refused_kept_old,
        k.kind_refusals,
        k.reentries
    );
    assert!(
        crashes.is_empty(),
        "{} crashes (seed {seed:#x}):\n{}",
        crashes.len(),
        crashes.join("\n\n")
    );
    assert!(
        st.violations.is_empty(),
        "{} rule violations (seed {seed:#x}), by kind:\n{}\nthe first ones:\n{}",
        st.violations.len(),
        testkit::hostile::violation_kinds(&st.violations),
        st.violations
            .iter()
            .take(MAX_REPORTED)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(k.refused > 0, "no payload was refused");
    assert!(
        k.shown_by_mode.iter().all(|&n| n > 0),
        "every kind was restored and shown: {:?}",
        k.shown_by_mode
    );
    assert!(k.shown_multi_holder > 0 && k.accepted_v1 > 0);
    if !budget.cut_short {
        assert_eq!(k.run, count, "every payload was run");
        assert!(k.run >= 10_000 || count < 10_000);
    }
}
