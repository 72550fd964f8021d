//! The encoding of a lock value in RDB files and `DUMP` payloads, and the
//! checks every value read from outside must pass. Plain Rust: the fields
//! come from any [`FieldSource`] (Redis's RDB reader in the module, a byte
//! slice in the fuzz target and the unit tests).
//!
//! - Version 2 (written now): the limit (0: a read/write lock, else a
//!   semaphore of that many permits), the number of holders, then for each
//!   holder, oldest grant first: owner (string), exclusive holds, shared
//!   holds or permits, token, deadline (Unix ms) as unsigned integers, and
//!   the owner's last request id (string, empty for none) with its reply
//!   (unsigned, 0 for none).
//! - Version 1 (the first release, still read): one exclusive holder —
//!   owner, holds, token, deadline.
//!
//! A newer version than this build knows is refused, so an older build
//! never misreads a newer file.

use super::clock::WallOffset;
use super::lock::{FencingToken, Holder, InvalidLock, LoadedFrom, Lock, MAX_HOLDERS, MAX_TOKEN};

/// Current encoding version of a lock value.
pub const ENCODING_VERSION: i32 = 2;

/// The first release's encoding: one exclusive holder.
pub const ENCODING_V1: i32 = 1;

/// Where the fields of a value are read from. `None` is a short read.
pub trait FieldSource {
    /// The next unsigned integer field.
    fn u64(&mut self) -> Option<u64>;
    /// The next string field.
    fn bytes(&mut self) -> Option<Vec<u8>>;
}

/// Why a value could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// An encoding version this build does not know.
    UnknownVersion(i32),
    /// The input ended early (or Redis reported an I/O error).
    ShortRead,
    /// A field is out of the range the commands allow.
    Invalid(InvalidLock),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnknownVersion(v) => write!(
                f,
                "encoding version {v} is not known to this build (it reads {ENCODING_VERSION})"
            ),
            DecodeError::ShortRead => f.write_str("short read"),
            DecodeError::Invalid(why) => f.write_str(why.reason()),
        }
    }
}

/// Reads one lock value of encoding `encver` and checks it (see
/// [`Holder::from_loaded`] and [`Lock::check`]). The value's deadlines are
/// wall-clock times; `wall` turns them into lease-clock ones (`now_ms`).
pub fn decode(
    src: &mut impl FieldSource,
    encver: i32,
    from: LoadedFrom,
    now_ms: u64,
    wall: WallOffset,
) -> Result<Lock, DecodeError> {
    match encver {
        ENCODING_V1 => {
            let owner = src.bytes().ok_or(DecodeError::ShortRead)?;
            let holds = src.u64().ok_or(DecodeError::ShortRead)?;
            let token = src.u64().ok_or(DecodeError::ShortRead)?;
            let deadline_ms = wall.to_lease(src.u64().ok_or(DecodeError::ShortRead)?);
            Lock::from_loaded(from, &owner, holds, token, deadline_ms, now_ms)
                .map_err(DecodeError::Invalid)
        }
        ENCODING_VERSION => {
            let limit = src.u64().ok_or(DecodeError::ShortRead)?;
            let limit =
                u32::try_from(limit).map_err(|_| DecodeError::Invalid(InvalidLock::Limit))?;
            let n = src.u64().ok_or(DecodeError::ShortRead)?;
            if n == 0 || n > MAX_HOLDERS {
                return Err(DecodeError::Invalid(InvalidLock::HolderCount));
            }
            let mut lock = Lock {
                limit,
                holders: Default::default(),
            };
            for _ in 0..n {
                let owner = src.bytes().ok_or(DecodeError::ShortRead)?;
                let exclusive = src.u64().ok_or(DecodeError::ShortRead)?;
                let shared = src.u64().ok_or(DecodeError::ShortRead)?;
                let token = src.u64().ok_or(DecodeError::ShortRead)?;
                let deadline_ms = wall.to_lease(src.u64().ok_or(DecodeError::ShortRead)?);
                let id = src.bytes().ok_or(DecodeError::ShortRead)?;
                let reply = src.u64().ok_or(DecodeError::ShortRead)?;
                let memo = match (id.is_empty(), reply) {
                    (true, 0) => None,
                    (true, _) => return Err(DecodeError::Invalid(InvalidLock::RequestId)),
                    (false, reply) => Some((id.as_slice(), reply)),
                };
                let holder = Holder::from_loaded(
                    from,
                    &owner,
                    exclusive,
                    shared,
                    token,
                    deadline_ms,
                    memo,
                    now_ms,
                )
                .map_err(DecodeError::Invalid)?;
                lock.holders.push(holder);
            }
            lock.check().map_err(DecodeError::Invalid)?;
            Ok(lock)
        }
        other => Err(DecodeError::UnknownVersion(other)),
    }
}

/// Reads the module-global aux field: the highest token the server that
/// wrote the file had issued (the same in both encodings). Any value up to
/// [`MAX_TOKEN`] is accepted (a generator that far along only stops
/// issuing; it never repeats).
pub fn decode_aux(src: &mut impl FieldSource, encver: i32) -> Result<FencingToken, DecodeError> {
    if encver != ENCODING_VERSION && encver != ENCODING_V1 {
        return Err(DecodeError::UnknownVersion(encver));
    }
    let last = src.u64().ok_or(DecodeError::ShortRead)?;
    if last > MAX_TOKEN {
        return Err(DecodeError::Invalid(InvalidLock::Token));
    }
    Ok(last)
}

/// Where [`encode`] writes the fields of a value.
pub trait FieldSink {
    /// Writes an unsigned integer field.
    fn u64(&mut self, v: u64);
    /// Writes a string field.
    fn bytes(&mut self, v: &[u8]);
}

/// Writes a value in the current encoding, the fields in the order
/// [`decode`] reads them; `wall` turns the deadlines into wall-clock times.
pub fn encode(lock: &Lock, out: &mut impl FieldSink, wall: WallOffset) {
    out.u64(u64::from(lock.limit));
    out.u64(lock.holders.len() as u64);
    for h in &lock.holders {
        out.bytes(&h.owner);
        out.u64(h.exclusive);
        out.u64(h.shared);
        out.u64(h.token);
        out.u64(wall.to_wall(h.deadline_ms));
        match &h.memo {
            Some(m) => {
                out.bytes(&m.id);
                out.u64(m.reply);
            }
            None => {
                out.bytes(&[]);
                out.u64(0);
            }
        }
    }
}

/// A [`FieldSource`] over a byte slice, for the unit tests and the fuzz
/// target: an integer is 8 bytes little-endian, a string a 2-byte
/// little-endian length and its bytes.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))] // the module itself reads RDB streams
pub struct SliceSource<'a>(pub &'a [u8]);

#[cfg_attr(not(test), allow(dead_code))]
impl SliceSource<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
}

impl FieldSource for SliceSource<'_> {
    fn u64(&mut self) -> Option<u64> {
        let b: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len: [u8; 2] = self.take(2)?.try_into().ok()?;
        self.take(usize::from(u16::from_le_bytes(len)))
            .map(<[u8]>::to_vec)
    }
}

/// A [`FieldSink`] into a byte vector, in the layout [`SliceSource`] reads.
#[derive(Debug, Default)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct VecSink(pub Vec<u8>);

impl FieldSink for VecSink {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        let len = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0
            .extend_from_slice(v.get(..usize::from(len)).unwrap_or(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::lock::MAX_RESTORED_TOKEN;

    /// The wall clock never stepped.
    const NO_STEP: WallOffset = WallOffset(0);

    fn encode_v1(owner: &[u8], holds: u64, token: u64, deadline: u64) -> Vec<u8> {
        let mut v = (owner.len() as u16).to_le_bytes().to_vec();
        v.extend_from_slice(owner);
        for n in [holds, token, deadline] {
            v.extend_from_slice(&n.to_le_bytes());
        }
        v
    }

    #[test]
    fn a_valid_value_round_trips() {
        let bytes = encode_v1(b"owner", 3, 77, 5_000);
        let lock = decode(
            &mut SliceSource(&bytes),
            1,
            LoadedFrom::Restore,
            4_000,
            NO_STEP,
        );
        let read = lock.as_ref().map(|l| {
            let h = &l.holders[0];
            (
                l.limit,
                h.owner.as_slice(),
                h.exclusive,
                h.shared,
                h.token,
                h.deadline_ms,
            )
        });
        assert_eq!(read, Ok((0, &b"owner"[..], 3, 0, 77, 5_000)));
    }

    #[test]
    fn unknown_versions_are_refused() {
        let bytes = encode_v1(b"o", 1, 1, 1);
        for v in [0, 3, 1023, -1] {
            assert_eq!(
                decode(&mut SliceSource(&bytes), v, LoadedFrom::Restore, 0, NO_STEP),
                Err(DecodeError::UnknownVersion(v))
            );
        }
    }

    #[test]
    fn every_truncation_is_a_short_read() {
        let bytes = encode_v1(b"owner", 1, 2, 3);
        for n in 0..bytes.len() {
            assert_eq!(
                decode(
                    &mut SliceSource(&bytes[..n]),
                    1,
                    LoadedFrom::Restore,
                    0,
                    NO_STEP
                ),
                Err(DecodeError::ShortRead),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn out_of_range_fields_are_refused() {
        let now = 1_000;
        let cases = [
            (encode_v1(b"", 1, 1, 5), InvalidLock::Owner),
            (encode_v1(&[1u8; 1025], 1, 1, 5), InvalidLock::Owner),
            (encode_v1(b"o", 0, 1, 5), InvalidLock::Holds),
            (
                encode_v1(b"o", 1, MAX_RESTORED_TOKEN + 1, 5),
                InvalidLock::Token,
            ),
            (encode_v1(b"o", 1, i64::MAX as u64, 5), InvalidLock::Token),
            (encode_v1(b"o", 1, 1, u64::MAX), InvalidLock::Deadline),
        ];
        for (bytes, why) in cases {
            assert_eq!(
                decode(
                    &mut SliceSource(&bytes),
                    1,
                    LoadedFrom::Restore,
                    now,
                    NO_STEP
                ),
                Err(DecodeError::Invalid(why))
            );
        }
    }

    #[test]
    fn the_aux_field_accepts_any_issuable_token() {
        let max = MAX_TOKEN.to_le_bytes();
        assert_eq!(decode_aux(&mut SliceSource(&max), 1), Ok(MAX_TOKEN));
        let over = (MAX_TOKEN + 1).to_le_bytes();
        assert!(decode_aux(&mut SliceSource(&over), 1).is_err());
        assert_eq!(
            decode_aux(&mut SliceSource(&[1, 2]), 1),
            Err(DecodeError::ShortRead)
        );
        assert_eq!(decode_aux(&mut SliceSource(&max), 2), Ok(MAX_TOKEN));
        assert!(decode_aux(&mut SliceSource(&max), 3).is_err());
    }

    fn holder(owner: &[u8], e: u64, s: u64, token: u64, deadline: u64) -> Holder {
        Holder {
            owner: owner.into(),
            exclusive: e,
            shared: s,
            token,
            deadline_ms: deadline,
            memo: None,
        }
    }

    fn v2(limit: u32, holders: Vec<Holder>) -> Vec<u8> {
        let mut sink = VecSink::default();
        encode(
            &Lock {
                limit,
                holders: holders.into(),
            },
            &mut sink,
            NO_STEP,
        );
        sink.0
    }

    #[test]
    fn deadlines_are_written_and_read_on_the_wall_clock() {
        // The wall clock is an hour ahead of the lease clock: the file says
        // wall-clock time, and reading it back with the same offset gives
        // the lease-clock deadline again.
        let step = WallOffset(3_600_000);
        let lock = Lock {
            limit: 0,
            holders: vec![holder(b"a", 1, 0, 7, 50_000)].into(),
        };
        let mut sink = VecSink::default();
        encode(&lock, &mut sink, step);
        let on_disk = decode(
            &mut SliceSource(&sink.0),
            2,
            LoadedFrom::Restore,
            0,
            NO_STEP,
        );
        assert_eq!(
            on_disk.map(|l| l.holders.first().map(|h| h.deadline_ms)),
            Ok(Some(3_650_000))
        );
        let back = decode(&mut SliceSource(&sink.0), 2, LoadedFrom::Restore, 0, step);
        assert_eq!(
            back.map(|l| l.holders.first().map(|h| h.deadline_ms)),
            Ok(Some(50_000))
        );
    }

    #[test]
    fn every_kind_round_trips_in_version_2() {
        let values = [
            (0, vec![holder(b"w", 2, 1, 9, 5_000)]),
            (
                0,
                vec![
                    holder(b"r1", 0, 1, 9, 5_000),
                    holder(b"r2", 0, 4, 10, 6_000),
                ],
            ),
            (
                5,
                vec![
                    holder(b"p1", 0, 2, 9, 5_000),
                    holder(b"p2", 0, 3, 11, 7_000),
                ],
            ),
            (0, {
                let mut h = holder(b"w", 1, 0, 9, 5_000);
                h.remember(Some(b"request-7"), 9);
                vec![h]
            }),
        ];
        for (limit, holders) in values {
            let bytes = v2(limit, holders.clone());
            let lock = decode(
                &mut SliceSource(&bytes),
                2,
                LoadedFrom::Restore,
                4_000,
                NO_STEP,
            );
            assert_eq!(
                lock,
                Ok(Lock {
                    limit,
                    holders: holders.into()
                })
            );
        }
    }

    #[test]
    fn every_version_2_truncation_is_a_short_read() {
        let bytes = v2(3, vec![holder(b"a", 0, 1, 9, 5), holder(b"b", 0, 2, 10, 5)]);
        for n in 0..bytes.len() {
            assert_eq!(
                decode(
                    &mut SliceSource(&bytes[..n]),
                    2,
                    LoadedFrom::Restore,
                    0,
                    NO_STEP
                ),
                Err(DecodeError::ShortRead),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn version_2_values_that_break_their_kind_are_refused() {
        let now = 1_000;
        let cases = [
            (v2(0, vec![]), InvalidLock::HolderCount),
            (
                v2(0, vec![holder(b"a", 1, 0, 1, 5), holder(b"b", 0, 1, 2, 5)]),
                InvalidLock::Shape,
            ),
            (v2(2, vec![holder(b"a", 0, 3, 1, 5)]), InvalidLock::Shape),
            (v2(2, vec![holder(b"a", 1, 0, 1, 5)]), InvalidLock::Shape),
            (
                v2(2_000_000, vec![holder(b"a", 0, 1, 1, 5)]),
                InvalidLock::Limit,
            ),
            (
                v2(0, vec![holder(b"a", 0, 1, 1, 5), holder(b"a", 0, 1, 2, 5)]),
                InvalidLock::Duplicate,
            ),
            (v2(0, vec![holder(b"a", 0, 0, 1, 5)]), InvalidLock::Holds),
            (v2(0, vec![holder(b"a", 0, 1, 0, 5)]), InvalidLock::Token),
            (
                v2(0, vec![holder(b"a", 0, 1, 1, u64::MAX)]),
                InvalidLock::Deadline,
            ),
        ];
        // A remembered reply without its id.
        let mut no_id = v2(0, vec![holder(b"a", 0, 1, 1, 5)]);
        let n = no_id.len();
        no_id[n - 8] = 3;
        assert_eq!(
            decode(
                &mut SliceSource(&no_id),
                2,
                LoadedFrom::Restore,
                now,
                NO_STEP
            ),
            Err(DecodeError::Invalid(InvalidLock::RequestId))
        );
        for (bytes, why) in cases {
            assert_eq!(
                decode(
                    &mut SliceSource(&bytes),
                    2,
                    LoadedFrom::Restore,
                    now,
                    NO_STEP
                ),
                Err(DecodeError::Invalid(why))
            );
        }
        // A limit beyond 32 bits, and a holder count beyond the bound.
        let mut big = VecSink::default();
        big.u64(1 << 40);
        big.u64(1);
        assert_eq!(
            decode(
                &mut SliceSource(&big.0),
                2,
                LoadedFrom::Restore,
                now,
                NO_STEP
            ),
            Err(DecodeError::Invalid(InvalidLock::Limit))
        );
        let mut many = VecSink::default();
        many.u64(0);
        many.u64(MAX_HOLDERS + 1);
        assert_eq!(
            decode(
                &mut SliceSource(&many.0),
                2,
                LoadedFrom::Restore,
                now,
                NO_STEP
            ),
            Err(DecodeError::Invalid(InvalidLock::HolderCount))
        );
    }
}
