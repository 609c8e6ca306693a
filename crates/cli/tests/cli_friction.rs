//! A new user's first commands against a stack that is not there: each must end on its own,
//! non-zero, with one clear line, instead of retrying and logging for ever (issue 10: `produce`
//! wrote 517 error lines in 60 s and never ended). No servers needed: port 1 on loopback refuses
//! every connection.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `ocrfleet args` with `stdin`, and gives back (exit code, stdout, stderr). A command
/// still running after `guard` is killed and the test fails: that is a hang, not a slow run.
fn run(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
    guard: Duration,
) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocrfleet"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
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

#[test]
fn produce_to_an_unreachable_broker_ends_non_zero_with_one_clear_error() {
    let (code, _out, err) = run(
        &[
            "produce",
            "--brokers",
            "127.0.0.1:1",
            "--topic",
            "t",
            "--delivery-timeout",
            "3s",
        ],
        &[],
        "https://example.com/a.png\n",
        Duration::from_secs(90),
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("cannot reach Kafka at 127.0.0.1:1") && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(err.lines().count() <= 5, "too many lines:\n{err}");
}

/// Also: an `OCRFLEET_*` variable that names no setting (here an old name of `--models`) is
/// warned about instead of ignored silently.
#[test]
fn a_worker_that_never_reaches_a_broker_exits_non_zero_after_its_startup_timeout() {
    let (code, _out, err) = run(
        &[
            "worker",
            "--brokers",
            "127.0.0.1:1",
            "--startup-timeout",
            "3s",
            "--http-addr",
            "127.0.0.1:0",
        ],
        &[("OCRFLEET_MODEL_SET", "v6")],
        "",
        Duration::from_secs(90),
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("cannot read metadata of topic") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    assert!(
        err.contains("OCRFLEET_MODEL_SET is not a worker setting"),
        "{err}"
    );
    assert!(err.lines().count() <= 7, "too many lines:\n{err}");
}
