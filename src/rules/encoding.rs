//! The encoding of a lock value in RDB files and `DUMP` payloads, and the
//! checks every value read from outside must pass. Plain Rust: the fields
//! come from any [`FieldSource`] (Redis's RDB reader in the module, a byte
//! slice in the fuzz target and the unit tests).
//!
//! Encoding version 1: owner (string), holds, token, deadline (Unix ms) as
//! unsigned integers. A newer version than this build knows is refused, so
//! an older build never misreads a newer file.

use super::lock::{FencingToken, InvalidLock, LoadedFrom, Lock, MAX_TOKEN};

/// Current encoding version of a lock value.
pub const ENCODING_VERSION: i32 = 1;

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

/// Reads one lock value and checks it (see [`Lock::from_loaded`]).
pub fn decode(
    src: &mut impl FieldSource,
    encver: i32,
    from: LoadedFrom,
    now_ms: u64,
) -> Result<Lock, DecodeError> {
    if encver != ENCODING_VERSION {
        return Err(DecodeError::UnknownVersion(encver));
    }
    let owner = src.bytes().ok_or(DecodeError::ShortRead)?;
    let holds = src.u64().ok_or(DecodeError::ShortRead)?;
    let token = src.u64().ok_or(DecodeError::ShortRead)?;
    let deadline_ms = src.u64().ok_or(DecodeError::ShortRead)?;
    Lock::from_loaded(from, &owner, holds, token, deadline_ms, now_ms).map_err(DecodeError::Invalid)
}

/// Reads the module-global aux field: the highest token the server that
/// wrote the file had issued. Any value up to [`MAX_TOKEN`] is accepted (a
/// generator that far along only stops issuing; it never repeats).
pub fn decode_aux(src: &mut impl FieldSource, encver: i32) -> Result<FencingToken, DecodeError> {
    if encver != ENCODING_VERSION {
        return Err(DecodeError::UnknownVersion(encver));
    }
    let last = src.u64().ok_or(DecodeError::ShortRead)?;
    if last > MAX_TOKEN {
        return Err(DecodeError::Invalid(InvalidLock::Token));
    }
    Ok(last)
}

/// The fields of a lock in the order [`decode`] reads them, as the module
/// writes them to RDB files.
pub fn fields(lock: &Lock) -> (&[u8], u64, u64, u64) {
    (&lock.owner, lock.holds, lock.token, lock.deadline_ms)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::lock::MAX_RESTORED_TOKEN;

    fn encode(owner: &[u8], holds: u64, token: u64, deadline: u64) -> Vec<u8> {
        let mut v = (owner.len() as u16).to_le_bytes().to_vec();
        v.extend_from_slice(owner);
        for n in [holds, token, deadline] {
            v.extend_from_slice(&n.to_le_bytes());
        }
        v
    }

    #[test]
    fn a_valid_value_round_trips() {
        let bytes = encode(b"owner", 3, 77, 5_000);
        let lock = decode(&mut SliceSource(&bytes), 1, LoadedFrom::Restore, 4_000);
        let read = lock.as_ref().map(fields);
        assert_eq!(read, Ok((&b"owner"[..], 3, 77, 5_000)));
    }

    #[test]
    fn unknown_versions_are_refused() {
        let bytes = encode(b"o", 1, 1, 1);
        for v in [0, 2, 1023, -1] {
            assert_eq!(
                decode(&mut SliceSource(&bytes), v, LoadedFrom::Restore, 0),
                Err(DecodeError::UnknownVersion(v))
            );
        }
    }

    #[test]
    fn every_truncation_is_a_short_read() {
        let bytes = encode(b"owner", 1, 2, 3);
        for n in 0..bytes.len() {
            assert_eq!(
                decode(&mut SliceSource(&bytes[..n]), 1, LoadedFrom::Restore, 0),
                Err(DecodeError::ShortRead),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn out_of_range_fields_are_refused() {
        let now = 1_000;
        let cases = [
            (encode(b"", 1, 1, 5), InvalidLock::Owner),
            (encode(&[1u8; 1025], 1, 1, 5), InvalidLock::Owner),
            (encode(b"o", 0, 1, 5), InvalidLock::Holds),
            (
                encode(b"o", 1, MAX_RESTORED_TOKEN + 1, 5),
                InvalidLock::Token,
            ),
            (encode(b"o", 1, i64::MAX as u64, 5), InvalidLock::Token),
            (encode(b"o", 1, 1, u64::MAX), InvalidLock::Deadline),
        ];
        for (bytes, why) in cases {
            assert_eq!(
                decode(&mut SliceSource(&bytes), 1, LoadedFrom::Restore, now),
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
        assert!(decode_aux(&mut SliceSource(&max), 2).is_err());
    }
}
