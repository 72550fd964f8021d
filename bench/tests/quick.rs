//! Smoke test of the benchmark: `fencelock-bench --quick` against a server
//! it starts itself must complete and produce sane figures (present,
//! positive where they count something, finite). No timing is asserted:
//! this checks the benchmark works, not how fast anything is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use serde_json::Value;

fn numbers(v: &Value, path: &str, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Number(n) => out.push((path.to_string(), n.as_f64().unwrap_or(f64::NAN))),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| numbers(x, &format!("{path}[{i}]"), out)),
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| numbers(x, &format!("{path}.{k}"), out)),
        _ => {}
    }
}

fn positive(rows: &Value, field: &str) {
    let rows = rows.as_array().expect("rows");
    assert!(!rows.is_empty(), "no rows for {field}");
    for r in rows {
        let v = field
            .split('.')
            .fold(r, |v, k| &v[k])
            .as_f64()
            .unwrap_or_else(|| panic!("{field} missing in {r}"));
        assert!(v > 0.0 && v.is_finite(), "{field} = {v} in {r}");
    }
}

#[test]
fn quick_bench_completes_with_sane_numbers() {
    testkit::module_path(); // a clear failure when the module is not built
    let out = tempfile::tempdir().expect("tempdir");
    let run = Command::new(env!("CARGO_BIN_EXE_fencelock-bench"))
        .arg("--quick")
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run fencelock-bench");
    assert!(
        run.status.success(),
        "fencelock-bench --quick failed: {}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("#### Targets"),
        "no Markdown table on stdout:\n{stdout}"
    );

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("results.json")).expect("results.json"),
    )
    .expect("valid JSON");
    let mut all = Vec::new();
    numbers(&json, "", &mut all);
    assert!(all.len() > 100, "too few figures: {}", all.len());
    for (path, v) in &all {
        assert!(v.is_finite(), "{path} = {v}");
        if !path.contains("lateness") {
            assert!(*v >= 0.0, "{path} = {v}");
        }
    }

    positive(&json["throughput"], "cycles_per_sec");
    positive(&json["cpu"], "usec_per_call");
    positive(&json["handoff"], "handoffs_per_sec");
    positive(&json["handoff"], "latency_us.p50");
    positive(&json["expiry"], "removed");
    positive(&json["scale"], "bytes_per_lock");
    positive(&json["scale"], "acquire_latency_us.p50");
    positive(&json["watchdog"], "renewals_per_sec");
    positive(&json["rwlock"], "reader_grants_per_sec");
    positive(&json["rwlock"], "writer_grants");
    positive(&json["rwlock"], "requests_per_grant");
    positive(&json["semaphore"], "grants_per_sec");
    positive(&json["semaphore"], "wait_ms.p50");
    positive(&json["semaphore"], "requests_per_grant");
    // The module and the Redisson-style baseline have the lock family.
    assert_eq!(json["rwlock"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["semaphore"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["semaphore_fifo"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["fifo"].as_array().map(Vec::len), Some(3));
    assert!(!json["targets"].as_array().expect("targets").is_empty());
    // Scenario 2 measures the module also with `ID request-id` on acquire
    // and release, and judges the cost against the module without.
    let cpu = json["cpu"].as_array().expect("cpu rows");
    for op in ["acquire", "renew", "release"] {
        for ids in [false, true] {
            let rows: Vec<&Value> = cpu
                .iter()
                .filter(|r| r["imp"] == "module" && r["request_ids"] == ids && r["op"] == op)
                .collect();
            assert_eq!(rows.len(), 1, "module {op}, request_ids {ids}: {cpu:?}");
            assert_eq!(
                rows[0]["rounds"].as_array().map(Vec::len),
                json["plan"]["cpu_rounds"].as_u64().map(|n| n as usize)
            );
        }
    }
    let id_target = json["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| {
            t["target"]
                .as_str()
                .is_some_and(|s| s.starts_with("ID request-id"))
        })
        .expect("the ID request-id target");
    assert!(id_target["met"].is_boolean(), "{id_target}");
    assert!(stdout.contains("fencelock + ID"), "{stdout}");

    let svg = std::fs::read_to_string(out.path().join("chart.svg")).expect("chart.svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(out.path().join("results.md").exists());
}
