"""Accuracy of `ocrfleet ocr --ndjson` output on human-labelled real documents.

    ./target/release/ocrfleet ocr --ndjson DATA/images > out.ndjson
    .venv/bin/python tests/bench/eval_real.py DATA/ground_truth.json out.ndjson [more.ndjson ...]

DATA/ground_truth.json is a list of {"image": "images/x.png", "source", "lang",
"lines": [{"text", "box": [[x, y] * 4]}]} (tests/bench/fetch_eval.sh writes one).

Metrics (per output file, over all images, and per source):
- CER: labels may be blocks of several lines (FUNSD, XFUND), so the text is compared per label,
  not per detected line. Each detected line goes to the label box that covers most of it (at
  least half of its box area); the lines of one label are joined in reading order (top to
  bottom, then left to right) and compared with the label's text. A label with no line counts
  as all deletions, a line with no label as all insertions. CER = edit distance / label
  characters, with whitespace removed (the sources disagree on spaces), case-sensitive and
  case-insensitive.
- det P/R/F1: one-to-one matching of detected line boxes and label boxes by IoU >= 0.5
  (axis-aligned), greedy by IoU.
- exact: share of labels whose joined text equals the label, case- and space-insensitive.
"""
import argparse
import json
import os
from collections import defaultdict

from rapidfuzz.distance import Levenshtein


def rect(quad):
    xs = [p[0] for p in quad]
    ys = [p[1] for p in quad]
    return min(xs), min(ys), max(xs), max(ys)


def area(r):
    return max(0, r[2] - r[0]) * max(0, r[3] - r[1])


def inter(a, b):
    return area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def squash(s):
    return "".join(s.split())


class Tally:
    def __init__(self):
        self.err = self.err_ci = self.chars = 0
        self.tp = self.n_pred = self.n_gt = 0
        self.exact = self.labels = 0
        self.images = 0

    def row(self, name):
        p = self.tp / self.n_pred if self.n_pred else 0.0
        r = self.tp / self.n_gt if self.n_gt else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        return (f"{name:<28} {self.images:>4} {self.labels:>6} {self.err / max(1, self.chars):>8.4f} "
                f"{self.err_ci / max(1, self.chars):>8.4f} {p:>6.3f} {r:>6.3f} {f1:>6.3f} "
                f"{self.exact / max(1, self.labels):>6.3f}")


def score_image(gt_lines, pred_lines, tallies):
    gts = [(rect(g["box"]), g["text"]) for g in gt_lines if squash(g["text"])]
    preds = [(rect(p["box"]), p["text"]) for p in pred_lines]
    assigned = defaultdict(list)
    stray = []
    for pr, text in preds:
        best, best_cov = None, 0.0
        for i, (gr, _) in enumerate(gts):
            cov = inter(pr, gr) / max(1, area(pr))
            if cov > best_cov:
                best, best_cov = i, cov
        if best is not None and best_cov >= 0.5:
            assigned[best].append((pr, text))
        else:
            stray.append(text)
    err = err_ci = chars = exact = 0
    for i, (_, want) in enumerate(gts):
        got = sorted(assigned.get(i, []), key=lambda x: ((x[0][1] + x[0][3]) / 2 // 10, x[0][0]))
        got = squash("".join(t for _, t in got))
        want = squash(want)
        err += Levenshtein.distance(got, want)
        err_ci += Levenshtein.distance(got.lower(), want.lower())
        chars += len(want)
        exact += got.lower() == want.lower()
    extra = sum(len(squash(t)) for t in stray)
    err += extra
    err_ci += extra
    # Detection: greedy one-to-one by IoU.
    pairs = []
    for i, (gr, _) in enumerate(gts):
        for j, (pr, _) in enumerate(preds):
            it = inter(gr, pr)
            if it:
                iou = it / (area(gr) + area(pr) - it)
                if iou >= 0.5:
                    pairs.append((iou, i, j))
    used_g, used_p, tp = set(), set(), 0
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_g and j not in used_p:
            used_g.add(i)
            used_p.add(j)
            tp += 1
    for t in tallies:
        t.err += err
        t.err_ci += err_ci
        t.chars += chars
        t.tp += tp
        t.n_pred += len(preds)
        t.n_gt += len(gts)
        t.exact += exact
        t.labels += len(gts)
        t.images += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ground_truth")
    ap.add_argument("outputs", nargs="+")
    args = ap.parse_args()
    gt = json.load(open(args.ground_truth, encoding="utf-8"))
    by_name = {os.path.basename(g["image"]): g for g in gt}
    print(f"{'output / source':<28} {'imgs':>4} {'labels':>6} {'CER':>8} {'CER ci':>8} "
          f"{'P':>6} {'R':>6} {'F1':>6} {'exact':>6}")
    for out in args.outputs:
        total = Tally()
        per = defaultdict(Tally)
        seen = set()
        for line in open(out, encoding="utf-8"):
            if not line.strip():
                continue
            rec = json.loads(line)
            name = os.path.basename(rec.get("file", ""))
            g = by_name.get(name)
            if g is None:
                continue
            seen.add(name)
            score_image(g["lines"], rec.get("lines", []), [total, per[g["source"]]])
        for name, g in by_name.items():
            if name not in seen:  # a failed image: every label is a deletion
                score_image(g["lines"], [], [total, per[g["source"]]])
        label = os.path.splitext(os.path.basename(out))[0]
        print(total.row(label))
        for src in sorted(per):
            print(per[src].row(f"  {src}"))


if __name__ == "__main__":
    main()
