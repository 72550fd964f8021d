//! The argument parser: any argument vector gives a typed request or an
//! error reply that starts with `ERR`, never a panic; an accepted request
//! obeys the documented ranges, and its canonical spelling parses back to
//! the same request.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/rules/args.rs"]
mod args;
#[allow(dead_code)]
#[path = "../../src/rules/effect.rs"]
mod effect;
#[allow(dead_code)]
#[path = "../../src/rules/lock.rs"]
mod lock;

use libfuzzer_sys::fuzz_target;

fn check_err(e: &args::ArgError) {
    if let args::ArgError::Invalid(msg) = e {
        assert!(msg.starts_with("ERR "), "{msg}");
    }
}

fn owner_ok(o: &[u8]) -> bool {
    !o.is_empty() && o.len() <= lock::MAX_OWNER_LEN
}

fn id_ok(id: Option<&[u8]>) -> bool {
    id.is_none_or(|i| !i.is_empty() && i.len() <= lock::MAX_REQUEST_ID_LEN)
}

/// `key owner ttl [SHARED | LIMIT p COUNT n] [WAIT t] [ID id]` for a parsed
/// acquire, the options in the order `order` picks.
fn acquire_argv(a: &args::Acquire<'_>, order: u8) -> Vec<Vec<u8>> {
    let mut opts: Vec<Vec<Vec<u8>>> = Vec::new();
    match a.want {
        lock::Want::Exclusive => {}
        lock::Want::Shared => opts.push(vec![b"shared".to_vec()]),
        lock::Want::Permits { limit, count } => {
            opts.push(vec![b"LIMIT".to_vec(), limit.to_string().into_bytes()]);
            opts.push(vec![b"Count".to_vec(), count.to_string().into_bytes()]);
        }
    }
    match a.wait {
        args::Wait::No => {}
        args::Wait::Forever => opts.push(vec![b"WAIT".to_vec(), b"0".to_vec()]),
        args::Wait::Ms(ms) => opts.push(vec![b"wait".to_vec(), ms.to_string().into_bytes()]),
    }
    if let Some(id) = a.id {
        opts.push(vec![b"ID".to_vec(), id.to_vec()]);
    }
    if order & 1 == 1 {
        opts.reverse();
    }
    if order & 2 == 2 && opts.len() > 1 {
        opts.rotate_left(1);
    }
    let mut argv = vec![
        b"k".to_vec(),
        a.owner.to_vec(),
        a.ttl_ms.to_string().into_bytes(),
    ];
    argv.extend(opts.into_iter().flatten());
    argv
}

fuzz_target!(|data: &[u8]| {
    // Arguments are separated by 0xFF bytes (so no argument contains one;
    // the parser treats owners and keys as opaque bytes anyway). The first
    // byte picks the option order of the canonical spelling.
    let Some((&order, data)) = data.split_first() else {
        return;
    };
    let argv: Vec<&[u8]> = data.split(|b| *b == 0xFF).collect();
    match args::acquire(&argv) {
        Ok(a) => {
            assert!(owner_ok(a.owner));
            assert!((1..=lock::MAX_TTL_MS).contains(&a.ttl_ms));
            if let args::Wait::Ms(ms) = a.wait {
                assert!((1..=lock::MAX_TTL_MS).contains(&ms));
            }
            if let lock::Want::Permits { limit, count } = a.want {
                assert!((1..=lock::MAX_PERMITS).contains(&limit));
                assert!(count >= 1 && count <= limit);
            }
            assert!(id_ok(a.id));
            let canonical = acquire_argv(&a, order);
            let refs: Vec<&[u8]> = canonical.iter().map(Vec::as_slice).collect();
            assert_eq!(args::acquire(&refs), Ok(a), "the canonical spelling");
        }
        Err(e) => check_err(&e),
    }
    match args::renew(&argv) {
        Ok(r) => assert!(owner_ok(r.owner) && (1..=lock::MAX_TTL_MS).contains(&r.ttl_ms)),
        Err(e) => check_err(&e),
    }
    match args::release(&argv) {
        Ok(r) => {
            assert!(owner_ok(r.owner));
            assert!((1..=lock::MAX_HOLDS).contains(&r.count));
            assert!(id_ok(r.id));
            let count = r.count.to_string().into_bytes();
            let mut canonical: Vec<&[u8]> = vec![b"k", r.owner, b"COUNT", &count];
            if let Some(id) = r.id {
                if order & 1 == 1 {
                    canonical.splice(2..2, [&b"id"[..], id]);
                } else {
                    canonical.extend([&b"ID"[..], id]);
                }
            }
            assert_eq!(args::release(&canonical), Ok(r), "the canonical spelling");
        }
        Err(e) => check_err(&e),
    }
    match args::force_release(&argv) {
        Ok(f) => assert!(f.owner.is_none_or(owner_ok)),
        Err(e) => check_err(&e),
    }
    if let Err(e) = args::key_only(&argv) {
        check_err(&e);
    }
    match args::apply(&argv) {
        Ok(args::Apply::Exclusive {
            owner,
            holds,
            token,
            deadline_ms,
        }) => {
            assert!(owner_ok(owner));
            for n in [holds, token, deadline_ms] {
                assert!((1..=lock::MAX_HOLDS).contains(&n));
            }
        }
        Ok(a @ args::Apply::Share { .. }) => {
            let args::Apply::Share {
                owner,
                only,
                limit,
                exclusive,
                shared,
                token,
                deadline_ms,
                memo,
            } = a
            else {
                unreachable!()
            };
            assert!(owner_ok(owner));
            assert!(limit <= lock::MAX_PERMITS);
            if limit > 0 {
                assert_eq!(exclusive, 0, "exclusive holds in a semaphore");
                assert!(!only, "a semaphore holder as the whole value");
            }
            assert!(exclusive <= lock::MAX_HOLDS && shared <= lock::MAX_HOLDS);
            assert!(exclusive + shared >= 1);
            for n in [token, deadline_ms] {
                assert!((1..=lock::MAX_HOLDS).contains(&n));
            }
            if let Some((id, reply)) = memo {
                assert!(id_ok(Some(id)) && reply <= lock::MAX_HOLDS);
            }
            // The canonical state text parses back to the same effect.
            let (kind, n, m) = match (limit, only) {
                (0, true) => ('x', exclusive, shared),
                (0, false) => ('s', exclusive, shared),
                (l, _) => ('p', shared, u64::from(l)),
            };
            let mut state = format!("{kind} {n} {m} {token} {deadline_ms}").into_bytes();
            if let Some((id, reply)) = memo {
                state.extend(format!(" {reply} ").bytes());
                state.extend_from_slice(id);
            }
            let canonical: Vec<&[u8]> = vec![b"k", owner, &state];
            assert_eq!(
                args::apply(&canonical),
                Ok(a),
                "the canonical state {:?}",
                String::from_utf8_lossy(&state)
            );
        }
        Ok(args::Apply::Drop { owner }) => assert!(owner_ok(owner)),
        Err(e) => check_err(&e),
    }
});
