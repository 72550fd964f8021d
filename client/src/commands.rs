//! The module's commands as the client sends them, and the checks on their
//! replies (docs/INTERFACE.md is the contract).

use std::time::Duration;

use redis::{Cmd, RedisError, Value};

use crate::error::Error;
use crate::info::{Holder, KeyInfo, LockInfo, Mode, PermitHolder, SemaphoreInfo, SharedInfo};
use crate::options::Durability;

/// What an acquire asks the server for: the options of `LOCK.ACQUIRE`
/// before `WAIT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// No option: the exclusive (write) lock.
    Exclusive,
    /// `SHARED`: a read lock.
    Shared,
    /// `LIMIT limit COUNT count`: `count` permits of a semaphore of `limit`.
    Permits { limit: u32, count: u32 },
}

/// `LOCK.ACQUIRE key owner ttl-ms [SHARED | LIMIT permits COUNT n]
/// [WAIT timeout-ms] ID request-id`.
pub(crate) fn acquire(
    key: &[u8],
    owner: &str,
    ttl_ms: u64,
    request: Request,
    wait_ms: Option<u64>,
    id: &str,
) -> Cmd {
    let mut cmd = redis::cmd("LOCK.ACQUIRE");
    cmd.arg(key).arg(owner).arg(ttl_ms);
    match request {
        Request::Exclusive => {}
        Request::Shared => {
            cmd.arg("SHARED");
        }
        Request::Permits { limit, count } => {
            cmd.arg("LIMIT").arg(limit).arg("COUNT").arg(count);
        }
    }
    if let Some(ms) = wait_ms {
        cmd.arg("WAIT").arg(ms);
    }
    cmd.arg("ID").arg(id);
    cmd
}

/// `LOCK.RENEW key owner ttl-ms`.
pub(crate) fn renew(key: &[u8], owner: &str, ttl_ms: u64) -> Cmd {
    let mut cmd = redis::cmd("LOCK.RENEW");
    cmd.arg(key).arg(owner).arg(ttl_ms);
    cmd
}

/// `LOCK.RELEASE key owner [COUNT n] ID request-id`: `COUNT` only when
/// `count` is not 1 (one hold is the default).
pub(crate) fn release(key: &[u8], owner: &str, count: u64, id: &str) -> Cmd {
    let mut cmd = redis::cmd("LOCK.RELEASE");
    cmd.arg(key).arg(owner);
    if count != 1 {
        cmd.arg("COUNT").arg(count);
    }
    cmd.arg("ID").arg(id);
    cmd
}

/// `LOCK.FORCERELEASE key [owner]`: the whole key, or one owner's holds.
pub(crate) fn force_release(key: &[u8], owner: Option<&str>) -> Cmd {
    let mut cmd = redis::cmd("LOCK.FORCERELEASE");
    cmd.arg(key);
    if let Some(owner) = owner {
        cmd.arg(owner);
    }
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

/// `LOCK.RELEASE`'s reply: what the owner still holds (holds, or permits),
/// or `None` when it held nothing.
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

/// The server refused an upgrade (a shared-only holder asked for the
/// exclusive lock).
pub(crate) fn is_upgrade(e: &RedisError) -> bool {
    e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.starts_with("the owner holds this lock shared"))
}

/// A release asked for more than the owner holds (nothing changed).
pub(crate) fn is_over_count(e: &RedisError) -> bool {
    e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.starts_with("COUNT is more than the owner holds"))
}

/// `LOCK.INFO`'s reply: `None` when the key holds no lock; else the fields
/// as a map (RESP3) or a flat field/value array (RESP2), the holders of a
/// shared lock or a semaphore as an array of such maps or arrays. Fields
/// this client does not know are skipped; a reply without `mode` (a module
/// older than the lock family) is an exclusive lock.
pub(crate) fn key_info(reply: Value) -> Result<Option<KeyInfo>, Error> {
    match server_error(reply)? {
        Value::Nil => Ok(None),
        other => parse_key_info(&other)
            .map(Some)
            .ok_or_else(|| unexpected("LOCK.INFO", &other)),
    }
}

/// The field/value pairs of a map (RESP3) or a flat array (RESP2).
struct Fields<'a>(Vec<(&'a Value, &'a Value)>);

impl<'a> Fields<'a> {
    fn of(reply: &'a Value) -> Option<Self> {
        let pairs = match reply {
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
        Some(Self(pairs))
    }

    fn get(&self, wanted: &str) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|(name, _)| text(name) == Some(wanted.as_bytes()))
            .map(|(_, value)| *value)
    }

    fn count(&self, name: &str) -> Option<u64> {
        count(self.get(name)?)
    }

    fn token(&self) -> Option<u64> {
        positive(self.get("token")?)
    }

    fn ttl(&self) -> Option<Duration> {
        self.count("ttl").map(Duration::from_millis)
    }

    fn owner(&self) -> Option<String> {
        Some(String::from_utf8_lossy(text(self.get("owner")?)?).into_owned())
    }

    /// The `holders` field: an array of maps (or flat arrays), each read by
    /// `holder`.
    fn holders<T>(&self, holder: fn(&Fields<'_>) -> Option<T>) -> Option<Vec<T>> {
        let Value::Array(entries) = self.get("holders")? else {
            return None;
        };
        entries
            .iter()
            .map(|entry| holder(&Fields::of(entry)?))
            .collect()
    }
}

fn parse_key_info(reply: &Value) -> Option<KeyInfo> {
    let f = Fields::of(reply)?;
    let mode = match f.get("mode") {
        None => Mode::Exclusive,
        Some(v) => match text(v)? {
            b"exclusive" => Mode::Exclusive,
            b"shared" => Mode::Shared,
            b"semaphore" => Mode::Semaphore,
            _ => return None,
        },
    };
    Some(match mode {
        Mode::Exclusive => KeyInfo::Exclusive(LockInfo {
            owner: f.owner()?,
            holds: f.count("holds")?,
            ttl: f.ttl()?,
            token: f.token()?,
            waiters: f.count("waiters")?,
        }),
        Mode::Shared => KeyInfo::Shared(SharedInfo {
            waiters: f.count("waiters")?,
            holders: f.holders(|h| {
                Some(Holder {
                    owner: h.owner()?,
                    holds: h.count("holds")?,
                    ttl: h.ttl()?,
                    token: h.token()?,
                })
            })?,
        }),
        Mode::Semaphore => KeyInfo::Semaphore(SemaphoreInfo {
            limit: f.count("limit")?,
            available: f.count("available")?,
            waiters: f.count("waiters")?,
            holders: f.holders(|h| {
                Some(PermitHolder {
                    owner: h.owner()?,
                    permits: h.count("permits")?,
                    ttl: h.ttl()?,
                    token: h.token()?,
                })
            })?,
        }),
    })
}

/// A key for log lines (keys are binary-safe; logs are text).
pub(crate) fn show(key: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{flat, info_fields, map, semaphore_info, server_error, shared_info, UPGRADE};

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<other>".into(),
            })
            .collect()
    }

    #[test]
    fn acquire_sends_wait_only_when_asked_and_always_its_id_last() {
        assert_eq!(
            args(&acquire(b"k", "u:1", 300, Request::Exclusive, None, "a-1")),
            ["LOCK.ACQUIRE", "k", "u:1", "300", "ID", "a-1"]
        );
        assert_eq!(
            args(&acquire(
                b"k",
                "u:1",
                300,
                Request::Exclusive,
                Some(0),
                "a-2"
            )),
            ["LOCK.ACQUIRE", "k", "u:1", "300", "WAIT", "0", "ID", "a-2"]
        );
        assert_eq!(
            args(&renew(b"k", "u:1", 300)),
            ["LOCK.RENEW", "k", "u:1", "300"]
        );
        assert_eq!(
            args(&release(b"k", "u:1", 1, "r-3")),
            ["LOCK.RELEASE", "k", "u:1", "ID", "r-3"]
        );
        let d = Durability {
            replicas: 1,
            timeout_ms: 50,
        };
        assert_eq!(args(&wait_replicas(d)), ["WAIT", "1", "50"]);
        assert_eq!(args(&force_release(b"k", None)), ["LOCK.FORCERELEASE", "k"]);
        assert_eq!(args(&info(b"k")), ["LOCK.INFO", "k"]);
    }

    #[test]
    fn acquire_sends_shared_or_limit_and_count_before_wait_and_id() {
        assert_eq!(
            args(&acquire(b"k", "u:1", 300, Request::Shared, None, "a-1")),
            ["LOCK.ACQUIRE", "k", "u:1", "300", "SHARED", "ID", "a-1"]
        );
        assert_eq!(
            args(&acquire(b"k", "u:1", 300, Request::Shared, Some(50), "a-1")),
            [
                "LOCK.ACQUIRE",
                "k",
                "u:1",
                "300",
                "SHARED",
                "WAIT",
                "50",
                "ID",
                "a-1"
            ]
        );
        let permits = Request::Permits { limit: 5, count: 2 };
        assert_eq!(
            args(&acquire(b"k", "u:1", 300, permits, None, "a-1")),
            [
                "LOCK.ACQUIRE",
                "k",
                "u:1",
                "300",
                "LIMIT",
                "5",
                "COUNT",
                "2",
                "ID",
                "a-1"
            ]
        );
        assert_eq!(
            args(&acquire(b"k", "u:1", 300, permits, Some(0), "a-1")),
            [
                "LOCK.ACQUIRE",
                "k",
                "u:1",
                "300",
                "LIMIT",
                "5",
                "COUNT",
                "2",
                "WAIT",
                "0",
                "ID",
                "a-1"
            ]
        );
    }

    #[test]
    fn release_sends_count_unless_it_is_one_and_forcerelease_may_name_an_owner() {
        assert_eq!(
            args(&release(b"k", "u:1", 3, "r-1")),
            ["LOCK.RELEASE", "k", "u:1", "COUNT", "3", "ID", "r-1"]
        );
        assert_eq!(
            args(&force_release(b"k", Some("u:2"))),
            ["LOCK.FORCERELEASE", "k", "u:2"]
        );
    }

    fn redis_error(text: &str) -> RedisError {
        server_error(text).extract_error().unwrap_err()
    }

    #[test]
    fn the_upgrade_refusal_and_an_over_count_release_are_recognised() {
        assert!(is_upgrade(&redis_error(UPGRADE)));
        assert!(!is_over_count(&redis_error(UPGRADE)));
        let over = "ERR COUNT is more than the owner holds (2); nothing changed";
        assert!(is_over_count(&redis_error(over)));
        assert!(!is_upgrade(&redis_error(over)));
        assert!(!is_upgrade(&redis_error(
            "WRONGTYPE the key holds a semaphore of 3 permits: acquire it with LIMIT 3"
        )));
        assert!(!is_upgrade(&redis_error("ERR syntax error")));
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

    fn exclusive(info: LockInfo) -> Option<KeyInfo> {
        Some(KeyInfo::Exclusive(info))
    }

    #[test]
    fn info_reads_the_resp3_map_and_the_resp2_array() {
        assert_eq!(
            key_info(Value::Map(fields())).unwrap(),
            exclusive(expected())
        );
        assert_eq!(key_info(flat(fields())).unwrap(), exclusive(expected()));
        assert_eq!(key_info(Value::Nil).unwrap(), None);
    }

    #[test]
    fn info_with_mode_exclusive_is_the_exclusive_shape() {
        let mut pairs = fields();
        pairs.push((
            Value::SimpleString("mode".into()),
            Value::SimpleString("exclusive".into()),
        ));
        assert_eq!(
            key_info(Value::Map(pairs.clone())).unwrap(),
            exclusive(expected())
        );
        // The mode as a bulk string, first.
        pairs.rotate_right(1);
        pairs[0].1 = Value::BulkString(b"exclusive".to_vec());
        assert_eq!(key_info(flat(pairs)).unwrap(), exclusive(expected()));
    }

    fn readers() -> SharedInfo {
        SharedInfo {
            waiters: 2,
            holders: vec![
                Holder {
                    owner: "u:1".into(),
                    holds: 2,
                    ttl: Duration::from_millis(9000),
                    token: 10,
                },
                Holder {
                    owner: "u:2".into(),
                    holds: 1,
                    ttl: Duration::from_millis(9001),
                    token: 11,
                },
            ],
        }
    }

    #[test]
    fn info_reads_a_shared_lock_in_both_protocols() {
        let of = [("u:1", 2), ("u:2", 1)];
        for reply in [shared_info(map, &of), shared_info(flat, &of)] {
            let info = key_info(reply).unwrap().unwrap();
            assert_eq!(info.mode(), Mode::Shared);
            assert_eq!(info.waiters(), 2);
            assert_eq!(info.owners(), ["u:1", "u:2"]);
            assert_eq!((info.held_by("u:1"), info.held_by("u:3")), (2, 0));
            assert_eq!(info, KeyInfo::Shared(readers()));
        }
    }

    #[test]
    fn info_reads_a_semaphore_in_both_protocols() {
        let of = [("u:1", 3), ("u:2", 1)];
        for reply in [semaphore_info(map, 5, &of), semaphore_info(flat, 5, &of)] {
            let info = key_info(reply).unwrap().unwrap();
            assert_eq!(info.mode(), Mode::Semaphore);
            assert_eq!(info.held_by("u:1"), 3);
            let KeyInfo::Semaphore(sem) = info else {
                unreachable!()
            };
            assert_eq!((sem.limit, sem.available, sem.waiters), (5, 1, 1));
            assert_eq!(
                sem.holders[1],
                PermitHolder {
                    owner: "u:2".into(),
                    permits: 1,
                    ttl: Duration::from_millis(9001),
                    token: 11,
                }
            );
        }
    }

    #[test]
    fn info_of_an_unknown_mode_or_with_bad_holders_is_unexpected() {
        let unexpected = |reply| {
            matches!(
                key_info(reply),
                Err(Error::UnexpectedReply {
                    command: "LOCK.INFO",
                    ..
                })
            )
        };
        let mut pairs = fields();
        pairs.push((
            Value::SimpleString("mode".into()),
            Value::SimpleString("future".into()),
        ));
        assert!(unexpected(Value::Map(pairs)));
        // Holders that are not an array, and a holder without permits.
        let name = |s: &str| Value::SimpleString(s.into());
        let no_holders = map(vec![
            (name("mode"), name("shared")),
            (name("waiters"), Value::Int(0)),
            (name("holders"), Value::Int(1)),
        ]);
        assert!(unexpected(no_holders));
        // A semaphore's holders counted in holds instead of permits.
        let Value::Map(mut pairs) = semaphore_info(map, 5, &[("u:1", 1)]) else {
            unreachable!()
        };
        pairs[4].1 = match shared_info(map, &[("u:1", 1)]) {
            Value::Map(p) => p[2].1.clone(),
            _ => unreachable!(),
        };
        assert!(unexpected(Value::Map(pairs)));
        // A token of 0 in a holder.
        let Value::Array(mut flat_reply) = shared_info(flat, &[("u:1", 1)]) else {
            unreachable!()
        };
        let Value::Array(holders) = &mut flat_reply[5] else {
            unreachable!()
        };
        let Value::Array(holder) = &mut holders[0] else {
            unreachable!()
        };
        holder[7] = Value::Int(0);
        assert!(unexpected(Value::Array(flat_reply)));
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
        assert_eq!(key_info(flat(pairs)).unwrap(), exclusive(expected()));
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
                key_info(Value::Map(broken)),
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
        assert!(key_info(Value::Array(odd)).is_err());
        assert!(key_info(Value::Int(1)).is_err());
    }
}
