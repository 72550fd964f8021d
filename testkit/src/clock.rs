//! A wall clock that a test can step while the server runs: the
//! `clockstep` LD_PRELOAD shim (`testkit/shim/clockstep.c`, built with gcc
//! on first use) shifts CLOCK_REALTIME, gettimeofday() and time() of the
//! server process by an offset read from a shared file; the monotonic
//! clocks are left alone, as in an NTP step or a VM resume. Debian's
//! libfaketime cannot start redis-server (it recurses through jemalloc's
//! first clock call), hence the shim.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{workspace_root, ServerConfig};

/// The offset file of one server (or several) and the way to step it.
pub struct ClockStep {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl Default for ClockStep {
    fn default() -> Self {
        Self::new()
    }
}

impl ClockStep {
    /// A clock at offset 0 (the real wall clock) until stepped.
    pub fn new() -> ClockStep {
        let dir = tempfile::Builder::new()
            .prefix("fencelock-clock-")
            .tempdir()
            .expect("tempdir");
        let file = dir.path().join("offset");
        let step = ClockStep { _dir: dir, file };
        step.set_offset_ms(0);
        step
    }

    /// The config with this clock: the server's wall clock runs at the
    /// current offset from the real one, and follows every later step.
    pub fn apply(&self, config: ServerConfig) -> ServerConfig {
        config
            .env("LD_PRELOAD", &shim().display().to_string())
            .env("CLOCKSTEP_FILE", &self.file.display().to_string())
    }

    /// Sets the offset of the wall clock from the real one (ms; negative:
    /// behind). Seen by the server's next clock read.
    pub fn set_offset_ms(&self, offset_ms: i64) {
        // Written in place (the server maps the file): one aligned 8-byte
        // write, never a new file.
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&self.file)
            .expect("open the clock offset file");
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.write_all(&offset_ms.to_le_bytes())
            .expect("write the offset");
        f.sync_data().expect("sync the offset");
    }

    /// The offset now in force (ms).
    pub fn offset_ms(&self) -> i64 {
        let bytes = fs::read(&self.file).expect("read the clock offset file");
        let mut raw = [0u8; 8];
        raw.copy_from_slice(bytes.get(..8).expect("8 bytes of offset"));
        i64::from_le_bytes(raw)
    }

    /// Steps the wall clock by `by_ms` (negative: back).
    pub fn step_ms(&self, by_ms: i64) {
        self.set_offset_ms(self.offset_ms() + by_ms);
    }
}

/// The shim's shared library, built once per test process into the
/// workspace's target folder (a unique name, then a rename, so parallel
/// test processes never see a half-written file).
pub fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let source = workspace_root().join("testkit/shim/clockstep.c");
        let out_dir = workspace_root().join("target/clockstep");
        fs::create_dir_all(&out_dir).expect("create target/clockstep");
        let out = out_dir.join("libclockstep.so");
        let partial = out_dir.join(format!("libclockstep.so.{}", std::process::id()));
        let status = Command::new("gcc")
            .args([
                "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
            ])
            .arg(&partial)
            .arg(&source)
            .arg("-ldl")
            .status()
            .expect("run gcc (the clockstep shim)");
        assert!(status.success(), "gcc could not build {}", source.display());
        fs::rename(&partial, &out).expect("move the shim into place");
        out
    })
}
