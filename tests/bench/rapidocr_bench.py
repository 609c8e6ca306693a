"""Baseline throughput of Python RapidOCR (rapidocr_onnxruntime==1.4.4) with the same pipeline
configuration as the Rust engine (tests/fixtures/rapidocr_config.py).

Run:  .venv/bin/python bench/rapidocr_bench.py [DIR] [--threads N] [--repeat R] [--json]
DIR defaults to tests/fixtures/images. The files are read into memory first; each timed call
is engine(bytes): decode (PIL) + det + cls + rec, single image at a time. One untimed warm-up
pass, then R timed passes. --threads sets ONNX Runtime intra-op threads of all three sessions
(OpenCV keeps its own default thread pool).

Stage totals come from RapidOCR's elapse list: det includes its pre/post-processing; cls and
rec count only the ONNX Runtime calls + decoding of outputs (their resize/normalise, the crops
and image decoding are in neither: see "other").
--json prints one JSON line instead of the table, e.g. for a Rust bench to compute ratios:
  {"engine": "rapidocr_onnxruntime 1.4.4", "threads": 2, "repeat": 3, "images": 27, "lines": ...,
   "img_per_s": ..., "lines_per_s": ..., "p50_ms": ..., "p99_ms": ..., "total_s": ...,
   "stages_s": {"det": ..., "cls": ..., "rec": ..., "other": ...}}
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))

import rapidocr_config  # noqa: E402

EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def percentile(sorted_vals, q):
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_vals:
        return 0.0
    k = max(0, min(len(sorted_vals) - 1, int(round(q / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default=os.path.join(ROOT, "tests", "fixtures", "images"))
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over the set")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--fused", action="store_true",
                    help="run ocrfleet's fused graphs (models/v4/*.fused.onnx, models/make_fused.py) "
                    "instead of the wheel's, to see what the graph rewrite gives the peer")
    args = ap.parse_args()

    names = sorted(n for n in os.listdir(args.dir) if n.lower().endswith(EXTS))
    if not names:
        sys.exit(f"no images in {args.dir}")
    blobs = []
    for n in names:
        with open(os.path.join(args.dir, n), "rb") as f:
            blobs.append(f.read())

    fused = None
    if args.fused:
        fused = {k: os.path.join(ROOT, "models", "v4", f"{k}.fused.onnx") for k in ("det", "cls", "rec")}
    engine = rapidocr_config.build_engine(args.threads, fused)
    for b in blobs:  # warm-up
        engine(b)

    latencies = []
    stages = {"det": 0.0, "cls": 0.0, "rec": 0.0}
    lines = 0
    t_start = time.perf_counter()
    for _ in range(args.repeat):
        for b in blobs:
            t0 = time.perf_counter()
            res, elapse = engine(b)
            latencies.append(time.perf_counter() - t0)
            if res:
                lines += len(res)
                if len(elapse) == 3:
                    for k, v in zip(("det", "cls", "rec"), elapse):
                        stages[k] += v
    total = time.perf_counter() - t_start
    stages["other"] = max(0.0, sum(latencies) - sum(stages.values()))

    lat_ms = sorted(x * 1000.0 for x in latencies)
    out = {
        "engine": "rapidocr_onnxruntime 1.4.4" + (" (fused graphs)" if args.fused else ""),
        "threads": args.threads,
        "repeat": args.repeat,
        "images": len(names),
        "lines": lines // args.repeat,
        "img_per_s": round(len(latencies) / total, 3),
        "lines_per_s": round(lines / total, 3),
        "p50_ms": round(percentile(lat_ms, 50), 2),
        "p99_ms": round(percentile(lat_ms, 99), 2),
        "mean_ms": round(sum(lat_ms) / len(lat_ms), 2),
        "total_s": round(total, 3),
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"RapidOCR 1.4.4 (det max 960) | {args.dir} | threads {args.threads} | repeat {args.repeat}")
    print(f"{'images':>7} {'lines':>6} {'img/s':>8} {'lines/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    print(
        f"{out['images']:7d} {out['lines']:6d} {out['img_per_s']:8.2f} {out['lines_per_s']:8.2f} "
        f"{out['p50_ms']:8.1f} {out['p99_ms']:8.1f} {out['mean_ms']:8.1f}"
    )
    tot = sum(stages.values()) or 1.0
    print("stage totals over the timed passes (s):")
    for k in ("det", "cls", "rec", "other"):
        print(f"  {k:6s} {stages[k]:8.3f}  {100 * stages[k] / tot:5.1f}%")


if __name__ == "__main__":
    main()
