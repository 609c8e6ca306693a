#!/usr/bin/env bash
# ocrfleet against Python RapidOCR 1.4.4 on the same pages, weights (v4) and threads, one run
# after the other, with the downloaded and the fused graphs (models/make_fused.py) for both:
#   .venv/bin/python tests/bench/make_pages.py PAGES --count 12 --seed 7
#   bash tests/bench/side_by_side.sh PAGES [THREADS ...]      # default threads: 1 2
# Prints ocrfleet's tables (with the ratio against RapidOCR on the downloaded graphs) and
# RapidOCR's JSON lines. Needs a release build and the .venv of tests/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
pages=${1:?usage: side_by_side.sh PAGES [THREADS ...]}
shift
threads=("$@")
[ ${#threads[@]} -gt 0 ] || threads=(1 2)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in "${threads[@]}"; do
  .venv/bin/python tests/bench/rapidocr_bench.py "$pages" --threads "$t" --repeat 1 --json > "$tmp/peer.json"
  .venv/bin/python tests/bench/rapidocr_bench.py "$pages" --threads "$t" --repeat 1 --json --fused > "$tmp/peer-fused.json"
  for fused in false true; do
    echo "== threads $t, ocrfleet --fused-graphs $fused"
    ./target/release/ocrfleet bench ocr --images "$pages" --models v4 --threads "$t" --host-threads "$t" \
      --repeat 1 --batch-sizes 8 --stages pipeline --fused-graphs "$fused" --peer "$tmp/peer.json" \
      --det-upscale-to 0 --det-small-text-px 0 --crop-padding 0 2>/dev/null  # RapidOCR's work
  done
  echo "== threads $t, RapidOCR (downloaded graphs, then fused)"
  cat "$tmp/peer.json" "$tmp/peer-fused.json"
done
