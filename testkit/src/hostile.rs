//! Tools for the hostile-input tests (issue #9: no payload, file or
//! argument can crash the server or make a fencing token repeat):
//!
//! - a small seeded PRNG and the `FENCELOCK_FUZZ_*` settings;
//! - Redis's CRC64 (Jones polynomial, reflected, init 0) for `RESTORE`
//!   payloads and RDB files;
//! - the RDB encodings of a `fencelock` value (length encodings, strings,
//!   module opcodes; the value's encodings 1 and 2, [`LockFields`]) to
//!   build, take apart and re-assemble values, and a model of how Redis 7.0
//!   plus the module rules read a payload and what `LOCK.INFO` must then
//!   show (the oracle the fuzzers compare the server with);
//! - a raw RESP2 connection that pipelines binary commands and returns
//!   error replies as values; `LOCK.INFO` in its three shapes
//!   ([`parse_lock_info`]) and the documented error replies;
//! - a `redis-server` process started on a directory the test prepared,
//!   whose exit status, log and standard output can be inspected (for
//!   files that must make it exit), and the log's crash signatures.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ------------------------------------------------------------------ rules

/// The largest fencing token a `RESTORE` payload may carry (anyone can
/// send one).
pub const MAX_TOKEN: u64 = 0x7000_0000_0000_0000;
/// The largest token in what a server wrote (an RDB file, a full sync, the
/// AOF, a master's stream): 2^63-1. A server that restored a token near
/// [`MAX_TOKEN`] issues larger ones and must reload its own files.
pub const MAX_SERVER_TOKEN: u64 = i64::MAX as u64;
/// The longest owner, in bytes.
pub const MAX_OWNER: usize = 1024;
/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;
/// How far in the future a loaded deadline may lie: 30 days (the longest
/// ttl) plus one day of clock skew.
pub const MAX_DEADLINE_AHEAD_MS: u64 = 31 * DAY_MS;

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ------------------------------------------------------------------- PRNG

/// xoshiro256** seeded through splitmix64: small, fast, reproducible.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `0..n` as an index.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        if lo == 0 && hi == u64::MAX {
            return self.next_u64();
        }
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// Random bytes, `min..=max` of them.
    pub fn blob(&mut self, min: usize, max: usize) -> Vec<u8> {
        let len = self.range(min as u64, max as u64) as usize;
        self.bytes(len)
    }
}

/// The fuzz seed: `$FENCELOCK_FUZZ_SEED` (decimal or 0x-hex) or `default`.
/// Printed, with how to replay it.
pub fn fuzz_seed(default: u64) -> u64 {
    let seed = std::env::var("FENCELOCK_FUZZ_SEED")
        .ok()
        .and_then(|v| parse_u64_setting(&v))
        .unwrap_or(default);
    println!("fuzz seed {seed:#x} (replay with FENCELOCK_FUZZ_SEED={seed:#x})");
    seed
}

/// A fuzzer's time budget (`FENCELOCK_FUZZ_SECONDS`, default 120 s): past
/// it the run stops early, says so, and still checks everything it did.
#[derive(Debug)]
pub struct TimeBudget {
    /// When the run started.
    pub started: Instant,
    limit: Duration,
    /// Whether the run stopped early.
    pub cut_short: bool,
}

impl TimeBudget {
    /// A budget that starts now.
    pub fn start() -> TimeBudget {
        TimeBudget {
            started: Instant::now(),
            limit: Duration::from_secs(env_u64("FENCELOCK_FUZZ_SECONDS", 120)),
            cut_short: false,
        }
    }

    /// True (and said once) when the budget is spent after `done` of
    /// `total` `what`s.
    pub fn spent(&mut self, done: usize, total: usize, what: &str) -> bool {
        if self.started.elapsed() <= self.limit {
            return false;
        }
        if !self.cut_short {
            println!(
                "STOPPING EARLY: the {:?} time limit passed after {done} of {total} {what} \
                 (slow machine?); everything run so far is checked",
                self.limit
            );
        }
        self.cut_short = true;
        true
    }
}

/// An integer setting from the environment (decimal or 0x-hex), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| parse_u64_setting(&v))
        .unwrap_or(default)
}

fn parse_u64_setting(v: &str) -> Option<u64> {
    let v = v.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

// ------------------------------------------------------------------ CRC64

fn crc64_table() -> &'static [u64; 256] {
    static TABLE: OnceLock<[u64; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        // Jones polynomial 0xad93d23594c935a9, bit-reversed.
        const POLY: u64 = 0x95ac_9329_ac4b_c9b5;
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut crc = i as u64;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
            *slot = crc;
        }
        t
    })
}

/// Redis's CRC64 (`crc64(0, data, len)`): `crc64(b"123456789")` is
/// `0xe9c6d914c4b8d9ca`.
pub fn crc64(data: &[u8]) -> u64 {
    let t = crc64_table();
    data.iter().fold(0u64, |crc, &b| {
        t[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

// ---------------------------------------------------------- RDB encodings

/// The RDB version Redis 7.0 writes (and the highest `RESTORE` accepts).
pub const RDB_VERSION: u16 = 10;
/// Object type of a module value with opcode annotations (v2 framing).
pub const TYPE_MODULE_2: u8 = 7;
/// Object type of a pre-release module value (no opcodes, no EOF mark).
pub const TYPE_MODULE_1: u8 = 6;
/// RDB opcode of a module's aux data.
pub const OPCODE_MODULE_AUX: u8 = 0xf7;
/// Module value opcodes.
pub const OP_EOF: u64 = 0;
pub const OP_SINT: u64 = 1;
pub const OP_UINT: u64 = 2;
pub const OP_FLOAT: u64 = 3;
pub const OP_DOUBLE: u64 = 4;
pub const OP_STRING: u64 = 5;

/// `rdbSaveLen`: the shortest length encoding of `n`.
pub fn rdb_len(n: u64) -> Vec<u8> {
    if n < 64 {
        vec![n as u8]
    } else if n < 16384 {
        vec![0x40 | (n >> 8) as u8, n as u8]
    } else if n <= u64::from(u32::MAX) {
        let mut v = vec![0x80];
        v.extend_from_slice(&(n as u32).to_be_bytes());
        v
    } else {
        let mut v = vec![0x81];
        v.extend_from_slice(&n.to_be_bytes());
        v
    }
}

/// A valid but not minimal length encoding of `n` (Redis reads any of
/// them): 14-bit, 32-bit or 64-bit form, or the 6-bit "encoded value"
/// form that `rdbLoadLen` without an `isencoded` pointer reads as `n & 63`.
pub fn rdb_len_variant(n: u64, rng: &mut Rng) -> Vec<u8> {
    let mut forms: Vec<Vec<u8>> = vec![rdb_len(n)];
    if n < 16384 {
        forms.push(vec![0x40 | (n >> 8) as u8, n as u8]);
    }
    if n <= u64::from(u32::MAX) {
        let mut v = vec![0x80];
        v.extend_from_slice(&(n as u32).to_be_bytes());
        forms.push(v);
    }
    let mut v = vec![0x81];
    v.extend_from_slice(&n.to_be_bytes());
    forms.push(v);
    if n < 64 {
        forms.push(vec![0xc0 | n as u8]);
    }
    rng.pick(&forms).clone()
}

/// A plain (length-prefixed) RDB string.
pub fn rdb_str(b: &[u8]) -> Vec<u8> {
    let mut v = rdb_len(b.len() as u64);
    v.extend_from_slice(b);
    v
}

/// The integer encoding Redis uses for short decimal strings
/// (`rdbTryIntegerEncoding`), when `b` is one.
pub fn rdb_int_str(b: &[u8]) -> Option<Vec<u8>> {
    if b.is_empty() || b.len() > 11 {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    let v: i64 = s.parse().ok()?;
    if v.to_string() != s {
        return None;
    }
    if let Ok(x) = i8::try_from(v) {
        Some(vec![0xc0, x as u8])
    } else if let Ok(x) = i16::try_from(v) {
        let mut o = vec![0xc1];
        o.extend_from_slice(&x.to_le_bytes());
        Some(o)
    } else if let Ok(x) = i32::try_from(v) {
        let mut o = vec![0xc2];
        o.extend_from_slice(&x.to_le_bytes());
        Some(o)
    } else {
        None
    }
}

/// An LZF "compressed" string made of literal runs only (valid LZF).
pub fn rdb_lzf_literal_str(b: &[u8]) -> Vec<u8> {
    let mut c = Vec::new();
    for chunk in b.chunks(32) {
        c.push((chunk.len() - 1) as u8);
        c.extend_from_slice(chunk);
    }
    let mut v = vec![0xc3];
    v.extend(rdb_len(c.len() as u64));
    v.extend(rdb_len(b.len() as u64));
    v.extend(c);
    v
}

/// The 64-bit id of a module type: nine name characters of 6 bits each,
/// then the 10-bit encoding version.
pub fn module_type_id(name: &str, encver: u64) -> u64 {
    const CHARSET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = 0u64;
    for c in name.bytes() {
        let pos = CHARSET.iter().position(|&x| x == c).unwrap_or(0) as u64;
        id = (id << 6) | pos;
    }
    (id << 10) | (encver & 1023)
}

/// The first release's encoding version of `fencelock` values (one
/// exclusive holder: owner, holds, token, deadline). Still loaded.
pub const ENCVER_V1: u64 = 1;
/// The current encoding version of `fencelock` values (see
/// [`LockFields`]).
pub const ENCVER: u64 = 2;

/// The id of the `fencelock` type, encoding version 1 (the first
/// release's; what [`ModuleValue::lock`] writes).
pub fn fencelock_type_id() -> u64 {
    module_type_id("fencelock", ENCVER_V1)
}

/// The id of the `fencelock` type with encoding version `encver`.
pub fn fencelock_type_id_v(encver: u64) -> u64 {
    module_type_id("fencelock", encver)
}

/// A `RESTORE` payload: `body` (type byte and value), the RDB version and
/// the CRC64 of both, little-endian.
pub fn dump_payload(body: &[u8], rdb_version: u16) -> Vec<u8> {
    let mut p = body.to_vec();
    p.extend_from_slice(&rdb_version.to_le_bytes());
    let crc = crc64(&p);
    p.extend_from_slice(&crc.to_le_bytes());
    p
}

/// Splits a payload into its body and RDB version (None when shorter than
/// the 10-byte trailer).
pub fn split_payload(p: &[u8]) -> Option<(&[u8], u16)> {
    if p.len() < 10 {
        return None;
    }
    let (body, trailer) = p.split_at(p.len() - 10);
    Some((body, u16::from_le_bytes([trailer[0], trailer[1]])))
}

/// Rewrites the trailing 8-byte CRC64 of an RDB file (or payload) so it
/// matches everything before it.
pub fn fix_trailing_crc(data: &mut [u8]) {
    if data.len() < 8 {
        return;
    }
    let n = data.len() - 8;
    let crc = crc64(&data[..n]);
    data[n..].copy_from_slice(&crc.to_le_bytes());
}

/// A reader that mirrors how Redis 7.0 reads RDB data (`rioRead`,
/// `rdbLoadLen`, `rdbGenericLoadStringObject`): every short read, unknown
/// encoding or failed allocation is an error.
pub struct RdbReader<'a> {
    data: &'a [u8],
    pub pos: usize,
}

/// Lengths above this cannot be allocated; Redis's `ztrymalloc` fails and
/// the read is an error, exactly like a short read.
const ALLOC_LIMIT: u64 = 1 << 40;

impl<'a> RdbReader<'a> {
    pub fn new(data: &'a [u8]) -> RdbReader<'a> {
        RdbReader { data, pos: 0 }
    }

    pub fn at(data: &'a [u8], pos: usize) -> RdbReader<'a> {
        RdbReader { data, pos }
    }

    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        if n > self.remaining() as u64 {
            return None;
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Some(s)
    }

    pub fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// `rdbLoadLenByRef`: the value and whether it was the 6-bit
    /// "encoded value" form.
    pub fn read_len_enc(&mut self) -> Option<(u64, bool)> {
        let b = self.byte()?;
        match b >> 6 {
            3 => Some((u64::from(b & 0x3f), true)),
            0 => Some((u64::from(b & 0x3f), false)),
            1 => {
                let b2 = self.byte()?;
                Some(((u64::from(b & 0x3f) << 8) | u64::from(b2), false))
            }
            _ if b == 0x80 => {
                let s = self.take(4)?;
                Some((
                    u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
                    false,
                ))
            }
            _ if b == 0x81 => {
                let s = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                Some((u64::from_be_bytes(a), false))
            }
            _ => None,
        }
    }

    /// `rdbLoadLenByRef` with no `isencoded` (opcodes, unsigned values).
    pub fn read_len(&mut self) -> Option<u64> {
        self.read_len_enc().map(|(v, _)| v)
    }

    /// `rdbLoadLen` with no `isencoded`: as `len`, but `u64::MAX` is the
    /// error value `RDB_LENERR`.
    pub fn read_len_checked(&mut self) -> Option<u64> {
        self.read_len().filter(|&v| v != u64::MAX)
    }

    /// `rdbGenericLoadStringObject` (plain): the decoded bytes.
    pub fn string(&mut self) -> Option<Vec<u8>> {
        let (len, encoded) = self.read_len_enc()?;
        if !encoded {
            if len == u64::MAX || len > ALLOC_LIMIT {
                return None;
            }
            return self.take(len).map(<[u8]>::to_vec);
        }
        match len {
            0 => self.take(1).map(|s| (s[0] as i8).to_string().into_bytes()),
            1 => self
                .take(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]).to_string().into_bytes()),
            2 => self.take(4).map(|s| {
                i32::from_le_bytes([s[0], s[1], s[2], s[3]])
                    .to_string()
                    .into_bytes()
            }),
            3 => {
                let clen = self.read_len_checked()?;
                let len = self.read_len_checked()?;
                if clen > ALLOC_LIMIT || len > ALLOC_LIMIT {
                    return None;
                }
                let c = self.take(clen)?;
                // Redis checks `lzf_decompress(...) != len`, and liblzf
                // returns 0 on errors: with len 0 any input "succeeds".
                match lzf_decompress(c, len as usize) {
                    Some(out) if out.len() as u64 == len => Some(out),
                    None if len == 0 => Some(Vec::new()),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The byte span of one string without decoding it.
    pub fn skip_string(&mut self) -> Option<()> {
        self.string().map(|_| ())
    }
}

/// liblzf's `lzf_decompress` with its input and output checks: None where
/// it returns 0 with an error; the output may be shorter than `out_len`.
pub fn lzf_decompress(input: &[u8], out_len: usize) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(out_len.min(1 << 20));
    let mut ip = 0usize;
    while ip < input.len() {
        let ctrl = usize::from(input[ip]);
        ip += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            if out.len() + run > out_len || ip + run > input.len() {
                return None;
            }
            out.extend_from_slice(&input[ip..ip + run]);
            ip += run;
        } else {
            let mut len = ctrl >> 5;
            let back = (ctrl & 0x1f) << 8;
            if len == 7 {
                let b = usize::from(*input.get(ip)?);
                len += b;
                ip += 1;
            }
            let b = usize::from(*input.get(ip)?);
            ip += 1;
            if out.len() + len + 2 > out_len {
                return None;
            }
            let dist = back + b + 1;
            if dist > out.len() {
                return None;
            }
            let start = out.len() - dist;
            for k in 0..len + 2 {
                let byte = out[start + k];
                out.push(byte);
            }
        }
    }
    Some(out)
}

/// One annotated field of a module value: its opcode and the encoded bytes
/// that follow the opcode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawField {
    pub opcode: u64,
    pub value: Vec<u8>,
}

impl RawField {
    pub fn uint(v: u64) -> RawField {
        RawField {
            opcode: OP_UINT,
            value: rdb_len(v),
        }
    }
    pub fn string(b: &[u8]) -> RawField {
        RawField {
            opcode: OP_STRING,
            value: rdb_str(b),
        }
    }
}

/// A module value (v2 framing) taken apart: the module id and the fields
/// up to the EOF marker; `tail` is whatever followed the marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleValue {
    pub type_byte: u8,
    pub module_id: Vec<u8>,
    pub fields: Vec<RawField>,
    pub eof: Vec<u8>,
    pub tail: Vec<u8>,
}

impl ModuleValue {
    /// A `fencelock` value of encoding version 1 (the first release's:
    /// one exclusive holder) with these fields, canonically encoded.
    pub fn lock(owner: &[u8], holds: u64, token: u64, deadline_ms: u64) -> ModuleValue {
        ModuleValue {
            type_byte: TYPE_MODULE_2,
            module_id: rdb_len(fencelock_type_id()),
            fields: vec![
                RawField::string(owner),
                RawField::uint(holds),
                RawField::uint(token),
                RawField::uint(deadline_ms),
            ],
            eof: vec![0],
            tail: Vec::new(),
        }
    }

    /// A `fencelock` value of the current encoding (version 2),
    /// canonically encoded.
    pub fn lock_v2(lock: &LockFields) -> ModuleValue {
        ModuleValue {
            type_byte: TYPE_MODULE_2,
            module_id: rdb_len(fencelock_type_id_v(ENCVER)),
            fields: lock.raw_fields(),
            eof: vec![0],
            tail: Vec::new(),
        }
    }

    /// The encoding version named by the module id (None when the id does
    /// not parse).
    pub fn encver(&self) -> Option<u64> {
        RdbReader::new(&self.module_id)
            .read_len()
            .map(|id| id & 1023)
    }

    /// Parses a module value starting at the module id (`data[pos..]`);
    /// returns it (with `type_byte` 7) and the position after the EOF mark.
    pub fn parse_value_at(data: &[u8], pos: usize) -> Option<(ModuleValue, usize)> {
        let mut r = RdbReader::at(data, pos);
        let start = r.pos;
        r.read_len()?;
        let module_id = data[start..r.pos].to_vec();
        let mut fields = Vec::new();
        loop {
            let op_start = r.pos;
            let opcode = r.read_len()?;
            if opcode == OP_EOF {
                let eof = data[op_start..r.pos].to_vec();
                return Some((
                    ModuleValue {
                        type_byte: TYPE_MODULE_2,
                        module_id,
                        fields,
                        eof,
                        tail: Vec::new(),
                    },
                    r.pos,
                ));
            }
            let v_start = r.pos;
            match opcode {
                OP_SINT | OP_UINT => {
                    r.read_len()?;
                }
                OP_FLOAT => {
                    r.take(4)?;
                }
                OP_DOUBLE => {
                    r.take(8)?;
                }
                OP_STRING => r.skip_string()?,
                _ => return None,
            }
            fields.push(RawField {
                opcode,
                value: data[v_start..r.pos].to_vec(),
            });
        }
    }

    /// Parses a `DUMP` payload of a module value (type byte 7).
    pub fn parse_payload(p: &[u8]) -> Option<ModuleValue> {
        let (body, _) = split_payload(p)?;
        if body.first() != Some(&TYPE_MODULE_2) {
            return None;
        }
        let (mut v, end) = ModuleValue::parse_value_at(body, 1)?;
        v.tail = body[end..].to_vec();
        Some(v)
    }

    /// The value without the type byte (as it follows the key in an RDB file).
    pub fn encode_value(&self) -> Vec<u8> {
        let mut out = self.module_id.clone();
        for f in &self.fields {
            out.extend(rdb_len(f.opcode));
            out.extend_from_slice(&f.value);
        }
        out.extend_from_slice(&self.eof);
        out.extend_from_slice(&self.tail);
        out
    }

    /// Type byte and value: a payload body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.type_byte];
        out.extend(self.encode_value());
        out
    }

    /// A complete `RESTORE` payload (RDB version 10, correct CRC).
    pub fn payload(&self) -> Vec<u8> {
        dump_payload(&self.encode(), RDB_VERSION)
    }
}

/// The fields of one holder in an encoding-2 value, in their order.
pub const H_OWNER: usize = 0;
pub const H_EXCLUSIVE: usize = 1;
pub const H_SHARED: usize = 2;
pub const H_TOKEN: usize = 3;
pub const H_DEADLINE: usize = 4;
pub const H_ID: usize = 5;
pub const H_REPLY: usize = 6;
/// Fields per holder in an encoding-2 value.
pub const HOLDER_FIELDS: usize = 7;
/// Fields before the first holder: the limit and the holder count.
pub const V2_HEADER_FIELDS: usize = 2;

/// The index among a version-2 value's fields of member `m` (`H_*`) of
/// holder `h`.
pub fn holder_field(h: usize, m: usize) -> usize {
    V2_HEADER_FIELDS + h * HOLDER_FIELDS + m
}

/// The largest semaphore, and the most holders a value may have.
pub const MAX_PERMITS: u64 = 1_000_000;
/// The largest hold count, permit count and remembered reply: 2^63-1.
pub const MAX_HOLDS: u64 = i64::MAX as u64;
/// The longest remembered request id (`ID request-id`), in bytes.
pub const MAX_REQUEST_ID: usize = 64;

/// One holder as a version-2 value carries it (a version-1 value is one
/// exclusive holder: `shared` 0, no remembered request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderFields {
    pub owner: Vec<u8>,
    /// Exclusive holds (read/write lock only).
    pub exclusive: u64,
    /// Shared holds, or permits of a semaphore.
    pub shared: u64,
    pub token: u64,
    pub deadline_ms: u64,
    /// The owner's last request id (empty: none) and its reply (0: none).
    pub id: Vec<u8>,
    pub reply: u64,
}

impl HolderFields {
    /// A holder with no remembered request.
    pub fn new(owner: &[u8], exclusive: u64, shared: u64, token: u64, deadline_ms: u64) -> Self {
        HolderFields {
            owner: owner.to_vec(),
            exclusive,
            shared,
            token,
            deadline_ms,
            id: Vec::new(),
            reply: 0,
        }
    }

    /// What `LOCK.INFO` shows as its `holds` (or `permits`): all it holds,
    /// capped at 2^63-1.
    pub fn shown_holds(&self) -> i64 {
        self.exclusive.saturating_add(self.shared).min(MAX_HOLDS) as i64
    }
}

/// A lock value as the module reads it: the limit (0: a read/write lock,
/// else a semaphore of that many permits) and its holders, oldest grant
/// first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockFields {
    pub limit: u64,
    pub holders: Vec<HolderFields>,
}

impl LockFields {
    /// One exclusive holder (what a version-1 value holds).
    pub fn exclusive(owner: &[u8], holds: u64, token: u64, deadline_ms: u64) -> LockFields {
        LockFields {
            limit: 0,
            holders: vec![HolderFields::new(owner, holds, 0, token, deadline_ms)],
        }
    }

    /// The fields of its version-2 encoding (canonical encodings, the
    /// holder count the number of holders).
    pub fn raw_fields(&self) -> Vec<RawField> {
        let mut f = vec![
            RawField::uint(self.limit),
            RawField::uint(self.holders.len() as u64),
        ];
        for h in &self.holders {
            f.push(RawField::string(&h.owner));
            for v in [h.exclusive, h.shared, h.token, h.deadline_ms] {
                f.push(RawField::uint(v));
            }
            f.push(RawField::string(&h.id));
            f.push(RawField::uint(h.reply));
        }
        f
    }

    /// Reads the fields of a well-formed version-2 value (opcodes as
    /// written, the holder count matching): None otherwise.
    pub fn from_value(v: &ModuleValue) -> Option<LockFields> {
        let uint = |f: &RawField| {
            (f.opcode == OP_UINT)
                .then(|| RdbReader::new(&f.value).read_len())
                .flatten()
        };
        let string = |f: &RawField| {
            (f.opcode == OP_STRING)
                .then(|| RdbReader::new(&f.value).string())
                .flatten()
        };
        let (head, rest) = v.fields.split_at_checked(V2_HEADER_FIELDS)?;
        let limit = uint(&head[0])?;
        let n = uint(&head[1])?;
        if rest.len() as u64 != n.checked_mul(HOLDER_FIELDS as u64)? {
            return None;
        }
        let holders = rest
            .chunks(HOLDER_FIELDS)
            .map(|h| {
                Some(HolderFields {
                    owner: string(&h[H_OWNER])?,
                    exclusive: uint(&h[H_EXCLUSIVE])?,
                    shared: uint(&h[H_SHARED])?,
                    token: uint(&h[H_TOKEN])?,
                    deadline_ms: uint(&h[H_DEADLINE])?,
                    id: string(&h[H_ID])?,
                    reply: uint(&h[H_REPLY])?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(LockFields { limit, holders })
    }

    /// `LOCK.INFO`'s `mode` for this value.
    pub fn mode(&self) -> InfoMode {
        if self.limit > 0 {
            InfoMode::Semaphore
        } else if self.holders.first().is_some_and(|h| h.exclusive > 0) {
            InfoMode::Exclusive
        } else {
            InfoMode::Shared
        }
    }

    /// The highest token it holds.
    pub fn max_token(&self) -> u64 {
        self.holders.iter().map(|h| h.token).max().unwrap_or(0)
    }
}

/// What the rules say `RESTORE` must do with a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A valid lock: it must be stored (holders whose deadline has passed
    /// are expired at once).
    Accept(LockFields),
    /// It must be refused with an error reply, storing nothing.
    Refuse(String),
    /// Either is fine (not a lock value, or a deadline within minutes of
    /// the limit), as long as whatever is stored obeys the rules.
    Either(String),
}

/// How Redis 7.0 reads a `RESTORE` payload (version, CRC, type byte,
/// module id, the module's reads of encoding 1 or 2, the EOF mark), then
/// the module rules: the reference the fuzzer compares the server with.
/// `now_ms` is the time the payload is sent.
pub fn restore_verdict(p: &[u8], now_ms: u64) -> Verdict {
    let Some((_, rdbver)) = split_payload(p) else {
        return Verdict::Refuse("shorter than the 10-byte trailer".into());
    };
    if rdbver > RDB_VERSION {
        return Verdict::Refuse(format!("RDB version {rdbver}"));
    }
    let n = p.len() - 8;
    if crc64(&p[..n]).to_le_bytes() != p[n..] {
        return Verdict::Refuse("CRC mismatch".into());
    }
    // Redis reads the whole payload, trailer included, as the value.
    let mut r = RdbReader::new(p);
    let Some(t) = r.byte() else {
        return Verdict::Refuse("empty".into());
    };
    let framed = match t {
        TYPE_MODULE_2 => true,
        TYPE_MODULE_1 => false,
        0..=5 | 9..=19 => return Verdict::Either(format!("Redis object type {t}")),
        _ => return Verdict::Refuse(format!("unknown object type {t}")),
    };
    let Some(id) = r.read_len() else {
        return Verdict::Refuse("bad module id".into());
    };
    if id >> 10 != fencelock_type_id() >> 10 {
        return Verdict::Refuse("another module type".into());
    }
    let encver = id & 1023;
    if encver != ENCVER_V1 && encver != ENCVER {
        return Verdict::Refuse(format!("encoding version {encver}"));
    }
    // Each read checks its opcode first when the value is framed (type 7).
    fn uint(r: &mut RdbReader, framed: bool) -> Option<u64> {
        if framed && r.read_len_checked()? != OP_UINT {
            return None;
        }
        r.read_len()
    }
    fn string(r: &mut RdbReader, framed: bool) -> Option<Vec<u8>> {
        if framed && r.read_len_checked()? != OP_STRING {
            return None;
        }
        r.string()
    }
    let read = |r: &mut RdbReader| -> Result<LockFields, String> {
        let malformed = || "malformed fields".to_string();
        let lock = if encver == ENCVER_V1 {
            let owner = string(r, framed).ok_or_else(malformed)?;
            let holds = uint(r, framed).ok_or_else(malformed)?;
            let token = uint(r, framed).ok_or_else(malformed)?;
            let deadline = uint(r, framed).ok_or_else(malformed)?;
            LockFields::exclusive(&owner, holds, token, deadline)
        } else {
            let limit = uint(r, framed).ok_or_else(malformed)?;
            if limit > u64::from(u32::MAX) {
                return Err(format!("limit {limit}"));
            }
            let n = uint(r, framed).ok_or_else(malformed)?;
            if n == 0 || n > MAX_PERMITS {
                return Err(format!("{n} holders"));
            }
            let mut holders = Vec::new();
            for _ in 0..n {
                let owner = string(r, framed).ok_or_else(malformed)?;
                let mut nums = [0u64; 4];
                for x in &mut nums {
                    *x = uint(r, framed).ok_or_else(malformed)?;
                }
                let id = string(r, framed).ok_or_else(malformed)?;
                let reply = uint(r, framed).ok_or_else(malformed)?;
                holders.push(HolderFields {
                    owner,
                    exclusive: nums[0],
                    shared: nums[1],
                    token: nums[2],
                    deadline_ms: nums[3],
                    id,
                    reply,
                });
            }
            LockFields { limit, holders }
        };
        if framed && r.read_len_checked() != Some(OP_EOF) {
            return Err("no EOF mark after the fields".into());
        }
        Ok(lock)
    };
    match read(&mut r) {
        Ok(f) => lock_rules(f, now_ms, MAX_TOKEN),
        Err(why) => Verdict::Refuse(why),
    }
}

/// The rules a loaded value must obey (docs/INTERFACE.md): per holder
/// owner 1..=1024 bytes, exclusive and shared holds each 0..=2^63-1 and
/// not both 0, token 1..=`max_token`, deadline 1..=now + 31 days (within
/// 10 minutes of that limit either answer is accepted), a remembered
/// request id 1..=64 bytes with a reply up to 2^63-1 (none: empty id and
/// reply 0); 1..=1000000 holders with distinct owners and tokens; a
/// read/write lock (limit 0) has an exclusive holder only alone; a
/// semaphore (limit 1..=1000000) has no exclusive holds, at least one permit
/// per holder and at most `limit` in all.
pub fn lock_rules(f: LockFields, now_ms: u64, max_token: u64) -> Verdict {
    let limit_ms = now_ms + MAX_DEADLINE_AHEAD_MS;
    let margin = 10 * 60_000;
    let mut maybe = None;
    if f.limit > MAX_PERMITS {
        return Verdict::Refuse(format!("limit {}", f.limit));
    }
    let n = f.holders.len();
    if n == 0 || n as u64 > MAX_PERMITS {
        return Verdict::Refuse(format!("{n} holders"));
    }
    for (i, h) in f.holders.iter().enumerate() {
        let refuse = |why: String| Verdict::Refuse(format!("holder {i}: {why}"));
        if h.owner.is_empty() || h.owner.len() > MAX_OWNER {
            return refuse(format!("owner of {} bytes", h.owner.len()));
        }
        let total = h.exclusive.checked_add(h.shared);
        if !total.is_some_and(|t| (1..=MAX_HOLDS).contains(&t)) {
            return refuse(format!("holds {} + {}", h.exclusive, h.shared));
        }
        if h.token == 0 || h.token > max_token {
            return refuse(format!("token {:#x}", h.token));
        }
        if h.deadline_ms == 0 || h.deadline_ms > limit_ms + margin {
            return refuse(format!("deadline {}", h.deadline_ms));
        }
        if h.deadline_ms + margin > limit_ms {
            maybe = Some("a deadline at the 31-day limit");
        }
        if h.id.is_empty() && h.reply != 0 {
            return refuse(format!(
                "a remembered reply {} without a request id",
                h.reply
            ));
        }
        if h.id.len() > MAX_REQUEST_ID || h.reply > MAX_HOLDS {
            return refuse(format!(
                "remembered request id of {} bytes, reply {}",
                h.id.len(),
                h.reply
            ));
        }
    }
    if f.limit > 0 {
        if f.holders.iter().any(|h| h.exclusive > 0 || h.shared == 0) {
            return Verdict::Refuse("a semaphore holder with exclusive holds or no permit".into());
        }
        let used: u128 = f.holders.iter().map(|h| u128::from(h.shared)).sum();
        if used > u128::from(f.limit) {
            return Verdict::Refuse(format!("{used} permits of {}", f.limit));
        }
    } else if n > 1 && f.holders.iter().any(|h| h.exclusive > 0) {
        return Verdict::Refuse("an exclusive holder beside others".into());
    }
    let mut owners: Vec<&[u8]> = f.holders.iter().map(|h| h.owner.as_slice()).collect();
    owners.sort_unstable();
    owners.dedup();
    let mut tokens: Vec<u64> = f.holders.iter().map(|h| h.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    if owners.len() != n || tokens.len() != n {
        return Verdict::Refuse("two holders with one owner or one token".into());
    }
    match maybe {
        Some(why) => Verdict::Either(why.into()),
        None => Verdict::Accept(f),
    }
}

/// Whether `info` (a `LOCK.INFO` reply parsed by [`parse_lock_info`]) shows
/// what `f` holds, as a server whose clock read between `t_before` and
/// `t_after` must show it: holders whose deadline has passed are never
/// shown (those within that window may or may not be), the others in
/// order with their holds (or permits), token and a ttl that fits the
/// deadline (1 s of slack either side); the kind, the limit and what is
/// available; no waiters.
pub fn info_matches(
    info: Option<&RawLockInfo>,
    f: &LockFields,
    t_before: u64,
    t_after: u64,
) -> Result<(), String> {
    let sure = |h: &HolderFields| h.deadline_ms > t_after;
    let hidden = |h: &HolderFields| h.deadline_ms <= t_before;
    let Some(i) = info else {
        return match f.holders.iter().find(|h| sure(h)) {
            Some(h) => Err(format!(
                "not shown, but holder {} has {} ms left",
                hex(&h.owner, 20),
                h.deadline_ms - t_after
            )),
            None => Ok(()),
        };
    };
    if i.mode != f.mode() {
        return Err(format!("mode {:?}, the value is {:?}", i.mode, f.mode()));
    }
    if i.waiters != 0 {
        return Err(format!("{} waiters", i.waiters));
    }
    let mut next = 0;
    for shown in &i.holders {
        loop {
            let Some(h) = f.holders.get(next) else {
                return Err(format!(
                    "shows holder {} that the value does not hold there (or in that order)",
                    hex(&shown.owner, 20)
                ));
            };
            next += 1;
            if h.owner == shown.owner && !hidden(h) {
                if (shown.holds, shown.token) != (h.shown_holds(), h.token as i64) {
                    return Err(format!(
                        "holder {}: holds {} token {:#x}, the value says {} and {:#x}",
                        hex(&h.owner, 20),
                        shown.holds,
                        shown.token,
                        h.shown_holds(),
                        h.token
                    ));
                }
                let hi = h.deadline_ms as i64 - t_before as i64 + 1000;
                let lo = h.deadline_ms as i64 - t_after as i64 - 1000;
                if shown.ttl > hi || shown.ttl < lo {
                    return Err(format!(
                        "holder {}: ttl {} outside [{lo}, {hi}] for its deadline",
                        hex(&h.owner, 20),
                        shown.ttl
                    ));
                }
                break;
            }
            if sure(h) {
                return Err(format!(
                    "holder {} ({} ms left) is not shown",
                    hex(&h.owner, 20),
                    h.deadline_ms - t_after
                ));
            }
        }
    }
    if let Some(h) = f.holders[next..].iter().find(|h| sure(h)) {
        return Err(format!("holder {} is not shown", hex(&h.owner, 20)));
    }
    if f.limit > 0 {
        let used: i64 = i.holders.iter().map(|h| h.holds).sum();
        if i.limit != Some(f.limit as i64) || i.available != Some(f.limit as i64 - used) {
            return Err(format!(
                "limit {:?} available {:?}, the value has limit {} and {used} permits shown",
                i.limit, i.available, f.limit
            ));
        }
    }
    Ok(())
}

/// Finds the value of a lock held by `owner` (any of its holders, in
/// either encoding) in an RDB file: the span from its module id to after
/// its EOF mark. `owner` must be stored as a plain string (at most 20 bytes
/// and not a decimal integer: then Redis neither compresses nor
/// integer-encodes it).
pub fn find_lock_value(rdb: &[u8], owner: &[u8]) -> Option<(usize, usize)> {
    let owner_field = RawField::string(owner);
    for encver in [ENCVER, ENCVER_V1] {
        let id = rdb_len(fencelock_type_id_v(encver));
        let mut from = 0;
        while let Some(at) = find(&rdb[from..], &id).map(|p| from + p) {
            from = at + 1;
            let Some((v, end)) = ModuleValue::parse_value_at(rdb, at) else {
                continue;
            };
            if v.fields.contains(&owner_field) {
                return Some((at, end));
            }
        }
    }
    None
}

/// The first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Violations grouped by kind (their first line up to a colon or a
/// parenthesis, digits collapsed) with counts and the first example of
/// each, most frequent first.
pub fn violation_kinds(violations: &[String]) -> String {
    let mut kinds: std::collections::BTreeMap<String, (usize, &str)> = Default::default();
    for v in violations {
        let first = v.lines().next().unwrap_or("");
        let cut = first.find([':', '(']).unwrap_or(first.len());
        let mut k = String::new();
        for ch in first[..cut].chars() {
            if ch.is_ascii_digit() {
                if !k.ends_with('N') {
                    k.push('N');
                }
            } else {
                k.push(ch);
            }
        }
        kinds.entry(k.trim().to_string()).or_insert((0, v)).0 += 1;
    }
    let mut v: Vec<(String, (usize, &str))> = kinds.into_iter().collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1 .0));
    v.iter()
        .map(|(k, (n, example))| {
            let mut e: String = example.chars().take(700).collect();
            if e.len() < example.len() {
                e.push('…');
            }
            format!(
                "  {n:>6} × {k}\n           e.g. {}",
                e.replace('\n', "\n           ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Hex of at most `max` bytes (and the total length), for failure messages.
pub fn hex(b: &[u8], max: usize) -> String {
    let mut s: String = b.iter().take(max).map(|x| format!("{x:02x}")).collect();
    if b.len() > max {
        s.push_str(&format!("…({} bytes)", b.len()));
    }
    s
}

// -------------------------------------------------------------- raw RESP2

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(b) => Some(b),
            Reply::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
    pub fn as_text(&self) -> String {
        self.as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }
}

/// Whether an error reply starts with an uppercase code (`ERR`,
/// `WRONGTYPE`, `UNBLOCKED`, ...) followed by a space or nothing.
pub fn has_error_code(msg: &str) -> bool {
    let code = msg.split(' ').next().unwrap_or("");
    !code.is_empty()
        && code.starts_with(|c: char| c.is_ascii_uppercase())
        && code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A command as binary arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmd(pub Vec<Vec<u8>>);

impl Cmd {
    pub fn new(name: &str) -> Cmd {
        Cmd(vec![name.as_bytes().to_vec()])
    }
    pub fn from_args(args: Vec<Vec<u8>>) -> Cmd {
        Cmd(args)
    }
    pub fn arg(mut self, a: impl AsRef<[u8]>) -> Cmd {
        self.0.push(a.as_ref().to_vec());
        self
    }
    /// The RESP encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("*{}\r\n", self.0.len()).into_bytes();
        for a in &self.0 {
            out.extend(format!("${}\r\n", a.len()).into_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }
    /// Printable form for failure messages (long arguments shortened).
    pub fn show(&self) -> String {
        self.0
            .iter()
            .map(|a| {
                if a.len() > 48 {
                    format!(
                        "{:?}…({} bytes)",
                        String::from_utf8_lossy(&a[..48]),
                        a.len()
                    )
                } else {
                    format!("{:?}", String::from_utf8_lossy(a))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A plain RESP2 connection: commands are queued and sent together
/// (pipelining); replies are read one by one, errors as values.
pub struct RawConn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    out: Vec<u8>,
}

impl RawConn {
    /// Connects to 127.0.0.1:`port` (60 s read timeout).
    pub fn connect(port: u16) -> io::Result<RawConn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_nodelay(true)?;
        Ok(RawConn {
            writer: s.try_clone()?,
            reader: BufReader::with_capacity(1 << 16, s),
            out: Vec::new(),
        })
    }

    /// Queues a command.
    pub fn queue(&mut self, c: &Cmd) {
        self.out.extend(c.encode());
    }

    /// Queues raw bytes (e.g. an inline command).
    pub fn queue_raw(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// Sends what is queued.
    pub fn flush(&mut self) -> io::Result<()> {
        let out = std::mem::take(&mut self.out);
        self.writer.write_all(&out)?;
        self.writer.flush()
    }

    /// Reads one reply.
    pub fn read(&mut self) -> io::Result<Reply> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad line"));
        }
        line.truncate(line.len() - 2);
        let (kind, rest) = line.split_first().ok_or_else(|| bad("empty line"))?;
        let text = String::from_utf8_lossy(rest).into_owned();
        let num = || text.parse::<i64>().map_err(|_| bad("bad number"));
        match *kind {
            b'+' => Ok(Reply::Status(text)),
            b'-' => Ok(Reply::Error(text)),
            b':' => Ok(Reply::Int(num()?)),
            b'$' => {
                let n = num()?;
                if n < 0 {
                    return Ok(Reply::Nil);
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.reader.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Ok(Reply::Bulk(buf))
            }
            b'*' => {
                let n = num()?;
                if n < 0 {
                    return Ok(Reply::Nil);
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.read()?);
                }
                Ok(Reply::Array(items))
            }
            _ => Err(bad("unknown reply type")),
        }
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, c: &Cmd) -> io::Result<Reply> {
        self.queue(c);
        self.flush()?;
        self.read()
    }

    /// Sends commands together and reads all their replies.
    pub fn pipeline(&mut self, cmds: &[Cmd]) -> io::Result<Vec<Reply>> {
        for c in cmds {
            self.queue(c);
        }
        self.flush()?;
        cmds.iter().map(|_| self.read()).collect()
    }

    /// Sets the read timeout.
    pub fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        self.writer.set_read_timeout(Some(d))
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// One integer field of an `INFO` reply.
pub fn info_value(info: &Reply, field: &str) -> Option<i64> {
    crate::info_field(&info.as_text(), field).and_then(|v| v.parse().ok())
}

/// `LOCK.INFO`'s `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoMode {
    Exclusive,
    Shared,
    Semaphore,
}

/// One holder shown by `LOCK.INFO`: `holds` is its `holds` (all it holds)
/// or, in a semaphore, its `permits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawHolderInfo {
    pub owner: Vec<u8>,
    pub holds: i64,
    pub ttl: i64,
    pub token: i64,
}

/// (owner, holds or permits, token) of each holder of a lock, in order.
pub type HolderSummary = Vec<(Vec<u8>, i64, i64)>;

/// `LOCK.INFO` under RESP2, any of its three shapes: an exclusive lock
/// (its one holder in `holders`), a shared one, a semaphore (`limit`,
/// `available`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawLockInfo {
    pub mode: InfoMode,
    pub limit: Option<i64>,
    pub available: Option<i64>,
    pub waiters: i64,
    pub holders: Vec<RawHolderInfo>,
}

impl RawLockInfo {
    /// The holder shown for `owner`.
    pub fn holder(&self, owner: &[u8]) -> Option<&RawHolderInfo> {
        self.holders.iter().find(|h| h.owner == owner)
    }

    /// The exclusive holder (None for the other kinds).
    pub fn exclusive(&self) -> Option<&RawHolderInfo> {
        match self.mode {
            InfoMode::Exclusive => self.holders.first(),
            _ => None,
        }
    }

    /// (owner, holds or permits, token) of every holder, in order: what
    /// stays the same while nobody acquires or releases.
    pub fn summary(&self) -> HolderSummary {
        self.holders
            .iter()
            .map(|h| (h.owner.clone(), h.holds, h.token))
            .collect()
    }
}

/// A RESP2 flat array of (field, value) pairs with exactly the field
/// names `names` (in any order): the values by name.
fn info_map<'a>(
    items: &'a [Reply],
    names: &[&str],
    what: &str,
) -> Result<std::collections::BTreeMap<String, &'a Reply>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(format!("{what}: an odd number of items"));
    }
    let map: std::collections::BTreeMap<String, &Reply> =
        items.chunks(2).map(|p| (p[0].as_text(), &p[1])).collect();
    let mut want: Vec<&str> = names.to_vec();
    want.sort_unstable();
    let got: Vec<&str> = map.keys().map(String::as_str).collect();
    if got != want || map.len() * 2 != items.len() {
        let order: Vec<String> = items.iter().step_by(2).map(Reply::as_text).collect();
        return Err(format!("{what}: fields {order:?}, expected {names:?}"));
    }
    Ok(map)
}

fn info_int(map: &std::collections::BTreeMap<String, &Reply>, name: &str) -> Result<i64, String> {
    map[name]
        .as_int()
        .ok_or_else(|| format!("LOCK.INFO field {name} is not an integer: {:?}", map[name]))
}

fn info_owner(map: &std::collections::BTreeMap<String, &Reply>) -> Result<Vec<u8>, String> {
    match map["owner"] {
        Reply::Bulk(b) => Ok(b.clone()),
        other => Err(format!("LOCK.INFO owner is not a bulk string: {other:?}")),
    }
}

/// Decodes a `LOCK.INFO` reply: Ok(None) for nil, Err for anything but
/// one of the documented shapes (docs/INTERFACE.md, "LOCK.INFO shapes").
pub fn parse_lock_info(r: &Reply) -> Result<Option<RawLockInfo>, String> {
    let items = match r {
        Reply::Nil => return Ok(None),
        Reply::Array(items) => items,
        other => return Err(format!("unexpected LOCK.INFO reply {other:?}")),
    };
    let mode = items
        .chunks(2)
        .find(|p| p[0].as_text() == "mode")
        .and_then(|p| p.get(1))
        .map(Reply::as_text)
        .unwrap_or_default();
    match mode.as_str() {
        "exclusive" => {
            let m = info_map(
                items,
                &["owner", "holds", "ttl", "token", "waiters", "mode"],
                "exclusive LOCK.INFO",
            )?;
            Ok(Some(RawLockInfo {
                mode: InfoMode::Exclusive,
                limit: None,
                available: None,
                waiters: info_int(&m, "waiters")?,
                holders: vec![RawHolderInfo {
                    owner: info_owner(&m)?,
                    holds: info_int(&m, "holds")?,
                    ttl: info_int(&m, "ttl")?,
                    token: info_int(&m, "token")?,
                }],
            }))
        }
        "shared" | "semaphore" => {
            let semaphore = mode == "semaphore";
            let (names, count): (&[&str], &str) = if semaphore {
                (
                    &["mode", "limit", "available", "waiters", "holders"],
                    "permits",
                )
            } else {
                (&["mode", "waiters", "holders"], "holds")
            };
            let m = info_map(items, names, &format!("{mode} LOCK.INFO"))?;
            let Reply::Array(list) = m["holders"] else {
                return Err(format!(
                    "LOCK.INFO holders is not an array: {:?}",
                    m["holders"]
                ));
            };
            let mut holders = Vec::new();
            for h in list {
                let Reply::Array(fields) = h else {
                    return Err(format!("a LOCK.INFO holder is not an array: {h:?}"));
                };
                let hm = info_map(fields, &["owner", count, "ttl", "token"], "a holder")?;
                holders.push(RawHolderInfo {
                    owner: info_owner(&hm)?,
                    holds: info_int(&hm, count)?,
                    ttl: info_int(&hm, "ttl")?,
                    token: info_int(&hm, "token")?,
                });
            }
            Ok(Some(RawLockInfo {
                mode: if semaphore {
                    InfoMode::Semaphore
                } else {
                    InfoMode::Shared
                },
                limit: if semaphore {
                    Some(info_int(&m, "limit")?)
                } else {
                    None
                },
                available: if semaphore {
                    Some(info_int(&m, "available")?)
                } else {
                    None
                },
                waiters: info_int(&m, "waiters")?,
                holders,
            }))
        }
        other => Err(format!("LOCK.INFO mode {other:?}: {r:?}")),
    }
}

/// Checks a lock shown by `LOCK.INFO` against the rules: per holder owner
/// 1..=1024 bytes, holds (permits) >= 1, ttl 1 ms ..= 31 days (a passed
/// lease is never shown), token 1..=`max_token` ([`MAX_TOKEN`] for a
/// restored lock, [`MAX_SERVER_TOKEN`] otherwise); distinct owners and
/// tokens; an exclusive lock shows one holder, the other kinds at least
/// one; a semaphore's limit is 1..=1000000, its permits at most the limit
/// and `available` the rest; waiters >= 0.
pub fn lock_info_violations(i: &RawLockInfo, max_token: u64) -> Vec<String> {
    let mut v = Vec::new();
    for h in &i.holders {
        let who = hex(&h.owner, 16);
        if h.owner.is_empty() || h.owner.len() > MAX_OWNER {
            v.push(format!("owner of {} bytes", h.owner.len()));
        }
        if h.holds < 1 {
            v.push(format!("{who}: holds {}", h.holds));
        }
        if h.ttl < 1 || h.ttl as u64 > MAX_DEADLINE_AHEAD_MS {
            v.push(format!("{who}: ttl {} ms", h.ttl));
        }
        if h.token < 1 || h.token as u64 > max_token {
            v.push(format!("{who}: token {:#x}", h.token));
        }
    }
    let n = i.holders.len();
    let mut owners: Vec<&[u8]> = i.holders.iter().map(|h| h.owner.as_slice()).collect();
    owners.sort_unstable();
    owners.dedup();
    let mut tokens: Vec<i64> = i.holders.iter().map(|h| h.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    if owners.len() != n || tokens.len() != n {
        v.push("two holders with one owner or one token".into());
    }
    match i.mode {
        InfoMode::Exclusive if n != 1 => v.push(format!("an exclusive lock with {n} holders")),
        InfoMode::Shared | InfoMode::Semaphore if n == 0 => v.push("no holders shown".into()),
        _ => {}
    }
    if i.mode == InfoMode::Semaphore {
        let used: i64 = i.holders.iter().map(|h| h.holds.max(0)).sum();
        match (i.limit, i.available) {
            (Some(l), Some(a)) if (1..=MAX_PERMITS as i64).contains(&l) && used <= l => {
                if a != l - used {
                    v.push(format!("available {a} of {l} with {used} permits held"));
                }
            }
            (l, a) => v.push(format!("limit {l:?} available {a:?}, {used} permits held")),
        }
    }
    if i.waiters < 0 {
        v.push(format!("waiters {}", i.waiters));
    }
    v
}

// ------------------------------------------------ documented error replies

/// A shared-only holder asking for the exclusive lock.
pub const ERR_UPGRADE: &str = "ERR the owner holds this lock shared: upgrading to exclusive would deadlock when two readers try; release the shared holds first";
/// A `LIMIT` request on a read/write lock.
pub const ERR_NOT_SEMAPHORE: &str =
    "WRONGTYPE the key holds a read/write lock, not a semaphore: acquire it without LIMIT";
/// `LOCK.ACQUIRE` options that do not go together, repeated or unknown.
pub const ERR_ACQUIRE_SYNTAX: &str = "ERR syntax error: options are SHARED, LIMIT permits [COUNT n], WAIT timeout-ms and ID request-id, each once, SHARED and LIMIT not together";
/// `LIMIT` out of 1 ..= 1000000 or not an integer.
pub const ERR_LIMIT: &str = "ERR LIMIT permits must be an integer from 1 to 1000000";
/// `COUNT` out of 1 ..= the LIMIT or not an integer.
pub const ERR_COUNT: &str = "ERR COUNT n must be an integer from 1 to the LIMIT";
/// `ID` with an empty or longer than 64-byte request id.
pub const ERR_ID: &str = "ERR ID request-id must be 1 to 64 bytes long";
/// The start of every refused `LOCK.APPLY` from the stream or the AOF.
pub const ERR_APPLY_REFUSED: &str = "ERR LOCK.APPLY refused";

/// Any request but `LIMIT <permits>` on a semaphore of `permits`.
pub fn err_semaphore(permits: u64) -> String {
    format!(
        "WRONGTYPE the key holds a semaphore of {permits} permits: acquire it with LIMIT {permits}"
    )
}

/// `RELEASE ... COUNT n` with `n` above the `held` holds or permits.
pub fn err_release_count(held: u64) -> String {
    format!("ERR COUNT is more than the owner holds ({held}); nothing changed")
}

// ------------------------------------------------- a server run to its end

/// Signs in a server log (or standard output) that it crashed instead of
/// refusing bad data the way Redis reports its own corrupt files.
pub fn crash_signs(text: &str) -> Vec<&'static str> {
    let lower = text.to_ascii_lowercase();
    [
        ("assertion", "ASSERTION"),
        ("panic", "panic"),
        ("guru meditation", "Guru Meditation"),
        ("bug report", "BUG REPORT"),
        ("read performed by module", "Read performed by module"),
        ("short read or eof", "short read or EOF (module abort)"),
        ("crashed by signal", "crashed by signal"),
        ("server crash", "server crash"),
    ]
    .iter()
    .filter(|(needle, _)| lower.contains(needle))
    .map(|(_, name)| *name)
    .collect()
}

/// The interesting part of a server log for a failure message: from just
/// before the first crash signature (the assertion, the panic message, the
/// start of the bug report) on, or else the end of the log.
pub fn log_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let first = lines.iter().position(|l| !crash_signs(l).is_empty());
    let (from, to) = match first {
        Some(i) => (i.saturating_sub(3), (i + 30).min(lines.len())),
        None => (lines.len().saturating_sub(40), lines.len()),
    };
    lines[from..to].join("\n")
}

/// How a server started on a prepared directory ended up.
#[derive(Debug)]
pub enum Outcome {
    /// It exited by itself.
    Exited(ExitStatus),
    /// It answers PING (loading done).
    Serving,
    /// Neither within the time allowed.
    Stuck,
}

/// A `redis-server` with the module started on a directory the caller
/// prepared (an RDB file, an AOF), standard output kept in `stdout.txt`
/// (where Redis's RDB checker writes its report), killed on drop.
pub struct Proc {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts it; `args` are config directives (`name`, `value`) that come
    /// after, and so override, the defaults (persistence off, debug
    /// commands on, log in `redis.log`).
    pub fn spawn(dir: &Path, args: &[(&str, &str)]) -> Proc {
        let port = crate::free_port();
        let mut a: Vec<String> = Vec::new();
        let defaults: [(&str, String); 11] = [
            ("port", port.to_string()),
            ("bind", "127.0.0.1".into()),
            ("dir", dir.display().to_string()),
            ("dbfilename", "dump.rdb".into()),
            ("save", String::new()),
            ("appendonly", "no".into()),
            ("enable-debug-command", "yes".into()),
            ("logfile", "redis.log".into()),
            ("daemonize", "no".into()),
            ("protected-mode", "no".into()),
            ("loadmodule", crate::module_path().display().to_string()),
        ];
        for (k, v) in defaults {
            if k != "loadmodule" && args.iter().any(|(n, _)| *n == k) {
                continue;
            }
            a.push(format!("--{k}"));
            a.push(v);
        }
        for (k, v) in args {
            a.push(format!("--{k}"));
            a.push(v.to_string());
        }
        let out = File::create(dir.join("stdout.txt")).expect("stdout file");
        let err = out.try_clone().expect("stderr file");
        let child = Command::new("redis-server")
            .args(&a)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn redis-server");
        Proc {
            port,
            dir: dir.to_path_buf(),
            child: Some(child),
            status: None,
        }
    }

    /// The exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.status = Some(st);
                }
            }
        }
        self.status
    }

    /// Whether it answers PING with PONG now.
    pub fn serving(&self) -> bool {
        let Ok(mut c) = RawConn::connect(self.port) else {
            return false;
        };
        let _ = c.set_read_timeout(Duration::from_secs(5));
        matches!(c.call(&Cmd::new("PING")), Ok(Reply::Status(s)) if s == "PONG")
    }

    /// Waits until it exits or serves.
    pub fn outcome(&mut self, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Outcome::Exited(st);
            }
            if self.serving() {
                return Outcome::Serving;
            }
            if Instant::now() > deadline {
                return Outcome::Stuck;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until it exits (None after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A connection (it must be serving).
    pub fn conn(&self) -> RawConn {
        RawConn::connect(self.port).expect("connect")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.txt")).unwrap_or_default()
    }

    /// Log and standard output, for failure messages (the last 4 KB of each).
    pub fn report(&self) -> String {
        let tail = |s: String| {
            let n = s.len().saturating_sub(4096);
            let mut start = n;
            while !s.is_char_boundary(start) {
                start += 1;
            }
            s[start..].to_string()
        };
        format!(
            "--- redis.log (excerpt)\n{}\n--- stdout (tail)\n{}",
            log_excerpt(&self.log()),
            tail(self.stdout())
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.status.is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// How long Redis's RDB checker may run after Redis reported a file as
/// corrupt before it counts as hung (it checks a small file in
/// milliseconds).
const CHECKER_GRACE: Duration = Duration::from_secs(10);

/// Checks that a server given a corrupt RDB file stopped the way Redis
/// stops on its own corrupt files: it reported the file (`rdbReportError`:
/// "Internal error in RDB reading ...", "Short read ...") and exited by
/// itself (no signal) with status 1 — or status 0 right after Redis's RDB
/// checker, which cannot see inside module values, printed "RDB looks OK"
/// — with no crash signature in its log.
///
/// One more ending is Redis's, not the module's: after reporting the file,
/// Redis 7.0 runs its RDB checker, whose `rdbLoadCheckModuleValue` loops
/// forever when a module value ends early at a field boundary (or holds an
/// unknown opcode). A server still running `CHECKER_GRACE` after its report,
/// without a crash signature, is accepted as that (and said so).
pub fn clean_corrupt_rdb_exit(p: &mut Proc, timeout: Duration) -> Result<String, String> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + timeout;
    let mut reported_at: Option<Instant> = None;
    let st = loop {
        if let Some(st) = p.try_status() {
            break st;
        }
        if p.serving() {
            return Err("it loaded the file and serves".into());
        }
        let log = p.log();
        if reported_at.is_none() && log.contains("Internal error in RDB reading") {
            reported_at = Some(Instant::now());
        }
        if let Some(at) = reported_at {
            if at.elapsed() > CHECKER_GRACE {
                let signs = crash_signs(&log);
                if !signs.is_empty() {
                    return Err(format!("crash signatures in the log: {signs:?}"));
                }
                return Ok("reported the file, then Redis's own RDB checker hung \
                           (Redis 7.0 rdbLoadCheckModuleValue loops at an early end of a module value)"
                    .into());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "neither exited, nor served, nor reported the file within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = p.log();
    let out = p.stdout();
    if let Some(sig) = st.signal() {
        return Err(format!("killed by signal {sig}"));
    }
    let signs = crash_signs(&format!("{log}\n{out}"));
    if !signs.is_empty() {
        return Err(format!("crash signatures in the log: {signs:?}"));
    }
    let reported = [
        "Internal error in RDB reading",
        "Short read",
        "Terminating server after rdb file reading failure",
        "Bad file format",
        "Wrong RDB checksum",
    ]
    .iter()
    .any(|m| log.contains(m) || out.contains(m));
    if !reported {
        return Err(format!("exited ({st}) without Redis's corrupt-file report"));
    }
    match st.code() {
        Some(1) => Ok("exit status 1".into()),
        Some(0) if out.contains("RDB looks OK") => {
            Ok("exit status 0 after the RDB checker found the file's structure sound".into())
        }
        other => Err(format!("unexpected exit status {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_matches_redis() {
        assert_eq!(crc64(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    #[test]
    fn len_encodings_round_trip() {
        let mut rng = Rng::new(1);
        for n in [
            0u64,
            1,
            63,
            64,
            16383,
            16384,
            u32::MAX as u64,
            1 << 40,
            u64::MAX,
        ] {
            for _ in 0..8 {
                let e = rdb_len_variant(n, &mut rng);
                let mut r = RdbReader::new(&e);
                let got = r.read_len().unwrap();
                assert_eq!(got, if e[0] >> 6 == 3 { n & 63 } else { n });
                assert_eq!(r.remaining(), 0);
            }
        }
    }

    #[test]
    fn strings_decode_like_redis() {
        let cases: [&[u8]; 5] = [b"x", b"12345", b"-7", b"4294967296", &[b'y'; 300]];
        for s in cases {
            assert_eq!(RdbReader::new(&rdb_str(s)).string().unwrap(), s);
            assert_eq!(RdbReader::new(&rdb_lzf_literal_str(s)).string().unwrap(), s);
            if let Some(e) = rdb_int_str(s) {
                assert_eq!(RdbReader::new(&e).string().unwrap(), s);
            }
        }
        assert!(rdb_int_str(b"007").is_none());
    }

    #[test]
    fn a_version_1_value_round_trips_through_the_verdict() {
        let now = now_ms();
        let v = ModuleValue::lock(b"me", 2, 77, now + 1000);
        let p = v.payload();
        assert_eq!(ModuleValue::parse_payload(&p), Some(v));
        assert_eq!(
            restore_verdict(&p, now),
            Verdict::Accept(LockFields::exclusive(b"me", 2, 77, now + 1000))
        );
        let bad = ModuleValue::lock(b"me", 2, MAX_TOKEN + 1, now + 1000).payload();
        assert!(matches!(restore_verdict(&bad, now), Verdict::Refuse(_)));
    }

    #[test]
    fn version_2_values_round_trip_and_break_their_rules() {
        let now = now_ms();
        let d = now + 60_000;
        let mut memo = HolderFields::new(b"w", 1, 2, 9, d);
        memo.id = b"req-1".to_vec();
        memo.reply = 9;
        let sem = LockFields {
            limit: 5,
            holders: vec![
                HolderFields::new(b"p1", 0, 2, 10, d),
                HolderFields::new(b"p2", 0, 3, 11, d),
            ],
        };
        for f in [
            LockFields {
                limit: 0,
                holders: vec![memo],
            },
            LockFields {
                limit: 0,
                holders: vec![
                    HolderFields::new(b"r1", 0, 1, 10, d),
                    HolderFields::new(b"r2", 0, 4, 12, d),
                ],
            },
            sem.clone(),
        ] {
            let v = ModuleValue::lock_v2(&f);
            assert_eq!(LockFields::from_value(&v).as_ref(), Some(&f));
            let p = v.payload();
            assert_eq!(ModuleValue::parse_payload(&p), Some(v));
            assert_eq!(restore_verdict(&p, now), Verdict::Accept(f));
        }
        let broken = |edit: &dyn Fn(&mut LockFields)| {
            let mut f = sem.clone();
            edit(&mut f);
            restore_verdict(&ModuleValue::lock_v2(&f).payload(), now)
        };
        let edits: [&dyn Fn(&mut LockFields); 8] = [
            &|f| f.holders[1].shared = 4,
            &|f| f.holders[1].owner = b"p1".to_vec(),
            &|f| f.holders[1].token = 10,
            &|f| f.holders[0].exclusive = 1,
            &|f| f.limit = MAX_PERMITS + 1,
            &|f| f.holders[0].reply = 3,
            &|f| f.holders[0].id = vec![b'i'; 65],
            &|f| f.holders.clear(),
        ];
        for edit in edits {
            assert!(matches!(broken(edit), Verdict::Refuse(_)));
        }
        // A declared holder count that does not match what follows.
        let mut v = ModuleValue::lock_v2(&sem);
        v.fields[1] = RawField::uint(3);
        assert!(matches!(
            restore_verdict(&v.payload(), now),
            Verdict::Refuse(_)
        ));
        v.fields[1] = RawField::uint(1);
        assert!(matches!(
            restore_verdict(&v.payload(), now),
            Verdict::Refuse(_)
        ));
        // Encoding 3 is refused, 1 with version-2 fields too.
        v = ModuleValue::lock_v2(&sem);
        for encver in [0, 1, 3] {
            v.module_id = rdb_len(fencelock_type_id_v(encver));
            assert!(matches!(
                restore_verdict(&v.payload(), now),
                Verdict::Refuse(_)
            ));
        }
    }

    #[test]
    fn lock_info_shapes_parse_and_match_their_value() {
        let s = |t: &str| Reply::Status(t.into());
        let b = |t: &[u8]| Reply::Bulk(t.to_vec());
        let exclusive = Reply::Array(vec![
            s("owner"),
            b(b"w"),
            s("holds"),
            Reply::Int(2),
            s("ttl"),
            Reply::Int(500),
            s("token"),
            Reply::Int(9),
            s("waiters"),
            Reply::Int(0),
            s("mode"),
            s("exclusive"),
        ]);
        let i = parse_lock_info(&exclusive).unwrap().unwrap();
        assert_eq!(i.exclusive().map(|h| h.holds), Some(2));
        assert!(lock_info_violations(&i, MAX_TOKEN).is_empty());
        let holder = |o: &[u8], n: i64, t: i64| {
            Reply::Array(vec![
                s("owner"),
                b(o),
                s("permits"),
                Reply::Int(n),
                s("ttl"),
                Reply::Int(500),
                s("token"),
                Reply::Int(t),
            ])
        };
        let sem = Reply::Array(vec![
            s("mode"),
            s("semaphore"),
            s("limit"),
            Reply::Int(5),
            s("available"),
            Reply::Int(1),
            s("waiters"),
            Reply::Int(0),
            s("holders"),
            Reply::Array(vec![holder(b"p1", 1, 10), holder(b"p2", 3, 11)]),
        ]);
        let i = parse_lock_info(&sem).unwrap().unwrap();
        assert_eq!(i.mode, InfoMode::Semaphore);
        assert!(lock_info_violations(&i, MAX_TOKEN).is_empty());
        let now = now_ms();
        let f = LockFields {
            limit: 5,
            holders: vec![
                HolderFields::new(b"gone", 0, 1, 8, now - 1),
                HolderFields::new(b"p1", 0, 1, 10, now + 500),
                HolderFields::new(b"p2", 0, 3, 11, now + 500),
            ],
        };
        assert_eq!(info_matches(Some(&i), &f, now, now), Ok(()));
        let mut other = f.clone();
        other.holders[2].shared = 2;
        assert!(info_matches(Some(&i), &other, now, now).is_err());
        assert!(info_matches(None, &f, now, now).is_err());
        let mut bad = i.clone();
        bad.available = Some(2);
        assert!(!lock_info_violations(&bad, MAX_TOKEN).is_empty());
        assert!(parse_lock_info(&Reply::Array(vec![s("mode"), s("other")])).is_err());
    }

    #[test]
    fn rng_is_reproducible() {
        let a: Vec<u64> = (0..4)
            .scan(Rng::new(9), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(Rng::new(9), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn error_codes() {
        assert!(has_error_code("ERR bad"));
        assert!(has_error_code("WRONGTYPE Operation"));
        assert!(has_error_code("UNBLOCKED client unblocked"));
        assert!(!has_error_code("bad thing"));
        assert!(!has_error_code(""));
        assert!(!has_error_code("Err x"));
    }
}
