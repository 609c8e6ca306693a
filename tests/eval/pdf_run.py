#!/usr/bin/env python3
"""The evaluation set's pages as image-only PDFs (as a scanner or a phone app writes them),
read by `ocrfleet ocr` at several rendering resolutions, scored beside the images themselves.

    .venv/bin/python tests/eval/pdf_run.py [--dpis 100 150 200 300] [--data .eval] [--threads 0]

Each image becomes one PDF page of its physical size: FUNSD forms are 100 dpi scans, XFUND-zh
forms 300 dpi A4 scans, WildReceipt photos are placed on an A4 page (fitted to its height), as
scanning apps do. The image is embedded unchanged (JPEG as is, PNG losslessly), so a PDF page
differs from its image only by what rendering at DPI does to it. The rendered page's line boxes
are scaled back to the image's pixels before scoring with tests/eval/score.py (same metrics as
crates/ocr/docs/accuracy.md). Needs reportlab (tests/run.sh installs it into .venv). CI does not run
this (the images cannot be committed).
"""
import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import score  # noqa: E402

from PIL import Image  # noqa: E402
from reportlab.lib.utils import ImageReader  # noqa: E402
from reportlab.pdfgen import canvas  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NATIVE_DPI = {"funsd": 100, "xfund_zh": 300}
A4_HEIGHT_IN = 11.69


def wrap(gt, data, out_dir):
    """One PDF per image; returns {pdf name: (image name, image width px, page width pt)}."""
    os.makedirs(out_dir, exist_ok=True)
    meta = {}
    for g in gt:
        path = os.path.join(data, g["image"])
        name = os.path.basename(path)
        with Image.open(path) as im:
            w, h = im.size
        dpi = NATIVE_DPI.get(g["source"]) or max(w, h) / A4_HEIGHT_IN
        pw, ph = w * 72.0 / dpi, h * 72.0 / dpi
        pdf = os.path.splitext(name)[0] + ".pdf"
        c = canvas.Canvas(os.path.join(out_dir, pdf), pagesize=(pw, ph), invariant=1)
        c.drawImage(ImageReader(path), 0, 0, pw, ph)
        c.showPage()
        c.save()
        meta[pdf] = (name, w, pw)
    return meta


def run(cmd, out):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(out, "w", encoding="utf-8") as f:
        subprocess.run(cmd, stdout=f, check=False)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def rescale(src, dst, meta):
    """The PDF run's output with file names and boxes in the images' terms."""
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for line in f:
            rec = json.loads(line)
            pdf = os.path.basename(rec.get("file", ""))
            if pdf not in meta:
                continue
            name, img_w, _ = meta[pdf]
            rec["file"] = name
            if "lines" in rec:
                k = img_w / rec["width"]
                for l in rec["lines"]:
                    l["box"] = [[x * k, y * k] for x, y in l["box"]]
                    for w in l.get("words", []):
                        w["box"] = [[x * k, y * k] for x, y in w["box"]]
            out.write(json.dumps(rec) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, ".eval"))
    ap.add_argument("--dpis", nargs="+", type=int, default=[100, 150, 200, 300])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "ocrfleet"))
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "models"))
    args = ap.parse_args()
    gt_path = os.path.join(args.data, "ground_truth.json")
    gt = json.load(open(gt_path, encoding="utf-8"))
    pdf_dir = os.path.join(args.data, "pdf")
    runs = os.path.join(args.data, "runs")
    os.makedirs(runs, exist_ok=True)
    meta = wrap(gt, args.data, pdf_dir)
    base = [args.bin, "ocr", "--ndjson", "--threads", str(args.threads), "--models-dir", args.models_dir]
    rows = []
    out = os.path.join(runs, "images.ndjson")
    wall, cpu = run(base + [os.path.join(args.data, "images")], out)
    rows.append(("images", out, wall, cpu))
    for dpi in args.dpis:
        raw = os.path.join(runs, f"pdf-{dpi}.raw.ndjson")
        wall, cpu = run(base + ["--pdf-dpi", str(dpi), pdf_dir], raw)
        out = os.path.join(runs, f"pdf-{dpi}dpi.ndjson")
        rescale(raw, out, meta)
        rows.append((f"pdf {dpi} dpi", out, wall, cpu))
    print(f"# {len(gt)} pages, `ocrfleet ocr` (default models), threads {args.threads or 'all'}; "
          "CER and det F1 from tests/eval/score.py")
    print(f"{'input':<14} {'CER':>7} {'dCER':>7} {'det F1':>7} {'by source (CER)':<44} {'wall s':>7} {'CPU s':>7}")
    first = None
    for name, out, wall, cpu in rows:
        total, per = score.score(gt_path, out)
        m = total.metrics()
        cer = m["cer"]
        first = cer if first is None else first
        srcs = " ".join(f"{s}={per[s].metrics()['cer']:.4f}" for s in sorted(per))
        print(f"{name:<14} {cer:>7.4f} {cer - first:>+7.4f} {m['f1']:>7.3f} {srcs:<44} {wall:>7.1f} {cpu:>7.1f}")


if __name__ == "__main__":
    main()
