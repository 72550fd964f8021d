//! fencelock-bench: measures the fencelock module side by side with two
//! baselines implemented here — the redis.io `SET NX PX` recipe and a
//! Redisson-style Lua lock — on one redis-server it starts itself (module
//! loaded, persistence off, 127.0.0.1), and writes a Markdown table, JSON
//! and an SVG chart. `--help` lists the options; bench/README.md explains
//! each scenario and how to profile.
//!
//! Layout: `cli` and `plan` (what to run, how big) → `server` (the server
//! and its admin commands) → `locks` (the three implementations) →
//! `scenarios` (one file per measurement) → `report` (JSON, Markdown, SVG,
//! targets); `resp` is the load generator's RESP client. `error` and
//! `stats` are used by all and use none of them.

mod cli;
mod error;
mod locks;
mod plan;
mod report;
mod resp;
mod scenarios;
mod server;
mod stats;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser as _;

use cli::Options;
use error::{BenchError, Result};
use locks::Lock;
use plan::Plan;
use report::results::{utc_date, Meta, Results};
use scenarios::{Ctx, Scenario};
use server::{Admin, Target};

fn main() -> ExitCode {
    // Bad arguments: clap prints why and the usage, and exits with 2.
    let opts = Options::parse();
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fencelock-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: Options) -> Result<()> {
    let target = match opts.connect {
        Some(port) => Target::External(port),
        None => Target::start()?,
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pinned = opts.pin() && cpus >= 2;
    if pinned {
        // The server on the first CPU, this process (still one thread) on the
        // last: each side gets a core of its own, as client and server on
        // different machines would, and latencies stop depending on where
        // the scheduler happens to put the threads.
        if let Some(pid) = target.pid() {
            server::pin(pid, 0)?;
        }
        server::pin(std::process::id(), cpus - 1)?;
    }
    // One thread: the load generator is event-driven; a second thread on
    // the same CPU would only add wake-up hops to every measured latency.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(measure(&opts, &target, cpus, pinned))?;
    drop(target);

    let Some(results) = results else {
        return Ok(()); // the client A/B wrote its own table
    };
    let out = opts.out();
    report::write(&results, &out)?;
    print!(
        "{}",
        report::markdown::render(&results, &out.join("chart.svg").display().to_string())
    );
    eprintln!("wrote {}/results.{{json,md}} and chart.svg", out.display());
    if opts.is_reference_run() {
        let root = testkit::workspace_root();
        for (readme, chart) in [
            (root.join("bench").join("README.md"), "results/chart.svg"),
            (root.join("README.md"), "bench/results/chart.svg"),
        ] {
            if readme.exists() && report::refresh_readme(&readme, &results, chart)? {
                eprintln!("refreshed the Performance block of {}", readme.display());
            }
        }
    }
    Ok(())
}

/// Runs the scenarios (or the client A/B: then `None`, it writes its own
/// table).
async fn measure(
    opts: &Options,
    target: &Target,
    cores: usize,
    pinned: bool,
) -> Result<Option<Results>> {
    let started = Instant::now();
    let port = target.port();
    eprintln!(
        "fencelock-bench: {:?} mode, server 127.0.0.1:{port}{}",
        opts.mode(),
        target
            .pid()
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default()
    );
    let mut admin = Admin::connect(port).await?;
    let mut locks = Vec::new();
    for imp in opts.impls() {
        locks.push(Lock::prepare(&mut admin.conn, imp).await?);
    }
    let now = time::OffsetDateTime::now_utc();
    let meta = Meta {
        date_utc: utc_date(now),
        unix_time: u64::try_from(now.unix_timestamp()).unwrap_or(0),
        mode: Some(opts.mode()),
        cores,
        cpu_model: cpu_model(),
        redis_version: admin.redis_version().await?,
        load_avg_start: load_avg(),
        pinned,
        module: match target {
            Target::Owned(_) => testkit::find_module_path().map(|p| p.display().to_string()),
            Target::External(_) => None,
        },
        ..Meta::default()
    };
    let plan = Plan::new(opts.mode(), opts.seconds);
    let mut results = Results::new(meta, plan.clone());
    let mut ctx = Ctx {
        port,
        plan,
        locks,
        admin,
    };
    if opts.client_ab {
        scenarios::client_ab::run(&mut ctx, &opts.out()).await?;
        ctx.admin.flushall().await?;
        return Ok(None);
    }
    for scenario in opts.scenarios() {
        let t = Instant::now();
        eprintln!("{}:", scenario.name());
        match scenario {
            Scenario::Throughput => {
                results.throughput = scenarios::throughput::run(&mut ctx).await?
            }
            Scenario::Cpu => results.cpu = scenarios::cpu::run(&mut ctx).await?,
            Scenario::Handoff => {
                (results.handoff, results.fifo) = scenarios::handoff::run(&mut ctx).await?
            }
            Scenario::Expiry => {
                results.expiry = scenarios::expiry::run(&mut ctx).await?;
                results.burst = scenarios::expiry::burst(&mut ctx).await?;
            }
            Scenario::Scale => results.scale = scenarios::scale::run(&mut ctx).await?,
            Scenario::Watchdog => results.watchdog = scenarios::watchdog::run(&mut ctx).await?,
            Scenario::RwLock => results.rwlock = scenarios::rwlock::run(&mut ctx).await?,
            Scenario::Semaphore => {
                (results.semaphore, results.semaphore_fifo) =
                    scenarios::semaphore::run(&mut ctx).await?
            }
        }
        eprintln!(
            "  ({} took {:.1} s)",
            scenario.name(),
            t.elapsed().as_secs_f64()
        );
    }
    ctx.admin.flushall().await?;
    results.meta.load_avg_end = load_avg();
    results.meta.elapsed_s = started.elapsed().as_secs_f64();
    results.targets = report::targets::evaluate(&results);
    check_sane(&results)?;
    Ok(Some(results))
}

/// Every measured figure must be a finite, non-negative number; anything
/// else means the benchmark itself is broken.
fn check_sane(r: &Results) -> Result<()> {
    let json = serde_json::to_value(r)?;
    let mut bad = Vec::new();
    walk(&json, "", &mut bad);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(BenchError::Setup(format!(
            "insane figures in the results: {}",
            bad.join(", ")
        )))
    }
}

fn walk(v: &serde_json::Value, path: &str, bad: &mut Vec<String>) {
    match v {
        serde_json::Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Expiry lateness may legitimately be negative only if a lease
            // was removed early, which is counted (and judged) separately.
            if !f.is_finite() || (f < 0.0 && !path.contains("lateness")) {
                bad.push(format!("{path} = {n}"));
            }
        }
        serde_json::Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                walk(x, &format!("{path}[{i}]"), bad);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, x) in map {
                walk(x, &format!("{path}.{k}"), bad);
            }
        }
        _ => {}
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
