//! Scenario 8: a read/write lock under continuous readers and a periodic
//! writer.
//!
//! `rw_readers` readers loop on one key without pause: take a read hold
//! (waiting the implementation's way), keep it a random time in
//! `rw_read_hold_ms`, release, take it again. They start staggered, so some
//! reader always holds the lock. Every `rw_writer_every_ms` a writer asks
//! for the write lock, holds it `rw_write_hold_ms` and releases it (a turn
//! that runs late starts the next one at once, never a burst).
//!
//! Measured over the waits that begin in the window (after 100 ms of
//! warm-up; a wait that begins in the window counts whenever it ends, so a
//! starved writer's wait shows in full — when the run ends the readers
//! stop, and the writer gets in; the writer's first turn is at the start
//! of the window): writer wait p50/p99/max (request sent →
//! grant reply), reader grants per second, reader wait, the longest read
//! hold (grant reply → release sent), how many writer turns were starved
//! (never granted, or still waiting when the window closed after waiting
//! longer than the longest read hold + 1 ms already: let in only because
//! the readers stopped), the writer's hand-off latency (the last read
//! release sent during its wait → its grant reply: what the wait cost
//! beyond the readers' holds), reader grants to readers that asked
//! more than 1 ms after the waiting writer and were granted while it still
//! waited (barged), and every request: wasted ones (refused tries, timed-out
//! waits), `SUBSCRIBE`/`UNSUBSCRIBE`, and pub/sub messages received. A
//! client-side check counts a reader and the writer holding at once
//! (violations; each side stops counting itself a holder before it sends
//! its release, so the check cannot see a false overlap).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;
use crate::locks::{Client, Impl, Lock, RwMode, Waited};
use crate::scenarios::{progress, Ctx};
use crate::stats::{Histogram, Summary};

/// One implementation's run.
#[derive(Clone, Debug, Serialize)]
pub struct RwRow {
    /// Which implementation.
    pub imp: Impl,
    /// Readers looping on the key.
    pub readers: usize,
    /// Read holds last a random time in this range, ms.
    pub read_hold_ms: (u64, u64),
    /// A writer turn every this many ms.
    pub writer_every_ms: u64,
    /// Write hold, ms.
    pub write_hold_ms: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Reader grants (of waits that began in the window).
    pub reader_grants: u64,
    /// `reader_grants / seconds`.
    pub reader_grants_per_sec: f64,
    /// Reader wait (request sent → grant reply), ms.
    pub reader_wait_ms: Summary,
    /// The longest read hold (grant reply → release sent), ms.
    pub longest_read_hold_ms: f64,
    /// Writer turns that began in the window.
    pub writer_turns: u64,
    /// Of those, granted.
    pub writer_grants: u64,
    /// Writer wait (request sent → grant reply), ms.
    pub writer_wait_ms: Summary,
    /// Writer hand-off latency: the last read release sent during its wait
    /// → its grant reply, ms (turns that waited for a reader).
    pub writer_handoff_ms: Summary,
    /// Writer turns never granted, or still waiting when the window closed
    /// after waiting longer than the longest read hold + 1 ms.
    pub writer_starved: u64,
    /// Reader grants to readers that asked more than 1 ms after a waiting
    /// writer, while it still waited.
    pub barged: u64,
    /// Requests that did not grant or release (refused tries, polls,
    /// timed-out waits).
    pub wasted: u64,
    /// `SUBSCRIBE` / `UNSUBSCRIBE` requests.
    pub pubsub_requests: u64,
    /// Pub/sub messages received.
    pub messages: u64,
    /// `wasted / (reader + writer grants)`.
    pub wasted_per_grant: f64,
    /// Every request (acquires, releases, wasted, pub/sub) ÷ grants.
    pub requests_per_grant: f64,
    /// Times a reader and the writer held the lock at once (must be 0).
    pub violations: u64,
    /// Waits that gave up (should be 0).
    pub timeouts: u64,
}

const TTL_MS: &str = "30000";
/// A reader that asked this much later than the waiting writer and was
/// granted first barged (slack for socket reordering).
const BARGE_SLACK_NS: u64 = 1_000_000;
/// How long a wait may last past the end of a run before it gives up.
const GIVE_UP_AFTER_END: Duration = Duration::from_secs(15);
const MAX_TURNS: u64 = 10_000_000;

/// Runs the scenario for every implementation that has a read/write lock.
pub async fn run(ctx: &mut Ctx) -> Result<Vec<RwRow>> {
    let mut rows = Vec::new();
    for lock in ctx.locks.clone().into_iter().filter(Lock::has_family) {
        ctx.admin.flushall().await?;
        let row = measure(ctx, &lock).await?;
        progress(&format!(
            "rwlock {}: writer wait p50 {:.2} p99 {:.2} max {:.2} ms ({} of {} turns, {} starved), {:.0} reader grants/s, longest read hold {:.2} ms, barged {}, wasted/grant {:.2}",
            lock.imp().name(),
            row.writer_wait_ms.p50,
            row.writer_wait_ms.p99,
            row.writer_wait_ms.max,
            row.writer_grants,
            row.writer_turns,
            row.writer_starved,
            row.reader_grants_per_sec,
            row.longest_read_hold_ms,
            row.barged,
            row.wasted_per_grant
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// What the readers and the writer share.
struct Shared {
    epoch: Instant,
    measure_from: Instant,
    end: Instant,
    give_up: Instant,
    /// When the writer began its current wait (ns since `epoch`, + 1; 0 =
    /// not waiting).
    writer_waiting_since: AtomicU64,
    readers_holding: AtomicUsize,
    writer_holding: AtomicBool,
    violations: AtomicU64,
    /// When a reader last sent a release (ns since `epoch`, + 1).
    last_read_release: AtomicU64,
}

impl Shared {
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// What one side (a reader, or the writer) saw.
#[derive(Default)]
struct Side {
    grants: u64,
    /// Waits, ns.
    waits: Histogram,
    /// Writer hand-offs from the last reader, ns.
    handoffs: Histogram,
    longest_hold: Duration,
    /// Writer turns not granted when the window closed: how long each had
    /// waited by then.
    open_at_end: Vec<Duration>,
    barged: u64,
    turns: u64,
    requests: u64,
    wasted: u64,
    pubsub: u64,
    messages: u64,
    timeouts: u64,
}

impl Side {
    /// Counts the requests of one wait (and, when granted, its release).
    fn count(&mut self, w: &Waited) {
        self.turns += 1;
        self.wasted += w.wasted;
        self.pubsub += w.pubsub_requests;
        self.messages += w.messages;
        self.requests += w.wasted + w.pubsub_requests + if w.granted { 2 } else { 0 };
        if !w.granted {
            self.timeouts += 1;
        }
    }

    fn add(&mut self, o: &Side) {
        self.grants += o.grants;
        self.waits.add(&o.waits);
        self.handoffs.add(&o.handoffs);
        self.longest_hold = self.longest_hold.max(o.longest_hold);
        self.open_at_end.extend_from_slice(&o.open_at_end);
        self.barged += o.barged;
        self.turns += o.turns;
        self.requests += o.requests;
        self.wasted += o.wasted;
        self.pubsub += o.pubsub;
        self.messages += o.messages;
        self.timeouts += o.timeouts;
    }
}

async fn measure(ctx: &Ctx, lock: &Lock) -> Result<RwRow> {
    let p = &ctx.plan;
    let seconds = p.rw_seconds;
    let key = format!("rwlock:{}", lock.imp().name()).into_bytes();
    let epoch = Instant::now() + Duration::from_millis(20);
    let measure_from = epoch + Duration::from_millis(100);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let sh = Arc::new(Shared {
        epoch,
        measure_from,
        end,
        give_up: end + GIVE_UP_AFTER_END,
        writer_waiting_since: AtomicU64::new(0),
        readers_holding: AtomicUsize::new(0),
        writer_holding: AtomicBool::new(false),
        violations: AtomicU64::new(0),
        last_read_release: AtomicU64::new(0),
    });
    let (lo, hi) = p.rw_read_hold_ms;
    let hold_us = (lo * 1000, hi.max(lo) * 1000);
    let mut readers = Vec::with_capacity(p.rw_readers);
    for r in 0..p.rw_readers {
        let client = lock.client(ctx.port).await?;
        let (lock, key, sh) = (lock.clone(), key.clone(), Arc::clone(&sh));
        // Staggered starts over the longest hold: the holds overlap.
        let start = Duration::from_micros(hold_us.1 * r as u64 / p.rw_readers.max(1) as u64);
        readers.push(tokio::spawn(async move {
            reader(lock, client, r, key, sh, start, hold_us).await
        }));
    }
    let writer = {
        let client = lock.client(ctx.port).await?;
        let (lock, key, sh) = (lock.clone(), key.clone(), Arc::clone(&sh));
        let every = Duration::from_millis(p.rw_writer_every_ms.max(1));
        let hold = Duration::from_millis(p.rw_write_hold_ms);
        tokio::spawn(async move { writer(lock, client, key, sh, every, hold).await })
    };
    let mut rd = Side::default();
    for t in readers {
        rd.add(&t.await??);
    }
    let wr = writer.await??;
    let grants = rd.grants + wr.grants;
    let bound = rd.longest_hold + Duration::from_millis(1);
    let starved = wr.open_at_end.iter().filter(|w| **w > bound).count() as u64;
    Ok(RwRow {
        imp: lock.imp(),
        readers: p.rw_readers,
        read_hold_ms: (lo, hi.max(lo)),
        writer_every_ms: p.rw_writer_every_ms,
        write_hold_ms: p.rw_write_hold_ms,
        seconds,
        reader_grants: rd.grants,
        reader_grants_per_sec: rd.grants as f64 / seconds,
        reader_wait_ms: rd.waits.summary(1e6),
        longest_read_hold_ms: rd.longest_hold.as_secs_f64() * 1000.0,
        writer_turns: wr.turns,
        writer_grants: wr.grants,
        writer_wait_ms: wr.waits.summary(1e6),
        writer_handoff_ms: wr.handoffs.summary(1e6),
        writer_starved: starved + wr.timeouts,
        barged: rd.barged,
        wasted: rd.wasted + wr.wasted,
        pubsub_requests: rd.pubsub + wr.pubsub,
        messages: rd.messages + wr.messages,
        wasted_per_grant: (rd.wasted + wr.wasted) as f64 / grants.max(1) as f64,
        requests_per_grant: (rd.requests + wr.requests) as f64 / grants.max(1) as f64,
        violations: sh.violations.load(Ordering::Acquire),
        timeouts: rd.timeouts + wr.timeouts,
    })
}

async fn reader(
    lock: Lock,
    mut client: Client,
    r: usize,
    key: Vec<u8>,
    sh: Arc<Shared>,
    start: Duration,
    hold_us: (u64, u64),
) -> Result<Side> {
    let owner = uuid::Uuid::new_v4().hyphenated().to_string().into_bytes();
    let ttl = TTL_MS.as_bytes();
    let mut rng = fastrand::Rng::with_seed(r as u64 + 17);
    let mut st = Side::default();
    tokio::time::sleep_until((sh.epoch + start).into()).await;
    for _ in 0..MAX_TURNS {
        let t_wait = Instant::now();
        if t_wait >= sh.end {
            break;
        }
        let out = lock
            .rw_acquire_waiting(&mut client, &key, &owner, ttl, RwMode::Read, sh.give_up)
            .await?;
        let t_grant = Instant::now();
        let counted = t_wait >= sh.measure_from;
        if counted {
            st.count(&out);
        }
        if !out.granted {
            continue;
        }
        if sh.writer_holding.load(Ordering::Acquire) {
            sh.violations.fetch_add(1, Ordering::AcqRel);
        }
        sh.readers_holding.fetch_add(1, Ordering::AcqRel);
        if counted {
            st.grants += 1;
            st.waits.record_ns(t_grant - t_wait);
            let w = sh.writer_waiting_since.load(Ordering::Acquire);
            if w != 0 && sh.ns(t_wait) > (w - 1) + BARGE_SLACK_NS {
                st.barged += 1;
            }
        }
        let hold = Duration::from_micros(rng.u64(hold_us.0..=hold_us.1));
        tokio::time::sleep(hold).await;
        sh.readers_holding.fetch_sub(1, Ordering::AcqRel);
        let t_release = Instant::now();
        if counted {
            st.longest_hold = st.longest_hold.max(t_release - t_grant);
        }
        sh.last_read_release
            .store(sh.ns(t_release) + 1, Ordering::Release);
        lock.rw_release(&mut client, &key, &owner, ttl, RwMode::Read)
            .await?;
    }
    Ok(st)
}

async fn writer(
    lock: Lock,
    mut client: Client,
    key: Vec<u8>,
    sh: Arc<Shared>,
    every: Duration,
    hold: Duration,
) -> Result<Side> {
    let owner = uuid::Uuid::new_v4().hyphenated().to_string().into_bytes();
    let ttl = TTL_MS.as_bytes();
    let mut st = Side::default();
    // The first turn at the start of the window: the readers are in.
    let mut next = sh.measure_from;
    for _ in 0..MAX_TURNS {
        tokio::time::sleep_until(next.into()).await;
        let t_wait = Instant::now();
        if t_wait >= sh.end {
            break;
        }
        sh.writer_waiting_since
            .store(sh.ns(t_wait) + 1, Ordering::Release);
        let out = lock
            .rw_acquire_waiting(&mut client, &key, &owner, ttl, RwMode::Write, sh.give_up)
            .await?;
        let t_grant = Instant::now();
        sh.writer_waiting_since.store(0, Ordering::Release);
        let counted = t_wait >= sh.measure_from;
        if counted {
            st.count(&out);
            if out.granted && t_grant >= sh.end {
                st.open_at_end.push(sh.end - t_wait);
            }
        }
        next += every;
        if !out.granted {
            next = next.max(Instant::now());
            continue;
        }
        if sh.readers_holding.load(Ordering::Acquire) > 0 {
            sh.violations.fetch_add(1, Ordering::AcqRel);
        }
        sh.writer_holding.store(true, Ordering::Release);
        if counted {
            st.grants += 1;
            st.waits.record_ns(t_grant - t_wait);
            let released = sh.last_read_release.load(Ordering::Acquire);
            if released > sh.ns(t_wait) + 1 {
                st.handoffs
                    .record(sh.ns(t_grant).saturating_sub(released - 1));
            }
        }
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        sh.writer_holding.store(false, Ordering::Release);
        lock.rw_release(&mut client, &key, &owner, ttl, RwMode::Write)
            .await?;
        next = next.max(Instant::now());
    }
    Ok(st)
}
