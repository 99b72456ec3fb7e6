//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The compiled `ghl-sync` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ghl-sync"))
}

/// Writes `text` as a config file in `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("ghl-sync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `ghl-sync ARGS` as a child process with stdout/stderr captured.
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(binary());
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.env_remove("RUST_LOG").env_remove("GHL_SYNC_CONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().unwrap()
}

/// Sends a signal to a child process (`TERM`, `INT`, `KILL`).
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for the child to exit, at most `limit`; kills it and panics when it does not.
pub fn wait_with_limit(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            return (
                status,
                String::from_utf8_lossy(&output.stdout).into(),
                String::from_utf8_lossy(&output.stderr).into(),
            );
        }
        if started.elapsed() > limit {
            child.kill().ok();
            let output = child.wait_with_output().unwrap();
            panic!("process did not exit within {limit:?}; stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `path` exists (e.g. the database a daemon creates at start-up).
pub fn wait_for_file(path: &Path, limit: Duration) {
    let started = Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < limit, "{} did not appear within {limit:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
