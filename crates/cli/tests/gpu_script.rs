//! The prepared GPU benchmark (`tests/bench/gpu.sh`) runs on a device only when a session is
//! lent one, so it could rot unseen between such sessions. Here it runs dry: every step on the
//! CPU with two small pages and a stub `nvidia-smi` (no GPU exists on this machine), after
//! `gpu_prepare.sh --dry-run`, which must find every device call under the 64 MiB transfer
//! limit. Its last step makes the uint8-input graphs there (models/make_u8.py) and runs them.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_gpu_benchmark_runs_dry_and_its_calls_fit_the_transfer_limit() {
    let _g = serial();
    let root = repo_root();
    let tmp = std::env::temp_dir().join(format!("ocrfleet-gpu-dry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (pages, stub, out) = (tmp.join("pages"), tmp.join("bin"), tmp.join("out"));
    for d in [&pages, &stub, &out] {
        std::fs::create_dir_all(d).unwrap();
    }
    for f in ["en_line_hello.png", "invoice_large.png"] {
        std::fs::copy(root.join("tests/fixtures/images").join(f), pages.join(f)).unwrap();
    }
    // A stub nvidia-smi: the device query once, or a sample every 0.5 s with -lms.
    let smi = stub.join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\ncase \"$*\" in\n  *-lms*) while true; do echo \"2026/12/02 00:00:00.000, 50 %, 100 MiB\"; sleep 0.5; done ;;\n  *) echo 'name, memory.total [MiB], driver_version'; echo 'Stub GPU, 1000 MiB, 0' ;;\nesac\n",
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&smi).status().unwrap();

    let prep = Command::new("bash")
        .args(["tests/bench/gpu_prepare.sh", "--dry-run"])
        .current_dir(&root)
        .env("PAGES", &pages)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&prep.stdout);
    assert!(
        prep.status.success(),
        "gpu_prepare.sh --dry-run: {said}{}",
        String::from_utf8_lossy(&prep.stderr)
    );
    assert!(said.contains("call 4") && !said.contains("OVER"), "{said}");

    let run = Command::new("bash")
        .arg("tests/bench/gpu.sh")
        .current_dir(&root)
        .env("GPU_DRY_RUN", "1")
        .env("GPU_BUDGET", "900")
        .env("OUT", &out)
        .env(
            "PATH",
            format!("{}:{}", stub.display(), std::env::var("PATH").unwrap()),
        )
        .output()
        .unwrap();
    let results = std::fs::read_to_string(out.join("results.txt")).unwrap_or_default();
    let log = std::fs::read_to_string(out.join("stderr.log")).unwrap_or_default();
    assert!(run.status.success(), "gpu.sh failed:\n{results}\n{log}");
    assert!(!log.contains("error:"), "a step failed:\n{log}");
    for step in [
        "Stub GPU",
        "== ",
        "env",
        "parity: ok",
        "CER GPU against CPU 0.00000",
        "variant: fused fp32",
        "variant: --fp16",
        "K=1:",
        "K=4:",
        "best K:",
        "e2e:",
        "recbatch (limit",
        // The engine's sessions share one arena, whose counters the K rows report, and the
        // arenas step runs them with an arena each for comparison.
        "MiB the most in use",
        "separate arenas, K=",
        "no shared arena (an arena per session)",
        "u8 fused fp32:",
        "u8 --fp16:",
        "done in",
    ] {
        assert!(
            results.contains(step),
            "no {step:?} in the results:\n{results}\n{log}"
        );
    }
    assert!(!results.contains("skipped"), "{results}");
    assert!(results.contains("\"img_per_s\""), "{results}");
    assert!(
        results.contains("\"input_mb_per_img\"") && !results.contains("not measured"),
        "the uint8-input graphs were made and run:\n{results}\n{log}"
    );
    assert!(results.contains("GPU util mean 50 %"), "{results}");
    assert!(
        results.contains("indexed") || results.contains("img/s"),
        "the worker ran end to end:\n{results}\n{log}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
