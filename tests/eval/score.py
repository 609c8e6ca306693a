"""Accuracy of `ocrfleet ocr --ndjson` output on human-labelled real documents.

    ./target/release/ocrfleet ocr --ndjson .eval/images > out.ndjson
    .venv/bin/python tests/eval/score.py .eval/ground_truth.json out.ndjson [more.ndjson ...]

DATA/ground_truth.json is a list of {"image": "images/x.png", "source", "lang",
"lines": [{"text", "box": [[x, y] * 4]}]} (tests/eval/fetch.py writes one;
tests/eval/run.py runs the engine and scores it in one go).

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
- exact sp: the same with spaces counted (runs of whitespace count as one space), over the
  sources whose labels keep the spaces between words (FUNSD; XFUND-zh and WildReceipt labels
  have none). The lines of a label are joined with a space.
- word box: of the labelled FUNSD words (word-level boxes in the labels) that the OCR output
  also has as a word (`lines[].words`, same text, case-insensitive, punctuation kept), the share
  whose box overlaps the label's by IoU >= 0.5. Blank when the output has no words.
- words: of the label words of four or more letters (FUNSD), the share found as a whole token
  (a run of letters and digits, lower-cased) in the image's OCR text. It is what a search for
  the word finds through a standard analyzer: a word glued to its neighbour is not found.
"""
import argparse
import json
import os
import re
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


SPACED = {"funsd", "funsd_train"}


def squash(s):
    return "".join(s.split())


def spaced(s):
    return " ".join(s.split()).lower()


def words(s):
    return re.findall(r"[^\W_]+", s.lower())


class Tally:
    def __init__(self):
        self.err = self.err_ci = self.chars = 0
        self.tp = self.n_pred = self.n_gt = 0
        self.exact = self.labels = 0
        self.exact_sp = self.labels_sp = 0
        self.words_found = self.words = 0
        self.box_ok = self.box_n = 0
        self.images = 0

    def metrics(self):
        p = self.tp / self.n_pred if self.n_pred else 0.0
        r = self.tp / self.n_gt if self.n_gt else 0.0
        nan = float("nan")
        return {
            "images": self.images, "labels": self.labels,
            "cer": self.err / max(1, self.chars), "cer_ci": self.err_ci / max(1, self.chars),
            "p": p, "r": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "exact": self.exact / max(1, self.labels),
            "exact_sp": self.exact_sp / self.labels_sp if self.labels_sp else nan,
            "words": self.words_found / self.words if self.words else nan,
            "word_box": self.box_ok / self.box_n if self.box_n else nan,
        }

    def row(self, name):
        m = self.metrics()
        return (f"{name:<28} {m['images']:>4} {m['labels']:>6} {m['cer']:>8.4f} {m['cer_ci']:>8.4f} "
                f"{m['p']:>6.3f} {m['r']:>6.3f} {m['f1']:>6.3f} {m['exact']:>6.3f} "
                f"{m['exact_sp']:>8.3f} {m['words']:>6.3f} {m['word_box']:>8.3f}")


HEADER = (f"{'output / source':<28} {'imgs':>4} {'labels':>6} {'CER':>8} {'CER ci':>8} "
          f"{'P':>6} {'R':>6} {'F1':>6} {'exact':>6} {'exact sp':>8} {'words':>6} {'word box':>8}")


def box_iou(a, b):
    it = inter(a, b)
    return it / (area(a) + area(b) - it) if it else 0.0


def score_image(gt_lines, pred_lines, tallies, source=""):
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
    err = err_ci = chars = exact = exact_sp = 0
    for i, (_, want) in enumerate(gts):
        got_lines = sorted(assigned.get(i, []), key=lambda x: ((x[0][1] + x[0][3]) / 2 // 10, x[0][0]))
        got_sp = spaced(" ".join(t for _, t in got_lines))
        exact_sp += got_sp == spaced(want)
        got = squash("".join(t for _, t in got_lines))
        want = squash(want)
        err += Levenshtein.distance(got, want)
        err_ci += Levenshtein.distance(got.lower(), want.lower())
        chars += len(want)
        exact += got.lower() == want.lower()
    found = set(words(" ".join(t for _, t in preds)))
    # Word boxes: label words against output words of the same text.
    pred_words = defaultdict(list)
    for p in pred_lines:
        for w in p.get("words", []):
            pred_words[w["text"].lower()].append(rect(w["box"]))
    box_ok = box_n = 0
    for g in gt_lines:
        for w in g.get("words", []):
            cands = pred_words.get(w["text"].strip().lower())
            if cands:
                box_n += 1
                box_ok += max(box_iou(rect(w["box"]), c) for c in cands) >= 0.5
    gt_words = [w for _, text in gts for w in words(text) if len(w) >= 4 and w.isalpha()]
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
        if source in SPACED:
            t.exact_sp += exact_sp
            t.labels_sp += len(gts)
            t.words += len(gt_words)
            t.words_found += sum(w in found for w in gt_words)
            t.box_ok += box_ok
            t.box_n += box_n


def score(ground_truth, output):
    """Tallies of one NDJSON output: (all images, {source: tally})."""
    gt = json.load(open(ground_truth, encoding="utf-8"))
    by_name = {os.path.basename(g["image"]): g for g in gt}
    total = Tally()
    per = defaultdict(Tally)
    seen = set()
    for line in open(output, encoding="utf-8"):
        if not line.strip():
            continue
        rec = json.loads(line)
        name = os.path.basename(rec.get("file", ""))
        g = by_name.get(name)
        if g is None:
            continue
        seen.add(name)
        score_image(g["lines"], rec.get("lines", []), [total, per[g["source"]]], g["source"])
    for name, g in by_name.items():
        if name not in seen:  # a failed image: every label is a deletion
            score_image(g["lines"], [], [total, per[g["source"]]], g["source"])
    return total, per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ground_truth")
    ap.add_argument("outputs", nargs="+")
    args = ap.parse_args()
    print(HEADER)
    for out in args.outputs:
        total, per = score(args.ground_truth, out)
        print(total.row(os.path.splitext(os.path.basename(out))[0]))
        for src in sorted(per):
            print(per[src].row(f"  {src}"))


if __name__ == "__main__":
    main()
