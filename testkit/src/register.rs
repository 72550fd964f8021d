//! A fenced register: the resource a lock guards in the fault runs. A
//! loopback TCP service (a thread of the test process on 127.0.0.1) that
//! takes writes `W key token writer seq` and, when fenced, accepts one only
//! if its token is at least the highest it has accepted for that key (the
//! check the README asks of a fenced resource). Unfenced, it accepts every
//! write: the canary's resource, protected by mutual exclusion alone.
//!
//! Its log — every write in the order it applied them — is part of the
//! verdict: [`stale_accepts`] (an accepted token below an earlier accepted
//! one) and [`interleavings`] (one holder's writes interrupted by
//! another's).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One write as the register applied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterWrite {
    pub key: String,
    /// The fencing token (the canary sends its session number instead).
    pub token: i64,
    pub writer: String,
    pub seq: u64,
    pub accepted: bool,
}

#[derive(Default)]
struct State {
    highest: BTreeMap<String, i64>,
    log: Vec<RegisterWrite>,
}

/// The running service; stopped on drop.
pub struct Register {
    addr: SocketAddr,
    fenced: bool,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Register {
    /// Starts a register on a free loopback port.
    pub fn start(fenced: bool) -> Register {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the register");
        let addr = listener.local_addr().expect("register address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = Arc::clone(&state);
                    std::thread::spawn(move || serve(conn, fenced, &state));
                }
            })
        };
        Register {
            addr,
            fenced,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it checks tokens.
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// The log so far.
    pub fn log(&self) -> Vec<RegisterWrite> {
        self.state.lock().expect("register state").log.clone()
    }
}

impl Drop for Register {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn serve(conn: TcpStream, fenced: bool, state: &Mutex<State>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let reply = match parse(&line) {
            Some((key, token, writer, seq)) => {
                let mut s = state.lock().expect("register state");
                let highest = s.highest.get(&key).copied().unwrap_or(i64::MIN);
                let accepted = !fenced || token >= highest;
                if accepted && token > highest {
                    s.highest.insert(key.clone(), token);
                }
                s.log.push(RegisterWrite {
                    key,
                    token,
                    writer,
                    seq,
                    accepted,
                });
                if accepted {
                    "OK\n"
                } else {
                    "NO\n"
                }
            }
            None => "ERR\n",
        };
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn parse(line: &str) -> Option<(String, i64, String, u64)> {
    let mut w = line.split(' ');
    if w.next()? != "W" {
        return None;
    }
    let key = w.next()?.to_string();
    let token = w.next()?.parse().ok()?;
    let writer = w.next()?.to_string();
    let seq = w.next()?.parse().ok()?;
    Some((key, token, writer, seq))
}

/// A client connection to a register.
pub struct RegisterClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RegisterClient {
    pub fn connect(addr: SocketAddr) -> RegisterClient {
        let s = TcpStream::connect(addr).expect("connect to the register");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("register timeout");
        let writer = s.try_clone().expect("clone the register stream");
        RegisterClient {
            reader: BufReader::new(s),
            writer,
        }
    }

    /// Writes; true when accepted. (Keys and writers have no spaces.)
    pub fn write(&mut self, key: &str, token: i64, writer: &str, seq: u64) -> bool {
        self.writer
            .write_all(format!("W {key} {token} {writer} {seq}\n").as_bytes())
            .expect("send to the register");
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("read from the register");
        match line.trim_end() {
            "OK" => true,
            "NO" => false,
            other => panic!("register answered {other:?}"),
        }
    }
}

/// Accepted writes whose token is lower than one accepted before on the
/// same key (a fenced register must have none): (index in the log, the
/// write, the highest token accepted before it).
pub fn stale_accepts(log: &[RegisterWrite]) -> Vec<(usize, RegisterWrite, i64)> {
    let mut highest: BTreeMap<&str, i64> = BTreeMap::new();
    let mut bad = Vec::new();
    for (i, w) in log.iter().enumerate().filter(|(_, w)| w.accepted) {
        let h = highest.entry(&w.key).or_insert(i64::MIN);
        if w.token < *h {
            bad.push((i, w.clone(), *h));
        }
        *h = (*h).max(w.token);
    }
    bad
}

/// Accepted writes of a holder (writer and token) that came after another
/// holder's accepted write on the same key, itself after the holder's own
/// earlier write: one holder's writes interleaved with another's.
pub fn interleavings(log: &[RegisterWrite]) -> Vec<(usize, RegisterWrite)> {
    let mut last: BTreeMap<&str, (&str, i64)> = BTreeMap::new();
    let mut finished: BTreeMap<&str, Vec<(&str, i64)>> = BTreeMap::new();
    let mut bad = Vec::new();
    for (i, w) in log.iter().enumerate().filter(|(_, w)| w.accepted) {
        let me = (w.writer.as_str(), w.token);
        let done = finished.entry(&w.key).or_default();
        if done.contains(&me) {
            bad.push((i, w.clone()));
        }
        if let Some(prev) = last.insert(&w.key, me) {
            if prev != me && !done.contains(&prev) {
                done.push(prev);
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(token: i64, writer: &str, accepted: bool) -> RegisterWrite {
        RegisterWrite {
            key: "k".into(),
            token,
            writer: writer.into(),
            seq: 0,
            accepted,
        }
    }

    #[test]
    fn a_fenced_register_rejects_lower_tokens_and_logs_them() {
        let r = Register::start(true);
        let mut c = RegisterClient::connect(r.addr());
        assert!(c.write("k", 5, "a", 1));
        assert!(c.write("k", 5, "a", 2));
        assert!(c.write("k", 7, "b", 1));
        assert!(!c.write("k", 5, "a", 3));
        assert!(c.write("other", 1, "c", 1));
        let log = r.log();
        assert_eq!(log.len(), 5);
        assert!(stale_accepts(&log).is_empty());
        assert!(interleavings(&log).is_empty());
    }

    #[test]
    fn an_unfenced_register_accepts_everything() {
        let r = Register::start(false);
        let mut c = RegisterClient::connect(r.addr());
        assert!(c.write("k", 7, "b", 1));
        assert!(c.write("k", 5, "a", 1));
        assert_eq!(stale_accepts(&r.log()).len(), 1);
    }

    #[test]
    fn interleaved_holders_are_found() {
        let log = [w(1, "a", true), w(2, "b", true), w(1, "a", true)];
        assert_eq!(interleavings(&log).len(), 1);
        let ok = [w(1, "a", true), w(2, "b", true), w(1, "a", false)];
        assert!(interleavings(&ok).is_empty());
        let back_to_back = [w(1, "a", true), w(1, "a", true), w(2, "b", true)];
        assert!(interleavings(&back_to_back).is_empty());
    }
}
