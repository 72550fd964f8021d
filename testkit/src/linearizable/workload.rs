//! The clients of the fault runs: each sends lock commands (the module's,
//! or the canary's `SET NX PX` recipe) to the current master, records
//! every operation with its exact outcome in a [`Recorder`], and writes to
//! the fenced register while it believes it holds an exclusive lock.
//!
//! Outcomes: an answer is ok (error replies of the command itself too); a
//! request that was certainly not applied — no connection, or refused
//! before it ran (`LOADING`, `READONLY`, `MOVED`, `TRYAGAIN`, ...) — is a
//! fail; a connection that broke after the request went out is unknown.
//! Acquires and releases with `ID` are retried with the same id on a new
//! connection while their lease could not have passed (an answer to the
//! retry is the answer of the one operation); other operations are not
//! retried.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};

use crate::history::{mono_ns, Mode, Op, Recorder, Reply};
use crate::hostile::Rng;
use crate::register::RegisterClient;

/// Which lock the clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// The module's commands.
    Module,
    /// `SET key value NX PX ttl`, released by a compare-and-delete script.
    SetNx,
}

/// Where the clients send their commands.
#[derive(Clone, Debug)]
pub enum Target {
    /// One server; the port changes at a failover.
    Single(Arc<AtomicU16>),
    /// A cluster: start at this node, follow `MOVED` and `ASK`.
    Cluster(Arc<AtomicU16>),
}

impl Target {
    pub fn single(port: u16) -> Target {
        Target::Single(Arc::new(AtomicU16::new(port)))
    }

    /// Points the clients at another server (after a failover).
    pub fn set_port(&self, port: u16) {
        match self {
            Target::Single(p) | Target::Cluster(p) => p.store(port, Ordering::SeqCst),
        }
    }

    fn port(&self) -> u16 {
        match self {
            Target::Single(p) | Target::Cluster(p) => p.load(Ordering::SeqCst),
        }
    }
}

/// How the clients behave.
#[derive(Clone, Debug)]
pub struct Options {
    pub lock: LockKind,
    /// `WAIT 1 timeout` after every write that changed something; an ok
    /// becomes unknown when no replica acknowledged it.
    pub wait_replica: bool,
    /// Lease lengths (ms), drawn per operation.
    pub ttl_ms: (u64, u64),
}

/// The client does not know what its operation did (no answer, or no
/// replica acknowledged it), or it was not applied: it assumes nothing and
/// cleans up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsure;

/// What one request came to.
enum Exec {
    Ok(Value),
    /// A server error of the command itself (`ERR ...`, `WRONGTYPE ...`).
    Error(String),
    Fail(String),
    /// Maybe applied; `Some(t)`: the server closed the connection, seen at
    /// t (if applied, then before t); None: no answer in time.
    Unknown(Option<u64>),
}

/// Server error codes that mean the command did not run.
const NOT_RUN: &[&str] = &[
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "UNBLOCKED",
    "MISCONF",
    "NOREPLICAS",
];

const CAS_DELETE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// One client: a process number, its connection, its recorder.
pub struct Client {
    pub process: u32,
    pub rec: Recorder,
    target: Target,
    opts: Options,
    conn: Option<(u16, redis::Connection)>,
    register: Option<RegisterClient>,
    register_addr: Option<SocketAddr>,
    pub rng: Rng,
    seq: u64,
    ids: u64,
    session: u64,
}

fn connect(port: u16) -> Option<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let c = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .ok()?;
    // Longer than any pause a run makes: a stopped server's answer comes
    // late, not never.
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    Some(c)
}

fn classify(e: &RedisError) -> Exec {
    match e.code() {
        Some(code) if NOT_RUN.contains(&code) => Exec::Fail(code.to_string()),
        Some(code) => Exec::Error(match e.detail() {
            Some(d) => format!("{code} {d}"),
            None => code.to_string(),
        }),
        None if e.is_timeout() => Exec::Unknown(None),
        None => Exec::Unknown(Some(mono_ns())),
    }
}

impl Client {
    pub fn new(
        process: u32,
        rec: Recorder,
        target: Target,
        opts: Options,
        register: Option<SocketAddr>,
        seed: u64,
    ) -> Client {
        Client {
            process,
            rec,
            target,
            opts,
            conn: None,
            register: None,
            register_addr: register,
            rng: Rng::new(seed ^ (u64::from(process) << 32)),
            seq: 0,
            ids: 0,
            session: 0,
        }
    }

    fn ttl(&mut self) -> u64 {
        let (lo, hi) = self.opts.ttl_ms;
        self.rng.range(lo, hi)
    }

    /// Sends `cmd` once (following cluster redirects, which are not
    /// applied where they are answered).
    fn exec(&mut self, cmd: &redis::Cmd) -> Exec {
        let mut asking: Option<u16> = None;
        for _ in 0..10 {
            let port = asking.unwrap_or_else(|| self.target.port());
            if self.conn.as_ref().is_none_or(|(p, _)| *p != port) {
                self.conn = connect(port).map(|c| (port, c));
            }
            let Some((_, c)) = self.conn.as_mut() else {
                return Exec::Fail("no connection".into());
            };
            // ASKING is a flag for the next command of the connection: sent
            // on its own, so that the command's error (if any) comes back
            // whole rather than as a pipeline's.
            if asking.is_some() {
                let flagged: Result<(), RedisError> = redis::cmd("ASKING").query(c);
                if let Err(e) = flagged {
                    self.conn = None;
                    return match classify(&e) {
                        Exec::Unknown(_) | Exec::Error(_) => Exec::Fail("ASKING refused".into()),
                        other => other,
                    };
                }
            }
            let result: Result<Value, RedisError> = cmd.query(c);
            asking = None;
            match result {
                Ok(v) => return Exec::Ok(v),
                Err(e) => {
                    if let (Some((addr, _)), Some(code)) = (e.redirect_node(), e.code()) {
                        let port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
                        match (code, port) {
                            ("MOVED", Some(p)) => {
                                self.target.set_port(p);
                                continue;
                            }
                            ("ASK", Some(p)) => {
                                asking = Some(p);
                                continue;
                            }
                            _ => {}
                        }
                    }
                    let x = classify(&e);
                    if matches!(x, Exec::Unknown(_)) {
                        self.conn = None;
                    }
                    return x;
                }
            }
        }
        Exec::Fail("redirected too often".into())
    }

    /// `WAIT 1 timeout` on the connection that just wrote: true when a
    /// replica acknowledged.
    fn replicated(&mut self) -> bool {
        let Some((_, c)) = self.conn.as_mut() else {
            return false;
        };
        let acked: Result<i64, RedisError> = redis::cmd("WAIT").arg(1).arg(500).query(c);
        match acked {
            Ok(n) => n >= 1,
            Err(_) => {
                self.conn = None;
                false
            }
        }
    }

    /// Runs one logical operation, retried (the same command, so the same
    /// ID) after unknown outcomes or refusals until `retry_until`; without
    /// it, only refusals are retried, twice. Also says whether an answer
    /// came to a retry after an unknown attempt.
    fn run(&mut self, cmd: &redis::Cmd, retry_until: Option<Instant>) -> (Exec, bool) {
        let mut unknown = false;
        // When every unknown attempt ended with a closed connection, the
        // last of those times bounds when the operation took effect.
        let mut bound: Option<u64> = Some(0);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let why = match self.exec(cmd) {
                x @ (Exec::Ok(_) | Exec::Error(_)) => return (x, unknown),
                Exec::Fail(why) => why,
                Exec::Unknown(seen) => {
                    unknown = true;
                    bound = bound.zip(seen).map(|(a, b)| a.max(b));
                    String::new()
                }
            };
            let again = match retry_until {
                Some(u) => Instant::now() < u,
                None => !unknown && attempts < 3,
            };
            if !again {
                return (
                    if unknown {
                        Exec::Unknown(bound)
                    } else {
                        Exec::Fail(why)
                    },
                    unknown,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn next_id(&mut self) -> String {
        self.ids += 1;
        format!(
            "p{}-{}-{}",
            self.process,
            self.ids,
            self.rng.next_u64() % 1_000_000
        )
    }

    /// An acquire: the token when granted (`Some(0)` for `SET NX`), None
    /// when refused, unknown or failed; `Err(Unsure)` when it may have been
    /// granted without the client knowing.
    pub fn acquire(
        &mut self,
        key: &str,
        owner: &str,
        mode: Mode,
        wait_ms: Option<u64>,
        with_id: bool,
    ) -> Result<Option<i64>, Unsure> {
        let ttl = self.ttl();
        let id = (with_id && self.opts.lock == LockKind::Module).then(|| self.next_id());
        let op = Op::Acquire {
            owner: owner.to_string(),
            mode: mode.clone(),
            ttl_ms: ttl,
            wait_ms,
            id: id.clone(),
        };
        let started = Instant::now();
        let pending = self.rec.invoke(self.process, key, op);
        let cmd = match self.opts.lock {
            LockKind::Module => {
                let mut c = redis::cmd("LOCK.ACQUIRE");
                c.arg(key).arg(owner).arg(ttl);
                match mode {
                    Mode::Exclusive => {}
                    Mode::Shared => {
                        c.arg("SHARED");
                    }
                    Mode::Permits { limit, count } => {
                        c.arg("LIMIT").arg(limit).arg("COUNT").arg(count);
                    }
                }
                if let Some(w) = wait_ms {
                    c.arg("WAIT").arg(w);
                }
                if let Some(i) = &id {
                    c.arg("ID").arg(i);
                }
                c
            }
            LockKind::SetNx => {
                self.session += 1;
                let mut c = redis::cmd("SET");
                c.arg(key)
                    .arg(format!("{owner}:{}", self.session))
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl);
                c
            }
        };
        // Retries only while a first attempt's lease would still run, so
        // that the server still remembers the id.
        let until = id
            .as_ref()
            .map(|_| started + Duration::from_millis(wait_ms.unwrap_or(0) + ttl / 2));
        let result = self.run(&cmd, until).0;
        let answered = mono_ns();
        match result {
            Exec::Ok(v) => {
                let token = match (&self.opts.lock, &v) {
                    (_, Value::Nil) => None,
                    (LockKind::SetNx, _) => Some(0),
                    (LockKind::Module, Value::Int(t)) => Some(*t),
                    (_, other) => panic!("unexpected acquire reply {other:?}"),
                };
                if token.is_some() && self.opts.wait_replica && !self.replicated() {
                    pending.unknown_before(Some(answered));
                    return Err(Unsure);
                }
                pending.ok(Reply::Token(token));
                Ok(token)
            }
            Exec::Error(e) => {
                pending.ok(Reply::Error(e));
                Ok(None)
            }
            Exec::Unknown(before) => {
                pending.unknown_before(before);
                Err(Unsure)
            }
            Exec::Fail(why) => {
                pending.fail(&why);
                Ok(None)
            }
        }
    }

    /// A release of `count` holds: what the owner still holds (None: it
    /// held nothing), or `Err(Unsure)` when unknown or failed.
    pub fn release(
        &mut self,
        key: &str,
        owner: &str,
        count: u64,
        with_id: bool,
    ) -> Result<Option<i64>, Unsure> {
        let id = (with_id && self.opts.lock == LockKind::Module).then(|| self.next_id());
        let op = |retried| Op::Release {
            owner: owner.to_string(),
            count,
            id: id.clone(),
            retried,
        };
        let pending = self.rec.invoke(self.process, key, op(false));
        let cmd = match self.opts.lock {
            LockKind::Module => {
                let mut c = redis::cmd("LOCK.RELEASE");
                c.arg(key).arg(owner);
                if count != 1 {
                    c.arg("COUNT").arg(count);
                }
                if let Some(i) = &id {
                    c.arg("ID").arg(i);
                }
                c
            }
            LockKind::SetNx => {
                let mut c = redis::cmd("EVAL");
                c.arg(CAS_DELETE)
                    .arg(1)
                    .arg(key)
                    .arg(format!("{owner}:{}", self.session));
                c
            }
        };
        let until = id
            .as_ref()
            .map(|_| Instant::now() + Duration::from_millis(self.opts.ttl_ms.0 / 2));
        let (result, retried) = self.run(&cmd, until);
        let answered = mono_ns();
        if retried {
            pending.set_op(op(true));
        }
        match result {
            Exec::Ok(v) => {
                let left = match (&self.opts.lock, &v) {
                    (LockKind::Module, Value::Nil) => None,
                    (LockKind::Module, Value::Int(n)) => Some(*n),
                    (LockKind::SetNx, Value::Int(1)) => Some(0),
                    (LockKind::SetNx, Value::Int(0)) => None,
                    (_, other) => panic!("unexpected release reply {other:?}"),
                };
                if left.is_some() && self.opts.wait_replica && !self.replicated() {
                    pending.unknown_before(Some(answered));
                    return Err(Unsure);
                }
                pending.ok(Reply::Remaining(left));
                Ok(left)
            }
            Exec::Error(e) => {
                pending.ok(Reply::Error(e));
                Err(Unsure)
            }
            Exec::Unknown(before) => {
                pending.unknown_before(before);
                Err(Unsure)
            }
            Exec::Fail(why) => {
                pending.fail(&why);
                Err(Unsure)
            }
        }
    }

    /// `LOCK.RENEW`: whether the owner held the key, or `Err(Unsure)`.
    pub fn renew(&mut self, key: &str, owner: &str) -> Result<bool, Unsure> {
        let ttl = self.ttl();
        let pending = self.rec.invoke(
            self.process,
            key,
            Op::Renew {
                owner: owner.to_string(),
                ttl_ms: ttl,
            },
        );
        let mut cmd = redis::cmd("LOCK.RENEW");
        cmd.arg(key).arg(owner).arg(ttl);
        let result = self.run(&cmd, None).0;
        let answered = mono_ns();
        match result {
            Exec::Ok(Value::Int(n)) => {
                if n == 1 && self.opts.wait_replica && !self.replicated() {
                    pending.unknown_before(Some(answered));
                    return Err(Unsure);
                }
                pending.ok(Reply::Renewed(n == 1));
                Ok(n == 1)
            }
            Exec::Ok(other) => panic!("unexpected renew reply {other:?}"),
            Exec::Error(e) => {
                pending.ok(Reply::Error(e));
                Err(Unsure)
            }
            Exec::Unknown(before) => {
                pending.unknown_before(before);
                Err(Unsure)
            }
            Exec::Fail(why) => {
                pending.fail(&why);
                Err(Unsure)
            }
        }
    }

    /// A write to the register as the holder of `key` with `token`
    /// (the canary sends its session number): whether it was accepted.
    pub fn write(&mut self, key: &str, owner: &str, token: i64) -> bool {
        let Some(addr) = self.register_addr else {
            return true;
        };
        let token = if self.opts.lock == LockKind::SetNx {
            self.session as i64
        } else {
            token
        };
        let register = self
            .register
            .get_or_insert_with(|| RegisterClient::connect(addr));
        self.seq += 1;
        let pending = self.rec.invoke(
            self.process,
            key,
            Op::Write {
                owner: owner.to_string(),
                token,
            },
        );
        let accepted = register.write(key, token, owner, self.seq);
        pending.ok(Reply::Written(accepted));
        accepted
    }

    fn pause(&mut self, lo: u64, hi: u64) {
        std::thread::sleep(Duration::from_millis(self.rng.range(lo, hi)));
    }

    /// Releases until the owner holds nothing (after an operation whose
    /// outcome is unknown), a few tries at most.
    fn clean_up(&mut self, key: &str, owner: &str) {
        for _ in 0..4 {
            match self.release(key, owner, 1, true) {
                Ok(None) | Ok(Some(0)) => return,
                _ => self.pause(5, 20),
            }
        }
    }

    /// One session on an exclusive key: acquire (maybe waiting), maybe
    /// re-enter, write `writes` times while the register accepts, maybe
    /// renew, release. `on_grant` hears the token of each grant.
    pub fn exclusive_session(
        &mut self,
        key: &str,
        owner: &str,
        writes: u64,
        on_grant: &mut dyn FnMut(i64),
    ) {
        let module = self.opts.lock == LockKind::Module;
        let wait = (module && self.rng.percent(50)).then(|| self.rng.range(20, 300));
        let with_id = self.rng.percent(70);
        let token = match self.acquire(key, owner, Mode::Exclusive, wait, with_id) {
            Ok(Some(t)) => t,
            Ok(None) => {
                self.pause(1, 8);
                return;
            }
            Err(Unsure) => {
                self.clean_up(key, owner);
                return;
            }
        };
        on_grant(token);
        let mut holds = 1;
        if module && self.rng.percent(40) {
            let with_id = self.rng.percent(50);
            match self.acquire(key, owner, Mode::Exclusive, None, with_id) {
                Ok(Some(_)) => holds += 1,
                Ok(None) => {}
                Err(Unsure) => {
                    self.clean_up(key, owner);
                    return;
                }
            }
        }
        for _ in 0..writes {
            if !self.write(key, owner, token) {
                break;
            }
            self.pause(1, 4);
        }
        if module && self.rng.percent(30) && self.renew(key, owner).is_err() {
            self.clean_up(key, owner);
            return;
        }
        let together = self.rng.percent(50);
        while holds > 0 {
            let n = if together { holds } else { 1 };
            let with_id = self.rng.percent(70);
            match self.release(key, owner, n, with_id) {
                Ok(Some(left)) => holds = left as u64,
                Ok(None) => holds = 0,
                Err(Unsure) => {
                    self.clean_up(key, owner);
                    return;
                }
            }
        }
        self.pause(1, 6);
    }

    /// One step on a read/write key; `held` is what the client believes it
    /// holds (exclusive, shared).
    pub fn rw_step(&mut self, key: &str, owner: &str, held: &mut (u64, u64)) {
        let total = held.0 + held.1;
        let roll = self.rng.below(100);
        let result = if total == 0 || (total < 3 && roll < 50) {
            let mode = if held.1 > 0 && held.0 == 0 || self.rng.percent(50) {
                Mode::Shared
            } else {
                Mode::Exclusive
            };
            let with_id = self.rng.percent(50);
            match self.acquire(key, owner, mode.clone(), None, with_id) {
                Ok(Some(_)) => {
                    match mode {
                        Mode::Exclusive => held.0 += 1,
                        _ => held.1 += 1,
                    }
                    Ok(())
                }
                Ok(None) => {
                    // Not granted: what was believed may have expired.
                    Ok(())
                }
                Err(Unsure) => Err(Unsure),
            }
        } else if roll < 80 {
            let with_id = self.rng.percent(50);
            match self.release(key, owner, 1, with_id) {
                Ok(Some(left)) => {
                    // Exclusive holds go first.
                    let left = left as u64;
                    let ex = held.0.saturating_sub(1).min(left);
                    *held = (ex, left - ex);
                    Ok(())
                }
                Ok(None) => {
                    *held = (0, 0);
                    Ok(())
                }
                Err(Unsure) => Err(Unsure),
            }
        } else {
            match self.renew(key, owner) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    *held = (0, 0);
                    Ok(())
                }
                Err(Unsure) => Err(Unsure),
            }
        };
        if result.is_err() {
            self.clean_up(key, owner);
            *held = (0, 0);
        }
        self.pause(1, 8);
    }

    /// One step on a semaphore of `limit` permits; `held` is what the
    /// client believes it holds.
    pub fn semaphore_step(&mut self, key: &str, owner: &str, limit: u64, held: &mut u64) {
        let roll = self.rng.below(100);
        let result = if *held == 0 || (*held < limit && roll < 50) {
            let count = self.rng.range(1, 2).min(limit - *held).max(1);
            let with_id = self.rng.percent(50);
            match self.acquire(key, owner, Mode::Permits { limit, count }, None, with_id) {
                Ok(Some(_)) => {
                    *held += count;
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(Unsure) => Err(Unsure),
            }
        } else if roll < 85 {
            let n = self.rng.range(1, *held);
            let with_id = self.rng.percent(50);
            match self.release(key, owner, n, with_id) {
                Ok(Some(left)) => {
                    *held = left as u64;
                    Ok(())
                }
                Ok(None) => {
                    *held = 0;
                    Ok(())
                }
                Err(Unsure) => Err(Unsure),
            }
        } else {
            match self.renew(key, owner) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    *held = 0;
                    Ok(())
                }
                Err(Unsure) => Err(Unsure),
            }
        };
        if result.is_err() {
            self.clean_up(key, owner);
            *held = 0;
        }
        self.pause(1, 8);
    }
}

/// A flag the run sets when its time is up.
pub type Stop = Arc<AtomicBool>;
