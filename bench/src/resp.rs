//! A small RESP2 client for the load generator.
//!
//! Why not the `redis` crate: on a two-core machine the load generator
//! competes with redis-server for CPU, so the client must cost little per
//! command and answer the moment a reply is parsed. Measured side by side
//! (`--client-ab`, bench/README.md): the crate costs 1.1–1.7× the CPU
//! per command and adds to every hand-off latency (p50 +9–15% for the
//! module, +50–67% for the polling baseline) — it would move the figures.
//! This one encodes commands straight into a write buffer, parses replies in
//! place in the caller's task, and every read is bounded by a timeout.

use std::io::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{BenchError, Result};

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*2 ...`
    Array(Vec<Reply>),
}

impl Reply {
    /// The integer, when this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The text of a status or bulk reply.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Reply::Status(s) => Some(s.clone()),
            Reply::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// A connection to 127.0.0.1.
pub struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    /// Bound on every read (a reply that takes longer is an error).
    pub read_timeout: Duration,
}

impl Conn {
    /// Connects to `127.0.0.1:port`.
    pub async fn connect(port: u16) -> Result<Conn> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| BenchError::Timeout(format!("connecting to 127.0.0.1:{port}")))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            rbuf: Vec::with_capacity(64 * 1024),
            rpos: 0,
            wbuf: Vec::with_capacity(16 * 1024),
            read_timeout: Duration::from_secs(120),
        })
    }

    /// Appends a command to the write buffer (sent by [`Conn::flush`]).
    pub fn queue(&mut self, args: &[&[u8]]) {
        let w = &mut self.wbuf;
        // Writing into a Vec cannot fail.
        let _ = write!(w, "*{}\r\n", args.len());
        for a in args {
            let _ = write!(w, "${}\r\n", a.len());
            w.extend_from_slice(a);
            w.extend_from_slice(b"\r\n");
        }
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads the next reply, waiting at most `read_timeout`.
    pub async fn read_reply(&mut self) -> Result<Reply> {
        let limit = self.read_timeout;
        match self.read_reply_within(limit).await? {
            Some(r) => Ok(r),
            None => Err(BenchError::Timeout(format!(
                "no reply from the server within {limit:?}"
            ))),
        }
    }

    /// Reads the next reply, or `None` when none arrives within `limit`.
    /// Cancel-safe: bytes already read stay buffered for the next call.
    pub async fn read_reply_within(&mut self, limit: Duration) -> Result<Option<Reply>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((reply, used)) = parse(self.rbuf.get(self.rpos..).unwrap_or_default())? {
                self.rpos += used;
                if self.rpos == self.rbuf.len() {
                    self.rbuf.clear();
                    self.rpos = 0;
                }
                return Ok(Some(reply));
            }
            if self.rpos > 0 && self.rpos * 2 > self.rbuf.len() {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
                self.rbuf.reserve(64 * 1024);
            }
            let read =
                tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await;
            match read {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => {
                    return Err(BenchError::Protocol(
                        "the server closed the connection".into(),
                    ))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Sends one command and reads its reply; an error reply is returned as
    /// [`Reply::Error`].
    pub async fn call_raw(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.queue(args);
        self.flush().await?;
        self.read_reply().await
    }

    /// Sends one command and reads its reply; an error reply is an `Err`.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply> {
        match self.call_raw(args).await? {
            Reply::Error(message) => Err(BenchError::Server {
                command: command_name(args),
                message,
            }),
            r => Ok(r),
        }
    }

    /// [`Conn::call`] with string arguments, for admin commands.
    pub async fn cmd(&mut self, args: &[&str]) -> Result<Reply> {
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.call(&raw).await
    }

    /// [`Conn::cmd`] whose reply must be text (status or bulk).
    pub async fn cmd_text(&mut self, args: &[&str]) -> Result<String> {
        let r = self.cmd(args).await?;
        r.as_text()
            .ok_or_else(|| BenchError::unexpected(&args.join(" "), &r))
    }
}

/// The first word of a command, for error messages.
pub fn command_name(args: &[&[u8]]) -> String {
    args.first()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_default()
}

/// Parses one reply from the front of `buf`: `Ok(None)` when `buf` holds
/// only part of one; otherwise the reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf.get(..end).and_then(<[u8]>::split_first) else {
        return Err(BenchError::Protocol("empty line".into()));
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BenchError::Protocol(format!("bad number {:?}", text())))
    };
    let head = end + 2;
    match kind {
        b'+' => Ok(Some((Reply::Status(text()), head))),
        b'-' => Ok(Some((Reply::Error(text()), head))),
        b':' => Ok(Some((Reply::Int(number()?), head))),
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Nil, head)));
            }
            let n = n as usize;
            match buf.get(head..head + n) {
                Some(body) if buf.len() >= head + n + 2 => {
                    Ok(Some((Reply::Bulk(body.to_vec()), head + n + 2)))
                }
                _ => Ok(None),
            }
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Nil, head)));
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut at = head;
            for _ in 0..n {
                match parse(buf.get(at..).unwrap_or_default())? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), at)))
        }
        other => Err(BenchError::Protocol(format!(
            "unknown reply type {:?}",
            other as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Option<(Reply, usize)> {
        parse(s.as_bytes()).ok().flatten()
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(one("+OK\r\n"), Some((Reply::Status("OK".into()), 5)));
        assert_eq!(one("-ERR x\r\n"), Some((Reply::Error("ERR x".into()), 8)));
        assert_eq!(one(":-7\r\n"), Some((Reply::Int(-7), 5)));
        assert_eq!(one("$-1\r\n"), Some((Reply::Nil, 5)));
        assert_eq!(
            one("$3\r\nabc\r\n"),
            Some((Reply::Bulk(b"abc".to_vec()), 9))
        );
        assert_eq!(
            one("*2\r\n:1\r\n$1\r\nx\r\n"),
            Some((
                Reply::Array(vec![Reply::Int(1), Reply::Bulk(b"x".to_vec())]),
                15
            ))
        );
    }

    #[test]
    fn partial_replies_wait_for_more_bytes() {
        assert_eq!(one("$3\r\nab"), None);
        assert_eq!(one("$3\r\nabc\r"), None);
        assert_eq!(one("*2\r\n:1\r\n"), None);
        assert_eq!(one(":12"), None);
    }

    #[test]
    fn a_bulk_may_contain_crlf() {
        assert_eq!(
            one("$4\r\na\r\nb\r\n"),
            Some((Reply::Bulk(b"a\r\nb".to_vec()), 10))
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
    }
}
