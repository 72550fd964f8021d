//! Command-line options.

use std::path::PathBuf;

use crate::error::{BenchError, Result};
use crate::locks::Impl;
use crate::scenarios::Scenario;

/// The usage text.
pub const USAGE: &str = "\
usage: fencelock-bench [--full | --quick] [options]

  --full           the sizes the issue asks for (default); writes bench/results/
                   and refreshes the Performance blocks of bench/README.md and README.md
  --quick          small sizes, well under a minute; writes target/bench-quick/
  --only LIST      scenarios to run, comma-separated (default: all):
                   throughput,cpu,handoff,expiry,scale,watchdog
  --impls LIST     implementations (default: all): module,setnx,redisson
  --out DIR        where results.md, results.json and chart.svg are written
  --connect PORT   use a running redis-server on 127.0.0.1:PORT (started by you,
                   e.g. under valgrind or perf, with the module loaded) instead
                   of starting one
  --seconds S      length of each timed run (throughput, hand-off, watchdog)
  --no-pin         do not pin redis-server to the first CPU and the load
                   generator to the last (pinning is the default on 2+ CPUs)
  -h, --help       this text

The module is taken from $FENCELOCK_MODULE or target/release/libfencelock.so
(build it with `cargo build --release -p fencelock`).";

/// Quick or full sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Small sizes, well under a minute (smoke test, `make bench-quick`).
    Quick,
    /// The sizes of the issue (`make bench`).
    Full,
}

/// Parsed options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Quick or full.
    pub mode: Mode,
    /// Scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// Implementations to measure.
    pub impls: Vec<Impl>,
    /// Output folder.
    pub out: PathBuf,
    /// True when `--out` was not given.
    pub default_out: bool,
    /// An already running server to use.
    pub connect: Option<u16>,
    /// Override of the timed runs' length.
    pub seconds: Option<f64>,
    /// Pin the server and the load generator to separate CPUs.
    pub pin: bool,
    /// `--help` was asked for.
    pub help: bool,
}

impl Options {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options> {
        let mut mode = Mode::Full;
        let mut scenarios = Scenario::ALL.to_vec();
        let mut impls = Impl::ALL.to_vec();
        let mut out = None;
        let mut connect = None;
        let mut seconds = None;
        let mut help = false;
        let mut pin = true;
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| BenchError::Usage(format!("{name} needs a value")))
            };
            match a.as_str() {
                "--full" => mode = Mode::Full,
                "--quick" => mode = Mode::Quick,
                "--only" => scenarios = parse_list(&value("--only")?, Scenario::parse, "scenario")?,
                "--impls" => impls = parse_list(&value("--impls")?, Impl::parse, "implementation")?,
                "--out" => out = Some(PathBuf::from(value("--out")?)),
                "--connect" => {
                    let v = value("--connect")?;
                    connect = Some(
                        v.parse()
                            .map_err(|_| BenchError::Usage(format!("bad port {v:?}")))?,
                    );
                }
                "--seconds" => {
                    let v = value("--seconds")?;
                    let s: f64 = v
                        .parse()
                        .map_err(|_| BenchError::Usage(format!("bad seconds {v:?}")))?;
                    if !(s.is_finite() && s > 0.0 && s <= 600.0) {
                        return Err(BenchError::Usage("--seconds must be in (0, 600]".into()));
                    }
                    seconds = Some(s);
                }
                "--no-pin" => pin = false,
                "-h" | "--help" => help = true,
                other => return Err(BenchError::Usage(format!("unknown argument {other:?}"))),
            }
        }
        let default_out = out.is_none();
        let out = out.unwrap_or_else(|| {
            let root = testkit::workspace_root();
            match mode {
                Mode::Full => root.join("bench").join("results"),
                Mode::Quick => root.join("target").join("bench-quick"),
            }
        });
        Ok(Options {
            mode,
            scenarios,
            impls,
            out,
            default_out,
            connect,
            seconds,
            pin,
            help,
        })
    }

    /// True for a complete full run written to the checked-in results: only
    /// such a run refreshes bench/README.md.
    pub fn is_reference_run(&self) -> bool {
        self.mode == Mode::Full
            && self.default_out
            && self.connect.is_none()
            && self.seconds.is_none()
            && self.pin
            && self.scenarios.len() == Scenario::ALL.len()
            && self.impls.len() == Impl::ALL.len()
    }
}

fn parse_list<T: PartialEq>(
    list: &str,
    f: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let v = f(name).ok_or_else(|| BenchError::Usage(format!("unknown {what} {name:?}")))?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    if out.is_empty() {
        return Err(BenchError::Usage(format!("empty {what} list")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options> {
        Options::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_to_a_full_run_of_everything() {
        let o = parse(&[]).ok();
        assert!(o.as_ref().is_some_and(Options::is_reference_run));
    }

    #[test]
    fn lists_select_scenarios_and_impls() {
        let o = parse(&["--quick", "--only", "cpu,handoff", "--impls", "module"]).ok();
        let o = o.as_ref();
        assert_eq!(o.map(|o| o.mode), Some(Mode::Quick));
        assert_eq!(
            o.map(|o| o.scenarios.clone()),
            Some(vec![Scenario::Cpu, Scenario::Handoff])
        );
        assert_eq!(o.map(|o| o.impls.clone()), Some(vec![Impl::Module]));
        assert!(!o.is_some_and(Options::is_reference_run));
    }

    #[test]
    fn rejects_unknown_names() {
        assert!(parse(&["--only", "nope"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--connect"]).is_err());
        assert!(parse(&["--seconds", "-1"]).is_err());
    }
}
