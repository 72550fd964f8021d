//! Issue #9, `RESTORE`: no payload can crash the server or make a fencing
//! token repeat.
//!
//! Starting from real `DUMP`s of locks (short, binary, integer-looking,
//! compressible and incompressible 1024-byte owners, holds > 1 by
//! re-entry, short and long leases) and from hand-built values, the fuzzer
//! sends ≥ 10,000 payloads with a correct CRC64 (and some with a wrong
//! one): bit flips, byte changes, truncations, inserted and extra bytes,
//! extra, duplicated, dropped and swapped fields, huge string lengths,
//! extreme integers, wrong opcodes, other module ids and encoding
//! versions, other type bytes (the pre-release module framing without
//! opcodes, unknown types; never one of Redis's own types, which would
//! test Redis — it can hang on some), other RDB versions, non-minimal
//! length encodings, binary key names (the lease timer must cope). Each
//! payload is also judged by a model of how Redis 7.0 and
//! the module rules read it (`hostile::restore_verdict`): a payload the
//! rules accept must be stored, one they refuse must get an error reply.
//!
//! For every payload: the server answers; a refused payload stores nothing
//! (and a refused `RESTORE ... REPLACE` leaves the old lock as it was); a
//! stored one is a lock that obeys the rules (owner 1..=1024 bytes, holds
//! ≥ 1, ttl ≤ 31 days, token ≤ 0x7000_0000_0000_0000) and the token of a
//! fresh grant made right after is above every token seen so far; `INFO
//! lock` `lock_held` equals the number of lock keys; locks with short or
//! past deadlines disappear on their own.
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
    dump_payload, fencelock_type_id, has_error_code, hex, info_value, lock_info_violations,
    log_excerpt, module_type_id, now_ms, parse_lock_info, rdb_int_str, rdb_len, rdb_len_variant,
    rdb_lzf_literal_str, rdb_str, restore_verdict, Cmd, LockFields, ModuleValue, RawConn, RawField,
    RdbReader, Reply, Rng, TimeBudget, Verdict, DAY_MS, MAX_TOKEN, OP_DOUBLE, OP_FLOAT, OP_SINT,
    OP_STRING, OP_UINT, RDB_VERSION, TYPE_MODULE_1,
};
use testkit::Server;

const DEFAULT_SEED: u64 = 0x5eed_f00d_0009;
const BATCH: usize = 50;
/// Live locks kept as `REPLACE` targets and for re-entry checks.
const POOL: usize = 200;
/// A restored lock with at most this ttl must be seen to disappear.
const SHORT_TTL_MS: i64 = 20_000;
/// How long after its deadline a lock may still be seen (a slow machine).
const VANISH_SLACK: Duration = Duration::from_secs(60);
const MAX_REPORTED: usize = 40;

/// A real `DUMP` of a lock.
struct Base {
    value: ModuleValue,
}

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
        format!(
            "case {} ({}; {:?}; rules: {:?}) RESTORE {:?} payload {}",
            self.n,
            self.how,
            self.mode,
            self.verdict,
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
    rules_accept: usize,
    rules_refuse: usize,
    rules_either: usize,
}

/// Everything the fuzzer tracks between batches.
struct State {
    rng: Rng,
    bases: Vec<Base>,
    counts: Counts,
    violations: Vec<String>,
    /// The highest token granted or accepted so far.
    max_token: i64,
    /// Live long-lease locks: key → (owner, holds, token).
    pool: VecDeque<Vec<u8>>,
    pool_info: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)>,
    /// Locks that must disappear: key → latest time they may still exist.
    vanish: BTreeMap<Vec<u8>, Instant>,
}

impl State {
    fn violation(&mut self, case: &Case, what: String) {
        let text = format!("{what}\n    {}", case.describe());
        if self.violations.len() < MAX_REPORTED {
            eprintln!("VIOLATION: {text}");
        }
        self.violations.push(text);
    }
}

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
        i64::MAX as u64 - 1,
        i64::MAX as u64,
        i64::MAX as u64 + 1,
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

fn interesting_u64(rng: &mut Rng, now: u64) -> u64 {
    match rng.below(4) {
        0 => holds_value(rng),
        1 => token_value(rng, now),
        2 => deadline_value(rng, now),
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

/// An owner string in one of the encodings Redis reads.
fn encode_owner(rng: &mut Rng, owner: &[u8]) -> Vec<u8> {
    match rng.below(10) {
        0 => rdb_int_str(owner).unwrap_or_else(|| rdb_str(owner)),
        1 => rdb_lzf_literal_str(owner),
        2 => {
            // An LZF header with garbage inside.
            let mut v = vec![0xc3];
            let clen = 1 + rng.index(40);
            v.extend(rdb_len(clen as u64));
            v.extend(rdb_len(owner.len() as u64));
            v.extend(rng.bytes(clen));
            v
        }
        _ => rdb_str(owner),
    }
}

fn uint_encoded(rng: &mut Rng, v: u64) -> Vec<u8> {
    if rng.percent(80) {
        rdb_len(v)
    } else {
        rdb_len_variant(v, rng)
    }
}

/// A value built from chosen fields.
fn handmade(rng: &mut Rng, now: u64) -> (ModuleValue, String) {
    let owner = interesting_owner(rng);
    let holds = holds_value(rng);
    let token = token_value(rng, now);
    let deadline = deadline_value(rng, now);
    let mut v = ModuleValue::lock(&owner, holds, token, deadline);
    v.fields[0].value = encode_owner(rng, &owner);
    for (i, x) in [(1, holds), (2, token), (3, deadline)] {
        v.fields[i].value = uint_encoded(rng, x);
    }
    let how = format!(
        "handmade owner {} bytes, holds {holds}, token {token:#x}, deadline {}",
        owner.len(),
        deadline as i128 - now as i128
    );
    (v, how)
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
    let nf = v.fields.len();
    let field = |rng: &mut Rng| rng.index(nf.max(1));
    match rng.below(17) {
        0 if nf > 0 => {
            let owner = interesting_owner(rng);
            let i = v
                .fields
                .iter()
                .position(|f| f.opcode == OP_STRING)
                .unwrap_or(0);
            v.fields[i].value = encode_owner(rng, &owner);
            "owner"
        }
        1 if nf > 1 => {
            v.fields[1].value = {
                let x = holds_value(rng);
                uint_encoded(rng, x)
            };
            "holds"
        }
        2 if nf > 2 => {
            v.fields[2].value = {
                let x = token_value(rng, now);
                uint_encoded(rng, x)
            };
            "token"
        }
        3 if nf > 3 => {
            v.fields[3].value = {
                let x = deadline_value(rng, now);
                uint_encoded(rng, x)
            };
            "deadline"
        }
        4 if nf > 3 => {
            v.fields[3].value = rdb_len(now + rng.range(200, 4000));
            "deadline-short"
        }
        5 if nf > 3 => {
            v.fields[3].value = rdb_len(*rng.pick(&[1, now - DAY_MS, now - 10_000]));
            "deadline-past"
        }
        6 if nf > 0 => {
            let i = v
                .fields
                .iter()
                .position(|f| f.opcode == OP_STRING)
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
            v.module_id = match rng.below(9) {
                0 => rdb_len(id & !1023),
                1 => rdb_len((id & !1023) | 2),
                2 => rdb_len(id | 1023),
                3 => rdb_len(module_type_id("fencelocl", 1)),
                4 => rdb_len(module_type_id("otherlock", 1)),
                5 => rdb_len(rng.next_u64()),
                6 => vec![0x81, 0x01, 0x02],
                7 => rdb_len(id ^ (1 << (10 + rng.below(54)))),
                _ => rdb_len_variant(id, rng),
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
        let (v, how) = handmade(rng, now);
        let p = if rng.percent(97) {
            v.payload()
        } else {
            finish_payload(rng, &v.encode(), &mut ops)
        };
        ops.insert(0, how);
        (p, true)
    } else {
        let b = rng.index(st.bases.len());
        let mut v = st.bases[b].value.clone();
        let rounds = rng.range(1, 3);
        let mut body: Option<Vec<u8>> = None;
        for _ in 0..rounds {
            match body.as_mut() {
                None if rng.percent(65) => ops.push(mutate_value(rng, &mut v, now).into()),
                None => {
                    let mut bytes = v.encode();
                    let other = st.bases[rng.index(st.bases.len())].value.encode();
                    ops.push(mutate_bytes(rng, &mut bytes, &other).into());
                    body = Some(bytes);
                }
                Some(bytes) => {
                    let other = st.bases[rng.index(st.bases.len())].value.encode();
                    ops.push(mutate_bytes(rng, bytes, &other).into());
                }
            }
        }
        let body = body.unwrap_or_else(|| v.encode());
        (finish_payload(rng, &body, &mut ops), false)
    };
    let mode = match rng.below(100) {
        0..=5 if !st.pool.is_empty() => {
            let k = st.pool[rng.index(st.pool.len())].clone();
            Mode::Replace(k)
        }
        6..=9 => Mode::PastAbsTtl,
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

/// Real `DUMP`s of locks, checked against the model of the encoding.
fn make_bases(c: &mut RawConn) -> Vec<Base> {
    let mut rng = Rng::new(7);
    let specs: Vec<(Vec<u8>, u64, u64)> = vec![
        (b"a".to_vec(), 1, 3_600_000),
        (b"worker-1:thread-7".to_vec(), 3, 3_600_000),
        (b"\x00\xff\r\n\x01binary".to_vec(), 1, 600_000),
        (b"12345".to_vec(), 2, 3_600_000),
        (b"-7".to_vec(), 1, 3_600_000),
        (b"4294967296".to_vec(), 1, 3_600_000),
        (vec![b'x'; 1024], 2, 3_600_000),
        (rng.bytes(1024), 1, 3_600_000),
        (b"abcabcabcabcabcabcabcabc".to_vec(), 4, 3_600_000),
        (b"month".to_vec(), 1, 2_592_000_000),
        (b"soon".to_vec(), 1, 3000),
        (b"soon-reentered".to_vec(), 5, 4000),
    ];
    let mut bases = Vec::new();
    for (i, (owner, holds, ttl)) in specs.iter().enumerate() {
        let key = format!("base:{i}");
        let mut token = None;
        for _ in 0..*holds {
            let r = c
                .call(
                    &Cmd::new("LOCK.ACQUIRE")
                        .arg(&key)
                        .arg(owner)
                        .arg(ttl.to_string()),
                )
                .unwrap();
            let t = r.as_int().unwrap_or_else(|| panic!("acquire {key}: {r:?}"));
            assert!(
                token.is_none() || token == Some(t),
                "re-entry keeps the token"
            );
            token = Some(t);
        }
        let t_before = now_ms();
        let dump = c.call(&Cmd::new("DUMP").arg(&key)).unwrap();
        let Reply::Bulk(payload) = dump else {
            panic!("DUMP {key}: {dump:?}");
        };
        let value = ModuleValue::parse_payload(&payload).unwrap_or_else(|| {
            panic!(
                "the DUMP of a lock is not a module value with opcodes: {}",
                hex(&payload, 200)
            )
        });
        let ops: Vec<u64> = value.fields.iter().map(|f| f.opcode).collect();
        assert_eq!(
            ops,
            [OP_STRING, OP_UINT, OP_UINT, OP_UINT],
            "a lock is saved as owner, holds, token, deadline"
        );
        assert_eq!(
            RdbReader::new(&value.module_id).read_len(),
            Some(fencelock_type_id()),
            "type fencelock, encoding version 1"
        );
        match restore_verdict(&payload, t_before) {
            Verdict::Accept(LockFields {
                owner: o,
                holds: h,
                token: tk,
                deadline_ms,
            }) => {
                assert_eq!(&o, owner, "owner of {key}");
                assert_eq!(h, *holds, "holds of {key}");
                assert_eq!(Some(tk as i64), token, "token of {key}");
                assert!(deadline_ms <= now_ms() + ttl && deadline_ms + 60_000 >= t_before + ttl);
            }
            other => panic!("the model refuses the real DUMP of {key}: {other:?}"),
        }
        bases.push(Base { value });
        c.call(&Cmd::new("DEL").arg(&key)).unwrap();
    }
    bases
}

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
    } else {
        // A refused replacement keeps its pool entry; an accepted one does not.
        if let Mode::Replace(k) = &case.mode {
            st.pool.retain(|x| x != k);
            st.pool_info.remove(k);
            st.vanish.remove(k);
        }
        if let Verdict::Accept(f) = &case.verdict {
            st.max_token = st.max_token.max(f.token as i64);
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
    if typ == "none" {
        // Gone already: only a lock whose deadline had passed may be.
        st.counts.accepted_expired_at_once += 1;
        if let Verdict::Accept(f) = &case.verdict {
            if f.deadline_ms > t_after {
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
        if matches!(case.verdict, Verdict::Accept(_)) {
            st.violation(
                case,
                format!("an accepted lock payload stored a key of type {typ:?}"),
            );
        }
        return;
    }
    let expected = match &case.verdict {
        Verdict::Accept(f) => Some(f.clone()),
        _ => None,
    };
    match parse_lock_info(info) {
        Err(e) => st.violation(case, format!("LOCK.INFO of a restored lock: {e}")),
        Ok(None) => {
            st.counts.accepted_expired_at_once += 1;
            if let Some(f) = &expected {
                if f.deadline_ms > t_after {
                    st.violation(
                        case,
                        format!(
                            "a restored lock with a deadline {} ms ahead is not shown",
                            f.deadline_ms - t_after
                        ),
                    );
                }
            }
            st.vanish
                .insert(case.key.clone(), Instant::now() + VANISH_SLACK);
        }
        Ok(Some(i)) => {
            st.counts.accepted_shown += 1;
            for v in lock_info_violations(&i, MAX_TOKEN) {
                st.violation(
                    case,
                    format!("a restored lock breaks the rules: {v} ({i:?})"),
                );
            }
            if i.waiters != 0 {
                st.violation(case, format!("a restored lock has waiters: {i:?}"));
            }
            if let Some(f) = &expected {
                if i.owner != f.owner || i.holds as u64 != f.holds || i.token as u64 != f.token {
                    st.violation(case, format!("restored as {i:?}, the payload says {f:?}"));
                }
                // ttl = deadline - the server's now, which lies in [t_before, t_after].
                let hi = f.deadline_ms as i64 - t_before as i64 + 1000;
                let lo = f.deadline_ms as i64 - t_after as i64 - 1000;
                if i.ttl > hi || i.ttl < lo {
                    st.violation(
                        case,
                        format!(
                            "ttl {} outside [{lo}, {hi}] for the deadline in the payload",
                            i.ttl
                        ),
                    );
                }
            }
            st.max_token = st.max_token.max(i.token);
            if i.ttl <= SHORT_TTL_MS {
                let at = Instant::now() + Duration::from_millis(i.ttl.max(0) as u64) + VANISH_SLACK;
                st.vanish.insert(case.key.clone(), at);
            } else if i.ttl >= 3_600_000 {
                st.pool.push_back(case.key.clone());
                st.pool_info
                    .insert(case.key.clone(), (i.owner.clone(), i.holds, i.token));
            }
        }
    }
}

/// Re-enters and releases some pool locks with their owner: holds never
/// wrap, the token stays.
fn reentries(st: &mut State, c: &mut RawConn) -> io::Result<()> {
    let keys: Vec<Vec<u8>> = st
        .pool
        .iter()
        .filter(|_| st.rng.percent(10))
        .cloned()
        .collect();
    let keys: Vec<Vec<u8>> = keys.into_iter().take(10).collect();
    let mut cmds = Vec::new();
    for k in &keys {
        let (owner, _, _) = &st.pool_info[k];
        cmds.push(Cmd::new("LOCK.ACQUIRE").arg(k).arg(owner).arg("3600000"));
        cmds.push(Cmd::new("LOCK.INFO").arg(k));
        cmds.push(Cmd::new("LOCK.RELEASE").arg(k).arg(owner));
        cmds.push(Cmd::new("LOCK.INFO").arg(k));
    }
    if cmds.is_empty() {
        return Ok(());
    }
    let r = c.pipeline(&cmds)?;
    for (j, k) in keys.iter().enumerate() {
        let (owner, holds, token) = st.pool_info[k].clone();
        let (acq, info1, rel, info2) = (&r[4 * j], &r[4 * j + 1], &r[4 * j + 2], &r[4 * j + 3]);
        st.counts.reentries += 1;
        let mut bad = Vec::new();
        let i1 = parse_lock_info(info1);
        let i2 = parse_lock_info(info2);
        match acq {
            Reply::Int(t) if *t == token => {
                if holds < i64::MAX {
                    if !matches!(&i1, Ok(Some(i)) if i.holds == holds + 1 && i.token == token) {
                        bad.push(format!("after re-entry LOCK.INFO {info1:?}"));
                    }
                    if rel != &Reply::Int(holds) {
                        bad.push(format!("release after re-entry answered {rel:?}"));
                    }
                }
            }
            Reply::Error(e) if has_error_code(e) => {}
            other => bad.push(format!("re-entry answered {other:?} (token {token:#x})")),
        }
        for i in [&i1, &i2] {
            match i {
                Ok(Some(i)) => {
                    for v in lock_info_violations(i, MAX_TOKEN) {
                        bad.push(format!("after re-entry/release: {v}"));
                    }
                    if i.owner != owner || i.token != token {
                        bad.push(format!("after re-entry/release: {i:?}"));
                    }
                }
                other => bad.push(format!("after re-entry/release LOCK.INFO {other:?}")),
            }
        }
        if let Ok(Some(i)) = &i2 {
            st.pool_info
                .insert(k.clone(), (owner.clone(), i.holds, token));
        }
        for b in bad {
            let text = format!(
                "{b}\n    pool lock {:?} (owner {}, holds {holds})",
                String::from_utf8_lossy(k),
                hex(&owner, 40)
            );
            if st.violations.len() < MAX_REPORTED {
                eprintln!("VIOLATION: {text}");
            }
            st.violations.push(text);
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
            st.pool_info.remove(&k);
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

    // Locks with short or past deadlines disappear on their own.
    let mut pending: Vec<(Vec<u8>, Instant)> =
        st.vanish.iter().map(|(k, t)| (k.clone(), *t)).collect();
    while !pending.is_empty() {
        let cmds: Vec<Cmd> = pending
            .iter()
            .map(|(k, _)| Cmd::new("EXISTS").arg(k))
            .collect();
        let r = c.pipeline(&cmds).unwrap();
        let now = Instant::now();
        let mut still = Vec::new();
        for ((k, until), e) in pending.into_iter().zip(r) {
            if e == Reply::Int(0) {
                continue;
            }
            if now > until {
                let info = c.call(&Cmd::new("LOCK.INFO").arg(&k)).unwrap();
                st.violations.push(format!(
                    "restored lock {:?} still exists long after its deadline: LOCK.INFO {info:?}",
                    String::from_utf8_lossy(&k)
                ));
            } else {
                still.push((k, until));
            }
        }
        pending = still;
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
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
         rules said: accept {}, refuse {}, either {}; refused REPLACE kept the old lock {} times; re-entry checks {}",
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
        k.rules_accept,
        k.rules_refuse,
        k.rules_either,
        k.replace_refused_kept_old,
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
    assert!(k.accepted_shown > 0, "no payload was accepted as a lock");
    if !budget.cut_short {
        assert_eq!(k.run, count, "every payload was run");
        assert!(k.run >= 10_000 || count < 10_000);
    }
}
