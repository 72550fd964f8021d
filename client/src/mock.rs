//! A scripted in-memory connection for unit tests: each command name has a
//! list of answers (the last one repeats), and every request is logged with
//! its (tokio, possibly paused) time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};
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
    /// No reply, ever.
    Hang,
    /// The integer after a delay.
    Late(Duration, i64),
}

#[derive(Clone, Default)]
pub(crate) struct Mock {
    state: Arc<Mutex<MockState>>,
}

#[derive(Default)]
struct MockState {
    script: HashMap<String, Vec<Answer>>,
    log: Vec<(Instant, String)>,
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
        let s = self.state.lock().unwrap();
        s.log
            .iter()
            .filter(|(_, c)| c == command)
            .map(|(t, _)| *t)
            .collect()
    }

    /// The command names, in order.
    pub fn log(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.log.iter().map(|(_, c)| c.clone()).collect()
    }

    /// A client over this mock (no dedicated wait connections).
    pub fn client(&self) -> Client<Mock> {
        Client::new(self.clone())
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

impl ConnectionLike for Mock {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let name = match cmd.args_iter().next() {
            Some(redis::Arg::Simple(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let answer = {
            let mut s = self.state.lock().unwrap();
            s.log.push((Instant::now(), name.clone()));
            let answers = s.script.entry(name).or_default();
            if answers.len() > 1 {
                Some(answers.remove(0))
            } else {
                answers.first().cloned()
            }
        };
        Box::pin(async move {
            match answer {
                Some(Answer::Int(n)) => Ok(Value::Int(n)),
                Some(Answer::Nil) => Ok(Value::Nil),
                Some(Answer::Late(d, n)) => {
                    tokio::time::sleep(d).await;
                    Ok(Value::Int(n))
                }
                Some(Answer::Hang) => std::future::pending().await,
                Some(Answer::Fail) | None => Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock: connection reset",
                )
                .into()),
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        _pipeline: &'a Pipeline,
        _offset: usize,
        _count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async {
            Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "mock: no pipelines").into())
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
