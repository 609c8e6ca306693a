#!/usr/bin/env python3
"""How much of the detector's input is padding under each shape policy, per image folder.

    .venv/bin/python tests/bench/canvas_waste.py DIR [DIR ...] [--limit 960]

Mirrors the engine's planning (crates/ocr/src/det/mod.rs: long side down to the limit, sides
rounded to 32, then padded to a canvas) for three policies:
  own        each image its own shape (CPU; no padding beyond the rounding)
  sides10    the earlier CUDA policy: each side padded to one of ten lengths (up to 100 shapes)
  canvases   DetConfig::cuda_canvases: 10 fixed shapes, the smallest that holds the image
and prints, per folder, the distinct shapes used and the share of tensor pixels that are padding
(padding costs detector compute in proportion).
"""
import argparse
import math
import os

from PIL import Image


def plan(w, h, limit):
    ratio = limit / max(w, h) if max(w, h) > limit else 1.0
    r32 = lambda v: max(32, int(round(int(v * ratio) / 32)) * 32)  # noqa: E731 (Python's round: ties to even)
    return r32(w), r32(h)


def cuda_canvases(limit):
    up32 = lambda v: max(32, math.ceil(v / 32) * 32)  # noqa: E731
    out = set()
    for tier in (limit, limit / 2):
        long = up32(tier)
        out.add((long, long))
        for r in (0.75, 0.5625):
            short = up32(tier * r)
            out.update({(long, short), (short, long)})
    return sorted(out)


def sides(buckets):
    pick = lambda v: next((b for b in buckets if b >= v), v)  # noqa: E731
    return lambda w, h: (pick(w), pick(h))


def canvas(cs):
    def f(w, h):
        fits = [(cw * ch, cw, ch) for cw, ch in cs if cw >= w and ch >= h]
        return min(fits)[1:] if fits else (w, h)
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--limit", type=int, default=960)
    a = ap.parse_args()
    policies = {
        "own": lambda w, h: (w, h),
        "sides10": sides([96, 160, 224, 320, 480, 544, 640, 736, 832, 960]),
        "canvases": canvas(cuda_canvases(a.limit)),
    }
    print(f"# detector padding at limit {a.limit}; canvases: {cuda_canvases(a.limit)}")
    print(f"{'folder':<28} {'images':>6} " + " ".join(f"{p + ' shapes':>16} {p + ' pad %':>14}" for p in policies))
    for d in a.dirs:
        sizes = []
        for f in sorted(os.listdir(d)):
            if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")):
                with Image.open(os.path.join(d, f)) as im:
                    sizes.append(im.size)
        row = f"{os.path.basename(os.path.normpath(d)):<28} {len(sizes):>6} "
        for fn in policies.values():
            used = total = 0
            shapes = set()
            for w, h in sizes:
                rw, rh = plan(w, h, a.limit)
                cw, ch = fn(rw, rh)
                used += rw * rh
                total += cw * ch
                shapes.add((cw, ch))
            row += f"{len(shapes):>16} {100 * (total - used) / max(total, 1):>14.1f} "
        print(row)


if __name__ == "__main__":
    main()
