//! The server under test and the admin commands the scenarios use to read
//! it: `INFO` fields, `INFO commandstats`, `FLUSHALL`, `CONFIG SET`.

use std::collections::HashMap;
use std::process::Command;

use crate::error::{BenchError, Result};
use crate::resp::Conn;

/// The redis-server the benchmark talks to.
pub enum Target {
    /// Started here through testkit (module loaded, persistence off,
    /// 127.0.0.1, own temporary directory); killed on drop.
    Owned(testkit::Server),
    /// Started by the user (`--connect PORT`).
    External(u16),
}

impl Target {
    /// Starts a server with the fencelock module loaded.
    pub fn start() -> Result<Target> {
        let module = testkit::find_module_path().ok_or_else(|| {
            BenchError::Setup(format!(
                "libfencelock.so not found under {}/target: run `cargo build --release -p fencelock` first (make bench does)",
                testkit::workspace_root().display()
            ))
        })?;
        if !module.exists() {
            return Err(BenchError::Setup(format!(
                "module {} does not exist",
                module.display()
            )));
        }
        let installed = Command::new("redis-server")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !installed {
            return Err(BenchError::Setup(
                "redis-server is not installed (scripts/setup.sh installs it)".into(),
            ));
        }
        Ok(Target::Owned(testkit::Server::config().start()))
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        match self {
            Target::Owned(s) => s.port,
            Target::External(p) => *p,
        }
    }

    /// Its process id, when started here.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Target::Owned(s) => Some(s.pid()),
            Target::External(_) => None,
        }
    }
}

/// Pins process `pid` (all its threads) to one CPU with `taskset`.
pub fn pin(pid: u32, cpu: usize) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| {
            BenchError::Setup(format!("taskset: {e} (util-linux missing? use --no-pin)"))
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Setup(format!(
            "taskset could not pin pid {pid} to CPU {cpu}; use --no-pin"
        )))
    }
}

/// One line of `INFO commandstats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmdStat {
    /// Calls since the last `CONFIG RESETSTAT`.
    pub calls: u64,
    /// Total microseconds spent in the command.
    pub usec: u64,
}

impl CmdStat {
    /// Microseconds per call (unrounded, unlike Redis's `usec_per_call`).
    pub fn per_call(&self) -> f64 {
        self.usec as f64 / self.calls.max(1) as f64
    }
}

/// Admin helpers over one connection.
pub struct Admin {
    /// The connection (usable for anything else, too).
    pub conn: Conn,
}

impl Admin {
    /// Opens an admin connection.
    pub async fn connect(port: u16) -> Result<Admin> {
        Ok(Admin {
            conn: Conn::connect(port).await?,
        })
    }

    /// `INFO section` as text.
    pub async fn info(&mut self, section: &str) -> Result<String> {
        self.conn.cmd_text(&["INFO", section]).await
    }

    /// One numeric field of `INFO section`.
    pub async fn info_f64(&mut self, section: &str, field: &str) -> Result<f64> {
        let info = self.info(section).await?;
        testkit::info_field(&info, field)
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                BenchError::Setup(format!("INFO {section} has no numeric field {field}"))
            })
    }

    /// `used_memory`, bytes.
    pub async fn used_memory(&mut self) -> Result<f64> {
        self.info_f64("memory", "used_memory").await
    }

    /// CPU seconds the server has used (user + system, all threads).
    pub async fn cpu_seconds(&mut self) -> Result<f64> {
        let info = self.info("cpu").await?;
        let f = |name| {
            testkit::info_field(&info, name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .ok_or_else(|| BenchError::Setup(format!("INFO cpu has no field {name}")))
        };
        Ok(f("used_cpu_user")? + f("used_cpu_sys")?)
    }

    /// `redis_version`.
    pub async fn redis_version(&mut self) -> Result<String> {
        let info = self.info("server").await?;
        Ok(testkit::info_field(&info, "redis_version").unwrap_or_default())
    }

    /// Empties every database (synchronously) and lets the server settle.
    pub async fn flushall(&mut self) -> Result<()> {
        self.conn.cmd(&["FLUSHALL", "SYNC"]).await?;
        Ok(())
    }

    /// `CONFIG RESETSTAT`.
    pub async fn reset_stats(&mut self) -> Result<()> {
        self.conn.cmd(&["CONFIG", "RESETSTAT"]).await?;
        Ok(())
    }

    /// `CONFIG SET name value`.
    pub async fn config_set(&mut self, name: &str, value: &str) -> Result<()> {
        self.conn.cmd(&["CONFIG", "SET", name, value]).await?;
        Ok(())
    }

    /// `CONFIG GET name`.
    pub async fn config_get(&mut self, name: &str) -> Result<String> {
        match self.conn.cmd(&["CONFIG", "GET", name]).await? {
            crate::resp::Reply::Array(items) => Ok(items
                .get(1)
                .and_then(crate::resp::Reply::as_text)
                .unwrap_or_default()),
            other => Err(BenchError::unexpected("CONFIG GET", &other)),
        }
    }

    /// `DBSIZE`.
    pub async fn dbsize(&mut self) -> Result<u64> {
        let r = self.conn.cmd(&["DBSIZE"]).await?;
        r.as_int()
            .map(|n| n.max(0) as u64)
            .ok_or_else(|| BenchError::unexpected("DBSIZE", &r))
    }

    /// The `INFO commandstats` line of one command (`set`, `evalsha`,
    /// `lock.acquire`, ...); zeros when it was not called.
    pub async fn command_stat(&mut self, command: &str) -> Result<CmdStat> {
        let info = self.info("commandstats").await?;
        Ok(parse_command_stats(&info)
            .get(command)
            .copied()
            .unwrap_or_default())
    }
}

/// Parses `cmdstat_NAME:calls=..,usec=..,usec_per_call=..,...` lines.
pub fn parse_command_stats(info: &str) -> HashMap<String, CmdStat> {
    let mut out = HashMap::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .trim_end()
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let mut stat = CmdStat::default();
        for kv in fields.split(',') {
            match kv.split_once('=') {
                Some(("calls", v)) => stat.calls = v.parse().unwrap_or(0),
                Some(("usec", v)) => stat.usec = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        out.insert(name.to_string(), stat);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commandstats_lines() {
        let info = "# Commandstats\r\ncmdstat_set:calls=10,usec=25,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\ncmdstat_lock.acquire:calls=4,usec=8,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n";
        let s = parse_command_stats(info);
        assert_eq!(s.get("set").map(|c| (c.calls, c.usec)), Some((10, 25)));
        assert_eq!(s.get("lock.acquire").map(CmdStat::per_call), Some(2.0));
    }
}
