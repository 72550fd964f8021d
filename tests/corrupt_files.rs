//! Issue #9, files and streams: a damaged or hostile RDB file, a corrupt
//! full-sync payload, hostile `LOCK.APPLY` in the replication stream and in
//! the AOF can never crash the server or make a fencing token repeat.
//!
//! - An RDB file whose lock value is damaged (cut, truncated, wrong
//!   opcodes, huge lengths, other module id or encoding version) or whose
//!   lock fields are well-formed but out of range makes Redis stop the way
//!   it stops on its own corrupt files: it reports the file and exits by
//!   itself, never by a signal, an assertion or a module panic. (Redis 7.0
//!   then runs its RDB checker and exits with the checker's verdict: 1, or
//!   0 when the file's structure is sound and only the module refused a
//!   value; its checker also never ends on a module value cut at a field
//!   boundary — see `hostile::clean_corrupt_rdb_exit`.) Fields at their
//!   limits load, and the next token is above them.
//! - A replica whose master (a fake one in the test) sends a corrupt RDB on
//!   full sync exits cleanly or refuses and retries; it never aborts.
//! - A replica refuses hostile `LOCK.APPLY` from its master and keeps
//!   serving; the valid ones are applied.
//! - An AOF with hostile `LOCK.APPLY` lines beside valid ones loads: the
//!   valid locks exist, the hostile ones do not.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::hostile::{
    clean_corrupt_rdb_exit, crash_signs, find, find_lock_value, fix_trailing_crc, info_value,
    lock_info_violations, module_type_id, now_ms, parse_lock_info, rdb_len, Cmd, ModuleValue,
    Outcome, Proc, RawConn, RawLockInfo, Reply, DAY_MS, MAX_SERVER_TOKEN, MAX_TOKEN,
    OPCODE_MODULE_AUX, OP_DOUBLE, OP_STRING, OP_UINT,
};
use testkit::Server;

/// Plain-stored owners (≤ 20 bytes, not decimal: never compressed or
/// integer-encoded by Redis) to find the values in the file.
const TARGET: &[u8] = b"target-owner-7";
const PAST: &[u8] = b"past-owner-01";
const SHORT: &[u8] = b"short-owner-01";
const OTHER: &[u8] = b"someone-else";

/// How long a server may take to exit, serve, or retry (a slow machine).
const PATIENCE: Duration = Duration::from_secs(60);

/// A saved RDB file: locks (the target with holds 2), a string, a list, a
/// hash; the target's token.
struct Saved {
    rdb: Vec<u8>,
    target_token: i64,
}

fn call(c: &mut RawConn, cmd: Cmd) -> Reply {
    c.call(&cmd).expect("server answers")
}

fn acquire(c: &mut RawConn, key: &str, owner: &[u8], ttl: u64) -> i64 {
    let r = call(
        c,
        Cmd::new("LOCK.ACQUIRE")
            .arg(key)
            .arg(owner)
            .arg(ttl.to_string()),
    );
    r.as_int()
        .unwrap_or_else(|| panic!("LOCK.ACQUIRE {key}: {r:?}"))
}

fn saved_rdb() -> Saved {
    let s = Server::start();
    let mut c = RawConn::connect(s.port).unwrap();
    let target_token = acquire(&mut c, "lock:target", TARGET, 3_600_000);
    acquire(&mut c, "lock:target", TARGET, 3_600_000);
    acquire(&mut c, "lock:other", OTHER, 3_600_000);
    acquire(&mut c, "lock:past", PAST, 3_600_000);
    acquire(&mut c, "lock:short", SHORT, 3_600_000);
    call(&mut c, Cmd::new("SET").arg("str").arg("v"));
    call(
        &mut c,
        Cmd::new("RPUSH").arg("list").arg("a").arg("b").arg("c"),
    );
    call(&mut c, Cmd::new("HSET").arg("hash").arg("f").arg("v"));
    assert_eq!(call(&mut c, Cmd::new("SAVE")), Reply::Status("OK".into()));
    let rdb = std::fs::read(s.dir().join("dump.rdb")).unwrap();
    for owner in [TARGET, PAST, SHORT, OTHER] {
        assert!(
            find_lock_value(&rdb, owner).is_some(),
            "lock value of owner {:?} not found in the RDB file",
            String::from_utf8_lossy(owner)
        );
    }
    Saved { rdb, target_token }
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

/// The parsed value of `owner`'s lock and its position.
fn value_of(rdb: &[u8], owner: &[u8]) -> (ModuleValue, usize, usize) {
    let (s, e) = find_lock_value(rdb, owner).unwrap();
    let (v, _) = ModuleValue::parse_value_at(rdb, s).unwrap();
    (v, s, e)
}

/// The file with `owner`'s lock value changed by `f`.
fn edited(rdb: &[u8], owner: &[u8], f: impl FnOnce(&mut ModuleValue)) -> Vec<u8> {
    let (mut v, _, _) = value_of(rdb, owner);
    f(&mut v);
    with_value(rdb, owner, &v.encode_value())
}

/// The file with the module's aux field (the highest token issued)
/// replaced by `token`. Layout: opcode 0xf7, module id, `when` (as an
/// unsigned field), the module's unsigned field, EOF mark.
fn with_aux_token(rdb: &[u8], token: u64) -> Vec<u8> {
    let mut pat = vec![OPCODE_MODULE_AUX];
    pat.extend(rdb_len(testkit::hostile::fencelock_type_id()));
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

/// Runs every file; each must make the server exit cleanly. Reports all
/// failures together.
fn all_exit_cleanly(cases: Vec<(String, Vec<u8>)>) {
    let mut failures = Vec::new();
    for (name, file) in cases {
        let (_dir, mut p) = start_on(&file, &[]);
        match clean_corrupt_rdb_exit(&mut p, PATIENCE) {
            Ok(how) => println!("{name}: refused, {how}"),
            Err(why) => {
                // What a server that loaded it shows.
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
                println!("{name}: FAILED: {why}{state}");
                failures.push(format!("{name}: {why}{state}\n{}", p.report()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} files did not make the server stop cleanly:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn damaged_lock_values_in_an_rdb_file_make_the_server_exit_cleanly() {
    let saved = saved_rdb();
    let rdb = &saved.rdb;
    let (v, s, e) = value_of(rdb, TARGET);
    let id_len = v.module_id.len();
    // Field positions inside the file: opcode byte, then the value.
    let mut field_at = Vec::new();
    let mut p = s + id_len;
    for f in &v.fields {
        field_at.push(p);
        p += rdb_len(f.opcode).len() + f.value.len();
    }
    let cut = |n: usize| rdb[..n].to_vec();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("file cut inside the module id".into(), cut(s + 4)),
        ("file cut after the module id".into(), cut(s + id_len)),
        ("file cut inside the owner".into(), cut(field_at[0] + 6)),
        ("file cut inside the token".into(), cut(field_at[2] + 3)),
        ("file cut inside the deadline".into(), cut(field_at[3] + 5)),
        ("file cut before the EOF mark".into(), cut(e - 1)),
    ];
    let mut removed = rdb.clone();
    removed.drain(field_at[1]..field_at[2]);
    fix_trailing_crc(&mut removed);
    cases.push(("the holds field cut out".into(), removed));
    let mut removed = rdb.clone();
    removed.drain(field_at[1] + 1..field_at[1] + 6);
    fix_trailing_crc(&mut removed);
    cases.push(("five bytes cut out after the owner".into(), removed));
    let mut inserted = rdb.clone();
    inserted.insert(field_at[1], 0x02);
    fix_trailing_crc(&mut inserted);
    cases.push(("a byte inserted after the owner".into(), inserted));
    cases.push((
        "owner opcode string -> unsigned".into(),
        edited(rdb, TARGET, |v| v.fields[0].opcode = OP_UINT),
    ));
    cases.push((
        "holds opcode unsigned -> double".into(),
        edited(rdb, TARGET, |v| v.fields[1].opcode = OP_DOUBLE),
    ));
    cases.push((
        "token opcode unsigned -> string".into(),
        edited(rdb, TARGET, |v| v.fields[2].opcode = OP_STRING),
    ));
    cases.push((
        "EOF mark 0 -> 1".into(),
        edited(rdb, TARGET, |v| v.eof = vec![1]),
    ));
    cases.push((
        "owner length 2^62".into(),
        edited(rdb, TARGET, |v| {
            let mut nv = rdb_len(1 << 62);
            nv.extend_from_slice(TARGET);
            v.fields[0].value = nv;
        }),
    ));
    cases.push((
        "owner length one byte too long".into(),
        edited(rdb, TARGET, |v| {
            let mut nv = rdb_len(TARGET.len() as u64 + 1);
            nv.extend_from_slice(TARGET);
            v.fields[0].value = nv;
        }),
    ));
    cases.push((
        "a fifth field".into(),
        edited(rdb, TARGET, |v| {
            v.fields.push(testkit::hostile::RawField::uint(7));
        }),
    ));
    cases.push((
        "the deadline field missing".into(),
        edited(rdb, TARGET, |v| {
            v.fields.pop();
        }),
    ));
    cases.push((
        "encoding version 2".into(),
        edited(rdb, TARGET, |v| {
            v.module_id = rdb_len(module_type_id("fencelock", 2));
        }),
    ));
    cases.push((
        "encoding version 0".into(),
        edited(rdb, TARGET, |v| {
            v.module_id = rdb_len(module_type_id("fencelock", 0));
        }),
    ));
    cases.push((
        "another module type".into(),
        edited(rdb, TARGET, |v| {
            v.module_id = rdb_len(module_type_id("otherlock", 1));
        }),
    ));
    all_exit_cleanly(cases);
}

#[test]
fn rdb_lock_fields_out_of_range_make_the_server_exit_cleanly() {
    let saved = saved_rdb();
    let rdb = &saved.rdb;
    let now = now_ms();
    let hour = 3_600_000;
    let lock = |owner: &[u8], holds: u64, token: u64, deadline: u64| {
        with_value(
            rdb,
            TARGET,
            &ModuleValue::lock(owner, holds, token, deadline).encode_value(),
        )
    };
    let t = 1u64 << 40;
    let cases: Vec<(String, Vec<u8>)> = vec![
        (
            "token 2^63".into(),
            lock(TARGET, 1, MAX_SERVER_TOKEN + 1, now + hour),
        ),
        ("token 2^64-1".into(), lock(TARGET, 1, u64::MAX, now + hour)),
        ("token 0".into(), lock(TARGET, 1, 0, now + hour)),
        ("holds 0".into(), lock(TARGET, 0, t, now + hour)),
        (
            "holds 2^63".into(),
            lock(TARGET, i64::MAX as u64 + 1, t, now + hour),
        ),
        ("holds 2^64-1".into(), lock(TARGET, u64::MAX, t, now + hour)),
        (
            "owner of 100,000 bytes".into(),
            lock(&[b'o'; 100_000], 1, t, now + hour),
        ),
        (
            "owner of 1025 bytes".into(),
            lock(&[b'o'; 1025], 1, t, now + hour),
        ),
        ("empty owner".into(), lock(b"", 1, t, now + hour)),
        ("deadline 2^62".into(), lock(TARGET, 1, t, 1 << 62)),
        ("deadline 2^64-1".into(), lock(TARGET, 1, t, u64::MAX)),
        ("deadline 0".into(), lock(TARGET, 1, t, 0)),
        (
            "deadline 40 days ahead".into(),
            lock(TARGET, 1, t, now + 40 * DAY_MS),
        ),
        (
            "highest-token aux field 2^63".into(),
            with_aux_token(rdb, MAX_SERVER_TOKEN + 1),
        ),
        (
            "highest-token aux field 2^64-1".into(),
            with_aux_token(rdb, u64::MAX),
        ),
    ];
    all_exit_cleanly(cases);
}

#[test]
fn rdb_lock_fields_at_their_limits_load_and_obey_the_rules() {
    let saved = saved_rdb();
    let now = now_ms();
    let owner = vec![b'w'; 1024];
    let holds = i64::MAX as u64;
    let deadline = now + 30 * DAY_MS;
    let mut rdb = with_value(
        &saved.rdb,
        TARGET,
        &ModuleValue::lock(&owner, holds, MAX_TOKEN, deadline).encode_value(),
    );
    rdb = with_value(&rdb, PAST, &ModuleValue::lock(PAST, 1, 5, 1).encode_value());
    let short_deadline = now + 3000;
    rdb = with_value(
        &rdb,
        SHORT,
        &ModuleValue::lock(SHORT, 1, 6, short_deadline).encode_value(),
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
    let info = |c: &mut RawConn, k: &str| -> Option<RawLockInfo> {
        parse_lock_info(&call(c, Cmd::new("LOCK.INFO").arg(k))).unwrap()
    };
    let t = info(&mut c, "lock:target").expect("the lock at its limits is loaded");
    assert!(
        lock_info_violations(&t, MAX_SERVER_TOKEN).is_empty(),
        "{t:?}"
    );
    assert_eq!(
        (t.owner.as_slice(), t.holds, t.token),
        (owner.as_slice(), i64::MAX, MAX_TOKEN as i64)
    );
    assert!(
        t.ttl > 29 * DAY_MS as i64 && t.ttl <= 30 * DAY_MS as i64,
        "ttl {}",
        t.ttl
    );
    let other = info(&mut c, "lock:other").expect("the other lock is loaded");
    assert_eq!(other.owner, OTHER);
    assert_eq!(
        info(&mut c, "lock:past"),
        None,
        "a passed deadline is never shown"
    );
    // The next fresh grant is above every token in the file.
    let fresh = acquire(&mut c, "fresh", b"me", 60_000);
    assert!(fresh > MAX_TOKEN as i64, "fresh token {fresh:#x}");
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
    assert!(t2.holds >= 1 && t2.token == MAX_TOKEN as i64, "{t2:?}");
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
    // The passed and the short lease go on their own.
    let until =
        Instant::now() + PATIENCE + Duration::from_millis(short_deadline.saturating_sub(now_ms()));
    for k in ["lock:past", "lock:short"] {
        loop {
            if call(&mut c, Cmd::new("EXISTS").arg(k)) == Reply::Int(0) {
                break;
            }
            assert!(
                Instant::now() < until,
                "{k} still exists long after its deadline"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let held = info_value(&call(&mut c, Cmd::new("INFO").arg("lock")), "lock_held");
    assert_eq!(held, Some(3), "lock:target, lock:other, fresh");
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
            with_value(
                &saved.rdb,
                TARGET,
                &ModuleValue::lock(TARGET, 2, last, now + 3_600_000).encode_value(),
            ),
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
        let before = call(&mut c, Cmd::new("LOCK.INFO").arg("lock:target"));
        // No token is left: a fresh grant fails and changes nothing.
        let r = call(
            &mut c,
            Cmd::new("LOCK.ACQUIRE").arg("fresh").arg("me").arg("60000"),
        );
        assert!(
            matches!(&r, Reply::Error(e) if e.starts_with("ERR")),
            "{name}: a fresh grant answered {r:?}"
        );
        assert_eq!(
            call(&mut c, Cmd::new("EXISTS").arg("fresh")),
            Reply::Int(0),
            "{name}"
        );
        // Re-entry needs no new token.
        let t = parse_lock_info(&before)
            .unwrap()
            .expect("lock:target loaded");
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
        let after = parse_lock_info(&call(&mut c, Cmd::new("LOCK.INFO").arg("lock:target")))
            .unwrap()
            .expect("lock:target after DEBUG RELOAD");
        assert_eq!((after.token, after.holds), (t.token, t.holds + 1), "{name}");
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
    let (v, s, _) = value_of(rdb, TARGET);
    let token_at = s
        + v.module_id.len()
        + v.fields[..2]
            .iter()
            .map(|f| rdb_len(f.opcode).len() + f.value.len())
            .sum::<usize>();
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("cut inside the lock value", rdb[..token_at + 3].to_vec()),
        (
            "owner opcode string -> unsigned",
            edited(rdb, TARGET, |v| v.fields[0].opcode = OP_UINT),
        ),
        (
            "token 2^64-1",
            with_value(
                rdb,
                TARGET,
                &ModuleValue::lock(TARGET, 1, u64::MAX, now_ms() + 3_600_000).encode_value(),
            ),
        ),
        (
            "owner length 2^62",
            edited(rdb, TARGET, |v| {
                let mut nv = rdb_len(1 << 62);
                nv.extend_from_slice(TARGET);
                v.fields[0].value = nv;
            }),
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

/// RESP encoding of a command.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut c = Cmd::default();
    for a in args {
        c = c.arg(a);
    }
    c.encode()
}

/// `LOCK.APPLY` lines that every load path must refuse, each on its own
/// key `bad:<n>`, plus their descriptions.
fn hostile_applies(now: u64) -> Vec<(String, Vec<u8>)> {
    let hour = (now + 3_600_000).to_string();
    let tok = ((now << 20) + 77).to_string();
    let big_owner = vec![b'o'; 100_000];
    let long_owner = vec![b'o'; 1025];
    let umax = u64::MAX.to_string();
    let imax1 = (i64::MAX as u64 + 1).to_string();
    let far = (now + 40 * DAY_MS).to_string();
    let huge = (1u64 << 62).to_string();
    let cases: Vec<(&str, Vec<&[u8]>)> = vec![
        (
            "token 2^63",
            vec![&b"o"[..], b"1", imax1.as_bytes(), hour.as_bytes()],
        ),
        (
            "token 2^64-1",
            vec![&b"o"[..], b"1", umax.as_bytes(), hour.as_bytes()],
        ),
        ("token 0", vec![&b"o"[..], b"1", b"0", hour.as_bytes()]),
        ("token -1", vec![&b"o"[..], b"1", b"-1", hour.as_bytes()]),
        ("token +5", vec![&b"o"[..], b"1", b"+5", hour.as_bytes()]),
        ("token 1.5", vec![&b"o"[..], b"1", b"1.5", hour.as_bytes()]),
        (
            "owner of 1025 bytes",
            vec![long_owner.as_slice(), b"1", tok.as_bytes(), hour.as_bytes()],
        ),
        (
            "owner of 100,000 bytes",
            vec![big_owner.as_slice(), b"1", tok.as_bytes(), hour.as_bytes()],
        ),
        (
            "empty owner",
            vec![&b""[..], b"1", tok.as_bytes(), hour.as_bytes()],
        ),
        (
            "holds 0",
            vec![&b"o"[..], b"0", tok.as_bytes(), hour.as_bytes()],
        ),
        (
            "holds 2^63",
            vec![&b"o"[..], imax1.as_bytes(), tok.as_bytes(), hour.as_bytes()],
        ),
        (
            "holds -5",
            vec![&b"o"[..], b"-5", tok.as_bytes(), hour.as_bytes()],
        ),
        (
            "holds abc",
            vec![&b"o"[..], b"abc", tok.as_bytes(), hour.as_bytes()],
        ),
        (
            "holds empty",
            vec![&b"o"[..], b"", tok.as_bytes(), hour.as_bytes()],
        ),
        (
            "deadline 40 days ahead",
            vec![&b"o"[..], b"1", tok.as_bytes(), far.as_bytes()],
        ),
        (
            "deadline 2^62",
            vec![&b"o"[..], b"1", tok.as_bytes(), huge.as_bytes()],
        ),
        ("deadline 0", vec![&b"o"[..], b"1", tok.as_bytes(), b"0"]),
        (
            "deadline ' 5'",
            vec![&b"o"[..], b"1", tok.as_bytes(), b" 5"],
        ),
        ("three fields", vec![&b"o"[..], b"1", tok.as_bytes()]),
        (
            "five fields",
            vec![&b"o"[..], b"1", tok.as_bytes(), hour.as_bytes(), b"1"],
        ),
    ];
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (name, fields))| {
            let key = format!("bad:{i}");
            let mut args: Vec<&[u8]> = vec![b"LOCK.APPLY", key.as_bytes()];
            args.extend(fields);
            (name.to_string(), resp(&args))
        })
        .collect()
}

/// A valid `LOCK.APPLY` line.
fn apply_line(key: &str, owner: &[u8], holds: u64, token: u64, deadline: u64) -> Vec<u8> {
    resp(&[
        b"LOCK.APPLY",
        key.as_bytes(),
        owner,
        holds.to_string().as_bytes(),
        token.to_string().as_bytes(),
        deadline.to_string().as_bytes(),
    ])
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

#[test]
fn a_replica_refuses_hostile_lock_apply_from_its_master() {
    let saved = saved_rdb();
    let now = now_ms();
    let hostile = hostile_applies(now);
    let good_token = (now << 20) + 4242;
    let mut stream = resp(&[b"SELECT", b"0"]);
    for (i, (_, line)) in hostile.iter().enumerate() {
        stream.extend_from_slice(line);
        if i == hostile.len() / 2 {
            stream.extend(apply_line(
                "good:apply",
                b"g",
                2,
                good_token,
                now + 3_600_000,
            ));
        }
    }
    // Above the RESTORE limit but valid from a master.
    stream.extend(apply_line(
        "good:top",
        b"t",
        1,
        MAX_TOKEN + 1,
        now + 3_600_000,
    ));
    // A hostile change of a lock the replica has: must leave it as it is.
    stream.extend(apply_line(
        "lock:target",
        b"intruder",
        1,
        u64::MAX,
        now + 3_600_000,
    ));
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
    let good = parse_lock_info(&call(&mut c, Cmd::new("LOCK.INFO").arg("good:apply"))).unwrap();
    match good {
        Some(i) if i.owner == b"g" && i.holds == 2 && i.token == good_token as i64 => {}
        other => failures.push(format!("the valid LOCK.APPLY gave {other:?}")),
    }
    let top = parse_lock_info(&call(&mut c, Cmd::new("LOCK.INFO").arg("good:top"))).unwrap();
    match top {
        Some(i) if i.owner == b"t" && i.token == (MAX_TOKEN + 1) as i64 => {}
        other => failures.push(format!(
            "a LOCK.APPLY with token 0x7000000000000001 (valid from a master) gave {other:?}"
        )),
    }
    let target = parse_lock_info(&call(&mut c, Cmd::new("LOCK.INFO").arg("lock:target"))).unwrap();
    match target {
        Some(i) if i.owner == TARGET && i.token == saved.target_token && i.holds == 2 => {}
        other => failures.push(format!("lock:target after a hostile LOCK.APPLY: {other:?}")),
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
    let t1 = acquire(&mut c, "good:1", b"g1", 3_600_000);
    let t2 = acquire(&mut c, "good:2", b"g2", 3_600_000);
    acquire(&mut c, "good:2", b"g2", 3_600_000);
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
    let ok_token = (now << 20) + 12_345;
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
                now + 3_600_000,
            )),
            7 => tail.extend(apply_line(
                "applied:max",
                &max_owner,
                i64::MAX as u64,
                MAX_TOKEN,
                now + 30 * DAY_MS,
            )),
            11 => tail.extend(apply_line("applied:past", b"owner-p", 1, ok_token + 1, 1)),
            _ => {}
        }
    }
    // Above the RESTORE limit but valid in a file a server wrote.
    tail.extend(apply_line(
        "applied:top",
        b"owner-t",
        1,
        MAX_TOKEN + 1,
        now + 3_600_000,
    ));
    // Hostile changes of an existing lock: it stays as it was.
    tail.extend(apply_line(
        "good:1",
        b"intruder",
        1,
        u64::MAX,
        now + 3_600_000,
    ));
    tail.extend(resp(&[
        b"LOCK.ACQUIRE",
        b"good:1",
        b"intruder",
        b"1000",
        b"WAIT",
        b"0",
    ]));
    // Inside MULTI/EXEC: the hostile one refused, the valid one applied.
    tail.extend(resp(&[b"MULTI"]));
    tail.extend(resp(&[
        b"LOCK.APPLY",
        b"bad:multi",
        b"o",
        b"1",
        u64::MAX.to_string().as_bytes(),
        (now + 3_600_000).to_string().as_bytes(),
    ]));
    tail.extend(apply_line(
        "applied:multi",
        b"owner-m",
        1,
        ok_token + 2,
        now + 3_600_000,
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
    let info = |c: &mut RawConn, k: &str| -> Option<RawLockInfo> {
        parse_lock_info(&call(c, Cmd::new("LOCK.INFO").arg(k))).unwrap()
    };
    let mut failures = hostile_keys_absent(&mut c, &hostile);
    if call(&mut c, Cmd::new("EXISTS").arg("bad:multi")) != Reply::Int(0) {
        failures.push("the hostile LOCK.APPLY inside MULTI was applied".into());
    }
    let expect = |failures: &mut Vec<String>,
                  k: &str,
                  got: Option<RawLockInfo>,
                  owner: &[u8],
                  holds: i64,
                  token: i64| {
        match got {
            Some(i)
                if i.owner == owner
                    && i.holds == holds
                    && i.token == token
                    && lock_info_violations(&i, MAX_SERVER_TOKEN).is_empty() => {}
            other => failures.push(format!(
                "{k}: expected owner {:?} holds {holds} token {token:#x}, got {other:?}",
                String::from_utf8_lossy(&owner[..owner.len().min(20)])
            )),
        }
    };
    let g1 = info(&mut c, "good:1");
    expect(&mut failures, "good:1", g1, b"g1", 1, t1);
    let g2 = info(&mut c, "good:2");
    expect(&mut failures, "good:2", g2, b"g2", 2, t2);
    let ok = info(&mut c, "applied:ok");
    expect(
        &mut failures,
        "applied:ok",
        ok,
        b"owner-ok",
        3,
        ok_token as i64,
    );
    let max = info(&mut c, "applied:max");
    expect(
        &mut failures,
        "applied:max",
        max,
        &max_owner,
        i64::MAX,
        MAX_TOKEN as i64,
    );
    let multi = info(&mut c, "applied:multi");
    expect(
        &mut failures,
        "applied:multi",
        multi,
        b"owner-m",
        1,
        ok_token as i64 + 2,
    );
    if call(&mut c, Cmd::new("GET").arg("str")) != Reply::Bulk(b"v".to_vec()) {
        failures.push("the string key is lost".into());
    }
    let top = info(&mut c, "applied:top");
    expect(
        &mut failures,
        "applied:top",
        top,
        b"owner-t",
        1,
        (MAX_TOKEN + 1) as i64,
    );
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
