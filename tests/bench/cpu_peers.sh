#!/usr/bin/env bash
# ocrfleet's default set against its two CPU peers on the same images, whole process (model
# load included), each run one after the other on this machine:
#   bash tests/bench/cpu_peers.sh DIR [THREADS ...]        # default threads: 1 and all cores
# Peers (tests/bench/peer_ocr.py, in .venv-peers: `python3 -m venv .venv-peers &&
# .venv-peers/bin/pip install rapidocr_onnxruntime==1.4.4 onnxruntime==1.32.0 faster-paddle==1.0.4`):
# Python RapidOCR with the default set's weights, and faster-paddle 1.0.4 "small". Extra
# arguments for ocrfleet go in OCRFLEET_ARGS. Prints a table: wall seconds, pages per second,
# and ocrfleet's ratio against each peer.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:?usage: cpu_peers.sh DIR [THREADS ...]}
shift
threads=("$@")
[ ${#threads[@]} -gt 0 ] || threads=(1 "$(nproc)")
n=$(find -L "$dir" -maxdepth 1 \( -name '*.png' -o -name '*.jpg' -o -name '*.jpeg' \) | wc -l)
wall() { # command... → seconds of wall time, whole process
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > /dev/null 2>&1
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
echo "| threads | engine | wall s ($n images) | img/s | ocrfleet is |"
echo "|---|---|---|---|---|"
for t in "${threads[@]}"; do
  # shellcheck disable=SC2086
  ours=$(wall ./target/release/ocrfleet ocr --threads "$t" --host-threads "$t" ${OCRFLEET_ARGS:-} --ndjson "$dir")
  printf '| %s | ocrfleet (v4det-v6rec) | %.1f | %.2f | |\n' "$t" "$ours" "$(echo "$n / $ours" | bc -l)"
  for peer in rapidocr faster-paddle; do
    theirs=$(wall .venv-peers/bin/python tests/bench/peer_ocr.py "$peer" "$dir" --threads "$t")
    printf '| %s | %s | %.1f | %.2f | %.2f× |\n' "$t" "$peer" "$theirs" "$(echo "$n / $theirs" | bc -l)" "$(echo "$theirs / $ours" | bc -l)"
  done
done
