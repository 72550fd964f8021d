//! Scenario 4: lease-expiry promptness.
//!
//! N leases with deadlines spread uniformly over `exp_spread_ms`, none
//! renewed; a subscriber to the keyevent channel (`lock.expire` for the
//! module, class `d`; `expired` for plain PX keys, class `x`) stamps every
//! removal on receipt. Lateness = receipt − deadline.
//!
//! Deadlines are measured, not guessed: every pipeline of 256 acquires is
//! bracketed by `TIME` before and after, so the server's clock when it ran
//! each acquire lies between the two; the deadline used is the earlier
//! bound + ttl (a lower bound of the true deadline, so lateness is never
//! understated; the bracket width is reported). The deadline window starts
//! after the time loading is expected to take (learnt from the previous
//! size); a lease whose ttl would have been under 50 ms is an overrun and
//! left out.
//!
//! Baseline: `SET key owner PX ttl` keys left to Redis's own expiry (the
//! same for baseline 1's locks and baseline 2's hashes).
//!
//! 4b, the burst: `burst_leases` leases that all end at the same moment,
//! and a probe client that sends `DBSIZE` back to back (depth 1) from just
//! before that moment until every key is gone: the latency of those probes
//! is what any other client's command waits while the server expires the
//! burst.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::locks::{Acquired, Client, Impl, Link, Lock, Queue};
use crate::resp::{Conn, Reply};
use crate::scenarios::{key16, key16_index, owner36, progress, unix_ms_f64, Ctx};
use crate::stats::{Histogram, Summary};

/// One implementation at one size.
#[derive(Clone, Debug, Serialize)]
pub struct ExpiryRow {
    /// `module`, or `setnx` for plain PX keys.
    pub imp: Impl,
    /// Live leases.
    pub leases: usize,
    /// Deadlines spread over this many ms.
    pub spread_ms: u64,
    /// How long loading took, ms.
    pub load_ms: f64,
    /// Removals observed (overruns excluded).
    pub removed: usize,
    /// Leases never seen removed within the grace time.
    pub missing: usize,
    /// Leases left out because loading overran their deadline.
    pub overrun: usize,
    /// Removals observed before the deadline's lower bound (must be 0).
    pub early: usize,
    /// Widest `TIME` bracket around a pipeline, ms.
    pub max_bracket_ms: f64,
    /// Receipt − deadline, ms.
    pub lateness_ms: Summary,
}

/// Scenario 4b at one implementation.
#[derive(Clone, Debug, Serialize)]
pub struct BurstRow {
    /// `module`, or `setnx` for plain PX keys.
    pub imp: Impl,
    /// Leases ending together.
    pub leases: usize,
    /// From the deadline to the probe that saw no key left, ms.
    pub drain_ms: f64,
    /// Keys still there when the probe gave up (0 when drained).
    pub left: i64,
    /// Round trips of the probes sent between the deadline and the drain.
    pub probe_ms: Summary,
}

const BATCH: usize = 256;
const LOADERS: usize = 4;
const MIN_TTL_MS: i64 = 50;

/// Runs every size for the module and for plain PX keys.
pub async fn run(ctx: &mut Ctx) -> Result<Vec<ExpiryRow>> {
    let mut rows = Vec::new();
    let candidates = [Impl::Module, Impl::SetNx];
    let locks: Vec<Lock> = candidates.iter().filter_map(|&i| ctx.lock(i)).collect();
    for lock in locks {
        // Loading rate guess for the first size; then the one measured.
        let mut rate_per_ms = 50.0;
        for &n in &ctx.plan.exp_sizes.clone() {
            let row = one_run(ctx, &lock, n, rate_per_ms).await?;
            rate_per_ms = (n as f64 / row.load_ms.max(1.0)).max(10.0);
            progress(&format!(
                "expiry {} {n}: lateness p50 {:.2} p99 {:.2} max {:.2} ms, missing {}, overrun {}",
                lock.imp().name(),
                row.lateness_ms.p50,
                row.lateness_ms.p99,
                row.lateness_ms.max,
                row.missing,
                row.overrun
            ));
            rows.push(row);
        }
    }
    ctx.admin.config_set("notify-keyspace-events", "").await?;
    Ok(rows)
}

/// Scenario 4b for the module and for plain PX keys.
pub async fn burst(ctx: &mut Ctx) -> Result<Vec<BurstRow>> {
    let mut rows = Vec::new();
    let candidates = [Impl::Module, Impl::SetNx];
    let locks: Vec<Lock> = candidates.iter().filter_map(|&i| ctx.lock(i)).collect();
    for lock in locks {
        let row = one_burst(ctx, &lock, ctx.plan.burst_leases).await?;
        progress(&format!(
            "burst {} {}: probes p50 {:.2} p99 {:.2} max {:.2} ms while draining for {:.0} ms, {} left",
            lock.imp().name(),
            row.leases,
            row.probe_ms.p50,
            row.probe_ms.p99,
            row.probe_ms.max,
            row.drain_ms,
            row.left
        ));
        rows.push(row);
    }
    Ok(rows)
}

async fn one_burst(ctx: &mut Ctx, lock: &Lock, n: usize) -> Result<BurstRow> {
    ctx.admin.flushall().await?;
    // One deadline for all, after the time loading takes (4 loaders at a
    // few hundred thousand acquires per second; generous).
    let deadline = unix_ms_f64() + 1_000.0 + n as f64 / 20.0;
    let mut loaders = Vec::new();
    for c in 0..LOADERS {
        let (lock, port) = (lock.clone(), ctx.port);
        let mine: Vec<(usize, u64)> = (c..n).step_by(LOADERS).map(|i| (i, 0)).collect();
        loaders.push(tokio::spawn(load(lock, port, mine, deadline)));
    }
    for l in loaders {
        l.await??;
    }
    let mut probe = Conn::connect(ctx.port).await?;
    let count = |r: &Reply| match r {
        Reply::Int(k) => Ok(*k),
        other => Err(BenchError::unexpected("DBSIZE", other)),
    };
    // Wait (off the server) until just before the deadline.
    let lead = deadline - 50.0 - unix_ms_f64();
    if lead > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(lead / 1000.0)).await;
    }
    let give_up = Instant::now() + Duration::from_millis(ctx.plan.exp_grace_ms);
    let mut rtt_us = Histogram::new();
    let (mut left, mut drained_at) = (n as i64, None);
    while Instant::now() < give_up {
        let sent_ms = unix_ms_f64();
        let sent = Instant::now();
        left = count(&probe.call(&[b"DBSIZE"]).await?)?;
        if sent_ms >= deadline {
            rtt_us.record(sent.elapsed().as_micros() as u64);
        }
        if left == 0 {
            drained_at = Some(unix_ms_f64());
            break;
        }
    }
    ctx.admin.flushall().await?;
    Ok(BurstRow {
        imp: lock.imp(),
        leases: n,
        drain_ms: drained_at.map_or(f64::NAN, |at| at - deadline),
        left,
        probe_ms: rtt_us.summary(1000.0),
    })
}

/// The event class and channel for an implementation's removals.
fn events(imp: Impl) -> (&'static str, &'static str) {
    match imp {
        Impl::Module => ("Ed", "__keyevent@0__:lock.expire"),
        _ => ("Ex", "__keyevent@0__:expired"),
    }
}

async fn one_run(ctx: &mut Ctx, lock: &Lock, n: usize, rate_per_ms: f64) -> Result<ExpiryRow> {
    let spread = ctx.plan.exp_spread_ms;
    ctx.admin.flushall().await?;
    let (flags, channel) = events(lock.imp());
    ctx.admin
        .config_set("notify-keyspace-events", flags)
        .await?;
    ctx.admin
        .config_set("client-output-buffer-limit", "pubsub 0 0 0")
        .await?;

    let mut sub = Conn::connect(ctx.port).await?;
    let r = sub.call(&[b"SUBSCRIBE", channel.as_bytes()]).await?;
    if !matches!(&r, Reply::Array(_)) {
        return Err(BenchError::unexpected("SUBSCRIBE", &r));
    }

    // Deadlines: window start after the expected load time, offsets random.
    let lead_ms = 300.0 + 1.5 * n as f64 / rate_per_ms;
    let window_start = unix_ms_f64() + lead_ms;
    let mut rng = fastrand::Rng::with_seed(n as u64);
    let offsets: Vec<u64> = (0..n).map(|_| rng.u64(..spread.max(1))).collect();
    let stop_at =
        Instant::now() + Duration::from_millis((lead_ms as u64) + spread + ctx.plan.exp_grace_ms);

    let reader = tokio::spawn(read_removals(sub, n, stop_at));

    let t_load = Instant::now();
    let mut loaders = Vec::new();
    for c in 0..LOADERS {
        let (lock, port) = (lock.clone(), ctx.port);
        let mine: Vec<(usize, u64)> = (c..n)
            .step_by(LOADERS)
            .map(|i| (i, offsets.get(i).copied().unwrap_or(0)))
            .collect();
        loaders.push(tokio::spawn(load(lock, port, mine, window_start)));
    }
    let mut deadlines = vec![None; n];
    let mut overrun = 0;
    let mut max_bracket_ms = 0.0f64;
    for l in loaders {
        let loaded = l.await??;
        max_bracket_ms = max_bracket_ms.max(loaded.max_bracket_ms);
        for (i, d) in loaded.deadlines {
            match (d, deadlines.get_mut(i)) {
                (Some(d), Some(slot)) => *slot = Some(d),
                (None, _) => overrun += 1,
                _ => {}
            }
        }
    }
    let load_ms = t_load.elapsed().as_secs_f64() * 1000.0;

    let removals = reader.await??;
    // Lateness in µs; an early removal is counted in `early` and as 0.
    let mut lateness_us = Histogram::new();
    let mut early = 0;
    for (i, at_ms) in removals {
        if let Some(Some(deadline)) = deadlines.get(i) {
            let late_ms = at_ms - *deadline as f64;
            if late_ms < 0.0 {
                early += 1;
            }
            lateness_us.record((late_ms.max(0.0) * 1000.0).round() as u64);
        }
    }
    let removed = lateness_us.len() as usize;
    ctx.admin.flushall().await?;
    Ok(ExpiryRow {
        imp: lock.imp(),
        leases: n,
        spread_ms: spread,
        load_ms,
        removed,
        missing: n - overrun - removed.min(n - overrun),
        overrun,
        early,
        max_bracket_ms,
        lateness_ms: lateness_us.summary(1000.0),
    })
}

struct Loaded {
    /// (index, deadline lower bound in Unix ms; None for an overrun).
    deadlines: Vec<(usize, Option<i64>)>,
    max_bracket_ms: f64,
}

async fn load(
    lock: Lock,
    port: u16,
    mine: Vec<(usize, u64)>,
    window_start_ms: f64,
) -> Result<Loaded> {
    let mut client = Client::connect(port, false).await?;
    let mut out = Loaded {
        deadlines: Vec::with_capacity(mine.len()),
        max_bracket_ms: 0.0,
    };
    for chunk in mine.chunks(BATCH) {
        let now = unix_ms_f64();
        let ttls: Vec<i64> = chunk
            .iter()
            .map(|&(_, off)| (window_start_ms + off as f64 - now).floor() as i64)
            .collect();
        let queue = |q: &mut dyn Queue| {
            q.queue(&[b"TIME"]);
            for (&(i, _), &ttl) in chunk.iter().zip(&ttls) {
                let ttl = ttl.max(1).to_string();
                let (k, o) = (key16(b'x', i as u64), owner36(b'x', i as u64));
                lock.queue_acquire(q, &k, &o, ttl.as_bytes());
            }
            q.queue(&[b"TIME"]);
        };
        // TIME, the acquires, TIME.
        let (mut seen, mut before, mut after) = (0, 0.0, 0.0);
        let last = chunk.len() + 1;
        let check = |r: &Reply| {
            match seen {
                0 => before = server_ms(r)?,
                s if s == last => after = server_ms(r)?,
                _ if lock.acquired(r)? == Acquired::Granted => {}
                _ => return Err(BenchError::unexpected("acquire of a fresh key", r)),
            }
            seen += 1;
            Ok(())
        };
        client.round_trip(last + 1, queue, check).await?;
        out.max_bracket_ms = out.max_bracket_ms.max(after - before);
        for (&(i, _), &ttl) in chunk.iter().zip(&ttls) {
            // The lease's deadline is (server ms when it ran) + ttl, and
            // that server ms is at least floor(before).
            let d = (ttl >= MIN_TTL_MS).then(|| before.floor() as i64 + ttl);
            out.deadlines.push((i, d));
        }
    }
    Ok(out)
}

/// `TIME` → Unix ms (fractional).
fn server_ms(r: &Reply) -> Result<f64> {
    if let Reply::Array(items) = r {
        let num = |k: usize| {
            items
                .get(k)
                .and_then(Reply::as_text)
                .and_then(|s| s.parse::<f64>().ok())
        };
        if let (Some(s), Some(us)) = (num(0), num(1)) {
            return Ok(s * 1000.0 + us / 1000.0);
        }
    }
    Err(BenchError::unexpected("TIME", r))
}

/// Reads removal events until `n` have arrived or `stop_at`; returns
/// (index, receipt Unix ms).
async fn read_removals(mut sub: Conn, n: usize, stop_at: Instant) -> Result<Vec<(usize, f64)>> {
    let mut seen = Vec::with_capacity(n);
    while seen.len() < n {
        let left = stop_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let Some(r) = sub.read_reply_within(left).await? else {
            break;
        };
        let at = unix_ms_f64();
        if let Reply::Array(items) = &r {
            if let (Some(Reply::Bulk(kind)), Some(Reply::Bulk(key))) = (items.first(), items.get(2))
            {
                if kind == b"message" {
                    if let Some(i) = key16_index(key) {
                        seen.push((i as usize, at));
                    }
                }
            }
        }
    }
    Ok(seen)
}
