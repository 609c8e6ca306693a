//! A new user's first commands against a stack that is not there: each must end on its own,
//! non-zero, with one clear line, instead of retrying and logging for ever (issue 10: `produce`
//! wrote 517 error lines in 60 s and never ended). No servers needed: port 1 on loopback refuses
//! every connection.

mod common;

use std::process::Command;
use std::time::Duration;

use common::run_cli as run;

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
    assert!(
        !err.contains('\x1b'),
        "no colour codes when stderr is not a terminal:\n{err:?}"
    );
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
    assert!(!err.contains('\x1b'), "{err:?}");
}

/// `ocrfleet ocr` says how many files failed and exits 1 when any did (it used to exit 0 on a
/// missing file); every file still gets its line of output.
#[test]
fn ocr_exits_non_zero_with_a_summary_when_a_file_fails() {
    let dir = std::env::temp_dir().join(format!("ocrfleet-ocr-exit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        root.join("tests/fixtures/worker/hello.png"),
        dir.join("a-hello.png"),
    )
    .unwrap();
    std::fs::write(dir.join("b-broken.png"), b"not an image").unwrap();
    let d = dir.to_str().unwrap();
    let guard = Duration::from_secs(120);

    let (code, out, err) = run(&["ocr", "nope.png"], &[], "", guard);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("nope.png: read error"), "{out}");
    assert!(err.contains("1 file(s): 0 read, 1 failed"), "{err}");

    let (code, out, err) = run(&["ocr", "--ndjson", "--threads", "1", d], &[], "", guard);
    assert_eq!(code, Some(1), "{out}{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0]["lines"].as_array().is_some_and(|l| !l.is_empty()));
    assert_eq!(lines[1]["error"]["stage"], "decode");
    assert!(err.contains("2 file(s): 1 read, 1 failed"), "{err}");

    let (code, out, err) = run(
        &["ocr", "--threads", "1", &format!("{d}/a-hello.png")],
        &[],
        "",
        guard,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("HELLO"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// In a terminal the progress bar is cleared before output is written, so no stale bar is left
/// glued to an output line. A pseudo-terminal (Python's `pty`) stands in for the user's
/// terminal; stdout and stderr both go to it, as in an interactive shell.
#[test]
fn ocr_output_in_a_terminal_has_no_stale_progress_bar() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
while True:
    try:
        b = os.read(fd, 65536)
    except OSError:
        break
    if not b:
        break
    out += b
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_ocrfleet"))
        .args(["ocr", "--threads", "1", "--ocr-batch", "2"])
        .arg(root.join("tests/fixtures/images"))
        .current_dir(&root)
        .env("RUST_LOG", "warn")
        .env("TERM", "xterm")
        .output()
        .expect("python3 runs");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{raw}");
    assert!(raw.contains("images"), "the bar was drawn at all: {raw:?}");
    // Drop the escape sequences (CSI ... letter), keep \r and \n.
    let mut text = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        text.push(c);
    }
    let headers = text.matches("== ").count();
    assert_eq!(headers, 31, "one header per image: {text:?}");
    for (i, _) in text.match_indices("== ") {
        let before = text[..i].chars().last();
        assert!(
            matches!(before, None | Some('\n') | Some('\r')),
            "output glued to a stale bar: {:?}",
            &text[i.saturating_sub(80)..i + 20]
        );
    }
}

/// `worker --help` lists its settings under sections, every flag's `[env]` comes before its
/// `[default]` as in the other commands, the batch flag has one name in `ocr` and `worker`, and
/// `--version` names the build's features and the ONNX Runtime library it loads.
#[test]
fn help_sections_flag_order_and_version() {
    let guard = Duration::from_secs(30);
    let (code, help, _) = run(&["worker", "--help"], &[], "", guard);
    assert_eq!(code, Some(0));
    for section in [
        "Kafka:",
        "Dead letters:",
        "Fetch:",
        "OCR:",
        "Elasticsearch:",
        "HTTP and process:",
    ] {
        assert!(
            help.lines().any(|l| l == section),
            "no {section} section:\n{help}"
        );
    }
    assert!(
        help.contains("[env: OCRFLEET_KAFKA_BROKERS] [default: 127.0.0.1:9092]"),
        "{help}"
    );
    assert!(help.contains("--ocr-batch"), "{help}");
    let (_, produce_help, _) = run(&["produce", "--help"], &[], "", guard);
    let env = produce_help.find("[env: OCRFLEET_KAFKA_BROKERS").unwrap();
    let default = produce_help.find("[default: 127.0.0.1:9092]").unwrap();
    assert!(env < default, "{produce_help}");
    let (_, ocr_help, _) = run(&["ocr", "--help"], &[], "", guard);
    assert!(ocr_help.contains("--ocr-batch"), "{ocr_help}");

    let (code, version, _) = run(&["--version"], &[], "", guard);
    assert_eq!(code, Some(0));
    assert!(version.starts_with("ocrfleet "), "{version}");
    assert!(version.contains("features: "), "{version}");
    assert!(
        version.contains("onnxruntime: 1.32.0 (models/lib/libonnxruntime.so)"),
        "{version}"
    );
}
