//! The README's watchdog pattern for other languages, against a real
//! server: the redis-cli session as written in client/README.md, and the
//! Python example (redis-py) — holding a short lease, and reporting a loss by
//! the server's answer and by the local deadline.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Server, PATIENCE};

fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The command/reply pairs of the README's redis-cli session.
fn readme_session() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(client_dir().join("README.md")).expect("README.md");
    let start = readme
        .find("<!-- redis-cli session")
        .expect("README marks its redis-cli session");
    let block = readme[start..]
        .split("```")
        .nth(1)
        .expect("a code block after the marker");
    let mut session: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines().skip(1) {
        if let Some((_, command)) = line.split_once("> ") {
            session.push((command.to_string(), Vec::new()));
        } else if !line.trim().is_empty() {
            session
                .last_mut()
                .expect("a reply after a command")
                .1
                .push(line.to_string());
        }
    }
    assert!(session.len() >= 4, "README session too short: {session:?}");
    session
}

#[test]
fn the_readme_redis_cli_session_answers_as_written() {
    let server = Server::start();
    for (command, expected) in readme_session() {
        let args: Vec<&str> = command.split_whitespace().collect();
        let mut cli = vec!["--no-raw"];
        cli.extend(&args);
        let got = server.cli_stdout(&cli);
        let got: Vec<&str> = got.lines().collect();
        if args[0].eq_ignore_ascii_case("LOCK.ACQUIRE") {
            // The token is the server's: any positive integer.
            let token = got
                .first()
                .and_then(|l| l.strip_prefix("(integer) "))
                .and_then(|n| n.parse::<i64>().ok());
            assert!(
                token.is_some_and(|t| t > 0),
                "{command}: {got:?}, README says {expected:?}"
            );
        } else {
            assert_eq!(got, expected, "{command}");
        }
    }
}

#[test]
fn the_readme_python_pattern_is_the_tested_example() {
    let readme = std::fs::read_to_string(client_dir().join("README.md")).expect("README.md");
    let example =
        std::fs::read_to_string(client_dir().join("examples/watchdog.py")).expect("watchdog.py");
    let block = readme
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README has a python block");
    let class = &block[block.find("class Lease:").expect("class Lease in README")..];
    assert!(
        example.contains(class),
        "README's class Lease differs from examples/watchdog.py"
    );
}

/// Runs examples/watchdog.py; fails (never skips) when python3 or redis-py
/// is missing: scripts/setup.sh installs redis-py.
fn python(port: u16, key: &str, ttl_ms: u64, work_s: f64) -> Child {
    let check = Command::new("python3")
        .args(["-c", "import redis"])
        .output()
        .expect("python3 is needed for this test");
    assert!(
        check.status.success(),
        "redis-py is missing (scripts/setup.sh installs it): {}",
        String::from_utf8_lossy(&check.stderr)
    );
    Command::new("python3")
        .arg(client_dir().join("examples/watchdog.py"))
        .args([
            port.to_string(),
            key.to_string(),
            ttl_ms.to_string(),
            work_s.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3")
}

/// Reads the child's output lines on a thread.
fn lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(rx: &std::sync::mpsc::Receiver<String>, within: Duration) -> String {
    rx.recv_timeout(within)
        .unwrap_or_else(|e| panic!("no output line within {within:?}: {e}"))
}

fn exit_code(child: &mut Child, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("python example still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lock_info_is_nil(server: &Server, key: &str) -> bool {
    server.cli_stdout(&["LOCK.INFO", key]).is_empty()
}

#[test]
fn python_watchdog_keeps_a_short_lease_through_longer_work_and_releases() {
    let server = Server::start();
    // 1.5 s, renewed every 0.5 s, 4 s of work: a renewal may fail or take
    // up to 0.7 s on a slow, loaded machine before the example gives up.
    let mut child = python(server.port, "py", 1_500, 4.0);
    let out = lines(&mut child);
    assert!(next_line(&out, PATIENCE).starts_with("acquired token="));
    assert!(!lock_info_is_nil(&server, "py"));
    assert_eq!(next_line(&out, PATIENCE), "done; released=True");
    assert_eq!(exit_code(&mut child, PATIENCE), 0);
    assert!(lock_info_is_nil(&server, "py"));
    let mut conn = server.conn();
    assert!(testkit::info_int(&mut conn, "lock", "lock_renewals") >= 3);
    assert_eq!(testkit::info_int(&mut conn, "lock", "lock_expired"), 0);
}

#[test]
fn python_watchdog_reports_a_force_release() {
    let server = Server::start();
    // 3 s: renewals (every second) may fail for 2.4 s before the example
    // gives up by its local deadline.
    let mut child = python(server.port, "py", 3_000, 60.0);
    let out = lines(&mut child);
    assert!(next_line(&out, PATIENCE).starts_with("acquired token="));
    assert_eq!(server.cli_stdout(&["LOCK.FORCERELEASE", "py"]), "1");
    assert_eq!(
        next_line(&out, PATIENCE),
        "lost: the server says the lock is not held"
    );
    assert_eq!(exit_code(&mut child, PATIENCE), 1);
}

#[test]
fn python_watchdog_reports_loss_by_the_local_deadline_when_the_server_stops() {
    let server = Server::start();
    let ttl = Duration::from_millis(600);
    let mut child = python(server.port, "py", 600, 60.0);
    let out = lines(&mut child);
    assert!(next_line(&out, PATIENCE).starts_with("acquired token="));
    std::thread::sleep(Duration::from_millis(300));
    server.pause();
    let line = next_line(&out, ttl + PATIENCE);
    server.resume();
    assert_eq!(line, "lost: no renewal confirmed before the local deadline");
    assert_eq!(exit_code(&mut child, PATIENCE), 1);
}
