//! Lost replies on loopback, for the retry tests: a small TCP proxy between
//! clients and a `redis-server` that can be told to cut a connection right
//! after the server applied a command (its reply is swallowed, both sides
//! closed) or right before (the request is never forwarded), so that the
//! client sees a connection error where the server did (or did not) do the
//! work — the moment a retry must not apply twice.
//!
//! The proxy reads the RESP stream in both directions, so a cut hits the
//! reply of exactly the named command, also among pipelined requests and
//! the other traffic of a connection (renewals, `CLIENT SETINFO`). It
//! forwards bytes in pieces of seeded random sizes, so that clients also see
//! replies split across reads; [`seed`] says which seed a test runs with and
//! how to run it again with the same one.
//!
//! Also [`replicated`]: waiting for a replica to have what a master applied
//! on connections other than the test's own (the proxy's).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{wait_for, Server, PATIENCE};

/// The seed of a test's proxies: `$FENCELOCK_PROXY_SEED`, or one taken from
/// the clock; printed, so that a failing run can be repeated.
pub fn seed() -> u64 {
    let seed = std::env::var("FENCELOCK_PROXY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| crate::now_ms() ^ u64::from(std::process::id()));
    eprintln!("proxy seed {seed} (FENCELOCK_PROXY_SEED={seed} repeats it)");
    seed
}

/// Waits (at most [`PATIENCE`]) until `n` replicas of `master` have
/// everything it applied so far, on any connection. `WAIT` counts up to the
/// last write of the connection it is sent on — a connection that wrote
/// nothing gets its answer at once, whatever the replicas have — so this
/// first writes on its own connection (a `PUBLISH`, which is replicated and
/// leaves no key), then waits.
pub fn replicated(master: &Server, n: i64) {
    let mut c = master.conn();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("fencelock:replicated")
        .arg("")
        .query(&mut c)
        .expect("PUBLISH");
    crate::replication::synced(&mut c, n);
}

/// Where the next cut falls.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cut {
    /// The command is forwarded; its reply is swallowed and the connection
    /// closed: the server applied it, the client never hears.
    Reply(String),
    /// The command is not forwarded and the connection closed: the server
    /// never saw it.
    Request(String),
}

impl Cut {
    fn command(&self) -> &str {
        match self {
            Cut::Reply(c) | Cut::Request(c) => c,
        }
    }
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    armed: Mutex<Option<Cut>>,
    refuse: AtomicBool,
    stop: AtomicBool,
    accepted: AtomicUsize,
    /// The replies swallowed so far (raw RESP), in order.
    swallowed: Mutex<Vec<Vec<u8>>>,
    /// Requests dropped so far.
    dropped: AtomicUsize,
    /// Every socket of every connection, to close them all.
    sockets: Mutex<Vec<TcpStream>>,
    seed: u64,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Takes the armed cut if `name` is its command.
    fn take_cut(&self, name: &[u8]) -> Option<Cut> {
        let mut armed = locked(&self.armed);
        let hit = armed
            .as_ref()
            .is_some_and(|c| c.command().as_bytes().eq_ignore_ascii_case(name));
        if hit {
            armed.take()
        } else {
            None
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of a server; stops (and closes every
/// connection) on drop.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream`; `seed` sizes
    /// the pieces it forwards (see [`seed`]).
    pub fn start(upstream: SocketAddr, seed: u64) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            armed: Mutex::new(None),
            refuse: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            swallowed: Mutex::new(Vec::new()),
            dropped: AtomicUsize::new(0),
            sockets: Mutex::new(Vec::new()),
            seed,
        });
        let accept = std::thread::spawn({
            let shared = Arc::clone(&shared);
            move || accept_loop(&listener, &shared)
        });
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A synchronous connection through the proxy (RESP2).
    pub fn conn(&self) -> redis::Connection {
        let c = redis::Client::open(self.url())
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(10))
            .expect("connect through the proxy");
        c.set_read_timeout(Some(PATIENCE + Duration::from_secs(30)))
            .expect("timeout");
        c
    }

    /// Arms a cut: the next request named `command` (on any connection,
    /// case-insensitive) is forwarded, and its reply — whenever it comes,
    /// also the late grant of a waiting acquire — is swallowed and that
    /// connection closed on both sides. One cut per arming.
    pub fn cut_reply_to(&self, command: &str) {
        *locked(&self.shared.armed) = Some(Cut::Reply(command.to_string()));
    }

    /// Arms a cut: the next request named `command` is not forwarded, and
    /// its connection is closed on both sides.
    pub fn cut_request(&self, command: &str) {
        *locked(&self.shared.armed) = Some(Cut::Request(command.to_string()));
    }

    /// Whether a cut is armed and has not happened yet (it happens once its
    /// command was seen).
    pub fn is_armed(&self) -> bool {
        locked(&self.shared.armed).is_some()
    }

    /// The replies swallowed so far, parsed, in order.
    pub fn swallowed(&self) -> Vec<redis::Value> {
        locked(&self.shared.swallowed)
            .iter()
            .map(|raw| redis::parse_redis_value(raw).expect("a swallowed reply parses"))
            .collect()
    }

    /// How many requests were dropped so far.
    pub fn dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// Waits until `n` replies have been swallowed; returns the last.
    pub fn wait_swallowed(&self, n: usize) -> redis::Value {
        wait_for(&format!("{n} swallowed replies"), PATIENCE, || {
            (locked(&self.shared.swallowed).len() >= n).then_some(())
        });
        self.swallowed()
            .into_iter()
            .nth(n - 1)
            .expect("the n-th swallowed reply")
    }

    /// How many client connections it accepted so far (refused ones too).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Where new connections go from now on (e.g. a promoted replica);
    /// connections already open stay where they are.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *locked(&self.shared.upstream) = upstream;
    }

    /// While on, new client connections are accepted and closed at once
    /// (the server is unreachable; clients' reconnects fail).
    pub fn refuse_new(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Closes every open connection.
    pub fn close_all(&self) {
        for s in locked(&self.shared.sockets).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.close_all();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut n: u64 = 0;
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refuse.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let upstream = *locked(&shared.upstream);
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        n += 1;
        let conn = Arc::new(Mutex::new(Counts::default()));
        {
            let mut sockets = locked(&shared.sockets);
            for s in [&client, &server] {
                if let Ok(s) = s.try_clone() {
                    sockets.push(s);
                }
            }
        }
        let ends = || -> Option<Ends> {
            Some(Ends {
                from: client.try_clone().ok()?,
                to: server.try_clone().ok()?,
                other: [client.try_clone().ok()?, server.try_clone().ok()?],
            })
        };
        let (Some(up), Some(down)) = (ends(), ends()) else {
            continue;
        };
        let down = Ends {
            from: down.to,
            to: down.from,
            other: down.other,
        };
        let seed = shared.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        std::thread::spawn({
            let (shared, conn) = (Arc::clone(shared), Arc::clone(&conn));
            move || pump_requests(up, &shared, &conn, Rng(seed))
        });
        std::thread::spawn({
            let shared = Arc::clone(shared);
            move || pump_replies(down, &shared, &conn, Rng(seed ^ 1))
        });
    }
}

/// One direction of a connection: read `from`, write `to`; `other` are
/// both sockets, to close the connection.
struct Ends {
    from: TcpStream,
    to: TcpStream,
    other: [TcpStream; 2],
}

impl Ends {
    fn close(&self) {
        for s in &self.other {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// What one connection has carried.
#[derive(Default)]
struct Counts {
    /// Requests forwarded.
    requests: u64,
    /// Replies seen (push messages are not replies).
    replies: u64,
    /// The index of the request whose reply is to be swallowed.
    target: Option<u64>,
}

/// splitmix64: the sizes of the forwarded pieces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Writes `bytes` to `to` in 1 to 3 pieces of random sizes.
fn forward(to: &mut TcpStream, mut bytes: &[u8], rng: &mut Rng) -> std::io::Result<()> {
    let pieces = 1 + rng.next() % 3;
    for _ in 1..pieces {
        if bytes.len() < 2 {
            break;
        }
        let at = 1 + (rng.next() as usize) % (bytes.len() - 1);
        to.write_all(&bytes[..at])?;
        to.flush()?;
        bytes = &bytes[at..];
    }
    to.write_all(bytes)?;
    to.flush()
}

/// Client to server: counts requests, and applies an armed cut to the first
/// one named by it.
fn pump_requests(mut e: Ends, shared: &Shared, conn: &Mutex<Counts>, mut rng: Rng) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut parse = true;
    loop {
        let n = match e.from.read(&mut chunk) {
            // The client is done sending: the server may still answer.
            Ok(0) => {
                let _ = e.to.shutdown(Shutdown::Write);
                return;
            }
            Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut done = 0;
        while parse {
            match resp_len(&buf[done..]) {
                Parsed::Complete(len) => {
                    let request = &buf[done..done + len];
                    let cut = command_name(request).and_then(|name| shared.take_cut(&name));
                    let mut counts = locked(conn);
                    match cut {
                        Some(Cut::Request(_)) => {
                            drop(counts);
                            shared.dropped.fetch_add(1, Ordering::SeqCst);
                            let _ = forward(&mut e.to, &buf[..done], &mut rng);
                            e.close();
                            return;
                        }
                        Some(Cut::Reply(_)) => counts.target = Some(counts.requests),
                        None => {}
                    }
                    counts.requests += 1;
                    done += len;
                }
                Parsed::Incomplete => break,
                // Not RESP (an inline command, say): forwarded as it is, and
                // this connection is not cut.
                Parsed::Invalid => {
                    parse = false;
                    done = buf.len();
                }
            }
        }
        if !parse {
            done = buf.len();
        }
        // The target is recorded before the request reaches the server, so
        // the other direction knows it before the reply can come.
        if forward(&mut e.to, &buf[..done], &mut rng).is_err() {
            break;
        }
        buf.drain(..done);
    }
    e.close();
}

/// Server to client: counts replies, and swallows the targeted one.
fn pump_replies(mut e: Ends, shared: &Shared, conn: &Mutex<Counts>, mut rng: Rng) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match e.from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut done = 0;
        loop {
            let len = match resp_len(&buf[done..]) {
                Parsed::Complete(len) => len,
                Parsed::Incomplete => break,
                Parsed::Invalid => {
                    done = buf.len();
                    break;
                }
            };
            let reply = &buf[done..done + len];
            if reply.first() != Some(&b'>') {
                let mut counts = locked(conn);
                let index = counts.replies;
                counts.replies += 1;
                if counts.target == Some(index) {
                    drop(counts);
                    locked(&shared.swallowed).push(reply.to_vec());
                    let _ = forward(&mut e.to, &buf[..done], &mut rng);
                    e.close();
                    return;
                }
            }
            done += len;
        }
        if forward(&mut e.to, &buf[..done], &mut rng).is_err() {
            break;
        }
        buf.drain(..done);
    }
    e.close();
}

/// How much of a buffer one RESP value takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parsed {
    /// The value is complete and this many bytes long.
    Complete(usize),
    /// More bytes are needed.
    Incomplete,
    /// Not RESP.
    Invalid,
}

/// The length of the RESP2/RESP3 value at the start of `buf`.
fn resp_len(buf: &[u8]) -> Parsed {
    value_end(buf, 0).map_or(Parsed::Incomplete, |r| match r {
        Ok(end) => Parsed::Complete(end),
        Err(()) => Parsed::Invalid,
    })
}

/// The end of the CRLF-terminated line starting at `at` (after the CRLF),
/// and the line's content.
fn line(buf: &[u8], at: usize) -> Option<(usize, &[u8])> {
    let rest = buf.get(at..)?;
    let nl = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((at + nl + 2, &rest[..nl]))
}

fn number(text: &[u8]) -> Result<i64, ()> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(())
}

/// Where the value starting at `at` ends: `None` when incomplete.
fn value_end(buf: &[u8], at: usize) -> Option<Result<usize, ()>> {
    let kind = *buf.get(at)?;
    let (after, content) = line(buf, at + 1)?;
    let Ok(n) = number(content) else {
        return Some(match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(after),
            _ => Err(()),
        });
    };
    let elements = |count: i64, mut end: usize| -> Option<Result<usize, ()>> {
        for _ in 0..count {
            end = match value_end(buf, end)? {
                Ok(e) => e,
                Err(()) => return Some(Err(())),
            };
        }
        Some(Ok(end))
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(Ok(after)),
        b'$' | b'!' | b'=' if n < 0 => Some(Ok(after)),
        b'$' | b'!' | b'=' => {
            let end = after + n as usize + 2;
            (buf.len() >= end).then_some(Ok(end))
        }
        b'*' | b'~' | b'>' if n < 0 => Some(Ok(after)),
        b'*' | b'~' | b'>' => elements(n, after),
        b'%' => elements(2 * n, after),
        // An attribute map, then the value it describes.
        b'|' => match elements(2 * n, after)? {
            Ok(end) => value_end(buf, end),
            Err(()) => Some(Err(())),
        },
        _ => Some(Err(())),
    }
}

/// The command name of a request (`*N` array of bulk strings): its first
/// element.
fn command_name(request: &[u8]) -> Option<Vec<u8>> {
    let (after, _) = line(request, 1)?;
    if request.first() != Some(&b'*') || request.get(after) != Some(&b'$') {
        return None;
    }
    let (start, len) = line(request, after + 1)?;
    let len = usize::try_from(number(len).ok()?).ok()?;
    request.get(start..start + len).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_values_are_measured_whole_or_found_incomplete() {
        let complete: [&[u8]; 10] = [
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"$5\r\nab\r\nc\r\n",
            b"*-1\r\n",
            b"*2\r\n$3\r\nfoo\r\n:1\r\n",
            b"%1\r\n+a\r\n*1\r\n_\r\n",
            b">2\r\n+message\r\n$1\r\nx\r\n",
            b"|1\r\n+ttl\r\n:3\r\n:7\r\n",
        ];
        for v in complete {
            assert_eq!(resp_len(v), Parsed::Complete(v.len()), "{v:?}");
            let mut more = v.to_vec();
            more.extend_from_slice(b":1\r\n");
            assert_eq!(resp_len(&more), Parsed::Complete(v.len()), "{v:?}");
            for cut in 0..v.len() {
                assert_eq!(
                    resp_len(&v[..cut]),
                    Parsed::Incomplete,
                    "{v:?} cut at {cut}"
                );
            }
        }
        assert_eq!(resp_len(b"PING\r\n"), Parsed::Invalid);
        assert_eq!(resp_len(b"*x\r\n"), Parsed::Invalid);
    }

    #[test]
    fn a_requests_command_is_its_first_bulk_string() {
        let req = b"*3\r\n$12\r\nLOCK.RELEASE\r\n$1\r\nk\r\n$1\r\no\r\n";
        assert_eq!(command_name(req).as_deref(), Some(&b"LOCK.RELEASE"[..]));
        assert_eq!(command_name(b"+OK\r\n"), None);
    }

    #[test]
    fn the_random_pieces_depend_on_the_seed_only() {
        let sizes = |seed| {
            let mut r = Rng(seed);
            (0..8).map(|_| r.next() % 100).collect::<Vec<_>>()
        };
        assert_eq!(sizes(7), sizes(7));
        assert_ne!(sizes(7), sizes(8));
    }

    /// A server stand-in that answers every request with `:<n>`, n counting
    /// the requests it received on all connections, from 1.
    fn counting_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let count = Arc::clone(&count);
                std::thread::spawn(move || {
                    let (mut buf, mut chunk) = (Vec::new(), [0u8; 1024]);
                    while let Ok(read) = s.read(&mut chunk) {
                        if read == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..read]);
                        while let Parsed::Complete(len) = resp_len(&buf) {
                            buf.drain(..len);
                            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                            if s.write_all(format!(":{n}\r\n").as_bytes()).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn request(name: &str) -> Vec<u8> {
        format!("*1\r\n${}\r\n{name}\r\n", name.len()).into_bytes()
    }

    fn read_all(mut s: TcpStream) -> Vec<u8> {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    #[test]
    fn the_reply_to_the_named_command_is_swallowed_among_pipelined_ones() {
        let proxy = Proxy::start(counting_server(), 1);
        proxy.cut_reply_to("second");
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        let mut pipeline = request("first");
        pipeline.extend(request("SECOND"));
        pipeline.extend(request("third"));
        s.write_all(&pipeline).unwrap();
        // The first reply comes; the second is swallowed and the connection
        // closed, so the third never comes.
        assert_eq!(read_all(s), b":1\r\n");
        assert_eq!(proxy.swallowed(), [redis::Value::Int(2)]);
        assert!(!proxy.is_armed());
    }

    #[test]
    fn a_cut_request_never_reaches_the_server() {
        let proxy = Proxy::start(counting_server(), 2);
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        s.write_all(&request("first")).unwrap();
        let mut reply = [0u8; 4];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b":1\r\n");
        proxy.cut_request("second");
        s.write_all(&request("second")).unwrap();
        assert_eq!(read_all(s), b"");
        assert_eq!(proxy.dropped(), 1);
        // The server saw only the first request before this one.
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        s.write_all(&request("third")).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(s), b":2\r\n");
    }

    #[test]
    fn refused_connections_are_closed_and_the_upstream_can_change() {
        let proxy = Proxy::start(counting_server(), 3);
        proxy.refuse_new(true);
        let s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        assert_eq!(read_all(s), b"");
        proxy.refuse_new(false);
        proxy.set_upstream(counting_server());
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        s.write_all(&request("x")).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(s), b":1\r\n");
        assert_eq!(proxy.accepted(), 2);
    }
}
