//! The value decoder: any bytes give a lock that obeys the rules of its kind
//! or a refusal, never a panic; an accepted lock encodes (in the current
//! encoding) back to itself, and the replicated effect of each of its
//! holders (`effect::state_of`) reads back as that holder.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/rules/clock.rs"]
mod clock;
#[allow(dead_code)]
#[path = "../../src/rules/effect.rs"]
mod effect;
#[allow(dead_code)]
#[path = "../../src/rules/encoding.rs"]
mod encoding;
#[allow(dead_code)]
#[path = "../../src/rules/lock.rs"]
mod lock;

use encoding::{FieldSource, SliceSource, VecSink};
use libfuzzer_sys::fuzz_target;

const NOW_MS: u64 = 1_800_000_000_000;
/// The wall clock never stepped (deadlines read as written).
const NO_STEP: clock::WallOffset = clock::WallOffset(0);

/// Every rule a loaded value must obey (docs/INTERFACE.md, "The lock
/// family" and "Loaded values"), checked independently of `Lock::check`.
fn assert_obeys_the_rules(l: &lock::Lock, from: lock::LoadedFrom) {
    let n = l.holders.len();
    assert!(n >= 1 && n as u64 <= lock::MAX_HOLDERS, "{n} holders");
    assert!(l.limit <= lock::MAX_PERMITS, "limit {}", l.limit);
    for h in &l.holders {
        assert!(!h.owner.is_empty() && h.owner.len() <= lock::MAX_OWNER_LEN);
        assert!(h.exclusive <= lock::MAX_HOLDS && h.shared <= lock::MAX_HOLDS);
        assert!(h.exclusive + h.shared >= 1, "a holder with nothing");
        assert!(h.token >= 1 && h.token <= from.max_token());
        assert!(h.deadline_ms >= 1);
        assert!(h.deadline_ms <= NOW_MS + lock::MAX_LOADED_DEADLINE_AHEAD_MS);
        if let Some(m) = &h.memo {
            assert!(!m.id.is_empty() && m.id.len() <= lock::MAX_REQUEST_ID_LEN);
            assert!(m.reply <= lock::MAX_HOLDS);
        }
    }
    if l.limit > 0 {
        assert!(l.holders.iter().all(|h| h.exclusive == 0 && h.shared >= 1));
        let used: u64 = l.holders.iter().map(|h| h.shared).sum();
        assert!(used <= u64::from(l.limit), "{used} permits of {}", l.limit);
    } else if l.holders.iter().any(|h| h.exclusive > 0) {
        assert_eq!(n, 1, "an exclusive holder beside others");
    }
    for (i, a) in l.holders.iter().enumerate() {
        for b in &l.holders[i + 1..] {
            assert_ne!(a.owner, b.owner, "two holders with one owner");
            assert_ne!(a.token, b.token, "two holders with one token");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&version, body)) = data.split_first() else {
        return;
    };
    // The low bits pick the encoding version (-8 ..= 119: mostly unknown
    // ones, 1 and 2 often enough), the top bit the source.
    let encver = match version & 0x7f {
        v @ 0..=15 => i32::from(v) - 8,
        v if v % 2 == 0 => encoding::ENCODING_VERSION,
        _ => encoding::ENCODING_V1,
    };
    let from = if version & 0x80 == 0 {
        lock::LoadedFrom::Restore
    } else {
        lock::LoadedFrom::Server
    };
    let Ok(l) = encoding::decode(&mut SliceSource(body), encver, from, NOW_MS, NO_STEP) else {
        if let Ok(last) = encoding::decode_aux(&mut SliceSource(body), encver) {
            assert!(last <= lock::MAX_TOKEN);
        }
        return;
    };
    assert!(
        encver == encoding::ENCODING_VERSION || encver == encoding::ENCODING_V1,
        "version {encver} decoded"
    );
    assert_obeys_the_rules(&l, from);
    if encver == encoding::ENCODING_V1 {
        let h = &l.holders[0];
        assert!(l.limit == 0 && l.holders.len() == 1 && h.shared == 0 && h.memo.is_none());
    }
    // Each holder's effect text reads back as that holder.
    for (i, h) in l.holders.iter().enumerate() {
        let text = effect::state_of(&l, i, NO_STEP).expect("a holder's state");
        let s = effect::parse_state(text.as_bytes()).expect("a state parses");
        assert_eq!(s.shape(), (l.limit, h.exclusive, h.shared), "holder {i}");
        assert_eq!((s.token, s.deadline_ms), (h.token, h.deadline_ms));
        assert_eq!(s.memo, h.memo.as_ref().map(|m| (m.reply, m.id.as_slice())));
        let kind = match (l.limit, l.holders.len()) {
            (0, 1) => effect::Kind::Only,
            (0, _) => effect::Kind::Shared,
            _ => effect::Kind::Permits,
        };
        assert_eq!(s.kind, kind);
    }
    // What was accepted reads back the same in the current encoding, and
    // takes exactly the bytes written.
    let mut sink = VecSink::default();
    encoding::encode(&l, &mut sink, NO_STEP);
    let mut again = SliceSource(&sink.0);
    assert_eq!(
        encoding::decode(&mut again, encoding::ENCODING_VERSION, from, NOW_MS, NO_STEP),
        Ok(l)
    );
    assert_eq!(again.u64(), None, "nothing left over");
    assert!(again.0.is_empty(), "nothing left over");
});
