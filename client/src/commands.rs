//! The module's commands as the client sends them, and the checks on their
//! replies (docs/INTERFACE.md is the contract).

use std::time::Duration;

use redis::{Cmd, Value};

use crate::error::Error;
use crate::info::LockInfo;
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

/// `LOCK.FORCERELEASE key`.
pub(crate) fn force_release(key: &[u8]) -> Cmd {
    let mut cmd = redis::cmd("LOCK.FORCERELEASE");
    cmd.arg(key);
    cmd
}

/// `LOCK.INFO key`.
pub(crate) fn info(key: &[u8]) -> Cmd {
    let mut cmd = redis::cmd("LOCK.INFO");
    cmd.arg(key);
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

/// A non-negative integer.
fn count(reply: &Value) -> Option<u64> {
    match reply {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// A positive integer (a fencing token).
fn positive(reply: &Value) -> Option<u64> {
    count(reply).filter(|&n| n > 0)
}

/// A string, simple or bulk.
fn text(reply: &Value) -> Option<&[u8]> {
    match reply {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

/// An integer reply that may be nil: `None` for nil.
fn nil_or(
    command: &'static str,
    reply: Value,
    check: fn(&Value) -> Option<u64>,
) -> Result<Option<u64>, Error> {
    match server_error(reply)? {
        Value::Nil => Ok(None),
        other => check(&other)
            .map(Some)
            .ok_or_else(|| unexpected(command, &other)),
    }
}

/// An integer reply that is 1 or 0.
fn flag(command: &'static str, reply: Value) -> Result<bool, Error> {
    match server_error(reply)? {
        Value::Int(1) => Ok(true),
        Value::Int(0) => Ok(false),
        other => Err(unexpected(command, &other)),
    }
}

/// `LOCK.ACQUIRE`'s reply: the fencing token, or `None` when not granted.
pub(crate) fn token(reply: Value) -> Result<Option<u64>, Error> {
    nil_or("LOCK.ACQUIRE", reply, positive)
}

/// `LOCK.RENEW`'s reply: whether the owner still holds the lock.
pub(crate) fn renewed(reply: Value) -> Result<bool, Error> {
    flag("LOCK.RENEW", reply)
}

/// `LOCK.RELEASE`'s reply: the remaining hold count, or `None` when the
/// owner did not hold the lock.
pub(crate) fn remaining(reply: Value) -> Result<Option<u64>, Error> {
    nil_or("LOCK.RELEASE", reply, count)
}

/// `LOCK.FORCERELEASE`'s reply: whether a lock was removed.
pub(crate) fn forced(reply: Value) -> Result<bool, Error> {
    flag("LOCK.FORCERELEASE", reply)
}

/// `WAIT`'s reply: how many replicas acknowledged.
pub(crate) fn acked(reply: Value) -> Result<u64, Error> {
    let reply = server_error(reply)?;
    count(&reply).ok_or_else(|| unexpected("WAIT", &reply))
}

/// `LOCK.INFO`'s reply: `None` when the key holds no lock; else the fields
/// as a map (RESP3) or a flat field/value array (RESP2). Fields this client
/// does not know are skipped.
pub(crate) fn lock_info(reply: Value) -> Result<Option<LockInfo>, Error> {
    match server_error(reply)? {
        Value::Nil => Ok(None),
        other => info_fields(&other)
            .map(Some)
            .ok_or_else(|| unexpected("LOCK.INFO", &other)),
    }
}

fn info_fields(reply: &Value) -> Option<LockInfo> {
    let pairs: Vec<(&Value, &Value)> = match reply {
        Value::Map(pairs) => pairs.iter().map(|(name, value)| (name, value)).collect(),
        Value::Array(flat) => {
            let pairs = flat.chunks_exact(2);
            if !pairs.remainder().is_empty() {
                return None;
            }
            pairs
                .filter_map(|pair| match pair {
                    [name, value] => Some((name, value)),
                    _ => None,
                })
                .collect()
        }
        _ => return None,
    };
    let field = |wanted: &str| {
        pairs
            .iter()
            .find(|(name, _)| text(name) == Some(wanted.as_bytes()))
            .map(|(_, value)| *value)
    };
    Some(LockInfo {
        owner: String::from_utf8_lossy(text(field("owner")?)?).into_owned(),
        holds: count(field("holds")?)?,
        ttl: Duration::from_millis(count(field("ttl")?)?),
        token: positive(field("token")?)?,
        waiters: count(field("waiters")?)?,
    })
}

/// A key for log lines (keys are binary-safe; logs are text).
pub(crate) fn show(key: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{flat, info_fields};

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
        assert_eq!(args(&force_release(b"k")), ["LOCK.FORCERELEASE", "k"]);
        assert_eq!(args(&info(b"k")), ["LOCK.INFO", "k"]);
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

    #[test]
    fn forcerelease_is_one_or_zero() {
        assert!(forced(Value::Int(1)).unwrap());
        assert!(!forced(Value::Int(0)).unwrap());
        assert!(forced(Value::Nil).is_err());
    }

    fn fields() -> Vec<(Value, Value)> {
        info_fields("u:1", 2)
    }

    fn expected() -> LockInfo {
        LockInfo {
            owner: "u:1".into(),
            holds: 2,
            ttl: Duration::from_millis(9987),
            token: 7,
            waiters: 1,
        }
    }

    /// [`fields`] with one value replaced.
    fn with(name: &str, value: Value) -> Vec<(Value, Value)> {
        let name = Value::SimpleString(name.into());
        fields()
            .into_iter()
            .map(|(k, v)| {
                if k == name {
                    (k, value.clone())
                } else {
                    (k, v)
                }
            })
            .collect()
    }

    #[test]
    fn info_reads_the_resp3_map_and_the_resp2_array() {
        assert_eq!(lock_info(Value::Map(fields())).unwrap(), Some(expected()));
        assert_eq!(lock_info(flat(fields())).unwrap(), Some(expected()));
        assert_eq!(lock_info(Value::Nil).unwrap(), None);
    }

    #[test]
    fn info_accepts_names_as_bulk_strings_in_any_order_and_skips_unknown_fields() {
        let mut pairs: Vec<(Value, Value)> = fields()
            .into_iter()
            .rev()
            .map(|(k, v)| match k {
                Value::SimpleString(s) => (Value::BulkString(s.into_bytes()), v),
                other => (other, v),
            })
            .collect();
        pairs.push((Value::SimpleString("future".into()), Value::Int(1)));
        assert_eq!(lock_info(flat(pairs)).unwrap(), Some(expected()));
    }

    #[test]
    fn info_without_a_field_or_with_a_bad_value_is_unexpected() {
        for broken in [
            // a missing field
            fields().into_iter().skip(1).collect::<Vec<_>>(),
            // a negative hold count
            with("holds", Value::Int(-1)),
            // a token of 0
            with("token", Value::Int(0)),
            // an owner that is not a string
            with("owner", Value::Int(1)),
        ] {
            assert!(matches!(
                lock_info(Value::Map(broken)),
                Err(Error::UnexpectedReply {
                    command: "LOCK.INFO",
                    ..
                })
            ));
        }
        let Value::Array(mut odd) = flat(fields()) else {
            unreachable!()
        };
        odd.pop();
        assert!(lock_info(Value::Array(odd)).is_err());
        assert!(lock_info(Value::Int(1)).is_err());
    }
}
