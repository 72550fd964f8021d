//! The argument parser: any argument vector gives a typed request or an
//! error reply that starts with `ERR`, never a panic; an accepted request
//! obeys the documented ranges.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/rules/args.rs"]
mod args;
#[allow(dead_code)]
#[path = "../../src/rules/lock.rs"]
mod lock;

use libfuzzer_sys::fuzz_target;

fn check_err(e: &args::ArgError) {
    if let args::ArgError::Invalid(msg) = e {
        assert!(msg.starts_with("ERR "), "{msg}");
    }
}

fuzz_target!(|data: &[u8]| {
    // Arguments are separated by 0xFF bytes (so no argument contains one;
    // the parser treats owners and keys as opaque bytes anyway).
    let argv: Vec<&[u8]> = data.split(|b| *b == 0xFF).collect();
    let owner_ok = |o: &[u8]| !o.is_empty() && o.len() <= lock::MAX_OWNER_LEN;
    match args::acquire(&argv) {
        Ok(a) => {
            assert!(owner_ok(a.owner));
            assert!((1..=lock::MAX_TTL_MS).contains(&a.ttl_ms));
            if let args::Wait::Ms(ms) = a.wait {
                assert!((1..=lock::MAX_TTL_MS).contains(&ms));
            }
        }
        Err(e) => check_err(&e),
    }
    match args::renew(&argv) {
        Ok(r) => assert!(owner_ok(r.owner) && (1..=lock::MAX_TTL_MS).contains(&r.ttl_ms)),
        Err(e) => check_err(&e),
    }
    match args::release(&argv) {
        Ok(r) => assert!(owner_ok(r.owner)),
        Err(e) => check_err(&e),
    }
    if let Err(e) = args::key_only(&argv) {
        check_err(&e);
    }
    match args::apply(&argv) {
        Ok(a) => {
            assert!(owner_ok(a.owner));
            assert!(a.holds >= 1 && a.token >= 1 && a.deadline_ms >= 1);
        }
        Err(e) => check_err(&e),
    }
});
