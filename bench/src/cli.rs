//! Command-line options (clap).

use std::path::PathBuf;

use clap::Parser;

use crate::locks::Impl;
use crate::plan::Mode;
use crate::scenarios::Scenario;

/// Measures the fencelock module side by side with a `SET NX PX` + Lua lock
/// and a Redisson-style Lua lock, on one redis-server, and writes
/// results.md, results.json and chart.svg.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "fencelock-bench",
    after_help = "The module is taken from $FENCELOCK_MODULE or target/release/libfencelock.so\n(build it with `cargo build --release -p fencelock`)."
)]
pub struct Options {
    /// The sizes the issue asks for (default); writes bench/results/ and
    /// refreshes the Performance blocks of bench/README.md and README.md
    #[arg(long, overrides_with = "quick")]
    full: bool,
    /// Small sizes, well under a minute; writes target/bench-quick/
    #[arg(long, overrides_with = "full")]
    quick: bool,
    /// Scenarios to run, comma-separated (default: all)
    #[arg(long = "only", value_name = "LIST", value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Implementations, comma-separated (default: all)
    #[arg(long = "impls", value_name = "LIST", value_delimiter = ',')]
    impls: Vec<Impl>,
    /// Where results.md, results.json and chart.svg are written
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Use a running redis-server on 127.0.0.1:PORT (started by you, e.g.
    /// under valgrind or perf, with the module loaded) instead of starting one
    #[arg(long, value_name = "PORT")]
    pub connect: Option<u16>,
    /// Length of each timed run (throughput, hand-off, watchdog, read/write,
    /// semaphore), in (0, 600]
    #[arg(long, value_name = "S", value_parser = seconds)]
    pub seconds: Option<f64>,
    /// Do not pin redis-server to the first CPU and the load generator to
    /// the last (pinning is the default on 2+ CPUs)
    #[arg(long)]
    no_pin: bool,
    /// Instead of the scenarios: the load generator on its own RESP client
    /// against the `redis` crate, throughput and hand-off, interleaved
    /// (writes client-ab.md and client-ab.json)
    #[arg(long, conflicts_with = "scenarios")]
    pub client_ab: bool,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 600.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 600]")),
    }
}

/// The values of a list option in order, each once; all of `all` when the
/// option was not given.
fn selected<T: Copy + PartialEq>(given: &[T], all: &[T]) -> Vec<T> {
    let from = if given.is_empty() { all } else { given };
    let mut out: Vec<T> = Vec::with_capacity(from.len());
    for &v in from {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

impl Options {
    /// Quick or full (the last of `--quick` / `--full` given; full by default).
    pub fn mode(&self) -> Mode {
        if self.quick {
            Mode::Quick
        } else {
            Mode::Full
        }
    }

    /// The scenarios to run, in the order given.
    pub fn scenarios(&self) -> Vec<Scenario> {
        selected(&self.scenarios, &Scenario::ALL)
    }

    /// The implementations to measure, in the order given.
    pub fn impls(&self) -> Vec<Impl> {
        selected(&self.impls, &Impl::ALL)
    }

    /// The output folder: `--out`, else bench/results (full) or
    /// target/bench-quick (quick).
    pub fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            let root = testkit::workspace_root();
            match self.mode() {
                Mode::Full => root.join("bench").join("results"),
                Mode::Quick => root.join("target").join("bench-quick"),
            }
        })
    }

    /// Pin the server and the load generator to separate CPUs.
    pub fn pin(&self) -> bool {
        !self.no_pin
    }

    /// True for a complete full run written to the checked-in results: only
    /// such a run refreshes the README blocks.
    pub fn is_reference_run(&self) -> bool {
        self.mode() == Mode::Full
            && self.out.is_none()
            && self.connect.is_none()
            && self.seconds.is_none()
            && self.pin()
            && !self.client_ab
            && self.scenarios().len() == Scenario::ALL.len()
            && self.impls().len() == Impl::ALL.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("fencelock-bench").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_to_a_full_run_of_everything() {
        let o = parse(&[]).ok();
        assert!(o.as_ref().is_some_and(Options::is_reference_run));
        assert!(parse(&["--full"])
            .ok()
            .is_some_and(|o| o.is_reference_run()));
    }

    #[test]
    fn lists_select_scenarios_and_impls() {
        let o = parse(&["--quick", "--only", "cpu,handoff,cpu", "--impls", "module"]).ok();
        let o = o.as_ref();
        assert_eq!(o.map(Options::mode), Some(Mode::Quick));
        assert_eq!(
            o.map(Options::scenarios),
            Some(vec![Scenario::Cpu, Scenario::Handoff])
        );
        assert_eq!(o.map(Options::impls), Some(vec![Impl::Module]));
        assert!(!o.is_some_and(Options::is_reference_run));
    }

    #[test]
    fn the_last_mode_flag_wins() {
        assert_eq!(
            parse(&["--quick", "--full"]).ok().map(|o| o.mode()),
            Some(Mode::Full)
        );
        assert_eq!(
            parse(&["--full", "--quick"]).ok().map(|o| o.mode()),
            Some(Mode::Quick)
        );
    }

    #[test]
    fn every_documented_option_parses() {
        let o = parse(&[
            "--connect",
            "7777",
            "--seconds",
            "2.5",
            "--no-pin",
            "--out",
            "/tmp/x",
            "--impls",
            "setnx,redisson",
        ])
        .ok();
        let o = o.as_ref();
        assert_eq!(o.and_then(|o| o.connect), Some(7777));
        assert_eq!(o.and_then(|o| o.seconds), Some(2.5));
        assert_eq!(o.map(Options::pin), Some(false));
        assert_eq!(o.map(Options::out), Some(PathBuf::from("/tmp/x")));
        assert_eq!(
            o.map(Options::impls),
            Some(vec![Impl::SetNx, Impl::Redisson])
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(parse(&["--only", "nope"]).is_err());
        assert!(parse(&["--only", ""]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--connect"]).is_err());
        assert!(parse(&["--connect", "x"]).is_err());
        assert!(parse(&["--seconds", "-1"]).is_err());
        assert!(parse(&["--seconds", "601"]).is_err());
        assert!(parse(&["--client-ab", "--only", "cpu"]).is_err());
    }
}
