//! The `sluice` command as a process: start, kill -9, SIGTERM, memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `sluice run`.
#[derive(Debug)]
pub struct Sluice {
    /// The process.
    pub child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Sluice {
    /// Starts `<bin> run <pipeline>` (`bin`: the `sluice-under-test` binary
    /// of this package) with extra environment; stderr goes to `log`, stdout
    /// is piped when `pipe_stdout`, else discarded.
    pub fn start(
        bin: &Path,
        pipeline: &Path,
        log: &Path,
        env: &[(&str, &str)],
        pipe_stdout: bool,
    ) -> Sluice {
        Self::command(bin, "run", pipeline, log, env, pipe_stdout, &[])
    }

    /// Starts `<bin> serve <host file>` (a host), as [`Sluice::start`].
    pub fn serve(bin: &Path, host: &Path, log: &Path, env: &[(&str, &str)]) -> Sluice {
        Self::command(bin, "serve", host, log, env, false, &[])
    }

    /// `<bin> serve <host file>` started in `dir`, the host file's path
    /// relative to it (as a user types it from the repository's root).
    pub fn serve_in(bin: &Path, dir: &Path, host: &Path, log: &Path) -> Sluice {
        Self::command_in(bin, "serve", host, log, &[], false, &[], Some(dir))
    }

    /// `<bin> serve <host file> --watch <dir>`.
    pub fn serve_watching(bin: &Path, host: &Path, dir: &Path, log: &Path) -> Sluice {
        let dir = dir.to_string_lossy().into_owned();
        Self::command(bin, "serve", host, log, &[], false, &["--watch", &dir])
    }

    /// The address the host's listener took, from its log (`None` until
    /// it says).
    pub fn listen_address(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        text.lines()
            .rev()
            .find_map(|l| l.split("listening on http://").nth(1))
            .map(|rest| rest.trim_end_matches('/').trim().to_string())
    }

    /// The address the host's listener took, once it says (waiting at
    /// most `timeout`, then failing with the log's tail).
    pub fn address(&self, timeout: Duration) -> String {
        let mut addr = None;
        crate::eventually(
            "the host to listen",
            timeout,
            || self.log_tail(30),
            || {
                addr = self.listen_address();
                addr.is_some()
            },
        );
        addr.unwrap_or_default()
    }

    fn command(
        bin: &Path,
        verb: &str,
        file: &Path,
        log: &Path,
        env: &[(&str, &str)],
        pipe_stdout: bool,
        args: &[&str],
    ) -> Sluice {
        Self::command_in(bin, verb, file, log, env, pipe_stdout, args, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn command_in(
        bin: &Path,
        verb: &str,
        file: &Path,
        log: &Path,
        env: &[(&str, &str)],
        pipe_stdout: bool,
        args: &[&str],
        dir: Option<&Path>,
    ) -> Sluice {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut cmd = Command::new(bin);
        cmd.arg(verb)
            .arg(file)
            .args(args)
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(if pipe_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        Sluice {
            child: cmd.spawn().expect("start sluice"),
            log: log.to_path_buf(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.wait(timeout)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory in KiB (Linux), if the process is alive.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
    }

    /// Peak resident memory in KiB (Linux `VmHWM`), if the process is alive.
    pub fn peak_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
