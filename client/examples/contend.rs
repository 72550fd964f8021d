//! Two processes contending for one lock. Run it in two terminals:
//!
//! ```text
//! cargo run -p fencelock-client --example contend -- [redis-url] [key] [ttl-ms]
//! ```
//!
//! Defaults: `redis://127.0.0.1:6379/`, key `example:contend`, ttl 5000 ms.
//! The first process takes the lock and holds it (its watchdog renews the
//! lease); the second waits in the server's FIFO queue. Ctrl-C releases the
//! lock, and the waiter gets it at once. `kill -9` the holder instead:
//! nothing releases the lock, but nothing renews it either, so after ≈ ttl
//! the server expires the lease and hands the lock to the waiter. Before it
//! queues, a process prints who holds the lock (`Lock::info`).

use std::time::Duration;

use fencelock_client::{AcquireOptions, Client, Wait};

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let key = args.next().unwrap_or_else(|| "example:contend".into());
    let ttl = Duration::from_millis(args.next().map_or(Ok(5000), |a| a.parse())?);
    let pid = std::process::id();

    let client = Client::connect(url.as_str()).await?;
    let lock = client.lock(&key);
    println!("pid {pid} waiting for {key} as {}", lock.owner());
    if let Some(holder) = lock.info().await? {
        println!(
            "pid {pid} sees {key} held by {} ({} waiting, {:?} of its lease left)",
            holder.owner, holder.waiters, holder.ttl
        );
    }
    let options = AcquireOptions::new().ttl(ttl).wait(Wait::Forever);
    let guard = lock.acquire(options).await?.ok_or("not granted")?;
    println!("pid {pid} acquired {key} token={}", guard.token());

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => println!("pid {pid} holds {key} token={}", guard.token()),
            reason = guard.lost() => {
                println!("pid {pid} lost {key}: {reason}");
                std::process::exit(1);
            }
            _ = tokio::signal::ctrl_c() => {
                let held = guard.release().await?;
                println!("pid {pid} released {key} (was held: {held})");
                return Ok(());
            }
        }
    }
}
