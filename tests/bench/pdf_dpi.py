#!/usr/bin/env python3
"""Which resolution to render born-digital PDF pages at for OCR: pages of known text at font
sizes from 6 to 14 pt (reportlab, the Vera font), forced through OCR (`--pdf-text ocr`) at each
resolution, with the character error rate per font size and the time.

    .venv/bin/python tests/bench/pdf_dpi.py [--dpis 72 100 150 200 300] [--threads 2]

A page carries six lines of each of three sizes; the text is ordinary English and figures from
a fixed list, each line numbered so that no two are alike. CER = edit distance over the page's text with whitespace removed, against the
text drawn (rapidfuzz). Needs reportlab and rapidfuzz in .venv. Not run by CI.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from rapidfuzz.distance import Levenshtein
from reportlab.lib.pagesizes import letter
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas

import reportlab

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
pdfmetrics.registerFont(TTFont("Vera", os.path.join(os.path.dirname(reportlab.__file__), "fonts", "Vera.ttf")))

SENTENCES = [
    "Invoice 2026-0417 issued to Northwind Traders",
    "Payment due within 30 days of the invoice date",
    "Total amount 1,284.50 EUR including VAT 19%",
    "Delivery address 42 Harbour Street, Rotterdam",
    "Order reference PO-88213 placed on 3 March",
    "Please quote the invoice number with payment",
    "Bank transfer to IBAN NL91 ABNA 0417 1643 00",
    "Questions? Contact accounts@example.com",
    "Item 7: steel brackets, 120 units at 3.75 each",
    "Discount of 5 percent applied for early payment",
    "Signed for receipt by the warehouse manager",
    "Page totals are carried over to the summary",
]
SIZES = [[6, 7, 8], [9, 10, 11], [12, 14, 8]]


def make(path):
    """Three pages; returns [(page, size, text)] per line."""
    c = canvas.Canvas(path, pagesize=letter, invariant=1)
    truth = []
    for page, sizes in enumerate(SIZES):
        y = 740
        k = 0
        for size in sizes:
            for _ in range(6):
                # Unique per line, so that a line is only ever matched with its own reading.
                text = f"{100 + 18 * page + k} " + SENTENCES[(k + page * 5) % len(SENTENCES)]
                k += 1
                c.setFont("Vera", size)
                c.drawString(60, y, text)
                truth.append((page + 1, size, text))
                y -= size * 2.2
            y -= 20
        c.showPage()
    c.save()
    return truth


def squash(s):
    return "".join(s.split())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dpis", nargs="+", type=int, default=[72, 100, 150, 200, 300])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "ocrfleet"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ocrfleet-pdf-dpi-")
    pdf = os.path.join(tmp, "sizes.pdf")
    truth = make(pdf)
    sizes = sorted({s for _, s, _ in truth})
    print(f"# born-digital pages forced through OCR (--pdf-text ocr), font sizes {sizes} pt; "
          f"CER by font size (whitespace removed); threads {args.threads}")
    print(f"{'dpi':>4} {'px (Letter)':>12} " + " ".join(f"{str(s) + 'pt':>7}" for s in sizes) + f" {'all':>7} {'wall s':>7}")
    for dpi in args.dpis:
        cmd = [args.bin, "ocr", "--ndjson", "--pdf-text", "ocr", "--pdf-dpi", str(dpi),
               "--threads", str(args.threads), "--models-dir", os.path.join(ROOT, "models"), pdf]
        t0 = time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        wall = time.monotonic() - t0
        rec = json.loads(out.splitlines()[0])
        lines = rec["lines"]
        # Each truth line to the OCR line nearest in order on its page (lines are in reading
        # order, one per drawn line when detection is right): compare per page and size by
        # aligning each drawn line with the best-matching OCR line of its page.
        errs = {s: [0, 0] for s in sizes}
        for page, size, text in truth:
            cands = [squash(l["text"]) for l in lines if l["page"] == page]
            t = squash(text)
            best = min((Levenshtein.distance(t, c) for c in cands), default=len(t))
            errs[size][0] += min(best, len(t))
            errs[size][1] += len(t)
        tot = sum(e for e, _ in errs.values()) / sum(n for _, n in errs.values())
        w = round(8.5 * dpi)
        h = round(11 * dpi)
        cells = " ".join(f"{errs[s][0] / errs[s][1]:>7.4f}" for s in sizes)
        print(f"{dpi:>4} {f'{w}x{h}':>12} {cells} {tot:>7.4f} {wall:>7.1f}")


if __name__ == "__main__":
    sys.exit(main())
