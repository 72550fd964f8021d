//! Issue #9, arguments: no argument vector of any `LOCK.*` command can
//! crash the server, and a refused one changes nothing.
//!
//! ≥ 10,000 seeded vectors over `LOCK.ACQUIRE`, `LOCK.RENEW`,
//! `LOCK.RELEASE`, `LOCK.FORCERELEASE`, `LOCK.INFO` and `LOCK.APPLY`: random
//! arity 0..=10 or the command's own shape with an argument dropped, added
//! or replaced; binary and empty strings, huge, signed and malformed
//! numbers (spaces, plus signs, leading zeros, exponents, full-width
//! digits), repeated and mixed-case `WAIT`, 1024- and 1025-byte owners,
//! keys that hold locks, a string, a list, and nothing. Some vectors run
//! inside `MULTI`/`EXEC` or a Lua script.
//!
//! For every vector: the server answers; every error reply starts with an
//! uppercase code; an error or a reply that means "nothing done" (nil, 0,
//! `LOCK.INFO`) leaves `DEBUG DIGEST` unchanged (unless a lease expired in
//! that instant: `lock_expired` moved); `LOCK.APPLY` from a client is always
//! refused with `ERR`. A valid `WAIT` on a held key blocks: a second
//! connection keeps sending `CLIENT UNBLOCK` for the fuzzing client, so the
//! wait ends (nil, or an `UNBLOCKED` error) and the pipeline goes on.
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
    has_error_code, info_value, log_excerpt, Cmd, RawConn, Reply, Rng, TimeBudget,
};
use testkit::Server;

const DEFAULT_SEED: u64 = 0xa7a5_f00d_0009;
const BATCH: usize = 100;
const MAX_REPORTED: usize = 40;

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
    match rng.below(15) {
        0 | 1 => b"held:a".to_vec(),
        2 => b"held:bin".to_vec(),
        3 => b"held:long".to_vec(),
        4 => b"free".to_vec(),
        5 => b"str".to_vec(),
        6 => b"list".to_vec(),
        7 => b"k0".to_vec(),
        8 => b"k1".to_vec(),
        9 => b"k2".to_vec(),
        10 => Vec::new(),
        11 => rng.blob(1, 16),
        12 => vec![b'K'; 1000],
        13 => b"k\x00ey\xff".to_vec(),
        _ => b"HELD:A".to_vec(),
    }
}

fn owner(rng: &mut Rng) -> Vec<u8> {
    match rng.below(13) {
        0..=2 => b"A".to_vec(),
        3 => b"B".to_vec(),
        4 => b"\x00B\xff".to_vec(),
        5 => vec![b'L'; 1024],
        6 => vec![b'L'; 1025],
        7 => Vec::new(),
        8 => b"a".to_vec(),
        9 => b" A".to_vec(),
        10 => rng.blob(1, 40),
        11 => {
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

/// A `WAIT` timeout: mostly a valid short one (so that waits really
/// block), else any number.
fn wait_timeout(rng: &mut Rng) -> Vec<u8> {
    if rng.percent(60) {
        rng.range(0, 50).to_string().into_bytes()
    } else {
        number(rng)
    }
}

fn keyword(rng: &mut Rng) -> Vec<u8> {
    const FIXED: [&str; 10] = [
        "WAIT",
        "wait",
        "Wait",
        "wAiT",
        "WAITS",
        "WAI",
        "NOWAIT",
        "",
        "WAIT\u{0}",
        "ＷＡＩＴ",
    ];
    if rng.percent(60) {
        mixed_case(rng, "WAIT")
    } else {
        rng.pick(&FIXED).as_bytes().to_vec()
    }
}

fn any_atom(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => key(rng),
        1 => owner(rng),
        2 => number(rng),
        3 => keyword(rng),
        _ => rng.blob(0, 63),
    }
}

fn gen_vector(rng: &mut Rng, n: usize) -> Vector {
    let command = *rng.pick(&COMMANDS);
    let mut args = vec![mixed_case(rng, command)];
    if rng.percent(35) {
        for _ in 0..rng.below(11) {
            args.push(any_atom(rng));
        }
    } else {
        let mut shaped: Vec<Vec<u8>> = match command {
            "LOCK.ACQUIRE" => {
                let mut a = vec![key(rng), owner(rng), number(rng)];
                match rng.below(10) {
                    0..=4 => {}
                    5..=7 => a.extend([keyword(rng), wait_timeout(rng)]),
                    8 => a.push(keyword(rng)),
                    _ => {
                        if rng.percent(50) {
                            a.extend([keyword(rng), number(rng), keyword(rng), number(rng)]);
                        } else {
                            a.extend([keyword(rng), keyword(rng), number(rng)]);
                        }
                    }
                }
                a
            }
            "LOCK.RENEW" => vec![key(rng), owner(rng), number(rng)],
            "LOCK.RELEASE" => vec![key(rng), owner(rng)],
            "LOCK.FORCERELEASE" | "LOCK.INFO" => vec![key(rng)],
            _ => vec![key(rng), owner(rng), number(rng), number(rng), number(rng)],
        };
        if rng.percent(30) {
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

/// The fixtures every batch starts from: three held locks (owners `A`,
/// binary, 1024 bytes), a string, a list, a free name.
fn fixtures() -> Vec<Cmd> {
    vec![
        Cmd::new("DEL")
            .arg("held:a")
            .arg("held:bin")
            .arg("held:long")
            .arg("free")
            .arg("str")
            .arg("list"),
        Cmd::new("LOCK.ACQUIRE")
            .arg("held:a")
            .arg("A")
            .arg("3600000"),
        Cmd::new("LOCK.ACQUIRE")
            .arg("held:bin")
            .arg(b"\x00B\xff")
            .arg("3600000"),
        Cmd::new("LOCK.ACQUIRE")
            .arg("held:long")
            .arg(vec![b'L'; 1024])
            .arg("3600000"),
        Cmd::new("SET").arg("str").arg("v"),
        Cmd::new("RPUSH").arg("list").arg("a").arg("b"),
    ]
}

fn set_up(c: &mut RawConn) {
    for r in c.pipeline(&fixtures()).expect("fixtures") {
        assert!(!r.is_error(), "fixture command failed: {r:?}");
    }
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
fn random_lock_command_arguments_never_crash_and_errors_change_nothing() {
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
    let mut n = 0;
    while n < count {
        if budget.spent(n, count, "vectors") {
            break;
        }
        set_up(&mut c);
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
         dataset compared {} times ({} skipped: a lease expired meanwhile)",
        counts.run,
        elapsed.as_secs_f64(),
        counts.multi,
        counts.script,
        counts.with_wait,
        unblocked,
        counts.digest_checked,
        counts.digest_skipped_expiry
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
    if !budget.cut_short {
        assert_eq!(counts.run, count, "every vector was run");
    }
}
