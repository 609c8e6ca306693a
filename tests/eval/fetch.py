#!/usr/bin/env python3
"""Fetches the real-document evaluation set and writes its ground truth.

    python3 tests/eval/fetch.py [--out .eval] [--mirror DIR]
    python3 tests/eval/fetch.py --manifest SPACES_MANIFEST.tsv --out .eval-heldout   # held out
    python3 tests/eval/fetch.py --manifest HELDOUT_MANIFEST.tsv --out .eval-heldout-rz

60 human-labelled real images: 30 FUNSD forms (scanned, English), 15 XFUND-zh forms (scanned,
Chinese) and 15 WildReceipt receipts (phone photos, English). Their licences do not allow the
project to redistribute them (tests/eval/SOURCES.md), so nothing is committed but the list of
files, each pinned to a git commit and a sha256 (tests/eval/MANIFEST.tsv). This script
downloads them from raw.githubusercontent.com (or reads them from local git mirrors with
--mirror DIR, which holds DIR/<owner>+<name>/repo as bare repositories), checks every
checksum, and writes:

    OUT/images/<source>_<name>   the images, unchanged
    OUT/ground_truth.json        [{"image", "source", "lang", "width", "height",
                                   "lines": [{"text", "box": [[x, y] * 4],
                                              "words": [{"text", "box"}] (FUNSD only)}]}]

With --manifest SPACES_MANIFEST.tsv it fetches the 60 FUNSD *training* forms instead (the
space study's data, which the evaluation set never includes): a held-out set on which
choices made on the evaluation set can be checked. HELDOUT_MANIFEST.tsv holds 20 more
WildReceipt photos (from the end of its test list, none a re-encoding of an evaluation photo)
and 20 more XFUND-zh forms (zh_val_16..35): the held-out receipts and Chinese forms.

Boxes are quads in pixel coordinates, clockwise from the top-left corner. Labels that are empty
or only '#' are skipped. CI does not need this set; `tests/eval/run.sh` uses it.
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.request

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
LANG = {"funsd": "en", "funsd_train": "en", "xfund_zh": "zh", "wildreceipt": "en"}


def read_manifest(name="MANIFEST.tsv"):
    rows = []
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            source, kind, image, repo, commit, path, sha = line.rstrip("\n").split("\t")
            rows.append(dict(source=source, kind=kind, image=image, repo=repo, commit=commit,
                             path=path, sha256=sha))
    return rows


def get(row, cache, mirror):
    """The file's bytes, checked against its sha256 (cached under OUT/.raw)."""
    dest = os.path.join(cache, row["repo"].replace("/", "+"), row["commit"], row["path"])
    if os.path.exists(dest):
        data = open(dest, "rb").read()
        if hashlib.sha256(data).hexdigest() == row["sha256"]:
            return data
    if mirror:
        gd = os.path.join(mirror, row["repo"].replace("/", "+"), "repo")
        data = subprocess.run(["git", "--git-dir", gd, "show", f"{row['commit']}:{row['path']}"],
                              check=True, capture_output=True).stdout
    else:
        url = f"https://raw.githubusercontent.com/{row['repo']}/{row['commit']}/{row['path']}"
        for attempt in range(4):
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    data = r.read()
                break
            except OSError as e:
                if attempt == 3:
                    sys.exit(f"fetch.py: cannot download {url}: {e}")
                time.sleep(2 ** attempt)
    got = hashlib.sha256(data).hexdigest()
    if got != row["sha256"]:
        sys.exit(f"fetch.py: {row['repo']}@{row['commit'][:10]}:{row['path']}: sha256 {got}, "
                 f"manifest says {row['sha256']}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as f:
        f.write(data)
    return data


def quad(points):
    """Rounds a quad and orders it clockwise (on screen) from the top-left corner."""
    pts = [[round(float(x), 1) for x in p] for p in points]
    pts = [[int(x) if x == int(x) else x for x in p] for p in pts]
    if sum(pts[i][0] * pts[(i + 1) % 4][1] - pts[(i + 1) % 4][0] * pts[i][1] for i in range(4)) < 0:
        pts = pts[::-1]
    k = min(range(4), key=lambda i: (pts[i][0] + pts[i][1], pts[i][1]))
    return pts[k:] + pts[:k]


def labelled(text):
    text = text.strip()
    return bool(text) and not set(text) <= {"#"}


def labels(source, row, files):
    """(text, quad, words) of each label of one image; words (FUNSD only) are (text, quad)."""
    rect = lambda b: [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]]
    if source in ("funsd", "funsd_train"):
        form = json.loads(files[(source, "labels", row["image"])])["form"]
        return [(e["text"], rect(e["box"]),
                 [(w["text"], rect(w["box"])) for w in e.get("words", []) if labelled(w["text"])])
                for e in form]
    if source == "xfund_zh":
        for line in files[("xfund_zh", "labels", "")].decode("utf-8").splitlines():
            name, js = line.split("\t", 1)
            if name == row["image"]:
                return [(e["transcription"], e["points"], None) for e in json.loads(js)]
    if source == "wildreceipt":
        for line in files[("wildreceipt", "labels", "")].decode("utf-8").splitlines():
            d = json.loads(line)
            if d["file_name"] == row["path"][len("wildreceipt/"):]:
                return [(a["text"], [a["box"][0:2], a["box"][2:4], a["box"][4:6], a["box"][6:8]], None)
                        for a in d["annotations"]]
    sys.exit(f"fetch.py: no labels for {source} {row['image']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "..", "..", ".eval"))
    ap.add_argument("--mirror", help="read the files from local bare git mirrors instead")
    ap.add_argument("--manifest", default="MANIFEST.tsv",
                    help="file list in tests/eval (SPACES_MANIFEST.tsv: the held-out FUNSD training "
                         "forms; HELDOUT_MANIFEST.tsv: held-out receipts and Chinese forms)")
    args = ap.parse_args()
    rows = read_manifest(args.manifest)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    cache = os.path.join(args.out, ".raw")
    files = {}
    for row in rows:
        files[(row["source"], row["kind"], row["image"])] = get(row, cache, args.mirror)
    entries = []
    for row in rows:
        if row["kind"] != "image":
            continue
        source = row["source"]
        data = files[(source, "image", row["image"])]
        name = f"{source}_{row['image']}"
        with open(os.path.join(args.out, "images", name), "wb") as f:
            f.write(data)
        w, h = Image.open(io.BytesIO(data)).size
        lines = []
        for t, q, words in labels(source, row, files):
            if labelled(t):
                lines.append({"text": t.strip(), "box": quad(q)})
                if words is not None:
                    lines[-1]["words"] = [{"text": wt.strip(), "box": quad(wq)} for wt, wq in words]
        entries.append({"image": f"images/{name}", "source": source, "lang": LANG[source],
                        "width": w, "height": h, "lines": lines})
    with open(os.path.join(args.out, "ground_truth.json"), "w", encoding="utf-8") as f:
        json.dump(entries, f, ensure_ascii=False, indent=1)
    n = sum(len(e["lines"]) for e in entries)
    print(f"fetch.py: {len(entries)} images, {n} labelled lines in {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
