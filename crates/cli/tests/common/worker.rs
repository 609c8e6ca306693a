//! The real `ocrfleet` binary as a child process: the worker, and the other commands.

use super::*;

/// A worker child process.
pub struct Worker {
    pub child: Child,
    pub http_port: u16,
    pub log: PathBuf,
}

static WORKER_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Worker {
    /// Starts `ocrfleet worker` with test defaults (loopback allowed, small time-outs) plus `extra` flags.
    pub fn start(
        brokers: &str,
        es: &str,
        topic: &str,
        group: &str,
        index: &str,
        extra: &[&str],
    ) -> Worker {
        let http_port = free_port();
        let n = WORKER_SEQ.fetch_add(1, Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("ocrfleet-worker-{}-{n}.log", std::process::id()));
        let root = repo_root();
        let child = Command::new(env!("CARGO_BIN_EXE_ocrfleet"))
            .current_dir(&root)
            .args([
                "worker",
                "--brokers",
                brokers,
                "--es-url",
                es,
                "--topic",
                topic,
                "--group",
                group,
                "--es-index",
                index,
            ])
            // Test defaults, each unless `extra` gives that flag itself.
            .args(
                [
                    ["--fetch-allow", "127.0.0.0/8"],
                    ["--fetch-timeout", "2s"],
                    ["--fetch-attempts", "3"],
                    ["--fetch-backoff", "50ms"],
                    ["--threads", "1"],
                ]
                .into_iter()
                .filter(|[flag, _]| !extra.contains(flag))
                .flatten(),
            )
            .args([
                "--http-addr",
                &format!("127.0.0.1:{http_port}"),
                "--worker-id",
                &format!("w{n}"),
            ])
            .args(["--models-dir", root.join("models").to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "info,ort=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn ocrfleet worker");
        Worker {
            child,
            http_port,
            log,
        }
    }

    pub fn metrics(&self) -> String {
        blocking_get(&format!("http://127.0.0.1:{}/metrics", self.http_port))
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// A counter or gauge value from /metrics (sum over labels).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l.as_bytes().get(name.len()) == Some(&b' ')
                        || l.as_bytes().get(name.len()) == Some(&b'{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn healthy(&self) -> bool {
        matches!(
            blocking_get(&format!("http://127.0.0.1:{}/healthz", self.http_port)),
            Ok((200, _))
        )
    }

    pub fn ready(&self) -> bool {
        matches!(
            blocking_get(&format!("http://127.0.0.1:{}/readyz", self.http_port)),
            Ok((200, _))
        )
    }

    /// The `/readyz` answer: status and body.
    pub fn readyz(&self) -> (u16, String) {
        blocking_get(&format!("http://127.0.0.1:{}/readyz", self.http_port))
            .unwrap_or((0, String::new()))
    }

    /// Peak resident memory of the worker (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1))
    }

    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        let r = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(r.success());
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    /// Waits for exit; returns the exit code.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                t.elapsed() < timeout,
                "worker did not exit within {timeout:?}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ocrfleet args` with `stdin`, and gives back (exit code, stdout, stderr). A command
/// still running after `guard` is killed and the test fails: that is a hang, not a slow run.
pub fn run_cli(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
    guard: Duration,
) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocrfleet"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ocrfleet");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > guard {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`ocrfleet {}` did not end within {guard:?}; stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
