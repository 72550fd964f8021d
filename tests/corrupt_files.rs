//! Issue #9, files and streams: a damaged or hostile RDB file, a corrupt
//! full-sync payload, hostile `LOCK.APPLY` in the replication stream and in
//! the AOF can never crash the server or make a fencing token repeat, for
//! every kind of lock (exclusive, shared, semaphore; encoding 2, and
//! encoding 1 values as the first release wrote them).
//!
//! - An RDB file whose lock value is damaged (cut anywhere, fields cut out
//!   or added, wrong opcodes, huge lengths, a holder count that does not
//!   match the holders, other module id or encoding version: 0, 3, 1023, 1
//!   for a value of 2) or whose lock fields are well-formed but break the
//!   rules (out-of-range owner, holds, token, deadline, limit; duplicate
//!   owners or tokens; permits over the limit; exclusive holds in a
//!   semaphore or beside a reader; a remembered request without its id or
//!   with a 65-byte one) makes Redis stop the way it stops on its own
//!   corrupt files: it reports the file and exits by itself, never by a
//!   signal, an assertion or a module panic. (Redis 7.0 then runs its RDB
//!   checker and exits with the checker's verdict: 1, or 0 when the file's
//!   structure is sound and only the module refused a value; its checker
//!   also never ends on a module value cut at a field boundary — see
//!   `hostile::clean_corrupt_rdb_exit`.) Values at their limits load — a
//!   1,000,000-permit semaphore with 300 holders, 200 readers with
//!   1024-byte owners, a 64-byte remembered request id, a value of encoding
//!   1 beside values of 2 — are shown exactly as written, survive `DEBUG
//!   RELOAD`, and the next token is above them.
//! - A replica whose master (a fake one in the test) sends a corrupt RDB on
//!   full sync exits cleanly or refuses and retries; it never aborts.
//! - A replica refuses hostile `LOCK.APPLY` from its master (every effect
//!   form: the first release's, the `x`/`s`/`p` states with and without a
//!   request id, `DROP`) and
//!   keeps serving: keys of refused effects do not exist, locks they would
//!   have broken are unchanged, the valid effects are applied.
//! - An AOF with the same hostile `LOCK.APPLY` lines beside valid ones
//!   loads the same way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::hostile::{
    clean_corrupt_rdb_exit, crash_signs, fencelock_type_id_v, find, find_lock_value,
    fix_trailing_crc, holder_field, info_matches, info_value, lock_info_violations, module_type_id,
    now_ms, parse_lock_info, rdb_len, Cmd, HolderFields, HolderSummary, InfoMode, LockFields,
    ModuleValue, Outcome, Proc, RawConn, RawField, RawLockInfo, Reply, DAY_MS, ENCVER, H_DEADLINE,
    H_EXCLUSIVE, H_ID, H_OWNER, H_REPLY, H_SHARED, H_TOKEN, MAX_HOLDS, MAX_SERVER_TOKEN, MAX_TOKEN,
    OPCODE_MODULE_AUX, OP_DOUBLE, OP_FLOAT, OP_STRING, OP_UINT,
};
use testkit::Server;

/// Plain-stored owners (≤ 20 bytes, not decimal: never compressed or
/// integer-encoded by Redis) to find the values in the file.
const TARGET: &[u8] = b"target-owner-7";
const PAST: &[u8] = b"past-owner-01";
const SHORT: &[u8] = b"short-owner-01";
const OTHER: &[u8] = b"someone-else";
const READER1: &[u8] = b"reader-one-01";
const READER2: &[u8] = b"reader-two-02";
const PERMIT1: &[u8] = b"permit-one-01";
const PERMIT2: &[u8] = b"permit-two-02";
const IDEM: &[u8] = b"idem-owner-01";
/// The request id `IDEM` acquired with.
const IDEM_ID: &str = "request-0077";
/// A request id that a replicated effect carries (the rest of its state).
const REPLICATED_ID: &str = "req 9 \u{1}\u{ff} end";

/// How long a server may take to exit, serve, or retry (a slow machine).
const PATIENCE: Duration = Duration::from_secs(60);
/// How many servers `all_exit_cleanly` runs at once (Redis 7.0's RDB
/// checker spins for `hostile::clean_corrupt_rdb_exit`'s grace on some
/// files; one at a time that adds up).
const AT_ONCE: usize = 4;

const HOUR: u64 = 3_600_000;

fn call(c: &mut RawConn, cmd: Cmd) -> Reply {
    c.call(&cmd).expect("server answers")
}

fn acquire_with(c: &mut RawConn, key: &str, owner: &[u8], ttl: u64, opts: &[&str]) -> i64 {
    let mut cmd = Cmd::new("LOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(ttl.to_string());
    for o in opts {
        cmd = cmd.arg(o);
    }
    let r = call(c, cmd);
    r.as_int()
        .unwrap_or_else(|| panic!("LOCK.ACQUIRE {key} {opts:?}: {r:?}"))
}

fn acquire(c: &mut RawConn, key: &str, owner: &[u8], ttl: u64) -> i64 {
    acquire_with(c, key, owner, ttl, &[])
}

fn info(c: &mut RawConn, key: &str) -> Option<RawLockInfo> {
    parse_lock_info(&call(c, Cmd::new("LOCK.INFO").arg(key))).unwrap()
}

/// A lock of each kind, by the same names in every test: `lock:target`
/// (`TARGET`, exclusive, holds 2), `lock:shared` (`READER1` holds 2,
/// `READER2` 1), `lock:sem` (5 permits: `PERMIT1` 2, `PERMIT2` 1),
/// `lock:idem` (`IDEM`, acquired with `ID`); what `LOCK.INFO` shows of
/// each.
fn family_keys(c: &mut RawConn) -> BTreeMap<&'static str, RawLockInfo> {
    acquire(c, "lock:target", TARGET, HOUR);
    acquire(c, "lock:target", TARGET, HOUR);
    for (owner, n) in [(READER1, 2), (READER2, 1)] {
        for _ in 0..n {
            acquire_with(c, "lock:shared", owner, HOUR, &["SHARED"]);
        }
    }
    acquire_with(c, "lock:sem", PERMIT1, HOUR, &["LIMIT", "5", "COUNT", "2"]);
    acquire_with(c, "lock:sem", PERMIT2, HOUR, &["LIMIT", "5"]);
    acquire_with(c, "lock:idem", IDEM, HOUR, &["ID", IDEM_ID]);
    ["lock:target", "lock:shared", "lock:sem", "lock:idem"]
        .into_iter()
        .map(|k| (k, info(c, k).unwrap_or_else(|| panic!("{k} is held"))))
        .collect()
}

/// A saved RDB file: a lock of each kind (`family_keys`), three more
/// exclusive ones, a string, a list, a hash; what `LOCK.INFO` showed of the
/// family keys.
struct Saved {
    rdb: Vec<u8>,
    infos: BTreeMap<&'static str, RawLockInfo>,
}

impl Saved {
    /// The token of `owner` in the family key `key`.
    fn token(&self, key: &str, owner: &[u8]) -> i64 {
        self.infos[key].holder(owner).unwrap().token
    }
}

fn saved_rdb() -> Saved {
    let s = Server::start();
    let mut c = RawConn::connect(s.port).unwrap();
    let infos = family_keys(&mut c);
    acquire(&mut c, "lock:other", OTHER, HOUR);
    acquire(&mut c, "lock:past", PAST, HOUR);
    acquire(&mut c, "lock:short", SHORT, HOUR);
    call(&mut c, Cmd::new("SET").arg("str").arg("v"));
    call(
        &mut c,
        Cmd::new("RPUSH").arg("list").arg("a").arg("b").arg("c"),
    );
    call(&mut c, Cmd::new("HSET").arg("hash").arg("f").arg("v"));
    assert_eq!(call(&mut c, Cmd::new("SAVE")), Reply::Status("OK".into()));
    let rdb = std::fs::read(s.dir().join("dump.rdb")).unwrap();
    for owner in [TARGET, PAST, SHORT, OTHER, READER1, READER2, PERMIT1, IDEM] {
        let (at, _) = find_lock_value(&rdb, owner).unwrap_or_else(|| {
            panic!(
                "lock value of owner {:?} not found in the RDB file",
                String::from_utf8_lossy(owner)
            )
        });
        let (v, _) = ModuleValue::parse_value_at(&rdb, at).unwrap();
        assert_eq!(v.encver(), Some(ENCVER), "locks are saved in encoding 2");
    }
    Saved { rdb, infos }
}

/// The file with the value of `owner`'s lock replaced by `value` (module
/// id onwards), the trailing CRC64 fixed.
fn with_value(rdb: &[u8], owner: &[u8], value: &[u8]) -> Vec<u8> {
    let (s, e) = find_lock_value(rdb, owner).unwrap();
    let mut f = rdb[..s].to_vec();
    f.extend_from_slice(value);
    f.extend_from_slice(&rdb[e..]);
    fix_trailing_crc(&mut f);
    f
}

/// The file with `owner`'s lock holding `lock` (encoding 2).
fn with_lock(rdb: &[u8], owner: &[u8], lock: &LockFields) -> Vec<u8> {
    with_value(rdb, owner, &ModuleValue::lock_v2(lock).encode_value())
}

/// The parsed value of `owner`'s lock, its span, and where each of its
/// fields (the opcode) starts in the file.
fn value_of(rdb: &[u8], owner: &[u8]) -> (ModuleValue, usize, usize, Vec<usize>) {
    let (s, e) = find_lock_value(rdb, owner).unwrap();
    let (v, _) = ModuleValue::parse_value_at(rdb, s).unwrap();
    let mut field_at = Vec::new();
    let mut p = s + v.module_id.len();
    for f in &v.fields {
        field_at.push(p);
        p += rdb_len(f.opcode).len() + f.value.len();
    }
    (v, s, e, field_at)
}

/// The file with `owner`'s lock value changed by `f`.
fn edited(rdb: &[u8], owner: &[u8], f: impl FnOnce(&mut ModuleValue)) -> Vec<u8> {
    let (mut v, _, _, _) = value_of(rdb, owner);
    f(&mut v);
    with_value(rdb, owner, &v.encode_value())
}

/// The fields of `owner`'s lock as written, changed by `f`.
fn fields_edited(rdb: &[u8], owner: &[u8], f: impl FnOnce(&mut LockFields)) -> Vec<u8> {
    let (v, _, _, _) = value_of(rdb, owner);
    let mut lock = LockFields::from_value(&v).unwrap();
    f(&mut lock);
    with_lock(rdb, owner, &lock)
}

/// The file without the bytes `from..to`, the CRC fixed.
fn cut_out(rdb: &[u8], from: usize, to: usize) -> Vec<u8> {
    let mut f = rdb.to_vec();
    f.drain(from..to);
    fix_trailing_crc(&mut f);
    f
}

/// The file with the module's aux field (the highest token issued)
/// replaced by `token`. Layout: opcode 0xf7, module id, `when` (as an
/// unsigned field), the module's unsigned field, EOF mark.
fn with_aux_token(rdb: &[u8], token: u64) -> Vec<u8> {
    let mut pat = vec![OPCODE_MODULE_AUX];
    pat.extend(rdb_len(fencelock_type_id_v(ENCVER)));
    let at = find(rdb, &pat).expect("the module's aux field");
    let mut r = testkit::hostile::RdbReader::at(rdb, at + pat.len());
    assert_eq!(r.read_len(), Some(OP_UINT), "aux: when");
    let when = r.read_len().expect("aux when");
    assert_eq!(r.read_len(), Some(OP_UINT), "aux holds one unsigned");
    r.read_len().expect("aux token");
    assert_eq!(r.read_len(), Some(0), "aux EOF");
    let end = r.pos;
    let mut f = rdb[..at].to_vec();
    f.extend_from_slice(&pat);
    for v in [OP_UINT, when, OP_UINT, token, 0] {
        f.extend(rdb_len(v));
    }
    f.extend_from_slice(&rdb[end..]);
    fix_trailing_crc(&mut f);
    f
}

/// Starts a server on a directory holding `rdb` as dump.rdb.
fn start_on(rdb: &[u8], args: &[(&str, &str)]) -> (tempfile::TempDir, Proc) {
    let dir = tempfile::Builder::new()
        .prefix("fencelock-hostile-")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("dump.rdb"), rdb).unwrap();
    let p = Proc::spawn(dir.path(), args);
    (dir, p)
}

/// Runs one file that must make the server exit cleanly: Ok(how) or
/// Err(why, with what a server that loaded it shows, and its log). With
/// `reason`, the module must have said it refused the file's data for it
/// (a word of its log line), so that the file breaks the rule it was made
/// to break.
fn exits_cleanly(file: &[u8], reason: Option<&str>) -> Result<String, String> {
    let (_dir, mut p) = start_on(file, &[]);
    let verdict = clean_corrupt_rdb_exit(&mut p, PATIENCE).and_then(|how| {
        let Some(word) = reason else {
            return Ok(how);
        };
        let log = p.log();
        let said = log
            .lines()
            .filter(|l| l.contains("fencelock: refused"))
            .any(|l| l.contains(word));
        if said {
            Ok(format!("{how}, the module names the {word}"))
        } else {
            Err(format!(
                "the module's log does not name the {word} as the reason"
            ))
        }
    });
    verdict.map_err(|why| {
        let state = if p.serving() {
            let mut c = p.conn();
            let info = call(&mut c, Cmd::new("LOCK.INFO").arg("lock:target"));
            let grant = call(
                &mut c,
                Cmd::new("LOCK.ACQUIRE").arg("fresh").arg("me").arg("1000"),
            );
            format!(" (LOCK.INFO lock:target: {info:?}; a fresh grant: {grant:?})")
        } else {
            String::new()
        };
        format!("{why}{state}\n{}", p.report())
    })
}

/// Runs every file, [`AT_ONCE`] servers at a time; each must make the
/// server exit cleanly (for the reason given, see [`exits_cleanly`]).
/// Reports all failures together.
fn all_exit_cleanly(cases: Vec<(String, Vec<u8>, Option<&'static str>)>) {
    let total = cases.len();
    let queue = Arc::new(Mutex::new(cases));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let (queue, results) = (queue.clone(), results.clone());
            std::thread::spawn(move || loop {
                let Some((name, file, reason)) = queue.lock().unwrap().pop() else {
                    return;
                };
                let r = exits_cleanly(&file, reason);
                results.lock().unwrap().push((name, r));
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let mut results = std::mem::take(&mut *results.lock().unwrap());
    results.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(results.len(), total);
    let mut failures = Vec::new();
    for (name, r) in results {
        match r {
            Ok(how) => println!("{name}: refused, {how}"),
            Err(why) => {
                println!("{name}: FAILED: {}", why.lines().next().unwrap_or(""));
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} files did not make the server stop cleanly:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn damaged_lock_values_in_an_rdb_file_make_the_server_exit_cleanly() {
    let saved = saved_rdb();
    let rdb = &saved.rdb;
    let (v, s, e, at) = value_of(rdb, TARGET);
    let id_len = v.module_id.len();
    let h0 = |m: usize| at[holder_field(0, m)];
    let cut = |n: usize| rdb[..n].to_vec();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("file cut inside the module id".into(), cut(s + 4)),
        ("file cut after the module id".into(), cut(s + id_len)),
        ("file cut after the holder count".into(), cut(h0(H_OWNER))),
        ("file cut inside the owner".into(), cut(h0(H_OWNER) + 6)),
        ("file cut inside the token".into(), cut(h0(H_TOKEN) + 3)),
        (
            "file cut inside the deadline".into(),
            cut(h0(H_DEADLINE) + 5),
        ),
        ("file cut before the EOF mark".into(), cut(e - 1)),
        (
            "the exclusive-holds field cut out".into(),
            cut_out(rdb, h0(H_EXCLUSIVE), h0(H_SHARED)),
        ),
        (
            "five bytes cut out after the owner".into(),
            cut_out(rdb, h0(H_EXCLUSIVE) + 1, h0(H_EXCLUSIVE) + 6),
        ),
    ];
    let mut inserted = rdb.clone();
    inserted.insert(h0(H_EXCLUSIVE), 0x02);
    fix_trailing_crc(&mut inserted);
    cases.push(("a byte inserted after the owner".into(), inserted));
    let opcode_changes = [
        (
            "owner opcode string -> unsigned",
            holder_field(0, H_OWNER),
            OP_UINT,
        ),
        ("limit opcode unsigned -> double", 0, OP_DOUBLE),
        (
            "token opcode unsigned -> string",
            holder_field(0, H_TOKEN),
            OP_STRING,
        ),
        (
            "request id opcode string -> unsigned",
            holder_field(0, H_ID),
            OP_UINT,
        ),
        (
            "reply opcode unsigned -> float",
            holder_field(0, H_REPLY),
            OP_FLOAT,
        ),
    ];
    for (name, i, op) in opcode_changes {
        cases.push((
            name.into(),
            edited(rdb, TARGET, |v| v.fields[i].opcode = op),
        ));
    }
    let owner_len = |n: u64| {
        edited(rdb, TARGET, |v| {
            let mut nv = rdb_len(n);
            nv.extend_from_slice(TARGET);
            v.fields[holder_field(0, H_OWNER)].value = nv;
        })
    };
    cases.push(("owner length 2^62".into(), owner_len(1 << 62)));
    cases.push((
        "owner length one byte too long".into(),
        owner_len(TARGET.len() as u64 + 1),
    ));
    cases.push((
        "EOF mark 0 -> 1".into(),
        edited(rdb, TARGET, |v| v.eof = vec![1]),
    ));
    cases.push((
        "a field after the last holder".into(),
        edited(rdb, TARGET, |v| v.fields.push(RawField::uint(7))),
    ));
    cases.push((
        "the reply field missing".into(),
        edited(rdb, TARGET, |v| {
            v.fields.pop();
        }),
    ));
    for n in [0, 2, 1 << 40, u64::MAX] {
        cases.push((
            format!("holder count {n} (one holder follows)"),
            edited(rdb, TARGET, |v| v.fields[1] = RawField::uint(n)),
        ));
    }
    for (name, encver) in [("0", 0), ("1 (fields of 2)", 1), ("3", 3), ("1023", 1023)] {
        cases.push((
            format!("encoding version {name}"),
            edited(rdb, TARGET, |v| {
                v.module_id = rdb_len(fencelock_type_id_v(encver));
            }),
        ));
    }
    cases.push((
        "another module type".into(),
        edited(rdb, TARGET, |v| {
            v.module_id = rdb_len(module_type_id("otherlock", ENCVER));
        }),
    ));
    // The semaphore: two holders.
    let (sv, _, _, sat) = value_of(rdb, PERMIT1);
    assert_eq!(sv.fields.len(), holder_field(2, 0), "two holders");
    cases.push((
        "semaphore: file cut inside the second holder".into(),
        cut(sat[holder_field(1, H_TOKEN)] + 2),
    ));
    let second: usize = sv.fields[holder_field(1, 0)..]
        .iter()
        .map(|f| rdb_len(f.opcode).len() + f.value.len())
        .sum();
    let from = sat[holder_field(1, 0)];
    cases.push((
        "semaphore: the second holder cut out".into(),
        cut_out(rdb, from, from + second),
    ));
    for n in [1, 3] {
        cases.push((
            format!("semaphore: holder count {n} (two holders follow)"),
            edited(rdb, PERMIT1, |v| v.fields[1] = RawField::uint(n)),
        ));
    }
    cases.push((
        "semaphore: the second holder's fields shifted by one".into(),
        edited(rdb, PERMIT1, |v| {
            v.fields.remove(holder_field(1, H_EXCLUSIVE));
        }),
    ));
    all_exit_cleanly(cases.into_iter().map(|(n, f)| (n, f, None)).collect());
}

#[test]
fn rdb_lock_fields_that_break_the_rules_make_the_server_exit_cleanly() {
    let saved = saved_rdb();
    let rdb = &saved.rdb;
    let now = now_ms();
    let t = 1u64 << 40;
    let one = |owner: &[u8], e: u64, s: u64, token: u64, deadline: u64| {
        with_lock(
            rdb,
            TARGET,
            &LockFields {
                limit: 0,
                holders: vec![HolderFields::new(owner, e, s, token, deadline)],
            },
        )
    };
    let hour = now + HOUR;
    let over = MAX_HOLDS + 1;
    let mut cases: Vec<(String, Vec<u8>, Option<&'static str>)> = vec![
        (
            "token 2^63".into(),
            one(TARGET, 1, 0, MAX_SERVER_TOKEN + 1, hour),
            Some("token"),
        ),
        (
            "token 2^64-1".into(),
            one(TARGET, 1, 0, u64::MAX, hour),
            Some("token"),
        ),
        ("token 0".into(), one(TARGET, 1, 0, 0, hour), Some("token")),
        (
            "holds 0 + 0".into(),
            one(TARGET, 0, 0, t, hour),
            Some("holds"),
        ),
        (
            "exclusive holds 2^63".into(),
            one(TARGET, over, 0, t, hour),
            Some("holds"),
        ),
        (
            "shared holds 2^63".into(),
            one(TARGET, 0, over, t, hour),
            Some("holds"),
        ),
        (
            "holds 2^64-1".into(),
            one(TARGET, u64::MAX, 0, t, hour),
            Some("holds"),
        ),
        (
            "owner of 100,000 bytes".into(),
            one(&[b'o'; 100_000], 1, 0, t, hour),
            Some("owner"),
        ),
        (
            "owner of 1025 bytes".into(),
            one(&[b'o'; 1025], 1, 0, t, hour),
            Some("owner"),
        ),
        ("empty owner".into(), one(b"", 1, 0, t, hour), Some("owner")),
        (
            "deadline 2^62".into(),
            one(TARGET, 1, 0, t, 1 << 62),
            Some("deadline"),
        ),
        (
            "deadline 2^64-1".into(),
            one(TARGET, 1, 0, t, u64::MAX),
            Some("deadline"),
        ),
        (
            "deadline 0".into(),
            one(TARGET, 1, 0, t, 0),
            Some("deadline"),
        ),
        (
            "deadline 40 days ahead".into(),
            one(TARGET, 1, 0, t, now + 40 * DAY_MS),
            Some("deadline"),
        ),
        (
            "encoding 1: token 2^63".into(),
            with_value(
                rdb,
                TARGET,
                &ModuleValue::lock(TARGET, 1, MAX_SERVER_TOKEN + 1, hour).encode_value(),
            ),
            Some("token"),
        ),
        (
            "encoding 1: holds 0".into(),
            with_value(
                rdb,
                TARGET,
                &ModuleValue::lock(TARGET, 0, t, hour).encode_value(),
            ),
            Some("holds"),
        ),
        (
            "highest-token aux field 2^63".into(),
            with_aux_token(rdb, MAX_SERVER_TOKEN + 1),
            Some("token field"),
        ),
        (
            "highest-token aux field 2^64-1".into(),
            with_aux_token(rdb, u64::MAX),
            Some("token field"),
        ),
    ];
    type Edit = Box<dyn Fn(&mut LockFields)>;
    let family: Vec<(&str, &[u8], Edit, &'static str)> = vec![
        (
            "limit 1000001",
            PERMIT1,
            Box::new(|l| l.limit = 1_000_001),
            "limit",
        ),
        (
            "limit 2^32",
            PERMIT1,
            Box::new(|l| l.limit = 1 << 32),
            "limit",
        ),
        (
            "permits over the limit",
            PERMIT1,
            Box::new(|l| l.holders[1].shared = 4),
            "only holder",
        ),
        (
            "exclusive holds in a semaphore",
            PERMIT1,
            Box::new(|l| l.holders[0].exclusive = 1),
            "only holder",
        ),
        (
            "a semaphore holder with no permit",
            PERMIT1,
            Box::new(|l| l.holders[1].shared = 0),
            "holds",
        ),
        (
            "two permit holders with one owner",
            PERMIT1,
            Box::new(|l| l.holders[1].owner = PERMIT1.to_vec()),
            "same owner or token",
        ),
        (
            "two readers with one token",
            READER1,
            Box::new(|l| l.holders[1].token = l.holders[0].token),
            "same owner or token",
        ),
        (
            "an exclusive holder beside a reader",
            READER1,
            Box::new(|l| l.holders[1].exclusive = 1),
            "only holder",
        ),
        (
            "a reader turned into a semaphore holder of a smaller limit",
            READER1,
            Box::new(|l| l.limit = 2),
            "only holder",
        ),
        (
            "a remembered reply without its request id",
            IDEM,
            Box::new(|l| l.holders[0].id.clear()),
            "request id",
        ),
        (
            "a remembered request id of 65 bytes",
            IDEM,
            Box::new(|l| l.holders[0].id = vec![b'i'; 65]),
            "request id",
        ),
        (
            "a remembered reply of 2^63",
            IDEM,
            Box::new(|l| l.holders[0].reply = MAX_HOLDS + 1),
            "request id",
        ),
        (
            "a reader with a deadline 40 days ahead",
            READER1,
            Box::new(move |l| l.holders[1].deadline_ms = now + 40 * DAY_MS),
            "deadline",
        ),
        (
            "a permit holder with token 2^63",
            PERMIT1,
            Box::new(|l| l.holders[1].token = MAX_SERVER_TOKEN + 1),
            "token",
        ),
    ];
    for (name, owner, edit, reason) in family {
        cases.push((name.into(), fields_edited(rdb, owner, edit), Some(reason)));
    }
    all_exit_cleanly(cases);
}

/// A 1,000,000-permit semaphore with 300 holders, all permits taken.
fn full_big_semaphore(now: u64) -> LockFields {
    let mut holders: Vec<HolderFields> = (0..300u64)
        .map(|i| HolderFields::new(format!("permit-{i}").as_bytes(), 0, 1, 1000 + i, now + HOUR))
        .collect();
    holders[299].shared = 1_000_000 - 299;
    LockFields {
        limit: 1_000_000,
        holders,
    }
}

#[test]
fn rdb_lock_values_at_their_limits_load_and_obey_the_rules() {
    let saved = saved_rdb();
    let now = now_ms();
    let owner = vec![b'w'; 1024];
    let deadline = now + 30 * DAY_MS;
    let target = LockFields {
        limit: 0,
        holders: vec![HolderFields::new(&owner, MAX_HOLDS, 0, MAX_TOKEN, deadline)],
    };
    let readers = LockFields {
        limit: 0,
        holders: (0..200u64)
            .map(|i| {
                let mut o = vec![b'r'; 1024];
                o[..8].copy_from_slice(&i.to_be_bytes());
                HolderFields::new(&o, 0, MAX_HOLDS - i, 5000 + i, now + HOUR + i)
            })
            .collect(),
    };
    let sem = full_big_semaphore(now);
    let mut idem = LockFields::exclusive(IDEM, 1, 9999, now + HOUR);
    idem.holders[0].id = vec![b'i'; 64];
    idem.holders[0].reply = MAX_HOLDS;
    let mut rdb = with_lock(&saved.rdb, TARGET, &target);
    rdb = with_lock(&rdb, READER1, &readers);
    rdb = with_lock(&rdb, PERMIT1, &sem);
    rdb = with_lock(&rdb, IDEM, &idem);
    // The first release's encoding beside the current one.
    rdb = with_value(
        &rdb,
        OTHER,
        &ModuleValue::lock(OTHER, 3, 77, now + HOUR).encode_value(),
    );
    let other = LockFields::exclusive(OTHER, 3, 77, now + HOUR);
    rdb = with_value(&rdb, PAST, &ModuleValue::lock(PAST, 1, 5, 1).encode_value());
    let short_deadline = now + 3000;
    rdb = with_lock(
        &rdb,
        SHORT,
        &LockFields {
            limit: 3,
            holders: vec![
                HolderFields::new(SHORT, 0, 1, 6, short_deadline),
                HolderFields::new(b"short-two", 0, 2, 7, short_deadline),
            ],
        },
    );
    let (_dir, mut p) = start_on(&rdb, &[]);
    match p.outcome(PATIENCE) {
        Outcome::Serving => {}
        other => panic!(
            "the server did not load the file: {other:?}\n{}",
            p.report()
        ),
    }
    let mut c = p.conn();
    let expected: [(&str, &LockFields); 5] = [
        ("lock:target", &target),
        ("lock:shared", &readers),
        ("lock:sem", &sem),
        ("lock:idem", &idem),
        ("lock:other", &other),
    ];
    let check_all = |c: &mut RawConn, when: &str| {
        for (k, f) in expected {
            let t_before = now_ms();
            let i = info(c, k);
            let t_after = now_ms();
            let i = i.unwrap_or_else(|| panic!("{when}: {k} is not loaded"));
            assert!(
                lock_info_violations(&i, MAX_SERVER_TOKEN).is_empty(),
                "{when}: {k}: {:?}",
                lock_info_violations(&i, MAX_SERVER_TOKEN)
            );
            if let Err(e) = info_matches(Some(&i), f, t_before, t_after) {
                panic!("{when}: {k}: {e}");
            }
        }
    };
    check_all(&mut c, "loaded");
    assert_eq!(
        info(&mut c, "lock:past"),
        None,
        "a passed deadline is never shown"
    );
    // The remembered request answers its retry, and changes nothing.
    let retry = call(
        &mut c,
        Cmd::new("LOCK.ACQUIRE")
            .arg("lock:idem")
            .arg(IDEM)
            .arg("60000")
            .arg("ID")
            .arg(vec![b'i'; 64]),
    );
    assert_eq!(
        retry,
        Reply::Int(i64::MAX),
        "the retry is answered from the file"
    );
    // What was loaded is saved again (encoding 2, the encoding-1 value
    // converted) and reloads the same.
    assert_eq!(
        call(&mut c, Cmd::new("DEBUG").arg("RELOAD")),
        Reply::Status("OK".into()),
        "DEBUG RELOAD\n{}",
        p.report()
    );
    check_all(&mut c, "after DEBUG RELOAD");
    // The next fresh grant is above every token in the file.
    let fresh = acquire(&mut c, "fresh", b"me", 60_000);
    assert!(fresh > MAX_TOKEN as i64, "fresh token {fresh:#x}");
    // The full semaphore grants nothing more; a holder adds nothing either.
    let more = call(
        &mut c,
        Cmd::new("LOCK.ACQUIRE")
            .arg("lock:sem")
            .arg("permit-0")
            .arg("60000")
            .arg("LIMIT")
            .arg("1000000"),
    );
    assert_eq!(more, Reply::Nil, "no permit is free");
    // Re-entry at the holds limit: no crash, holds stay positive.
    let r = call(
        &mut c,
        Cmd::new("LOCK.ACQUIRE")
            .arg("lock:target")
            .arg(&owner)
            .arg("60000"),
    );
    assert!(
        r == Reply::Int(MAX_TOKEN as i64)
            || matches!(&r, Reply::Error(e) if testkit::hostile::has_error_code(e)),
        "re-entry at holds i64::MAX answered {r:?}"
    );
    let t2 = info(&mut c, "lock:target").expect("still held");
    let h = t2.exclusive().expect("exclusive");
    assert!(h.holds >= 1 && h.token == MAX_TOKEN as i64, "{t2:?}");
    // Other keys are intact.
    assert_eq!(
        call(&mut c, Cmd::new("GET").arg("str")),
        Reply::Bulk(b"v".to_vec())
    );
    assert_eq!(call(&mut c, Cmd::new("LLEN").arg("list")), Reply::Int(3));
    assert_eq!(
        call(&mut c, Cmd::new("HGET").arg("hash").arg("f")),
        Reply::Bulk(b"v".to_vec())
    );
    // The passed and the short leases go on their own.
    let until =
        Instant::now() + PATIENCE + Duration::from_millis(short_deadline.saturating_sub(now_ms()));
    for k in ["lock:past", "lock:short"] {
        while call(&mut c, Cmd::new("EXISTS").arg(k)) != Reply::Int(0) {
            assert!(
                Instant::now() < until,
                "{k} still exists long after its deadline"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let held = info_value(&call(&mut c, Cmd::new("INFO").arg("lock")), "lock_held");
    assert_eq!(held, Some(6), "the five locks above and fresh");
    let signs = crash_signs(&p.log());
    assert!(signs.is_empty(), "{signs:?}\n{}", p.report());
}

#[test]
fn an_rdb_claiming_the_last_token_loads_and_grants_fail_instead_of_repeating() {
    let saved = saved_rdb();
    let now = now_ms();
    let last = MAX_SERVER_TOKEN;
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "a lock with token 2^63-1",
            with_lock(
                &saved.rdb,
                TARGET,
                &LockFields::exclusive(TARGET, 2, last, now + HOUR),
            ),
        ),
        (
            "a permit holder with token 2^63-1",
            fields_edited(&saved.rdb, PERMIT1, |l| l.holders[0].token = last),
        ),
        (
            "the highest-token aux field at 2^63-1",
            with_aux_token(&saved.rdb, last),
        ),
    ];
    for (name, rdb) in files {
        let (_dir, mut p) = start_on(&rdb, &[]);
        match p.outcome(PATIENCE) {
            Outcome::Serving => {}
            other => panic!(
                "{name}: the server did not load the file: {other:?}\n{}",
                p.report()
            ),
        }
        let mut c = p.conn();
        let before = info(&mut c, "lock:target").expect("lock:target loaded");
        let sem_before = info(&mut c, "lock:sem").expect("lock:sem loaded");
        // No token is left: a fresh grant of any kind fails and changes
        // nothing.
        for (key, opts) in [
            ("fresh", vec![]),
            ("fresh", vec!["SHARED"]),
            ("lock:shared", vec!["SHARED"]),
            ("lock:sem", vec!["LIMIT", "5"]),
        ] {
            let mut cmd = Cmd::new("LOCK.ACQUIRE").arg(key).arg("me").arg("60000");
            for o in &opts {
                cmd = cmd.arg(o);
            }
            let r = call(&mut c, cmd);
            assert!(
                matches!(&r, Reply::Error(e) if e.starts_with("ERR no fencing token left")),
                "{name}: a fresh grant on {key} {opts:?} answered {r:?}"
            );
        }
        assert_eq!(
            call(&mut c, Cmd::new("EXISTS").arg("fresh")),
            Reply::Int(0),
            "{name}"
        );
        assert_eq!(
            info(&mut c, "lock:sem").map(|i| i.summary()),
            Some(sem_before.summary()),
            "{name}"
        );
        // Re-entry needs no new token.
        let t = before.exclusive().expect("exclusive").clone();
        let r = call(
            &mut c,
            Cmd::new("LOCK.ACQUIRE")
                .arg("lock:target")
                .arg(TARGET)
                .arg("60000"),
        );
        assert_eq!(r, Reply::Int(t.token), "{name}: re-entry keeps the token");
        // The server reloads what it wrote.
        assert_eq!(
            call(&mut c, Cmd::new("DEBUG").arg("RELOAD")),
            Reply::Status("OK".into()),
            "{name}: DEBUG RELOAD\n{}",
            p.report()
        );
        let after = info(&mut c, "lock:target").expect("lock:target after DEBUG RELOAD");
        let a = after.exclusive().expect("exclusive");
        assert_eq!((a.token, a.holds), (t.token, t.holds + 1), "{name}");
        let r = call(
            &mut c,
            Cmd::new("LOCK.ACQUIRE").arg("fresh").arg("me").arg("60000"),
        );
        assert!(
            r.is_error(),
            "{name}: after DEBUG RELOAD a fresh grant answered {r:?}"
        );
        let signs = crash_signs(&p.log());
        assert!(signs.is_empty(), "{name}: {signs:?}\n{}", p.report());
    }
}

// ------------------------------------------------------------ fake master

/// A master that answers the replica's handshake and sends `rdb` as the
/// full-sync payload, then `stream` as the replication stream.
struct FakeMaster {
    port: u16,
    syncs: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeMaster {
    fn start(rdb: Vec<u8>, stream: Vec<u8>) -> FakeMaster {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let syncs = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (syncs.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let (rdb, stream, s3) = (rdb.clone(), stream.clone(), s2.clone());
                        std::thread::spawn(move || serve_replica(sock, &rdb, &stream, &s3));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return,
                }
            }
        });
        FakeMaster { port, syncs, stop }
    }

    fn syncs(&self) -> usize {
        self.syncs.load(Ordering::Relaxed)
    }
}

impl Drop for FakeMaster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One command from the replica (RESP array or inline); None at EOF.
fn read_command(r: &mut BufReader<TcpStream>) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let line = line.trim_end();
    if let Some(n) = line.strip_prefix('*') {
        let n: usize = n.parse().ok()?;
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            let mut l = String::new();
            r.read_line(&mut l).ok()?;
            let len: usize = l.trim_end().strip_prefix('$')?.parse().ok()?;
            let mut buf = vec![0u8; len + 2];
            r.read_exact(&mut buf).ok()?;
            buf.truncate(len);
            args.push(buf);
        }
        Some(args)
    } else {
        Some(
            line.split_whitespace()
                .map(|w| w.as_bytes().to_vec())
                .collect(),
        )
    }
}

fn serve_replica(sock: TcpStream, rdb: &[u8], stream: &[u8], syncs: &AtomicUsize) {
    let _ = sock.set_nonblocking(false);
    let Ok(read_half) = sock.try_clone() else {
        return;
    };
    let mut r = BufReader::new(read_half);
    let mut w = sock;
    while let Some(cmd) = read_command(&mut r) {
        let name = cmd
            .first()
            .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase())
            .unwrap_or_default();
        let reply: Vec<u8> = match name.as_str() {
            "" => continue,
            "PING" => b"+PONG\r\n".to_vec(),
            "REPLCONF" | "AUTH" => b"+OK\r\n".to_vec(),
            "PSYNC" | "SYNC" => {
                let mut out = Vec::new();
                if name == "PSYNC" {
                    out.extend_from_slice(
                        b"+FULLRESYNC 0123456789abcdef0123456789abcdef01234567 0\r\n",
                    );
                }
                out.extend(format!("${}\r\n", rdb.len()).into_bytes());
                out.extend_from_slice(rdb);
                out.extend_from_slice(stream);
                syncs.fetch_add(1, Ordering::Relaxed);
                if w.write_all(&out).is_err() {
                    return;
                }
                // Then just listen (REPLCONF ACK ...) until the replica goes.
                let mut sink = [0u8; 4096];
                while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            _ => b"-ERR unknown command\r\n".to_vec(),
        };
        if w.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Starts an empty replica (module loaded) of the fake master.
fn replica_of(master: &FakeMaster, args: &[(&str, &str)]) -> (tempfile::TempDir, Proc) {
    let dir = tempfile::Builder::new()
        .prefix("fencelock-replica-")
        .tempdir()
        .unwrap();
    let mut p = Proc::spawn(dir.path(), args);
    match p.outcome(PATIENCE) {
        Outcome::Serving => {}
        other => panic!("the replica did not start: {other:?}\n{}", p.report()),
    }
    let r = call(
        &mut p.conn(),
        Cmd::new("REPLICAOF")
            .arg("127.0.0.1")
            .arg(master.port.to_string()),
    );
    assert_eq!(r, Reply::Status("OK".into()));
    (dir, p)
}

#[test]
fn replica_full_sync_with_a_corrupt_payload_never_aborts() {
    use std::os::unix::process::ExitStatusExt;
    let saved = saved_rdb();
    let rdb = &saved.rdb;
    let (_, _, _, at) = value_of(rdb, TARGET);
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        (
            "cut inside the lock value",
            rdb[..at[holder_field(0, H_TOKEN)] + 3].to_vec(),
        ),
        (
            "owner opcode string -> unsigned",
            edited(rdb, TARGET, |v| {
                v.fields[holder_field(0, H_OWNER)].opcode = OP_UINT;
            }),
        ),
        (
            "token 2^64-1",
            with_lock(
                rdb,
                TARGET,
                &LockFields::exclusive(TARGET, 1, u64::MAX, now_ms() + HOUR),
            ),
        ),
        (
            "owner length 2^62",
            edited(rdb, TARGET, |v| {
                let mut nv = rdb_len(1 << 62);
                nv.extend_from_slice(TARGET);
                v.fields[holder_field(0, H_OWNER)].value = nv;
            }),
        ),
        (
            "a semaphore over its limit",
            fields_edited(rdb, PERMIT1, |l| l.holders[0].shared = 5),
        ),
        (
            "holder count 2^40",
            edited(rdb, READER1, |v| v.fields[1] = RawField::uint(1 << 40)),
        ),
    ];
    let mut failures = Vec::new();
    for load in ["disabled", "swapdb"] {
        for (name, payload) in &payloads {
            let master = FakeMaster::start(payload.clone(), Vec::new());
            let (_dir, mut p) = replica_of(&master, &[("repl-diskless-load", load)]);
            let deadline = Instant::now() + PATIENCE;
            let verdict: Result<String, String> = loop {
                if let Some(st) = p.try_status() {
                    break match st.signal() {
                        Some(sig) => Err(format!("killed by signal {sig}")),
                        None => Ok(format!("exited ({st})")),
                    };
                }
                if master.syncs() >= 2 {
                    break if p.serving() {
                        Ok("refused the payload and asked again".into())
                    } else {
                        Err("asked again but does not answer PING".into())
                    };
                }
                if p.log()
                    .contains("MASTER <-> REPLICA sync: Finished with success")
                {
                    break Err("loaded the corrupt payload".into());
                }
                if Instant::now() > deadline {
                    break Err(format!(
                        "neither exited, nor loaded, nor asked again within {PATIENCE:?} ({} syncs)",
                        master.syncs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let signs = crash_signs(&format!("{}\n{}", p.log(), p.stdout()));
            let verdict = match verdict {
                Ok(_) if !signs.is_empty() => Err(format!("crash signatures {signs:?}")),
                v => v,
            };
            match verdict {
                Ok(how) => println!("repl-diskless-load {load}, {name}: {how}"),
                Err(why) => {
                    println!("repl-diskless-load {load}, {name}: FAILED: {why}");
                    failures.push(format!(
                        "repl-diskless-load {load}, {name}: {why}\n{}",
                        p.report()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} full syncs went wrong:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ------------------------------------------------------- LOCK.APPLY lines

/// RESP encoding of a command.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut c = Cmd::default();
    for a in args {
        c = c.arg(a);
    }
    c.encode()
}

/// `LOCK.APPLY key` and the rest.
fn apply(key: &str, rest: &[&[u8]]) -> Vec<u8> {
    let mut args: Vec<&[u8]> = vec![b"LOCK.APPLY", key.as_bytes()];
    args.extend_from_slice(rest);
    resp(&args)
}

/// A valid `LOCK.APPLY` line of the first release's form.
fn apply_line(key: &str, owner: &[u8], holds: u64, token: u64, deadline: u64) -> Vec<u8> {
    apply(
        key,
        &[
            owner,
            holds.to_string().as_bytes(),
            token.to_string().as_bytes(),
            deadline.to_string().as_bytes(),
        ],
    )
}

/// A `LOCK.APPLY key owner state [extra]` line (`state`: `kind n m token
/// deadline-ms [reply request-id]`; no form takes an extra argument).
fn state_line(key: &str, owner: &[u8], state: &str, extra: Option<&[u8]>) -> Vec<u8> {
    let mut rest: Vec<&[u8]> = vec![owner, state.as_bytes()];
    rest.extend(extra);
    apply(key, &rest)
}

/// `LOCK.APPLY` lines that every load path must refuse, each on its own
/// key `bad:<n>` (the key must not exist afterwards), plus their
/// descriptions.
fn hostile_applies(now: u64) -> Vec<(String, Vec<u8>)> {
    let hour = (now + HOUR).to_string();
    let tok = ((now << 20) + 77).to_string();
    let big_owner = vec![b'o'; 100_000];
    let long_owner = vec![b'o'; 1025];
    let umax = u64::MAX.to_string();
    let imax1 = (i64::MAX as u64 + 1).to_string();
    let far = (now + 40 * DAY_MS).to_string();
    let huge = (1u64 << 62).to_string();
    let (h, t) = (hour.as_bytes(), tok.as_bytes());
    // The first release's form.
    let mut cases: Vec<(String, Vec<Vec<u8>>)> = [
        ("token 2^63", vec![&b"o"[..], b"1", imax1.as_bytes(), h]),
        ("token 2^64-1", vec![b"o", b"1", umax.as_bytes(), h]),
        ("token 0", vec![b"o", b"1", b"0", h]),
        ("token -1", vec![b"o", b"1", b"-1", h]),
        ("token +5", vec![b"o", b"1", b"+5", h]),
        ("token 1.5", vec![b"o", b"1", b"1.5", h]),
        (
            "owner of 1025 bytes",
            vec![long_owner.as_slice(), b"1", t, h],
        ),
        (
            "owner of 100,000 bytes",
            vec![big_owner.as_slice(), b"1", t, h],
        ),
        ("empty owner", vec![b"", b"1", t, h]),
        ("holds 0", vec![b"o", b"0", t, h]),
        ("holds 2^63", vec![b"o", imax1.as_bytes(), t, h]),
        ("holds -5", vec![b"o", b"-5", t, h]),
        ("holds abc", vec![b"o", b"abc", t, h]),
        ("holds empty", vec![b"o", b"", t, h]),
        (
            "deadline 40 days ahead",
            vec![b"o", b"1", t, far.as_bytes()],
        ),
        ("deadline 2^62", vec![b"o", b"1", t, huge.as_bytes()]),
        ("deadline 0", vec![b"o", b"1", t, b"0"]),
        ("deadline ' 5'", vec![b"o", b"1", t, b" 5"]),
        ("five fields", vec![b"o", b"1", t, h, b"1"]),
        ("six fields", vec![b"o", b"1", t, h, b"SHARED", b"1"]),
        ("DROP with an empty owner", vec![b"", b"DROP"]),
        ("DROP with an extra field", vec![b"o", b"DROP", b"x"]),
    ]
    .into_iter()
    .map(|(n, f)| (n.to_string(), f.into_iter().map(<[u8]>::to_vec).collect()))
    .collect();
    // The state forms: `kind n m token deadline [reply]` [request-id].
    let long_id = "i".repeat(65);
    let states: Vec<(&str, String, Option<&[u8]>)> = vec![
        ("x holding nothing", format!("x 0 0 {tok} {hour}"), None),
        ("s holding nothing", format!("s 0 0 {tok} {hour}"), None),
        ("p with no permit", format!("p 0 5 {tok} {hour}"), None),
        ("p of limit 0", format!("p 1 0 {tok} {hour}"), None),
        (
            "p of limit 1000001",
            format!("p 1 1000001 {tok} {hour}"),
            None,
        ),
        (
            "p of limit 2^32",
            format!("p 1 4294967296 {tok} {hour}"),
            None,
        ),
        (
            "permits over the limit",
            format!("p 6 5 {tok} {hour}"),
            None,
        ),
        (
            "exclusive holds 2^63",
            format!("x {imax1} 0 {tok} {hour}"),
            None,
        ),
        (
            "shared holds 2^63",
            format!("s 0 {imax1} {tok} {hour}"),
            None,
        ),
        ("state token 0", format!("x 1 0 0 {hour}"), None),
        ("state token 2^63", format!("x 1 0 {imax1} {hour}"), None),
        (
            "state token 2^64",
            format!("x 1 0 18446744073709551616 {hour}"),
            None,
        ),
        ("state deadline 0", format!("x 1 0 {tok} 0"), None),
        (
            "state deadline 40 days ahead",
            format!("s 0 1 {tok} {far}"),
            None,
        ),
        ("an unknown kind", format!("q 1 0 {tok} {hour}"), None),
        ("an uppercase kind", format!("X 1 0 {tok} {hour}"), None),
        ("a state without its deadline", format!("x 1 0 {tok}"), None),
        ("a signed reply", format!("x 1 0 {tok} {hour} -5 r"), None),
        ("two spaces", format!("x  1 0 {tok} {hour}"), None),
        ("a trailing space", format!("x 1 0 {tok} {hour} "), None),
        ("a signed number", format!("x -1 0 {tok} {hour}"), None),
        ("a plus sign", format!("x 1 0 +{tok} {hour}"), None),
        ("an empty state", String::new(), None),
        (
            "a reply without a request id",
            format!("x 1 0 {tok} {hour} 5"),
            None,
        ),
        (
            "a request id in place of the reply",
            format!("x 1 0 {tok} {hour} r"),
            None,
        ),
        (
            "an empty request id",
            format!("x 1 0 {tok} {hour} 5 "),
            None,
        ),
        (
            "a request id of 65 bytes",
            format!("x 1 0 {tok} {hour} 5 {long_id}"),
            None,
        ),
        (
            "a reply of 2^63",
            format!("x 1 0 {tok} {hour} {imax1} r"),
            None,
        ),
        (
            "a request id as a fourth argument",
            format!("x 1 0 {tok} {hour} 5"),
            Some(b"r"),
        ),
        (
            "a DROP with a fourth argument",
            "DROP".to_string(),
            Some(b"x"),
        ),
    ];
    for (name, state, id) in states {
        let mut f = vec![b"o".to_vec(), state.into_bytes()];
        f.extend(id.map(<[u8]>::to_vec));
        cases.push((name.to_string(), f));
    }
    cases.push((
        "a state with an owner of 1025 bytes".into(),
        vec![long_owner, format!("x 1 0 {tok} {hour}").into_bytes()],
    ));
    cases.push((
        "a state with an empty owner".into(),
        vec![Vec::new(), format!("s 0 1 {tok} {hour}").into_bytes()],
    ));
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (name, fields))| {
            let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
            (name, apply(&format!("bad:{i}"), &refs))
        })
        .collect()
}

/// `LOCK.APPLY` lines that would break the family keys (`family_keys`),
/// each refused: the keys stay as they were. The flag says whether the
/// module checks it against the key (and logs its refusal) rather than
/// refusing its arguments.
fn hostile_family_applies(
    now: u64,
    token_of: &dyn Fn(&str, &[u8]) -> u64,
) -> Vec<(String, Vec<u8>, bool)> {
    let hour = now + HOUR;
    let tok = (now << 20) + 99;
    let t = |k: &str, o: &[u8]| token_of(k, o);
    vec![
        (
            "a reader beside the exclusive holder",
            state_line(
                "lock:target",
                b"reader-x",
                &format!("s 0 1 {tok} {hour}"),
                None,
            ),
            true,
        ),
        (
            "the exclusive holder with token 2^64-1",
            apply_line("lock:target", TARGET, 1, u64::MAX, hour),
            false,
        ),
        (
            "a permit holder on the exclusive lock",
            state_line(
                "lock:target",
                b"p-new",
                &format!("p 1 5 {tok} {hour}"),
                None,
            ),
            true,
        ),
        (
            "an exclusive holder beside the readers",
            state_line(
                "lock:shared",
                b"writer",
                &format!("s 1 0 {tok} {hour}"),
                None,
            ),
            true,
        ),
        (
            "a reader turned exclusive beside another",
            state_line(
                "lock:shared",
                READER1,
                &format!("s 1 1 {} {hour}", t("lock:shared", READER1)),
                None,
            ),
            true,
        ),
        (
            "a new reader with another reader's token",
            state_line(
                "lock:shared",
                b"reader-new",
                &format!("s 0 1 {} {hour}", t("lock:shared", READER2)),
                None,
            ),
            true,
        ),
        (
            "permits on the read/write lock",
            state_line(
                "lock:shared",
                b"p-new",
                &format!("p 3 5 {tok} {hour}"),
                None,
            ),
            true,
        ),
        (
            "permits over the limit",
            state_line("lock:sem", b"p-new", &format!("p 3 5 {tok} {hour}"), None),
            true,
        ),
        (
            "permits of another limit",
            state_line("lock:sem", b"p-new", &format!("p 1 6 {tok} {hour}"), None),
            true,
        ),
        (
            "a reader on the semaphore",
            state_line("lock:sem", b"p-new", &format!("s 0 1 {tok} {hour}"), None),
            true,
        ),
        (
            "a permit holder's record over the limit",
            state_line(
                "lock:sem",
                PERMIT1,
                &format!("p 5 5 {} {hour}", t("lock:sem", PERMIT1)),
                None,
            ),
            true,
        ),
        (
            "a permit holder with another holder's token",
            state_line(
                "lock:sem",
                b"p-new",
                &format!("p 1 5 {} {hour}", t("lock:sem", PERMIT2)),
                None,
            ),
            true,
        ),
        (
            "a remembered reply with an empty request id",
            state_line(
                "lock:idem",
                IDEM,
                &format!("x 1 0 {} {hour} 3 ", t("lock:idem", IDEM)),
                None,
            ),
            false,
        ),
    ]
    .into_iter()
    .map(|(n, l, checked)| (n.to_string(), l, checked))
    .collect()
}

/// Valid `LOCK.APPLY` lines of the state forms and what they leave:
/// `good:shared` (two readers, one with a remembered request), `good:sem`
/// (4 permits: p2 1, p3 1 after p1 was dropped), `good:down` (a downgrade:
/// holds 2), `good:lower` (a lowercase `drop`), `good:replace` (readers
/// replaced by one `x` holder), and `lock:sem` with `PERMIT2` holding 2
/// permits.
fn valid_family_applies(now: u64, t: u64, token_of: &dyn Fn(&str, &[u8]) -> u64) -> Vec<u8> {
    let d = now + HOUR;
    let line = |k: &str, o: &[u8], s: String| state_line(k, o, &s, None);
    [
        line("good:shared", b"r1", format!("s 0 2 {t} {d}")),
        // A request id is the rest of the state: any byte, spaces too.
        line(
            "good:shared",
            b"r2",
            format!("s 0 1 {} {d} 1 {REPLICATED_ID}", t + 1),
        ),
        line("good:sem", b"p1", format!("p 2 4 {} {d}", t + 2)),
        line("good:sem", b"p2", format!("p 1 4 {} {d}", t + 3)),
        line("good:sem", b"p3", format!("p 1 4 {} {d}", t + 4)),
        apply("good:sem", &[b"p1", b"DROP"]),
        apply("good:sem", &[b"ghost", b"DROP"]),
        line("good:down", b"d", format!("x 1 1 {} {d}", t + 5)),
        line("good:lower", b"w", format!("s 0 1 {} {d}", t + 6)),
        line("good:lower", b"w2", format!("s 0 1 {} {d}", t + 7)),
        apply("good:lower", &[b"w2", b"drop"]),
        line("good:replace", b"r1", format!("s 0 1 {} {d}", t + 8)),
        line("good:replace", b"r2", format!("s 0 1 {} {d}", t + 9)),
        line("good:replace", b"w", format!("x 1 0 {} {d}", t + 10)),
        line(
            "lock:sem",
            PERMIT2,
            format!("p 2 5 {} {d}", token_of("lock:sem", PERMIT2)),
        ),
    ]
    .concat()
}

/// Checks what the valid family lines left and that the family keys are
/// as `before` (with `PERMIT2`'s change); returns the failures.
fn family_after(
    c: &mut RawConn,
    before: &BTreeMap<&'static str, RawLockInfo>,
    t: u64,
    max_token: u64,
    writable: bool,
) -> Vec<String> {
    let mut bad = Vec::new();
    let t = t as i64;
    let expect: Vec<(&str, InfoMode, HolderSummary)> = vec![
        (
            "good:shared",
            InfoMode::Shared,
            vec![(b"r1".to_vec(), 2, t), (b"r2".to_vec(), 1, t + 1)],
        ),
        (
            "good:sem",
            InfoMode::Semaphore,
            vec![(b"p2".to_vec(), 1, t + 3), (b"p3".to_vec(), 1, t + 4)],
        ),
        (
            "good:down",
            InfoMode::Exclusive,
            vec![(b"d".to_vec(), 2, t + 5)],
        ),
        (
            "good:lower",
            InfoMode::Shared,
            vec![(b"w".to_vec(), 1, t + 6)],
        ),
        (
            "good:replace",
            InfoMode::Exclusive,
            vec![(b"w".to_vec(), 1, t + 10)],
        ),
    ];
    for (k, mode, holders) in expect {
        match info(c, k) {
            Some(i) if i.mode == mode && i.summary() == holders => {
                for v in lock_info_violations(&i, max_token) {
                    bad.push(format!("{k}: {v}"));
                }
            }
            other => bad.push(format!("{k}: expected {mode:?} {holders:?}, got {other:?}")),
        }
    }
    if let Some(i) = info(c, "good:sem") {
        if (i.limit, i.available) != (Some(4), Some(2)) {
            bad.push(format!(
                "good:sem: limit and available {:?}",
                (i.limit, i.available)
            ));
        }
    }
    // The retry of r2's remembered request is answered from it (a replica
    // takes no writes).
    let retry = if !writable {
        Reply::Int(1)
    } else {
        call(
            c,
            Cmd::new("LOCK.RELEASE")
                .arg("good:shared")
                .arg("r2")
                .arg("ID")
                .arg(REPLICATED_ID),
        )
    };
    if retry != Reply::Int(1) {
        bad.push(format!(
            "the retry of a replicated request answered {retry:?}"
        ));
    }
    for (k, i) in before {
        let mut want = i.summary();
        if *k == "lock:sem" {
            for h in &mut want {
                if h.0 == PERMIT2 {
                    h.1 = 2;
                }
            }
        }
        match info(c, k) {
            Some(got) if got.summary() == want && got.mode == i.mode => {}
            other => bad.push(format!("{k} changed: expected {want:?}, got {other:?}")),
        }
    }
    bad
}

/// Checks the keys of the hostile lines are absent; returns the failures.
fn hostile_keys_absent(c: &mut RawConn, hostile: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, (name, _)) in hostile.iter().enumerate() {
        let key = format!("bad:{i}");
        if call(c, Cmd::new("EXISTS").arg(&key)) != Reply::Int(0) {
            let info = call(c, Cmd::new("LOCK.INFO").arg(&key));
            bad.push(format!(
                "hostile LOCK.APPLY ({name}) was applied: {key} = {info:?}"
            ));
        }
    }
    bad
}

/// How many of the module's refusals of `LOCK.APPLY` the log shows.
fn refusals_logged(log: &str) -> usize {
    log.matches("fencelock: refused LOCK.APPLY").count()
}

#[test]
fn a_replica_refuses_hostile_lock_apply_from_its_master() {
    let saved = saved_rdb();
    let now = now_ms();
    let hostile = hostile_applies(now);
    let token_of = |k: &str, o: &[u8]| saved.token(k, o) as u64;
    let family = hostile_family_applies(now, &token_of);
    let good_token = (now << 20) + 4242;
    let family_token = (now << 20) + 5000;
    let mut stream = resp(&[b"SELECT", b"0"]);
    for (i, (_, line)) in hostile.iter().enumerate() {
        stream.extend_from_slice(line);
        if i == hostile.len() / 2 {
            stream.extend(apply_line("good:apply", b"g", 2, good_token, now + HOUR));
            stream.extend(valid_family_applies(now, family_token, &token_of));
        }
    }
    for (_, line, _) in &family {
        stream.extend_from_slice(line);
    }
    // Above the RESTORE limit but valid from a master.
    stream.extend(apply_line("good:top", b"t", 1, MAX_TOKEN + 1, now + HOUR));
    stream.extend(resp(&[b"SET", b"marker", b"done"]));
    let master = FakeMaster::start(saved.rdb.clone(), stream);
    let (_dir, p) = replica_of(&master, &[]);
    let mut c = p.conn();
    let deadline = Instant::now() + PATIENCE;
    while call(&mut c, Cmd::new("GET").arg("marker")) != Reply::Bulk(b"done".to_vec()) {
        assert!(
            Instant::now() < deadline,
            "the replica did not apply the stream\n{}",
            p.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut failures = hostile_keys_absent(&mut c, &hostile);
    match info(&mut c, "good:apply")
        .as_ref()
        .and_then(|i| i.exclusive())
    {
        Some(h) if h.owner == b"g" && h.holds == 2 && h.token == good_token as i64 => {}
        other => failures.push(format!("the valid LOCK.APPLY gave {other:?}")),
    }
    match info(&mut c, "good:top")
        .as_ref()
        .and_then(|i| i.exclusive())
    {
        Some(h) if h.owner == b"t" && h.token == (MAX_TOKEN + 1) as i64 => {}
        other => failures.push(format!(
            "a LOCK.APPLY with token 0x7000000000000001 (valid from a master) gave {other:?}"
        )),
    }
    failures.extend(family_after(
        &mut c,
        &saved.infos,
        family_token,
        MAX_SERVER_TOKEN,
        false,
    ));
    // Every refusal is the module's, and said so in the log (not a
    // failure of something else).
    let refused = refusals_logged(&p.log());
    let checked = family.iter().filter(|f| f.2).count();
    if refused < checked {
        failures.push(format!(
            "the log shows {refused} refused LOCK.APPLY, at least {checked} expected"
        ));
    }
    assert_eq!(call(&mut c, Cmd::new("PING")), Reply::Status("PONG".into()));
    let signs = crash_signs(&p.log());
    if !signs.is_empty() {
        failures.push(format!("crash signatures {signs:?}"));
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        p.report()
    );
}

/// The AOF increment file named in the manifest (the last one).
fn incr_aof(dir: &Path) -> std::path::PathBuf {
    let aof_dir = dir.join("appendonlydir");
    let manifest = std::fs::read_to_string(aof_dir.join("appendonly.aof.manifest")).unwrap();
    let name = manifest
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .ends_with(&["type", "i"])
        })
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|w| *w == "file")
                .and_then(|p| f.get(p + 1))
                .map(|s| s.to_string())
        })
        .collect::<Vec<_>>()
        .pop()
        .unwrap_or_else(|| panic!("no increment file in the manifest:\n{manifest}"));
    aof_dir.join(name)
}

#[test]
fn aof_with_hostile_lock_apply_lines_loads_only_the_valid_locks() {
    let mut s = Server::config()
        .arg("appendonly", "yes")
        .arg("aof-use-rdb-preamble", "no")
        .arg("appendfsync", "always")
        .start();
    let mut c = RawConn::connect(s.port).unwrap();
    let t1 = acquire(&mut c, "good:1", b"g1", HOUR);
    let t2 = acquire(&mut c, "good:2", b"g2", HOUR);
    acquire(&mut c, "good:2", b"g2", HOUR);
    let before = family_keys(&mut c);
    call(&mut c, Cmd::new("SET").arg("str").arg("v"));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = call(&mut c, Cmd::new("INFO").arg("persistence"));
        if info_value(&info, "aof_rewrite_in_progress") == Some(0)
            && info_value(&info, "aof_rewrite_scheduled") == Some(0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "AOF rewrite did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    s.shutdown(false);

    let now = now_ms();
    let hostile = hostile_applies(now);
    let token_of = |k: &str, o: &[u8]| before[k].holder(o).unwrap().token as u64;
    let family = hostile_family_applies(now, &token_of);
    let ok_token = (now << 20) + 12_345;
    let family_token = (now << 20) + 20_000;
    let max_owner = vec![b'm'; 1024];
    let mut tail = Vec::new();
    for (i, (_, line)) in hostile.iter().enumerate() {
        tail.extend_from_slice(line);
        match i {
            3 => tail.extend(apply_line(
                "applied:ok",
                b"owner-ok",
                3,
                ok_token,
                now + HOUR,
            )),
            7 => tail.extend(apply_line(
                "applied:max",
                &max_owner,
                i64::MAX as u64,
                MAX_TOKEN,
                now + 30 * DAY_MS,
            )),
            11 => tail.extend(apply_line("applied:past", b"owner-p", 1, ok_token + 1, 1)),
            20 => tail.extend(valid_family_applies(now, family_token, &token_of)),
            _ => {}
        }
    }
    for (_, line, _) in &family {
        tail.extend_from_slice(line);
    }
    // Above the RESTORE limit but valid in a file a server wrote.
    tail.extend(apply_line(
        "applied:top",
        b"owner-t",
        1,
        MAX_TOKEN + 1,
        now + HOUR,
    ));
    // Hostile changes of an existing lock: it stays as it was.
    tail.extend(apply_line("good:1", b"intruder", 1, u64::MAX, now + HOUR));
    tail.extend(resp(&[
        b"LOCK.ACQUIRE",
        b"good:1",
        b"intruder",
        b"1000",
        b"WAIT",
        b"0",
    ]));
    // Inside MULTI/EXEC: the hostile ones refused, the valid one applied.
    tail.extend(resp(&[b"MULTI"]));
    tail.extend(apply(
        "bad:multi",
        &[
            b"o",
            b"1",
            u64::MAX.to_string().as_bytes(),
            (now + HOUR).to_string().as_bytes(),
        ],
    ));
    tail.extend(state_line(
        "bad:multi",
        b"o",
        &format!("p 9 3 {} {}", ok_token + 3, now + HOUR),
        None,
    ));
    tail.extend(apply_line(
        "applied:multi",
        b"owner-m",
        1,
        ok_token + 2,
        now + HOUR,
    ));
    tail.extend(resp(&[b"EXEC"]));
    let incr = incr_aof(s.dir());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&incr)
        .unwrap();
    f.write_all(&tail).unwrap();
    drop(f);

    s.restart();
    let mut c = RawConn::connect(s.port).unwrap();
    let mut failures = hostile_keys_absent(&mut c, &hostile);
    if call(&mut c, Cmd::new("EXISTS").arg("bad:multi")) != Reply::Int(0) {
        failures.push("a hostile LOCK.APPLY inside MULTI was applied".into());
    }
    let mut expect = |k: &str, owner: &[u8], holds: i64, token: i64| match info(&mut c, k) {
        Some(i)
            if i.exclusive()
                .map(|h| (h.owner.as_slice(), h.holds, h.token))
                == Some((owner, holds, token))
                && lock_info_violations(&i, MAX_SERVER_TOKEN).is_empty() => {}
        other => failures.push(format!(
            "{k}: expected owner {:?} holds {holds} token {token:#x}, got {other:?}",
            String::from_utf8_lossy(&owner[..owner.len().min(20)])
        )),
    };
    expect("good:1", b"g1", 1, t1);
    expect("good:2", b"g2", 2, t2);
    expect("applied:ok", b"owner-ok", 3, ok_token as i64);
    expect("applied:max", &max_owner, i64::MAX, MAX_TOKEN as i64);
    expect("applied:multi", b"owner-m", 1, ok_token as i64 + 2);
    expect("applied:top", b"owner-t", 1, (MAX_TOKEN + 1) as i64);
    failures.extend(family_after(
        &mut c,
        &before,
        family_token,
        MAX_SERVER_TOKEN,
        true,
    ));
    if call(&mut c, Cmd::new("GET").arg("str")) != Reply::Bulk(b"v".to_vec()) {
        failures.push("the string key is lost".into());
    }
    let fresh = acquire(&mut c, "fresh", b"me", 60_000);
    if fresh <= (MAX_TOKEN + 1) as i64 {
        failures.push(format!(
            "fresh token {fresh:#x} is not above the AOF's tokens"
        ));
    }
    let until = Instant::now() + PATIENCE;
    while call(&mut c, Cmd::new("EXISTS").arg("applied:past")) != Reply::Int(0) {
        if Instant::now() > until {
            failures.push("applied:past (deadline 1) still exists".into());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = refusals_logged(&s.log());
    let checked = family.iter().filter(|f| f.2).count();
    if refused < checked {
        failures.push(format!(
            "the log shows {refused} refused LOCK.APPLY, at least {checked} expected"
        ));
    }
    assert_eq!(call(&mut c, Cmd::new("PING")), Reply::Status("PONG".into()));
    let signs = crash_signs(&s.log());
    if !signs.is_empty() {
        failures.push(format!("crash signatures {signs:?}"));
    }
    assert!(
        failures.is_empty(),
        "{}\n--- log:\n{}",
        failures.join("\n"),
        s.log()
    );
}
