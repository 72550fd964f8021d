//! The module's commands as the client sends them, and the checks on their
//! replies (docs/INTERFACE.md is the contract).

use redis::{Cmd, Value};

use crate::error::Error;
use crate::options::Durability;

/// `LOCK.ACQUIRE key owner ttl-ms [WAIT timeout-ms]`.
pub(crate) fn acquire(key: &[u8], owner: &str, ttl_ms: u64, wait_ms: Option<u64>) -> Cmd {
    let mut cmd = redis::cmd("LOCK.ACQUIRE");
    cmd.arg(key).arg(owner).arg(ttl_ms);
    if let Some(ms) = wait_ms {
        cmd.arg("WAIT").arg(ms);
    }
    cmd
}

/// `LOCK.RENEW key owner ttl-ms`.
pub(crate) fn renew(key: &[u8], owner: &str, ttl_ms: u64) -> Cmd {
    let mut cmd = redis::cmd("LOCK.RENEW");
    cmd.arg(key).arg(owner).arg(ttl_ms);
    cmd
}

/// `LOCK.RELEASE key owner`.
pub(crate) fn release(key: &[u8], owner: &str) -> Cmd {
    let mut cmd = redis::cmd("LOCK.RELEASE");
    cmd.arg(key).arg(owner);
    cmd
}

/// `WAIT numreplicas timeout-ms` (replication, not the lock's WAIT).
pub(crate) fn wait_replicas(d: Durability) -> Cmd {
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(d.replicas).arg(d.timeout_ms);
    cmd
}

fn unexpected(command: &'static str, reply: &Value) -> Error {
    Error::UnexpectedReply {
        command,
        reply: format!("{reply:?}"),
    }
}

/// An error reply inside a pipeline run with `ignore_errors`.
fn server_error(reply: Value) -> Result<Value, Error> {
    match reply {
        Value::ServerError(e) => Err(Error::Redis(e.into())),
        other => Ok(other),
    }
}

/// `LOCK.ACQUIRE`'s reply: the fencing token, or `None` when not granted.
pub(crate) fn token(reply: Value) -> Result<Option<u64>, Error> {
    match server_error(reply)? {
        Value::Nil => Ok(None),
        Value::Int(n) if n > 0 => Ok(Some(n as u64)),
        other => Err(unexpected("LOCK.ACQUIRE", &other)),
    }
}

/// `LOCK.RENEW`'s reply: whether the owner still holds the lock.
pub(crate) fn renewed(reply: Value) -> Result<bool, Error> {
    match server_error(reply)? {
        Value::Int(1) => Ok(true),
        Value::Int(0) => Ok(false),
        other => Err(unexpected("LOCK.RENEW", &other)),
    }
}

/// `LOCK.RELEASE`'s reply: the remaining hold count, or `None` when the
/// owner did not hold the lock.
pub(crate) fn remaining(reply: Value) -> Result<Option<u64>, Error> {
    match server_error(reply)? {
        Value::Nil => Ok(None),
        Value::Int(n) if n >= 0 => Ok(Some(n as u64)),
        other => Err(unexpected("LOCK.RELEASE", &other)),
    }
}

/// `WAIT`'s reply: how many replicas acknowledged.
pub(crate) fn acked(reply: Value) -> Result<u64, Error> {
    match server_error(reply)? {
        Value::Int(n) if n >= 0 => Ok(n as u64),
        other => Err(unexpected("WAIT", &other)),
    }
}

/// A key for log lines (keys are binary-safe; logs are text).
pub(crate) fn show(key: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<other>".into(),
            })
            .collect()
    }

    #[test]
    fn acquire_sends_wait_only_when_asked() {
        assert_eq!(
            args(&acquire(b"k", "u:1", 300, None)),
            ["LOCK.ACQUIRE", "k", "u:1", "300"]
        );
        assert_eq!(
            args(&acquire(b"k", "u:1", 300, Some(0))),
            ["LOCK.ACQUIRE", "k", "u:1", "300", "WAIT", "0"]
        );
        assert_eq!(
            args(&renew(b"k", "u:1", 300)),
            ["LOCK.RENEW", "k", "u:1", "300"]
        );
        assert_eq!(args(&release(b"k", "u:1")), ["LOCK.RELEASE", "k", "u:1"]);
        let d = Durability {
            replicas: 1,
            timeout_ms: 50,
        };
        assert_eq!(args(&wait_replicas(d)), ["WAIT", "1", "50"]);
    }

    #[test]
    fn token_is_positive_or_nil() {
        assert_eq!(token(Value::Int(7)).unwrap(), Some(7));
        assert_eq!(token(Value::Nil).unwrap(), None);
        assert!(matches!(
            token(Value::Int(0)),
            Err(Error::UnexpectedReply { .. })
        ));
        assert!(token(Value::Okay).is_err());
    }

    #[test]
    fn renew_is_one_or_zero() {
        assert!(renewed(Value::Int(1)).unwrap());
        assert!(!renewed(Value::Int(0)).unwrap());
        assert!(renewed(Value::Int(2)).is_err());
        assert!(renewed(Value::Nil).is_err());
    }

    #[test]
    fn release_is_a_count_or_nil() {
        assert_eq!(remaining(Value::Int(0)).unwrap(), Some(0));
        assert_eq!(remaining(Value::Int(3)).unwrap(), Some(3));
        assert_eq!(remaining(Value::Nil).unwrap(), None);
        assert!(remaining(Value::Int(-1)).is_err());
    }
}
