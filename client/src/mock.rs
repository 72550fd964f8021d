//! A scripted in-memory connection for unit tests: each command name has a
//! list of answers (the last one repeats), and every request is logged with
//! its arguments and its (tokio, possibly paused) time. The `ID request-id`
//! option is logged apart from the other arguments ([`Mock::ids`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::time::Instant;

use crate::client::Client;
use crate::{AcquireOptions, Guard};

/// One scripted answer.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    Int(i64),
    Nil,
    /// An I/O error at once.
    Fail,
    /// An I/O error after a delay (e.g. a waiting acquire whose connection
    /// drops).
    FailAfter(Duration),
    /// No reply, ever.
    Hang,
    /// The integer after a delay.
    Late(Duration, i64),
    /// Any reply.
    Reply(Value),
    /// An error reply: the text after `-`, e.g. `ERR something`.
    Error(&'static str),
}

/// The error reply `-text` as the `redis` crate parses it.
pub(crate) fn server_error(text: &str) -> Value {
    redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).unwrap()
}

/// The module's upgrade refusal.
pub(crate) const UPGRADE: &str = "ERR the owner holds this lock shared: upgrading to exclusive would deadlock when two readers try; release the shared holds first";

/// Milliseconds.
pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `LOCK.INFO`'s fields as the module sends them (names as simple strings,
/// the owner as a bulk string, the rest integers): `owner` with `holds`
/// holds, 9987 ms left, token 7, one waiter.
pub(crate) fn info_fields(owner: &str, holds: i64) -> Vec<(Value, Value)> {
    let name = |s: &str| Value::SimpleString(s.into());
    vec![
        (name("owner"), Value::BulkString(owner.as_bytes().to_vec())),
        (name("holds"), Value::Int(holds)),
        (name("ttl"), Value::Int(9987)),
        (name("token"), Value::Int(7)),
        (name("waiters"), Value::Int(1)),
    ]
}

/// A field name as the module sends it.
fn name(s: &str) -> Value {
    Value::SimpleString(s.into())
}

/// The holders of a shared lock or a semaphore, each `(owner, holds or
/// permits)`, in `shape` (RESP3 [`Value::Map`] or RESP2 [`flat`]): holder
/// `i` has ttl 9000 + i ms and token 10 + i.
fn holders(shape: fn(Vec<(Value, Value)>) -> Value, count: &str, of: &[(&str, i64)]) -> Value {
    let entries = of
        .iter()
        .zip(0..)
        .map(|((owner, n), i)| {
            shape(vec![
                (name("owner"), Value::BulkString(owner.as_bytes().to_vec())),
                (name(count), Value::Int(*n)),
                (name("ttl"), Value::Int(9000 + i)),
                (name("token"), Value::Int(10 + i)),
            ])
        })
        .collect();
    Value::Array(entries)
}

/// `LOCK.INFO` of a read/write lock held shared, in `shape`: 2 waiters.
pub(crate) fn shared_info(shape: fn(Vec<(Value, Value)>) -> Value, of: &[(&str, i64)]) -> Value {
    shape(vec![
        (name("mode"), name("shared")),
        (name("waiters"), Value::Int(2)),
        (name("holders"), holders(shape, "holds", of)),
    ])
}

/// `LOCK.INFO` of a semaphore of `limit`, in `shape`: 1 waiter, the
/// permits the holders do not hold available.
pub(crate) fn semaphore_info(
    shape: fn(Vec<(Value, Value)>) -> Value,
    limit: i64,
    of: &[(&str, i64)],
) -> Value {
    let held: i64 = of.iter().map(|(_, n)| n).sum();
    shape(vec![
        (name("mode"), name("semaphore")),
        (name("limit"), Value::Int(limit)),
        (name("available"), Value::Int(limit - held)),
        (name("waiters"), Value::Int(1)),
        (name("holders"), holders(shape, "permits", of)),
    ])
}

/// Field/value pairs as a RESP3 map.
pub(crate) fn map(pairs: Vec<(Value, Value)>) -> Value {
    Value::Map(pairs)
}

/// Field/value pairs as a RESP2 flat array.
pub(crate) fn flat(pairs: Vec<(Value, Value)>) -> Value {
    Value::Array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect())
}

#[derive(Clone, Default)]
pub(crate) struct Mock {
    state: Arc<Mutex<MockState>>,
}

#[derive(Default)]
struct MockState {
    script: HashMap<String, Vec<Answer>>,
    /// When each request was sent, and its arguments (the name first).
    log: Vec<(Instant, Vec<String>)>,
}

impl Mock {
    /// A mock that grants token 7, renews and releases fully.
    pub fn granting() -> Self {
        let m = Mock::default();
        m.on("LOCK.ACQUIRE", [Answer::Int(7)]);
        m.on("LOCK.RENEW", [Answer::Int(1)]);
        m.on("LOCK.RELEASE", [Answer::Int(0)]);
        m
    }

    /// Scripts the answers to `command` from now on.
    pub fn on(&self, command: &str, answers: impl IntoIterator<Item = Answer>) {
        let mut s = self.state.lock().unwrap();
        s.script
            .insert(command.to_string(), answers.into_iter().collect());
    }

    /// The times at which `command` was sent.
    pub fn sent(&self, command: &str) -> Vec<Instant> {
        self.requests(command).into_iter().map(|(t, _)| t).collect()
    }

    /// The arguments (after the name) of each `command` sent, without its
    /// `ID request-id` (see [`Mock::ids`]).
    pub fn args(&self, command: &str) -> Vec<Vec<String>> {
        self.requests(command)
            .into_iter()
            .map(|(_, args)| split_id(args).0)
            .collect()
    }

    /// The request id of each `command` sent (the value of its trailing
    /// `ID request-id`); panics for a request without one.
    pub fn ids(&self, command: &str) -> Vec<String> {
        self.requests(command)
            .into_iter()
            .map(|(_, args)| {
                let (rest, id) = split_id(args);
                id.unwrap_or_else(|| panic!("{command} {rest:?} was sent without ID"))
            })
            .collect()
    }

    fn requests(&self, command: &str) -> Vec<(Instant, Vec<String>)> {
        let s = self.state.lock().unwrap();
        s.log
            .iter()
            .filter(|(_, args)| args.first().is_some_and(|name| name == command))
            .map(|(t, args)| (*t, args.iter().skip(1).cloned().collect()))
            .collect()
    }

    /// The command names, in order.
    pub fn log(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.log
            .iter()
            .map(|(_, args)| args.first().cloned().unwrap_or_default())
            .collect()
    }

    /// A client over this mock (no dedicated wait connections).
    pub fn client(&self) -> Client<Mock> {
        Client::new(self.clone())
    }

    /// A client over this mock whose dedicated wait connections are this
    /// mock too, and the count of those opened.
    pub fn client_with_wait_connections(&self) -> (Client<Mock>, Arc<AtomicUsize>) {
        let opened = Arc::new(AtomicUsize::new(0));
        let client = Client::builder(self.clone())
            .wait_connections({
                let (mock, opened) = (self.clone(), Arc::clone(&opened));
                move || {
                    opened.fetch_add(1, Ordering::SeqCst);
                    let mock = mock.clone();
                    async move { Ok(mock) }
                }
            })
            .build();
        (client, opened)
    }

    /// Acquires `k` through a new handle with a 300 ms ttl and `options`.
    pub async fn guard(&self, options: AcquireOptions) -> Guard<Mock> {
        self.client()
            .lock("k")
            .acquire(options.ttl(Duration::from_millis(300)))
            .await
            .unwrap()
            .unwrap()
    }
}

/// A request's arguments without a trailing `ID request-id`, and the id.
fn split_id(mut args: Vec<String>) -> (Vec<String>, Option<String>) {
    let n = args.len();
    if n >= 2 && args[n - 2] == "ID" {
        let id = args.pop();
        args.pop();
        (args, id)
    } else {
        (args, None)
    }
}

impl Mock {
    /// Logs `cmd` and takes its scripted answer.
    fn answer(&self, cmd: &Cmd) -> Option<Answer> {
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<other>".into(),
            })
            .collect();
        let name = args.first().cloned().unwrap_or_default();
        let mut s = self.state.lock().unwrap();
        s.log.push((Instant::now(), args));
        let answers = s.script.entry(name).or_default();
        if answers.len() > 1 {
            Some(answers.remove(0))
        } else {
            answers.first().cloned()
        }
    }
}

/// The reply an answer stands for (no script: a connection error).
async fn reply(answer: Option<Answer>) -> RedisResult<Value> {
    match answer {
        Some(Answer::Int(n)) => Ok(Value::Int(n)),
        Some(Answer::Nil) => Ok(Value::Nil),
        Some(Answer::Reply(v)) => Ok(v),
        Some(Answer::Error(text)) => Ok(server_error(text)),
        Some(Answer::Late(d, n)) => {
            tokio::time::sleep(d).await;
            Ok(Value::Int(n))
        }
        Some(Answer::Hang) => std::future::pending().await,
        Some(Answer::FailAfter(d)) => {
            tokio::time::sleep(d).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "mock: connection reset",
            )
            .into())
        }
        Some(Answer::Fail) | None => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "mock: connection reset",
        )
        .into()),
    }
}

impl ConnectionLike for Mock {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let answer = self.answer(cmd);
        Box::pin(reply(answer))
    }

    /// A pipeline (not a transaction): its commands one after the other.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        _offset: usize,
        _count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut replies = Vec::new();
            for cmd in pipeline.cmd_iter() {
                replies.push(reply(self.answer(cmd)).await?);
            }
            Ok::<_, redis::RedisError>(replies)
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
