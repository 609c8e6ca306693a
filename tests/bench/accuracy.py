"""CER of `ocrfleet ocr --ndjson` output against the fixtures' ground truth.

    ./target/release/ocrfleet ocr --ndjson tests/fixtures/images > out.ndjson
    python3 tests/bench/accuracy.py out.ndjson [tests/fixtures/ground_truth.json]

Prints CER with spaces ignored and with spaces counted (lines joined by newlines).
"""
import json
import os
import sys


def lev(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def main():
    out = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
    gt_path = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/ground_truth.json"
    gt = json.load(open(gt_path, encoding="utf-8"))
    e_ns = n_ns = e_ws = n_ws = lines = 0
    for rec in out:
        name = os.path.basename(rec["file"])
        if name not in gt or "lines" not in rec:
            continue
        want = gt[name]
        got = [l["text"] for l in rec["lines"]]
        lines += len(got)
        strip = lambda s: "".join(c for c in s if not c.isspace())
        e_ns += lev(strip("".join(got)), strip("".join(want)))
        n_ns += len(strip("".join(want)))
        e_ws += lev("\n".join(got), "\n".join(want))
        n_ws += len("\n".join(want))
    print(f"images {len(out)} lines {lines}  CER spaces ignored {100*e_ns/n_ns:.2f}% ({e_ns}/{n_ns})  "
          f"spaces counted {100*e_ws/n_ws:.2f}% ({e_ws}/{n_ws})")


if __name__ == "__main__":
    main()
