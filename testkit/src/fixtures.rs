//! Files an older release wrote (`tests/fixtures/<version>/`), and reading
//! locks back in every shape `LOCK.INFO` has.
//!
//! The fixture files hold locks with 30-day leases granted when they were
//! made: loaded later as they are, the leases would be past (or, loaded
//! within the month, out of step with the test's clock). A test copies them
//! with every lease deadline moved by a shift of its choice — the same
//! width in the file, the RDB checksum recomputed — and checks what the
//! server loaded against `expected.tsv`.

use std::path::{Path, PathBuf};

use redis::{ConnectionLike, Value};

use crate::hostile::{fencelock_type_id, fix_trailing_crc, rdb_len, ModuleValue, RdbReader};
use crate::hostile::{OP_STRING, OP_UINT};
use crate::workspace_root;

/// The lease every fixture lock was granted (and last renewed) with: 30 days.
pub const FIXTURE_TTL_MS: u64 = 2_592_000_000;

/// The fixtures written by the release whose lock encoding is version 1.
pub fn v1_dir() -> PathBuf {
    workspace_root().join("tests").join("fixtures").join("v1")
}

/// One lock of `expected.tsv`: what the server that wrote the files
/// reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedLock {
    pub key: Vec<u8>,
    pub db: u32,
    pub owner: Vec<u8>,
    pub holds: i64,
    pub token: i64,
    /// `now + ttl` when it was read: the deadline to within the reply's
    /// latency (the exact one is in the files).
    pub deadline_approx_ms: u64,
}

/// Parses `expected.tsv` in `dir` (`#` lines are comments; key and owner
/// in hex).
pub fn expected(dir: &Path) -> Vec<ExpectedLock> {
    let path = dir.join("expected.tsv");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let rows: Vec<ExpectedLock> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 6, "expected.tsv line {l:?}");
            ExpectedLock {
                key: unhex(f[0]),
                db: f[1].parse().expect("db"),
                owner: unhex(f[2]),
                holds: f[3].parse().expect("holds"),
                token: f[4].parse().expect("token"),
                deadline_approx_ms: f[5].parse().expect("deadline"),
            }
        })
        .collect();
    assert!(!rows.is_empty(), "no locks in {}", path.display());
    rows
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// When the fixture files were made (their last grant or renewal): the
/// latest deadline in `expected` less the 30-day lease.
pub fn generated_at_ms(expected: &[ExpectedLock]) -> u64 {
    expected
        .iter()
        .map(|e| e.deadline_approx_ms)
        .max()
        .expect("a lock")
        - FIXTURE_TTL_MS
}

/// A lease deadline found in a fixture file, before and after the shift.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovedDeadline {
    /// The owner of the lease (what identifies a lock in these files).
    pub owner: Vec<u8>,
    pub was_ms: u64,
    pub now_ms: u64,
}

fn shifted(was: u64, shift_ms: i64) -> u64 {
    let moved = was
        .checked_add_signed(shift_ms)
        .unwrap_or_else(|| panic!("deadline {was} shifted by {shift_ms} out of range"));
    assert_eq!(
        moved.to_string().len(),
        was.to_string().len(),
        "deadline {was} shifted by {shift_ms} changes width"
    );
    moved
}

/// An RDB file written by the v1 release with every lock's deadline moved
/// by `shift_ms` and the trailing CRC64 recomputed, and the deadlines it
/// moved. A lock value is found by its module id (type `fencelock`,
/// encoding 1) and taken apart field by field (owner string, holds, token,
/// deadline, the EOF mark); the deadline (a Unix ms time, above 2^32) is
/// stored as opcode 0x02 then 0x81 and 8 bytes big-endian, overwritten in
/// place. The module's aux field (the last token; two unsigned fields) has
/// the same module id and is left alone.
pub fn rdb_with_deadlines_moved(rdb: &[u8], shift_ms: i64) -> (Vec<u8>, Vec<MovedDeadline>) {
    let id = rdb_len(fencelock_type_id());
    let mut out = rdb.to_vec();
    let mut moved = Vec::new();
    let mut from = 0;
    while let Some(at) = rdb[from..]
        .windows(id.len())
        .position(|w| w == id.as_slice())
        .map(|p| from + p)
    {
        from = at + 1;
        let Some((value, end)) = ModuleValue::parse_value_at(rdb, at) else {
            continue;
        };
        let ops: Vec<u64> = value.fields.iter().map(|f| f.opcode).collect();
        if ops != [OP_STRING, OP_UINT, OP_UINT, OP_UINT] {
            continue;
        }
        let owner = RdbReader::new(&value.fields[0].value)
            .string()
            .expect("owner string");
        let deadline = &value.fields[3].value;
        assert_eq!(
            deadline.len(),
            9,
            "deadline of {owner:?} is not 0x81 + 8 bytes"
        );
        assert_eq!(deadline[0], 0x81);
        let was = u64::from_be_bytes(deadline[1..].try_into().unwrap());
        let now = shifted(was, shift_ms);
        // The deadline is the last field: its 8 bytes end where the EOF mark
        // starts.
        let eof_at = end - value.eof.len();
        assert_eq!(&rdb[eof_at - 9..eof_at], deadline.as_slice());
        out[eof_at - 8..eof_at].copy_from_slice(&now.to_be_bytes());
        moved.push(MovedDeadline {
            owner,
            was_ms: was,
            now_ms: now,
        });
        from = end;
    }
    fix_trailing_crc(&mut out);
    (out, moved)
}

/// Parses a file of RESP commands (an AOF without RDB preamble): arrays of
/// bulk strings.
pub fn parse_resp_commands(data: &[u8]) -> Vec<Vec<Vec<u8>>> {
    fn line<'a>(data: &'a [u8], pos: &mut usize, lead: u8) -> &'a [u8] {
        assert_eq!(
            data.get(*pos),
            Some(&lead),
            "expected {:?} at byte {pos}",
            lead as char
        );
        let rest = &data[*pos + 1..];
        let n = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("unterminated line at byte {pos}"));
        *pos += 1 + n + 2;
        &rest[..n]
    }
    let number = |b: &[u8]| -> usize { std::str::from_utf8(b).unwrap().parse().unwrap() };
    let mut pos = 0;
    let mut cmds = Vec::new();
    while pos < data.len() {
        let n = number(line(data, &mut pos, b'*'));
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            let len = number(line(data, &mut pos, b'$'));
            args.push(data[pos..pos + len].to_vec());
            assert_eq!(&data[pos + len..pos + len + 2], b"\r\n");
            pos += len + 2;
        }
        cmds.push(args);
    }
    cmds
}

/// RESP encoding of commands.
pub fn encode_resp_commands(cmds: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::new();
    for args in cmds {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// An AOF file of RESP commands with the deadline of every `LOCK.APPLY`
/// (its fifth argument in every form but `DROP`) moved by `shift_ms`, same
/// width, and the deadlines it moved.
pub fn aof_with_deadlines_moved(aof: &[u8], shift_ms: i64) -> (Vec<u8>, Vec<MovedDeadline>) {
    let mut cmds = parse_resp_commands(aof);
    let mut moved = Vec::new();
    for args in &mut cmds {
        if args.len() < 6 || !args[0].eq_ignore_ascii_case(b"LOCK.APPLY") {
            continue;
        }
        let was: u64 = std::str::from_utf8(&args[5])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("LOCK.APPLY deadline {:?}", args[5]));
        let now = shifted(was, shift_ms);
        args[5] = now.to_string().into_bytes();
        moved.push(MovedDeadline {
            owner: args[2].clone(),
            was_ms: was,
            now_ms: now,
        });
    }
    (encode_resp_commands(&cmds), moved)
}

/// Copies the fixture RDB file `rdb` to `dest` with its deadlines moved.
pub fn copy_rdb(rdb: &Path, dest: &Path, shift_ms: i64) -> Vec<MovedDeadline> {
    let data = std::fs::read(rdb).unwrap_or_else(|e| panic!("read {}: {e}", rdb.display()));
    let (patched, moved) = rdb_with_deadlines_moved(&data, shift_ms);
    std::fs::write(dest, patched).unwrap();
    moved
}

/// Copies a multi-part AOF directory (manifest and RESP files) to `dest`
/// with the deadlines of its `LOCK.APPLY` commands moved; the manifest is
/// copied as it is.
pub fn copy_aof_dir(aof_dir: &Path, dest: &Path, shift_ms: i64) -> Vec<MovedDeadline> {
    std::fs::create_dir_all(dest).unwrap();
    let mut moved = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(aof_dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", aof_dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap();
        let data = std::fs::read(&path).unwrap();
        let is_manifest = name.to_string_lossy().ends_with(".manifest");
        let out = if is_manifest {
            data
        } else {
            let (patched, m) = aof_with_deadlines_moved(&data, shift_ms);
            moved.extend(m);
            patched
        };
        std::fs::write(dest.join(name), out).unwrap();
    }
    moved
}

/// The base file of the multi-part AOF in `dir/appendonlydir` (the one the
/// manifest names with `type b`).
pub fn aof_base_file(dir: &Path) -> PathBuf {
    let aof_dir = dir.join("appendonlydir");
    let manifest = std::fs::read_to_string(aof_dir.join("appendonly.aof.manifest"))
        .unwrap_or_else(|e| panic!("read the manifest in {}: {e}", aof_dir.display()));
    let name = manifest
        .lines()
        .find(|l| l.trim_end().ends_with("type b"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no base file in the manifest:\n{manifest}"));
    aof_dir.join(name)
}

// ------------------------------------------------------ reading locks back

/// A fixture lock (an exclusive one) as `LOCK.INFO` shows it, read by field
/// name so that it works on both sides of the upgrade: the v1 build's
/// reply (`owner holds ttl token waiters`) and the lock family's exclusive
/// shape (the same, then `mode` = `exclusive`). Owner bytes as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedLock {
    pub owner: Vec<u8>,
    pub holds: i64,
    pub ttl: i64,
    pub token: i64,
    pub waiters: i64,
}

/// Parses the `LOCK.INFO` reply of an exclusive lock (RESP2 flat array or
/// RESP3 map); None for nil; a panic for another shape.
pub fn parse_loaded_lock(v: &Value) -> Option<LoadedLock> {
    let items: Vec<(Value, Value)> = match v {
        Value::Nil => return None,
        Value::Map(p) => p.clone(),
        Value::Array(items) if items.len().is_multiple_of(2) => items
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect(),
        other => panic!("unexpected LOCK.INFO reply {other:?}"),
    };
    let fields: Vec<(String, Value)> = items
        .into_iter()
        .map(|(n, v)| (redis::from_redis_value_ref(&n).expect("field name"), v))
        .collect();
    let get = |name: &str| -> &Value {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("LOCK.INFO has no {name}: {v:?}"))
    };
    let int = |name: &str| -> i64 {
        redis::from_redis_value_ref(get(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    if fields.iter().any(|(n, _)| n == "mode") {
        let mode: String = redis::from_redis_value_ref(get("mode")).expect("mode");
        assert_eq!(mode, "exclusive", "a fixture lock is exclusive: {v:?}");
    }
    Some(LoadedLock {
        owner: redis::from_redis_value_ref(get("owner")).expect("owner"),
        holds: int("holds"),
        ttl: int("ttl"),
        token: int("token"),
        waiters: int("waiters"),
    })
}

/// `LOCK.INFO key` (a binary-safe key) of an exclusive lock, parsed.
pub fn loaded_lock(c: &mut impl ConnectionLike, key: &[u8]) -> Option<LoadedLock> {
    let v: Value = redis::cmd("LOCK.INFO")
        .arg(key)
        .query(c)
        .unwrap_or_else(|e| panic!("LOCK.INFO {}: {e}", String::from_utf8_lossy(key)));
    parse_loaded_lock(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostile::crc64;

    #[test]
    fn resp_files_round_trip() {
        let data = b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n*3\r\n$3\r\nSET\r\n$3\r\na\0b\r\n$0\r\n\r\n";
        let cmds = parse_resp_commands(data);
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[1][1], b"a\0b");
        assert_eq!(encode_resp_commands(&cmds), data);
    }

    #[test]
    fn aof_deadlines_move_and_keep_their_width() {
        let cmds = vec![vec![
            b"LOCK.APPLY".to_vec(),
            b"k".to_vec(),
            b"o".to_vec(),
            b"1".to_vec(),
            b"1883419547377074176".to_vec(),
            b"1798760849351".to_vec(),
        ]];
        let (out, moved) = aof_with_deadlines_moved(&encode_resp_commands(&cmds), -1000);
        assert_eq!(moved[0].now_ms, 1798760848351);
        assert_eq!(parse_resp_commands(&out)[0][5], b"1798760848351");
    }

    #[test]
    fn rdb_deadlines_move_and_the_checksum_follows() {
        let mut file = b"REDIS0010".to_vec();
        file.extend([0x07, 0x01, b'k']);
        file.extend(ModuleValue::lock(b"o", 2, 1 << 60, 1_798_760_849_351).encode_value());
        file.push(0xff);
        file.extend([0u8; 8]);
        fix_trailing_crc(&mut file);
        let (out, moved) = rdb_with_deadlines_moved(&file, 5);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].owner, b"o");
        assert_eq!(moved[0].now_ms, 1_798_760_849_356);
        assert_eq!(out.len(), file.len());
        let n = out.len() - 8;
        assert_eq!(out[n..], crc64(&out[..n]).to_le_bytes());
        let (back, _) = rdb_with_deadlines_moved(&out, -5);
        assert_eq!(back, file);
    }

    #[test]
    fn lock_info_of_both_builds_parses() {
        let s = |x: &str| Value::BulkString(x.as_bytes().to_vec());
        let mut v1 = vec![
            s("owner"),
            Value::BulkString(b"a\0b".to_vec()),
            s("holds"),
            Value::Int(2),
            s("ttl"),
            Value::Int(9),
            s("token"),
            Value::Int(7),
            s("waiters"),
            Value::Int(0),
        ];
        let want = LoadedLock {
            owner: b"a\0b".to_vec(),
            holds: 2,
            ttl: 9,
            token: 7,
            waiters: 0,
        };
        assert_eq!(
            parse_loaded_lock(&Value::Array(v1.clone())),
            Some(want.clone())
        );
        v1.extend([s("mode"), s("exclusive")]);
        assert_eq!(parse_loaded_lock(&Value::Array(v1)), Some(want));
        assert_eq!(parse_loaded_lock(&Value::Nil), None);
    }
}
