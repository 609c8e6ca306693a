#!/usr/bin/env python3
"""Where do the word spaces that the recogniser drops sit in its CTC alignment? The measurement
behind crates/ocr/src/words.rs's SpaceRule.

    .venv/bin/python tests/eval/space_study.py [--models v4 v6] [--mirror DIR] [--cache DIR]

Data: 60 FUNSD *training* forms (tests/eval/SPACES_MANIFEST.tsv, pinned and checksummed like the
evaluation set, which this never reads). For every labelled entity on one text line, the entity
box (padded by 0.3 of its height, as a detector box is) is read by the recogniser alone (full
softmax, ONNX Runtime, height 48). Entities whose characters come out right (spaces ignored)
give, for each gap between two characters, whether the label has a space there, whether the
model emitted one, the step distance between the two characters against the line's median,
and the largest space-class probability on the steps between them. The tables show how many of
the dropped spaces each rule puts back and how many wrong spaces it inserts.
"""
import argparse
import io
import json
import os
import statistics
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fetch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def gaps_of(model, rows, files):
    sess = ort.InferenceSession(os.path.join(ROOT, "models", model, "rec.onnx"),
                                providers=["CPUExecutionProvider"])
    chars = [""] + sess.get_modelmeta().custom_metadata_map["character"].splitlines() + [" "]
    space = len(chars) - 1
    out = []
    for row in rows:
        if row["kind"] != "image":
            continue
        img = Image.open(io.BytesIO(files[("labels", row["image"])][1])).convert("RGB")
        for e in json.loads(files[("labels", row["image"])][0])["form"]:
            ws = e["words"]
            if len(ws) < 2 or any(not w["text"].strip() for w in ws):
                continue
            ys = [(w["box"][1] + w["box"][3]) / 2 for w in ws]
            hs = [w["box"][3] - w["box"][1] for w in ws]
            if max(ys) - min(ys) > 0.5 * min(hs):
                continue  # more than one line
            x0, y0, x1, y1 = e["box"]
            pad = int(0.3 * (y1 - y0))
            crop = img.crop((x0 - pad, y0 - pad, x1 + pad, y1 + pad))
            w = max(8, int(round(48 * crop.width / crop.height)))
            px = np.asarray(crop.resize((w, 48), Image.BILINEAR), dtype=np.float32)[:, :, ::-1]
            x = np.zeros((1, 3, 48, (w + 7) // 8 * 8), np.float32)
            x[0, :, :, :w] = (px.transpose(2, 0, 1) / 255 - 0.5) / 0.5
            p = sess.run(None, {"x": x})[0][0]
            glyphs, prev = [], -1
            for t, b in enumerate(p.argmax(1)):
                if b != 0 and b != prev:
                    glyphs.append([chars[b], t, t])
                elif b != 0:
                    glyphs[-1][2] = t
                prev = b
            text = "".join(g[0] for g in glyphs)
            want = " ".join(w["text"].strip() for w in ws)
            if "".join(text.split()) != "".join(want.split()):
                continue
            truth, k = set(), 0  # the label's spaces, as "after non-space glyph k-1"
            for c in want:
                if c == " ":
                    truth.add(k - 1)
                else:
                    k += 1
            emitted, k = set(), -1
            for g in glyphs:
                if g[0] == " ":
                    emitted.add(k)
                else:
                    k += 1
            ns = [g for g in glyphs if g[0] != " "]
            pitch = statistics.median([b[1] - a[1] for a, b in zip(ns, ns[1:])])
            for i, (a, b) in enumerate(zip(ns, ns[1:])):
                between = p[a[2] + 1:b[1], space]
                out.append(dict(space=i in truth, emitted=i in emitted, d=b[1] - a[1], pitch=pitch,
                                psp=float(between.max()) if len(between) else 0.0, pairs=len(ns) - 1))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["v4", "v6"])
    ap.add_argument("--mirror")
    ap.add_argument("--cache", default=os.path.join(ROOT, ".eval", ".raw"))
    args = ap.parse_args()
    rows = fetch.read_manifest("SPACES_MANIFEST.tsv")
    got = {}
    for r in rows:
        got.setdefault(r["image"], {})[r["kind"]] = fetch.get(r, args.cache, args.mirror)
    files = {("labels", k): (v["labels"], v["image"]) for k, v in got.items()}
    for model in args.models:
        g = gaps_of(model, rows, files)
        missed = [r for r in g if r["space"] and not r["emitted"]]
        plain = [r for r in g if not r["space"] and not r["emitted"]]
        spaces = sum(r["space"] for r in g)
        print(f"\n{model}: {len(g)} gaps between characters, {spaces} spaces in the labels, "
              f"{spaces - len(missed)} emitted by the model, {len(missed)} dropped; "
              f"{sum(r['emitted'] and not r['space'] for r in g)} emitted wrongly")
        print(f"| rule | dropped spaces put back (of {len(missed)}) | wrong spaces inserted (of {len(plain)}) |")
        print("|---|---|---|")
        rules = [(f"space probability >= {t}", lambda r, t=t: r["psp"] >= t) for t in (0.02, 0.05, 0.1, 0.2)]
        rules += [(f"distance >= pitch + {e} steps", lambda r, e=e: r["pairs"] >= 3 and r["d"] >= r["pitch"] + e)
                  for e in (1, 2, 3)]
        rules.append(("probability >= 0.05 or distance >= pitch + 3 (the default)",
                      lambda r: r["psp"] >= 0.05 or (r["pairs"] >= 3 and r["d"] >= r["pitch"] + 3)))
        for name, rule in rules:
            print(f"| {name} | {sum(map(rule, missed))} | {sum(map(rule, plain))} |")


if __name__ == "__main__":
    main()
