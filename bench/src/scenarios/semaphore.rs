//! Scenario 9: clients contending for the permits of one semaphore.
//!
//! `sem_clients` clients loop on a semaphore of `sem_permits`: take one
//! permit (waiting the implementation's way; every acquisition under a
//! fresh id, as Redisson's permit ids are — for the module the owner), hold
//! it `sem_hold_ms`, give it back, take one again.
//!
//! Measured over the waits that begin in the window (after 100 ms of
//! warm-up; a wait that begins in the window counts whenever it ends: a
//! starved client's wait shows in full): grants per second, wait p50/p99/max
//! (request sent → grant reply), every request (wasted ones — refused
//! tries, timed-out waits — `SUBSCRIBE`/`UNSUBSCRIBE`, pub/sub messages
//! received), and FIFO order: a grant passed another wait when its client
//! began waiting more than 1 ms after that wait began and was granted more
//! than 1 ms before it ended (a grant that passed any is out of arrival
//! order); for each wait, how many grants passed it (the most is
//! reported). A
//! client-side check records the most permits held at once (each client
//! stops counting itself a holder before it sends its release, so the
//! count never exceeds the permits unless the lock let it).
//!
//! That order is judged client-side, and on a loaded machine "arrival" is
//! blurred by about a millisecond on both ends: requests that reach a
//! descheduled redis-server are read in the kernel's ready-list order, not
//! in the order they were sent, and a descheduled load generator reads the
//! replies late. So the verdict on FIFO comes from a deterministic check,
//! as in scenario 3: holders take every permit, `sem_fifo_waiters` clients
//! start waiting one after another (20 ms apart; for the module each is
//! confirmed queued through `LOCK.INFO`), one holder releases, and each
//! waiter releases as soon as it is granted — one grant at a time. The grant
//! order must be the start order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::locks::{Client, Impl, Lock};
use crate::scenarios::handoff::{wait_until_queued, FifoRow};
use crate::scenarios::{progress, Ctx};
use crate::stats::{Histogram, Summary};

/// One implementation's run.
#[derive(Clone, Debug, Serialize)]
pub struct SemRow {
    /// Which implementation.
    pub imp: Impl,
    /// Clients looping on the semaphore.
    pub clients: usize,
    /// Its permits.
    pub permits: usize,
    /// How long each permit is held, ms.
    pub hold_ms: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Grants (of waits that began in the window).
    pub grants: u64,
    /// `grants / seconds`.
    pub grants_per_sec: f64,
    /// Wait (request sent → grant reply), ms.
    pub wait_ms: Summary,
    /// Requests that did not grant or release (refused tries, timed-out
    /// waits).
    pub wasted: u64,
    /// `SUBSCRIBE` / `UNSUBSCRIBE` requests.
    pub pubsub_requests: u64,
    /// Pub/sub messages received.
    pub messages: u64,
    /// `wasted / grants`.
    pub wasted_per_grant: f64,
    /// `messages / grants`.
    pub messages_per_grant: f64,
    /// Every request (acquires, releases, wasted, pub/sub) ÷ grants.
    pub requests_per_grant: f64,
    /// Grants out of arrival order (to a client that began waiting > 1 ms
    /// after another, and granted > 1 ms before that other's wait ended).
    pub overtakes: u64,
    /// `overtakes / grants`, %.
    pub out_of_order_pct: f64,
    /// The most out-of-order grants that passed one wait.
    pub max_overtaken: u64,
    /// The most permits held at once, client-side (must be ≤ `permits`).
    pub max_holders: usize,
    /// Waits that gave up (should be 0).
    pub timeouts: u64,
}

const TTL_MS: u64 = 30_000;
/// A client that began waiting this much later than another still waiting
/// and was granted first overtook it (slack for socket reordering).
const OVERTAKE_SLACK_NS: u64 = 1_000_000;
/// How long a wait may last past the end of a run before it gives up.
const GIVE_UP_AFTER_END: Duration = Duration::from_secs(15);
const MAX_GRANTS_PER_CLIENT: u64 = 10_000_000;

/// Runs the scenario for every implementation that has a semaphore, then
/// the FIFO check for each.
pub async fn run(ctx: &mut Ctx) -> Result<(Vec<SemRow>, Vec<FifoRow>)> {
    let mut rows = Vec::new();
    for lock in ctx.locks.clone().into_iter().filter(Lock::has_family) {
        ctx.admin.flushall().await?;
        let row = measure(ctx, &lock).await?;
        progress(&format!(
            "semaphore {}: {:.0} grants/s, wait p50 {:.2} p99 {:.2} max {:.2} ms, wasted/grant {:.2}, messages/grant {:.2}, out of order {:.1}% (max {} passed one wait), max holders {}",
            lock.imp().name(),
            row.grants_per_sec,
            row.wait_ms.p50,
            row.wait_ms.p99,
            row.wait_ms.max,
            row.wasted_per_grant,
            row.messages_per_grant,
            row.out_of_order_pct,
            row.max_overtaken,
            row.max_holders
        ));
        rows.push(row);
    }
    let mut checks = Vec::new();
    for lock in ctx.locks.clone().into_iter().filter(Lock::has_family) {
        ctx.admin.flushall().await?;
        let row = fifo_check(ctx, &lock).await?;
        progress(&format!(
            "semaphore fifo {}: order {:?}",
            lock.imp().name(),
            row.order
        ));
        checks.push(row);
    }
    Ok((rows, checks))
}

struct Shared {
    epoch: Instant,
    measure_from: Instant,
    end: Instant,
    give_up: Instant,
    holders: AtomicUsize,
    max_holders: AtomicUsize,
}

impl Shared {
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// One wait: when it began and ended (ns since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Wait {
    start: u64,
    end: u64,
    granted: bool,
    /// Began in the window.
    counted: bool,
}

/// FIFO order from every wait of a run: `(out-of-order grants, the most
/// that passed one wait)`, over the counted waits. A grant to X passed Y
/// when X began waiting more than the slack after Y and was granted more
/// than the slack before Y's wait ended. Judged from both ends of the waits
/// rather than at the moment a grant is read: grants the server makes in
/// one event-loop iteration reach the client in any order (Redis writes the
/// replies last-in first-out), microseconds apart.
fn fifo(waits: &mut [Wait], slack: u64) -> (u64, u64) {
    waits.sort_by_key(|w| w.start);
    let mut overtakes = 0;
    let (mut before, mut latest_end) = (0, 0);
    for x in waits.iter() {
        while let Some(y) = waits.get(before).filter(|y| y.start + slack < x.start) {
            latest_end = latest_end.max(y.end);
            before += 1;
        }
        if x.granted && x.counted && before > 0 && latest_end > x.end + slack {
            overtakes += 1;
        }
    }
    let mut most = 0;
    for (i, y) in waits.iter().enumerate() {
        if !y.counted {
            continue;
        }
        let cut = y.end.saturating_sub(slack);
        let passed = waits
            .iter()
            .skip(i + 1)
            .take_while(|x| x.start < cut)
            .filter(|x| x.granted && x.start > y.start + slack && x.end < cut)
            .count() as u64;
        most = most.max(passed);
    }
    (overtakes, most)
}

#[derive(Default)]
struct ClientStats {
    grants: u64,
    waits: Histogram,
    requests: u64,
    wasted: u64,
    pubsub: u64,
    messages: u64,
    timeouts: u64,
    /// Every wait, counted or not (the FIFO judgement needs them all).
    all: Vec<Wait>,
}

async fn measure(ctx: &mut Ctx, lock: &Lock) -> Result<SemRow> {
    let p = ctx.plan.clone();
    let seconds = p.sem_seconds;
    let key = format!("semaphore:{}", lock.imp().name()).into_bytes();
    lock.sem_init(&mut ctx.admin.conn, &key, p.sem_permits)
        .await?;
    let mut clients = Vec::with_capacity(p.sem_clients);
    for _ in 0..p.sem_clients {
        clients.push(lock.client(ctx.port).await?);
    }
    let epoch = Instant::now() + Duration::from_millis(20);
    let measure_from = epoch + Duration::from_millis(100);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let sh = Arc::new(Shared {
        epoch,
        measure_from,
        end,
        give_up: end + GIVE_UP_AFTER_END,
        holders: AtomicUsize::new(0),
        max_holders: AtomicUsize::new(0),
    });
    let mut tasks = Vec::with_capacity(p.sem_clients);
    for client in clients {
        let (lock, key, sh) = (lock.clone(), key.clone(), Arc::clone(&sh));
        let (permits, hold) = (p.sem_permits, Duration::from_millis(p.sem_hold_ms));
        tasks.push(tokio::spawn(async move {
            contender(lock, client, key, permits, hold, sh).await
        }));
    }
    let mut t = ClientStats::default();
    for task in tasks {
        let mut s = task.await??;
        t.grants += s.grants;
        t.waits.add(&s.waits);
        t.requests += s.requests;
        t.wasted += s.wasted;
        t.pubsub += s.pubsub;
        t.messages += s.messages;
        t.timeouts += s.timeouts;
        t.all.append(&mut s.all);
    }
    let (overtakes, max_overtaken) = fifo(&mut t.all, OVERTAKE_SLACK_NS);
    let per_grant = |n: u64| n as f64 / t.grants.max(1) as f64;
    Ok(SemRow {
        imp: lock.imp(),
        clients: p.sem_clients,
        permits: p.sem_permits,
        hold_ms: p.sem_hold_ms,
        seconds,
        grants: t.grants,
        grants_per_sec: t.grants as f64 / seconds,
        wait_ms: t.waits.summary(1e6),
        wasted: t.wasted,
        pubsub_requests: t.pubsub,
        messages: t.messages,
        wasted_per_grant: per_grant(t.wasted),
        messages_per_grant: per_grant(t.messages),
        requests_per_grant: per_grant(t.requests),
        overtakes,
        out_of_order_pct: per_grant(overtakes) * 100.0,
        max_overtaken,
        max_holders: sh.max_holders.load(Ordering::Acquire),
        timeouts: t.timeouts,
    })
}

async fn contender(
    lock: Lock,
    mut client: Client,
    key: Vec<u8>,
    permits: usize,
    hold: Duration,
    sh: Arc<Shared>,
) -> Result<ClientStats> {
    let owner = uuid::Uuid::new_v4().hyphenated().to_string();
    let mut st = ClientStats::default();
    tokio::time::sleep_until(sh.epoch.into()).await;
    for seq in 0..MAX_GRANTS_PER_CLIENT {
        let t_wait = Instant::now();
        if t_wait >= sh.end {
            break;
        }
        let id = format!("{owner}:{seq}").into_bytes();
        let out = lock
            .sem_acquire_waiting(&mut client, &key, &id, TTL_MS, permits, sh.give_up)
            .await?;
        let t_grant = Instant::now();
        let counted = t_wait >= sh.measure_from;
        st.all.push(Wait {
            start: sh.ns(t_wait),
            end: sh.ns(t_grant),
            granted: out.granted,
            counted,
        });
        if counted {
            st.wasted += out.wasted;
            st.pubsub += out.pubsub_requests;
            st.messages += out.messages;
            st.requests += out.wasted + out.pubsub_requests + if out.granted { 2 } else { 0 };
        }
        if !out.granted {
            st.timeouts += u64::from(counted);
            continue;
        }
        let now_held = sh.holders.fetch_add(1, Ordering::AcqRel) + 1;
        sh.max_holders.fetch_max(now_held, Ordering::AcqRel);
        if counted {
            st.grants += 1;
            st.waits.record_ns(t_grant - t_wait);
        }
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        sh.holders.fetch_sub(1, Ordering::AcqRel);
        lock.sem_release(&mut client, &key, &id).await?;
    }
    Ok(st)
}

/// The deterministic FIFO check (see the top of this file).
async fn fifo_check(ctx: &mut Ctx, lock: &Lock) -> Result<FifoRow> {
    let (permits, waiters) = (ctx.plan.sem_permits, ctx.plan.sem_fifo_waiters);
    let key = format!("semaphore-fifo:{}", lock.imp().name()).into_bytes();
    lock.sem_init(&mut ctx.admin.conn, &key, permits).await?;
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut holders = Vec::with_capacity(permits);
    for h in 0..permits {
        let mut c = lock.client(ctx.port).await?;
        let id = format!("fifo-holder-{h:03}").into_bytes();
        let w = lock
            .sem_acquire_waiting(&mut c, &key, &id, TTL_MS, permits, give_up)
            .await?;
        if !w.granted || w.wasted > 0 {
            return Err(BenchError::Setup(format!(
                "semaphore FIFO check: holder {h} could not take a free permit"
            )));
        }
        holders.push((c, id));
    }
    let order = Arc::new(std::sync::Mutex::new(Vec::with_capacity(waiters)));
    let mut tasks = Vec::with_capacity(waiters);
    for i in 0..waiters {
        let mut c = lock.client(ctx.port).await?;
        let (lock2, key2, order2) = (lock.clone(), key.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let id = format!("fifo-waiter-{i:03}").into_bytes();
            let w = lock2
                .sem_acquire_waiting(&mut c, &key2, &id, TTL_MS, permits, give_up)
                .await?;
            if !w.granted {
                return Err(BenchError::Timeout(format!(
                    "semaphore FIFO check: waiter {i} was never granted"
                )));
            }
            if let Ok(mut o) = order2.lock() {
                o.push(i);
            }
            lock2.sem_release(&mut c, &key2, &id).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        if lock.imp() == Impl::Module {
            wait_until_queued(&mut ctx.admin.conn, &key, i + 1).await?;
        }
    }
    // One permit comes free: the waiters pass it on one by one.
    let mut rest = holders.into_iter();
    if let Some((mut c, id)) = rest.next() {
        lock.sem_release(&mut c, &key, &id).await?;
    }
    for t in tasks {
        t.await??;
    }
    for (mut c, id) in rest {
        lock.sem_release(&mut c, &key, &id).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn w(start: u64, end: u64) -> Wait {
        Wait {
            start,
            end,
            granted: true,
            counted: true,
        }
    }

    #[test]
    fn a_later_arrival_granted_well_before_an_earlier_one_is_out_of_order() {
        // 0 waits 0..20 ms; 1 and 2 arrive at 5 and 5.5 ms and are granted
        // at 8 and 9 ms: both pass 0 (1 does not pass 2 or vice versa).
        let mut waits = vec![w(0, 20 * MS), w(5 * MS, 8 * MS), w(5 * MS + MS / 2, 9 * MS)];
        assert_eq!(fifo(&mut waits, MS), (2, 2));
    }

    #[test]
    fn grants_read_in_reverse_within_the_slack_are_in_order() {
        // The server granted 0 then 1 in one iteration; the client read
        // 1's reply 20 µs before 0's.
        let mut waits = vec![w(0, 10 * MS + 20_000), w(3 * MS, 10 * MS)];
        assert_eq!(fifo(&mut waits, MS), (0, 0));
    }

    #[test]
    fn arrival_order_is_never_out_of_order_and_uncounted_waits_only_witness() {
        let mut waits: Vec<Wait> = (0..50).map(|i| w(i * MS, (i + 5) * MS)).collect();
        assert_eq!(fifo(&mut waits, MS), (0, 0));
        // A wait from the warm-up (not counted) that a counted one passed:
        // the grant is out of order, the warm-up wait's count is not shown.
        let mut waits = vec![
            Wait {
                counted: false,
                ..w(0, 30 * MS)
            },
            w(10 * MS, 12 * MS),
        ];
        assert_eq!(fifo(&mut waits, MS), (1, 0));
        // A wait that timed out still witnesses the grants that passed it.
        let mut waits = vec![
            Wait {
                granted: false,
                ..w(0, 30 * MS)
            },
            w(10 * MS, 12 * MS),
        ];
        assert_eq!(fifo(&mut waits, MS), (1, 1));
    }
}
