//! The examples as separate processes: a job that outlives its ttl, and two
//! contenders where `kill -9` of the holder hands the lock to the waiter
//! after ≈ ttl.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{admin, info, lock_stat, ms, until_info};
use testkit::{Server, PATIENCE};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};

const CONTEND: &str = env!("CARGO_BIN_EXE_fencelock-example-contend");
const LONG_JOB: &str = env!("CARGO_BIN_EXE_fencelock-example-long-job");

/// A running example; killed (SIGKILL) on drop. A thread forwards its
/// standard output line by line.
struct Example {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Example {
    /// Starts one of the examples, built as a binary (see Cargo.toml).
    fn start(program: &str, args: &[&str]) -> Example {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start example");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Example { child, lines }
    }

    /// Reads lines until one contains `needle`; returns it.
    async fn line_with(&mut self, needle: &str, within: Duration) -> String {
        let read = async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("example exited before printing {needle:?}");
        };
        timeout(within, read)
            .await
            .unwrap_or_else(|_| panic!("no line with {needle:?} within {within:?}"))
    }

    /// SIGKILL, and reap.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Waits for the process to exit.
    async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "example still running after {within:?}"
            );
            sleep(ms(20)).await;
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `name=` in a line.
fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_holder_hands_the_lock_to_the_waiter_after_about_the_ttl() {
    let server = Server::start();
    let url = server.url();
    let mut admin = admin(&server).await;
    // Renewed every 333 ms: a renewal may take over half a second on a
    // slow, loaded machine before the holder gives the lease up.
    let ttl = ms(1_000);

    let mut holder = Example::start(CONTEND, &[&url, "shared", "1000"]);
    let waiting = holder.line_with("waiting for", PATIENCE).await;
    let holder_owner = waiting.rsplit(' ').next().unwrap().to_string();
    let acquired = holder.line_with("acquired", PATIENCE).await;
    let holder_token: u64 = field(&acquired, "token").parse().unwrap();

    // A 1 s lease held for 3 s by the other process: its watchdog renews it.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let held = info(&mut admin, "shared").await.expect("held by the child");
        assert_eq!(
            (held.owner.as_str(), held.token),
            (holder_owner.as_str(), holder_token)
        );
        sleep(ms(50)).await;
    }

    let mut waiter = Example::start(CONTEND, &[&url, "shared", "1000"]);
    waiter.line_with("waiting for", PATIENCE).await;
    until_info(&mut admin, "shared", "the waiter to queue", PATIENCE, |i| {
        i.as_ref().is_some_and(|i| i.waiters == 1)
    })
    .await;

    holder.kill9();
    let killed_at = Instant::now();
    let handed = waiter.line_with("acquired", ttl + PATIENCE).await;
    let took = killed_at.elapsed();
    let waiter_token: u64 = field(&handed, "token").parse().unwrap();
    assert!(waiter_token > holder_token);
    assert!(took < ttl + testkit::EXPIRY_SLACK, "hand-off took {took:?}");
    // Nobody released it: the lease expired and the server handed it over.
    assert_eq!(lock_stat(&mut admin, "lock_releases").await, 0);
    assert!(lock_stat(&mut admin, "lock_expired").await >= 1);
    assert!(lock_stat(&mut admin, "lock_handoffs").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_job_example_outlives_its_ttl() {
    let server = Server::start();
    let url = server.url();
    let mut admin = admin(&server).await;
    // A 1 s lease (renewed every 333 ms: a renewal may take over half a
    // second on a slow, loaded machine), 3 s of work.
    let mut job = Example::start(LONG_JOB, &[&url, "1000", "3000"]);
    job.line_with("acquired", PATIENCE).await;
    job.line_with("done; released=true", PATIENCE).await;
    let status = job.exit_status(PATIENCE).await;
    assert!(status.success(), "long_job exited with {status}");
    assert_eq!(info(&mut admin, "example:long-job").await, None);
    assert!(lock_stat(&mut admin, "lock_renewals").await >= 3);
}
