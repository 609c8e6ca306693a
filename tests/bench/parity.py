#!/usr/bin/env python3
"""GPU text against CPU text: two `ocrfleet ocr --ndjson` outputs of the same pages, compared
page by page as a character error rate (edit distance over the page's text, whitespace removed,
divided by the CPU text's length). Kernels sum in other orders on a GPU, so fp32 readings may
differ in rare characters, never by much.

    python3 tests/bench/parity.py CPU.ndjson GPU.ndjson [--max-cer 0.001]

Prints one line per differing page and a summary; exits 1 when the set's CER (all pages' edit
distances over all their characters) is over --max-cer, or a page is missing or failed on one
side only. Standard library only (the GPU host has no rapidfuzz): Myers' bit-parallel edit
distance over Python's big integers.
"""
import argparse
import json
import sys


def edit_distance(a, b):
    """Levenshtein distance between strings a and b (Myers 1999, Hyyrö's formulation)."""
    if not a:
        return len(b)
    if not b:
        return len(a)
    if len(a) > len(b):
        a, b = b, a
    m = len(a)
    peq = {}
    for i, ch in enumerate(a):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    top = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for ch in b:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


def pages(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        if not line.strip():
            continue
        r = json.loads(line)
        text = None if "error" in r else "".join("".join(l["text"] for l in r.get("lines", [])).split())
        out[r["file"].rsplit("/", 1)[-1]] = text
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cpu")
    ap.add_argument("gpu")
    ap.add_argument("--max-cer", type=float, default=0.001)
    args = ap.parse_args()
    cpu, gpu = pages(args.cpu), pages(args.gpu)
    bad = []
    errors = chars = differing = 0
    for name in sorted(cpu):
        a, b = cpu[name], gpu.get(name)
        if a is None or b is None:
            if a != b:
                bad.append(f"{name}: read on one side only (cpu {'failed' if a is None else 'ok'}, gpu {'missing/failed' if b is None else 'ok'})")
            continue
        d = edit_distance(a, b)
        errors += d
        chars += max(1, len(a))
        if d:
            differing += 1
            print(f"{name}: {d} edits over {len(a)} characters (CER {d / max(1, len(a)):.4f})")
    cer = errors / max(1, chars)
    print(f"parity: {len(cpu)} pages, {differing} differ, CER GPU against CPU {cer:.5f} (limit {args.max_cer})")
    for b in bad:
        print(b)
    return 0 if cer <= args.max_cer and not bad else 1


if __name__ == "__main__":
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "ab") == 2
    sys.exit(main())
