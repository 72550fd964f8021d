//! A job that runs longer than its lock's ttl: the watchdog renews the lease
//! while the job works, and the job stops at once if the lease is lost.
//!
//! ```text
//! cargo run -p fencelock-client --example long_job -- [redis-url] [ttl-ms] [work-ms]
//! ```
//!
//! Defaults: `redis://127.0.0.1:6379/`, a 2 s ttl, 6 s of work. Exits 0 when
//! the job finished and released the lock, 1 when the lease was lost, 2 when
//! another process holds the lock.

use std::time::Duration;

use fencelock_client::{AcquireOptions, Client};

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let ttl = Duration::from_millis(args.next().map_or(Ok(2000), |a| a.parse())?);
    let work = Duration::from_millis(args.next().map_or(Ok(6000), |a| a.parse())?);

    let client = Client::connect(url.as_str()).await?;
    let lock = client.lock("example:long-job");
    let Some(guard) = lock.acquire(AcquireOptions::new().ttl(ttl)).await? else {
        println!("busy: another process holds the lock");
        std::process::exit(2);
    };
    println!(
        "acquired token={} ttl={ttl:?}; working for {work:?}",
        guard.token()
    );

    tokio::select! {
        () = do_work(work, guard.token()) => {
            let held = guard.release().await?;
            println!("done; released={held}");
        }
        reason = guard.lost() => {
            // Stop before anyone else can be granted the lock.
            println!("lost the lock: {reason}; stopped the work");
            std::process::exit(1);
        }
    }
    Ok(())
}

/// Stands for real work that passes the fencing token with each write.
async fn do_work(total: Duration, token: u64) {
    let step = Duration::from_millis(250);
    let mut done = Duration::ZERO;
    while done < total {
        tokio::time::sleep(step).await;
        done += step;
        println!("working ({done:?} of {total:?}, token {token})");
    }
}
