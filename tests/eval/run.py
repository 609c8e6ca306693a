#!/usr/bin/env python3
"""Accuracy and speed on the real-document evaluation set, for each model set and detector limit.

    python3 tests/eval/fetch.py                     # once: downloads .eval/ (60 images)
    .venv/bin/python tests/eval/run.py [--models v4 v6] [--limits 960 1280] [--threads 2]
                                       [--bin target/release/ocrfleet] [--out .eval/runs]
                                       [-- extra `ocrfleet ocr` flags]

Each configuration is one `ocrfleet ocr --ndjson` process over all images, timed from the
outside (wall clock, including model loading), so images/s is what a user of the command sees.
The NDJSON is kept in --out, and every metric is defined in tests/eval/score.py. CI does not run
this (the images cannot be committed); the accuracy tables in crates/ocr/docs/accuracy.md come from it.
"""
import argparse
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import score  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, ".eval"))
    ap.add_argument("--models", nargs="+", default=["v4", "v6"])
    ap.add_argument("--limits", nargs="+", type=int, default=[960])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "ocrfleet"))
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "models"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="", help="suffix of the output files, for A/B runs")
    args = ap.parse_args(argv)
    gt = os.path.join(args.data, "ground_truth.json")
    if not os.path.exists(gt):
        sys.exit(f"run.py: no {gt}; run `python3 tests/eval/fetch.py` first")
    out_dir = args.out or os.path.join(args.data, "runs")
    os.makedirs(out_dir, exist_ok=True)
    n_images = len(os.listdir(os.path.join(args.data, "images")))
    rows = []
    for model in args.models:
        for limit in args.limits:
            name = f"{model}-{limit}{args.name}"
            out = os.path.join(out_dir, f"{name}.ndjson")
            cmd = [args.bin, "ocr", "--ndjson", "--models", model, "--det-limit", str(limit),
                   "--threads", str(args.threads), "--models-dir", args.models_dir,
                   *extra, os.path.join(args.data, "images")]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            with open(out, "w", encoding="utf-8") as f:
                subprocess.run(cmd, stdout=f, check=True)
            wall = time.monotonic() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            total, per = score.score(gt, out)
            rows.append((name, wall, cpu, total, per))
            print(f"run.py: {name}: {wall:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr)
    print(f"{n_images} images in {args.data}; `ocrfleet ocr` flags: "
          f"--threads {args.threads} {' '.join(extra)}".rstrip())
    print()
    print("| models, det limit | CER | CER ci | det P | det R | det F1 | exact | exact sp | words "
          "| word box | img/s | CPU s/img | " + " | ".join(f"{s} CER ci" for s in sorted(rows[0][4])) + " |")
    print("|---" * (12 + len(rows[0][4])) + "|")
    for name, wall, cpu, total, per in rows:
        m = total.metrics()
        cells = [f"{m['cer']:.4f}", f"{m['cer_ci']:.4f}", f"{m['p']:.3f}", f"{m['r']:.3f}",
                 f"{m['f1']:.3f}", f"{m['exact']:.3f}", f"{m['exact_sp']:.3f}", f"{m['words']:.3f}",
                 f"{m['word_box']:.3f}", f"{n_images / wall:.2f}", f"{cpu / n_images:.2f}"]
        cells += [f"{per[s].metrics()['cer_ci']:.4f}" for s in sorted(per)]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
