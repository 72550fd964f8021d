//! A lock client in a process of its own, for the fault runs that stop a
//! client (SIGSTOP) while it holds a lock past its lease: it runs exclusive
//! sessions on one key (acquire, many writes to the register while it
//! believes it holds the lock, release), prints `HOLD <token>` when granted
//! (so the test knows when to stop it), and at the end `ENTRIES <json>`:
//! its operations, timed on the same monotonic clock as the test's own.
//!
//! Usage: fencelock-lin-client module|setnx PORT REGISTER-ADDR KEY OWNER
//! TTL-MS SECS SEED PROCESS

use std::io::Write;
use std::time::{Duration, Instant};

use testkit::history::{entries_to_json, Recorder};
use testkit::linearizable::workload::{Client, LockKind, Options, Target};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, port, register, key, owner, ttl, secs, seed, process] = args.as_slice() else {
        eprintln!("usage: fencelock-lin-client module|setnx PORT REGISTER-ADDR KEY OWNER TTL-MS SECS SEED PROCESS");
        std::process::exit(2);
    };
    let lock = match mode.as_str() {
        "module" => LockKind::Module,
        "setnx" => LockKind::SetNx,
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    };
    let parse = |s: &str| -> u64 {
        s.parse().unwrap_or_else(|_| {
            eprintln!("not a number: {s}");
            std::process::exit(2)
        })
    };
    let ttl = parse(ttl);
    let register = register.parse().unwrap_or_else(|_| {
        eprintln!("not an address: {register}");
        std::process::exit(2)
    });
    let rec = Recorder::new();
    let opts = Options {
        lock,
        wait_replica: false,
        ttl_ms: (ttl, ttl),
    };
    let mut client = Client::new(
        parse(process) as u32,
        rec.clone(),
        Target::single(parse(port) as u16),
        opts,
        Some(register),
        parse(seed),
    );
    let end = Instant::now() + Duration::from_secs(parse(secs));
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    // Until the run's end, and on a slow machine past it until this
    // process has held the lock once (bounded), so the test can stop it.
    let last_chance = end + Duration::from_secs(60);
    let mut held = false;
    while Instant::now() < end || (!held && Instant::now() < last_chance) {
        client.exclusive_session(key, owner, 40, &mut |token| {
            held = true;
            say(format!("HOLD {token}"))
        });
    }
    say(format!("ENTRIES {}", entries_to_json(&rec.entries())));
}
