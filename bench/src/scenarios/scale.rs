//! Scenarios 5 and 6: memory per held lock, acquire latency with few and
//! with many live locks, and RDB save/load time.
//!
//! For each implementation and size: `FLUSHALL`, fill N locks (16-byte keys,
//! distinct 36-byte owners, 1 h leases) through pipelines, and read the
//! `used_memory` delta ÷ N. Then, with the N locks live, one client times
//! `lat_samples` acquires of fresh keys (each released untimed), and
//! `INFO commandstats` gives the server-side cost of those acquires. At the
//! largest size: `SAVE` (timed), `FLUSHALL`, then `DEBUG RELOAD NOSAVE`
//! (loads that RDB into the empty server: the load time, including
//! whatever the module does when loading ends), then a check that all N
//! locks came back.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::locks::{Acquired, Impl, Lock, Op};
use crate::resp::Reply;
use crate::scenarios::{apply_all, key16, progress, Bulk, Ctx};
use crate::stats::{Histogram, Summary};

/// One implementation at one size.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRow {
    /// Which implementation.
    pub imp: Impl,
    /// Live locks.
    pub locks: usize,
    /// `used_memory` delta ÷ locks, bytes.
    pub bytes_per_lock: f64,
    /// Acquire round trip with `locks` live, µs.
    pub acquire_latency_us: Summary,
    /// Server-side µs per acquire call at this size.
    pub acquire_usec_per_call: f64,
    /// `SAVE` duration, ms (largest size only).
    pub save_ms: Option<f64>,
    /// `DEBUG RELOAD NOSAVE` duration, ms (largest size only).
    pub load_ms: Option<f64>,
    /// RDB file size, bytes (largest size only).
    pub rdb_bytes: Option<u64>,
    /// Why save/load was not measured, when it was not.
    pub rdb_note: Option<String>,
}

const TTL_MS: u64 = 3_600_000;
const FILL_CONNS: usize = 4;
const FILL_DEPTH: usize = 512;

/// Runs every implementation × size.
pub async fn run(ctx: &mut Ctx) -> Result<Vec<ScaleRow>> {
    let sizes = ctx.plan.scale_sizes.clone();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut rows = Vec::new();
    for lock in ctx.locks.clone() {
        for &n in &sizes {
            let row = one_size(ctx, &lock, n, n == largest).await?;
            progress(&format!(
                "scale {} {n}: {:.1} B/lock, acquire p50 {:.1} p99 {:.1} us, {:.3} usec/call, save {:?} ms, load {:?} ms",
                lock.imp().name(),
                row.bytes_per_lock,
                row.acquire_latency_us.p50,
                row.acquire_latency_us.p99,
                row.acquire_usec_per_call,
                row.save_ms.map(|v| v.round()),
                row.load_ms.map(|v| v.round())
            ));
            rows.push(row);
        }
    }
    ctx.admin.flushall().await?;
    Ok(rows)
}

async fn one_size(ctx: &mut Ctx, lock: &Lock, n: usize, persist: bool) -> Result<ScaleRow> {
    ctx.admin.flushall().await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = ctx.admin.used_memory().await?;
    let fill = Bulk {
        op: Op::Acquire,
        tag: b'l',
        n,
        ttl_ms: TTL_MS,
        conns: FILL_CONNS,
        depth: FILL_DEPTH,
    };
    apply_all(ctx.port, lock, fill).await?;
    let after = ctx.admin.used_memory().await?;
    let keys = ctx.admin.dbsize().await?;
    if keys != n as u64 {
        return Err(BenchError::Setup(format!(
            "{} locks filled but DBSIZE is {keys}",
            n
        )));
    }

    ctx.admin.reset_stats().await?;
    let lat = latency(ctx.port, lock, ctx.plan.lat_samples).await?;
    let usec_per_call = ctx
        .admin
        .command_stat(lock.stat_name(Op::Acquire))
        .await?
        .per_call();

    let mut row = ScaleRow {
        imp: lock.imp(),
        locks: n,
        bytes_per_lock: (after - before) / n as f64,
        acquire_latency_us: lat,
        acquire_usec_per_call: usec_per_call,
        save_ms: None,
        load_ms: None,
        rdb_bytes: None,
        rdb_note: None,
    };
    if persist {
        match save_and_load(ctx, n).await {
            Ok((save, load, size)) => {
                row.save_ms = Some(save);
                row.load_ms = Some(load);
                row.rdb_bytes = size;
            }
            Err(e @ BenchError::Server { .. }) => row.rdb_note = Some(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(row)
}

/// Times `samples` acquires of fresh keys on one connection (each released
/// untimed), after an untimed warm-up of a tenth as many.
async fn latency(port: u16, lock: &Lock, samples: usize) -> Result<Summary> {
    let mut conn = lock.client(port).await?;
    let owner = b"00000000-0000-4000-8000-00000000beef";
    let ttl = TTL_MS.to_string();
    let warmup = (samples / 10).max(200);
    let mut ns = Histogram::new();
    for s in 0..samples + warmup {
        let key = key16(b'q', s as u64);
        let t = Instant::now();
        let got = lock
            .try_acquire(&mut conn, &key, owner, ttl.as_bytes())
            .await?;
        if s >= warmup {
            ns.record_ns(t.elapsed());
        }
        if got != Acquired::Granted {
            return Err(BenchError::Setup(
                "latency probe: a fresh key was not granted".into(),
            ));
        }
        lock.release(&mut conn, &key, owner, ttl.as_bytes()).await?;
    }
    Ok(ns.summary(1000.0))
}

/// `SAVE` and `DEBUG RELOAD NOSAVE`, timed; the RDB file's size.
async fn save_and_load(ctx: &mut Ctx, n: usize) -> Result<(f64, f64, Option<u64>)> {
    let admin = &mut ctx.admin;
    admin.conn.read_timeout = Duration::from_secs(300);
    let t = Instant::now();
    admin.conn.cmd(&["SAVE"]).await?;
    let save_ms = t.elapsed().as_secs_f64() * 1000.0;
    let dir = admin.config_get("dir").await?;
    let file = admin.config_get("dbfilename").await?;
    let size = std::fs::metadata(std::path::Path::new(&dir).join(file))
        .ok()
        .map(|m| m.len());
    // Empty the dataset first so that the timed reload is the load alone
    // (DEBUG RELOAD would otherwise free the live locks inside the timing).
    admin.flushall().await?;
    let t = Instant::now();
    let r = admin.conn.cmd(&["DEBUG", "RELOAD", "NOSAVE"]).await?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    admin.conn.read_timeout = Duration::from_secs(120);
    if !matches!(&r, Reply::Status(s) if s == "OK") {
        return Err(BenchError::unexpected("DEBUG RELOAD NOSAVE", &r));
    }
    let keys = admin.dbsize().await?;
    if keys != n as u64 {
        return Err(BenchError::Setup(format!(
            "after DEBUG RELOAD {keys} keys instead of {n}"
        )));
    }
    Ok((save_ms, load_ms, size))
}
