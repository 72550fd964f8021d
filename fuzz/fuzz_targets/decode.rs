//! The value decoder: any bytes give a lock that obeys the command rules or
//! a refusal, never a panic; an accepted lock encodes back to itself.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/rules/encoding.rs"]
mod encoding;
#[allow(dead_code)]
#[path = "../../src/rules/lock.rs"]
mod lock;

use encoding::{FieldSource, SliceSource};
use libfuzzer_sys::fuzz_target;

const NOW_MS: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&version, body)) = data.split_first() else {
        return;
    };
    // The low bits pick the encoding version, the top bit the source.
    let encver = i32::from(version & 0x7f) - 8;
    let from = if version & 0x80 == 0 {
        lock::LoadedFrom::Restore
    } else {
        lock::LoadedFrom::Server
    };
    let Ok(lock) = encoding::decode(&mut SliceSource(body), encver, from, NOW_MS) else {
        let mut aux = SliceSource(body);
        if let Ok(last) = encoding::decode_aux(&mut aux, encver) {
            assert!(last <= lock::MAX_TOKEN);
        }
        return;
    };
    assert!(!lock.owner.is_empty() && lock.owner.len() <= lock::MAX_OWNER_LEN);
    assert!(lock.holds >= 1 && lock.holds <= i64::MAX as u64);
    assert!(lock.token >= 1 && lock.token <= from.max_token());
    assert!(lock.deadline_ms >= 1);
    assert!(lock.deadline_ms <= NOW_MS + lock::MAX_LOADED_DEADLINE_AHEAD_MS);
    // What was accepted reads back the same.
    let (owner, holds, token, deadline) = encoding::fields(&lock);
    let mut bytes = u16::try_from(owner.len()).unwrap().to_le_bytes().to_vec();
    bytes.extend_from_slice(owner);
    for n in [holds, token, deadline] {
        bytes.extend_from_slice(&n.to_le_bytes());
    }
    let mut again = SliceSource(&bytes);
    assert_eq!(encoding::decode(&mut again, encver, from, NOW_MS), Ok(lock));
    assert_eq!(again.u64(), None, "nothing left over");
});
