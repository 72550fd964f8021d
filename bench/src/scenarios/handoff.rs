//! Scenario 3: contended hand-off, and the FIFO check.
//!
//! `clients` clients loop on one key: wait for the lock the way their
//! implementation waits, hold it `hold_ms`, release, repeat. A client
//! stamps the moment it sends a release; the next client to be granted
//! takes that stamp, and the difference to the moment its own grant reply
//! arrived is one hand-off latency (all clients share one process and one
//! monotonic clock). Also counted: grants per second, acquire requests that
//! did not grant (wasted), grants that went to a client which started
//! waiting more than 1 ms after another client still waiting (overtakes),
//! and the longest wait.
//!
//! The FIFO check is deterministic: a holder takes the lock, `fifo_waiters`
//! clients start waiting one after another (20 ms apart; for the module
//! each is confirmed queued through `LOCK.INFO`), the holder releases, and
//! each waiter releases as soon as it is granted. The grant order must be
//! the start order.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::locks::{Acquired, Impl, Lock};
use crate::resp::{Conn, Reply};
use crate::scenarios::client_lib::{ClientLib, LoadClient};
use crate::scenarios::{progress, Ctx};
use crate::stats::{Histogram, Summary};

/// One implementation, one client count, one hold time.
#[derive(Clone, Debug, Serialize)]
pub struct HandoffRow {
    /// Which implementation.
    pub imp: Impl,
    /// Clients contending for the key.
    pub clients: usize,
    /// How long each holder keeps the lock.
    pub hold_ms: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Grants inside the window.
    pub grants: u64,
    /// Grants per second.
    pub handoffs_per_sec: f64,
    /// Release sent → next holder answered, µs.
    pub latency_us: Summary,
    /// Acquire requests that did not grant (during waits that began in the
    /// window, including a starved client's).
    pub wasted: u64,
    /// `wasted / grants`.
    pub wasted_per_acquisition: f64,
    /// Grants to a client that started waiting > 1 ms after another
    /// client still waiting.
    pub overtakes: u64,
    /// Longest single wait, ms (waits still open when the window closed
    /// included: a starved client shows here).
    pub max_wait_ms: f64,
    /// Grants that went back to the client that released last, % (barging:
    /// the releaser re-acquiring ahead of those already waiting).
    pub self_grants_pct: f64,
    /// Latency of the hand-offs to a different client, µs.
    pub latency_to_other_us: Summary,
    /// Waits that gave up (should be 0).
    pub timeouts: u64,
}

/// One implementation's FIFO check.
#[derive(Clone, Debug, Serialize)]
pub struct FifoRow {
    /// Which implementation.
    pub imp: Impl,
    /// Waiters queued.
    pub waiters: usize,
    /// The order they were granted in (start order is 0, 1, 2, ...).
    pub order: Vec<usize>,
    /// Pairs granted out of start order.
    pub inversions: usize,
    /// True when `order` is the start order.
    pub in_order: bool,
}

const TTL_MS: &str = "30000";
/// A waiter that started this much later than another still waiting and
/// was granted first counts as an overtake (slack for socket reordering).
const OVERTAKE_SLACK_NS: u64 = 1_000_000;
/// How long a wait may last past the end of a run before it gives up.
const GIVE_UP_AFTER_END: Duration = Duration::from_secs(15);
const MAX_GRANTS_PER_CLIENT: u64 = 10_000_000;

/// Runs every client count × hold time × implementation, then the FIFO
/// check for every implementation.
pub async fn run(ctx: &mut Ctx) -> Result<(Vec<HandoffRow>, Vec<FifoRow>)> {
    let mut rows = Vec::new();
    for &clients in &ctx.plan.ho_clients.clone() {
        for &hold_ms in &ctx.plan.ho_hold_ms.clone() {
            for lock in ctx.locks.clone() {
                ctx.admin.flushall().await?;
                let row = contended(ctx, &lock, clients, hold_ms, ClientLib::Resp).await?;
                progress(&format!(
                    "handoff {} clients {clients} hold {hold_ms} ms: {:.0}/s, p99 {:.0} us, wasted/acq {:.2}",
                    lock.imp().name(),
                    row.handoffs_per_sec,
                    row.latency_us.p99,
                    row.wasted_per_acquisition
                ));
                rows.push(row);
            }
        }
    }
    let mut fifo = Vec::new();
    for lock in ctx.locks.clone() {
        ctx.admin.flushall().await?;
        let row = fifo_check(ctx, &lock).await?;
        progress(&format!(
            "fifo {}: order {:?}",
            lock.imp().name(),
            row.order
        ));
        fifo.push(row);
    }
    Ok((rows, fifo))
}

/// What all clients of one run share.
struct Shared {
    epoch: Instant,
    measure_from: Instant,
    end: Instant,
    give_up: Instant,
    /// When the last release was sent (ns since `epoch`, + 1; 0 = taken).
    last_release: AtomicU64,
    /// Which client sent it.
    last_releaser: AtomicUsize,
    /// When each client started its current wait (ns since `epoch`).
    waiting_since: Mutex<Vec<Option<u64>>>,
}

impl Shared {
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// What one client saw inside the window.
#[derive(Default)]
struct ClientStats {
    grants: u64,
    wasted: u64,
    overtakes: u64,
    timeouts: u64,
    max_wait: Duration,
    self_grants: u64,
    /// Hand-off latencies, ns.
    latencies: Histogram,
    /// Those to a different client, ns.
    latencies_other: Histogram,
}

/// One timed run: `clients` contenders on one key, each holding `hold_ms`.
pub async fn contended(
    ctx: &Ctx,
    lock: &Lock,
    clients: usize,
    hold_ms: u64,
    lib: ClientLib,
) -> Result<HandoffRow> {
    let seconds = ctx.plan.ho_seconds;
    let key = format!("handoff:{}:{clients}:{hold_ms}", lock.imp().name()).into_bytes();
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(LoadClient::connect(lib, ctx.port, lock.waits_on_pubsub()).await?);
    }
    let epoch = Instant::now() + Duration::from_millis(20);
    let measure_from = epoch + Duration::from_millis(100);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let shared = Arc::new(Shared {
        epoch,
        measure_from,
        end,
        give_up: end + GIVE_UP_AFTER_END,
        last_release: AtomicU64::new(0),
        last_releaser: AtomicUsize::new(usize::MAX),
        waiting_since: Mutex::new(vec![None; clients]),
    });
    let mut tasks = Vec::new();
    for (c, client) in conns.into_iter().enumerate() {
        let (lock, shared, key) = (lock.clone(), Arc::clone(&shared), key.clone());
        tasks.push(tokio::spawn(async move {
            contender(lock, client, c, key, hold_ms, shared).await
        }));
    }
    let mut total = ClientStats::default();
    for t in tasks {
        let s = t.await??;
        total.grants += s.grants;
        total.wasted += s.wasted;
        total.overtakes += s.overtakes;
        total.timeouts += s.timeouts;
        total.max_wait = total.max_wait.max(s.max_wait);
        total.self_grants += s.self_grants;
        total.latencies.add(&s.latencies);
        total.latencies_other.add(&s.latencies_other);
    }
    Ok(HandoffRow {
        imp: lock.imp(),
        clients,
        hold_ms,
        seconds,
        grants: total.grants,
        handoffs_per_sec: total.grants as f64 / seconds,
        latency_us: total.latencies.summary(1000.0),
        wasted: total.wasted,
        wasted_per_acquisition: total.wasted as f64 / (total.grants.max(1)) as f64,
        overtakes: total.overtakes,
        max_wait_ms: total.max_wait.as_secs_f64() * 1000.0,
        self_grants_pct: total.self_grants as f64 * 100.0 / total.grants.max(1) as f64,
        latency_to_other_us: total.latencies_other.summary(1000.0),
        timeouts: total.timeouts,
    })
}

async fn contender(
    lock: Lock,
    mut client: LoadClient,
    c: usize,
    key: Vec<u8>,
    hold_ms: u64,
    sh: Arc<Shared>,
) -> Result<ClientStats> {
    let owner = uuid::Uuid::new_v4().hyphenated().to_string().into_bytes();
    let ttl = TTL_MS.as_bytes();
    let mut rng = fastrand::Rng::with_seed(c as u64 + 1);
    let mut st = ClientStats::default();
    tokio::time::sleep_until(sh.epoch.into()).await;
    for _ in 0..MAX_GRANTS_PER_CLIENT {
        if Instant::now() >= sh.end {
            break;
        }
        let t_wait = Instant::now();
        let wait_ns = sh.ns(t_wait);
        if let Ok(mut w) = sh.waiting_since.lock() {
            if let Some(slot) = w.get_mut(c) {
                *slot = Some(wait_ns);
            }
        }
        let out = lock
            .acquire_waiting(&mut client, &key, &owner, ttl, sh.give_up, &mut rng)
            .await?;
        let t_grant = Instant::now();
        let in_window = t_grant >= sh.measure_from && t_grant < sh.end;
        let overtook = match sh.waiting_since.lock() {
            Ok(mut w) => {
                if let Some(slot) = w.get_mut(c) {
                    *slot = None;
                }
                w.iter()
                    .flatten()
                    .any(|&other| other + OVERTAKE_SLACK_NS < wait_ns)
            }
            Err(_) => false,
        };
        if t_wait < sh.end {
            // Waits that began in the run count even when they end after it:
            // a starved client's fruitless tries are the point.
            st.wasted += out.wasted;
            st.max_wait = st.max_wait.max(t_grant - t_wait);
        }
        if !out.granted {
            st.timeouts += 1;
            continue;
        }
        let released_at = sh.last_release.swap(0, Ordering::AcqRel);
        let from_self = sh.last_releaser.load(Ordering::Acquire) == c;
        if in_window {
            st.grants += 1;
            st.overtakes += u64::from(overtook);
            if released_at != 0 {
                let lat_ns = sh.ns(t_grant).saturating_sub(released_at - 1);
                st.latencies.record(lat_ns);
                if from_self {
                    st.self_grants += 1;
                } else {
                    st.latencies_other.record(lat_ns);
                }
            }
        }
        if hold_ms > 0 {
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        }
        sh.last_releaser.store(c, Ordering::Release);
        sh.last_release
            .store(sh.ns(Instant::now()) + 1, Ordering::Release);
        lock.release(&mut client, &key, &owner, ttl).await?;
    }
    Ok(st)
}

async fn fifo_check(ctx: &mut Ctx, lock: &Lock) -> Result<FifoRow> {
    let waiters = ctx.plan.fifo_waiters;
    let key = format!("fifo:{}", lock.imp().name()).into_bytes();
    let ttl = TTL_MS.as_bytes();
    let holder_owner = b"fifo-holder".to_vec();
    let mut holder = lock.client(ctx.port).await?;
    if lock
        .try_acquire(&mut holder, &key, &holder_owner, ttl)
        .await?
        != Acquired::Granted
    {
        return Err(BenchError::Setup(
            "FIFO check: the holder could not take a free lock".into(),
        ));
    }
    let give_up = Instant::now() + Duration::from_secs(30);
    let order = Arc::new(Mutex::new(Vec::with_capacity(waiters)));
    let mut tasks = Vec::new();
    for i in 0..waiters {
        let mut client = lock.client(ctx.port).await?;
        let (lock2, key2, order2) = (lock.clone(), key.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let owner = format!("fifo-waiter-{i:03}").into_bytes();
            let mut rng = fastrand::Rng::with_seed(i as u64 + 99);
            let out = lock2
                .acquire_waiting(&mut client, &key2, &owner, ttl, give_up, &mut rng)
                .await?;
            if !out.granted {
                return Err(BenchError::Timeout(format!(
                    "FIFO check: waiter {i} was never granted"
                )));
            }
            if let Ok(mut o) = order2.lock() {
                o.push(i);
            }
            lock2.release(&mut client, &key2, &owner, ttl).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        if lock.imp() == Impl::Module {
            wait_until_queued(&mut ctx.admin.conn, &key, i + 1).await?;
        }
    }
    lock.release(&mut holder, &key, &holder_owner, ttl).await?;
    for t in tasks {
        t.await??;
    }
    let order: Vec<usize> = order.lock().map(|o| o.clone()).unwrap_or_default();
    let inversions = order
        .iter()
        .enumerate()
        .map(|(a, x)| order.iter().skip(a + 1).filter(|y| *y < x).count())
        .sum();
    Ok(FifoRow {
        imp: lock.imp(),
        waiters,
        in_order: order.len() == waiters && inversions == 0,
        order,
        inversions,
    })
}

/// Polls `LOCK.INFO key` until it reports `n` waiters (at most 5 s).
pub async fn wait_until_queued(conn: &mut Conn, key: &[u8], n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = conn.call(&[b"LOCK.INFO", key]).await?;
        if info_waiters(&r) == Some(n as i64) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "LOCK.INFO never showed {n} waiters: {r:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The `waiters` field of a RESP2 `LOCK.INFO` reply (flat field/value array).
fn info_waiters(r: &Reply) -> Option<i64> {
    let Reply::Array(items) = r else { return None };
    items
        .chunks(2)
        .find(|kv| kv.first().and_then(Reply::as_text).as_deref() == Some("waiters"))
        .and_then(|kv| kv.get(1))
        .and_then(Reply::as_int)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_waiters_from_lock_info() {
        let r = Reply::Array(vec![
            Reply::Bulk(b"owner".to_vec()),
            Reply::Bulk(b"x".to_vec()),
            Reply::Bulk(b"waiters".to_vec()),
            Reply::Int(3),
        ]);
        assert_eq!(info_waiters(&r), Some(3));
        assert_eq!(info_waiters(&Reply::Nil), None);
    }
}
