#!/usr/bin/env bash
# Engine benchmark side by side with Python RapidOCR 1.4.4 on the same images, weights,
# configuration (max/960) and thread count; prints ocrfleet's batch table and the ratio.
#   tests/bench/compare_cpu.sh [THREADS] [IMAGES_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
threads=${1:-2}
images=${2:-tests/fixtures/images}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check rapidocr_onnxruntime==1.4.4 onnxruntime==1.32.0
bash models/fetch.sh
cargo build --release -q -p ocrfleet
peer=$(mktemp)
# The peer runs twice and its faster run is kept: the ratio is conservative on a noisy box.
echo "# RapidOCR 1.4.4 (Python), $threads threads, $images: two runs, the faster one is the peer"
for i in 1 2; do
  .venv/bin/python tests/bench/rapidocr_bench.py "$images" --threads "$threads" --repeat 3 --json | tee -a "$peer.all"
done
python3 -c 'import json,sys; rows=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]; print(json.dumps(max(rows, key=lambda r: r["img_per_s"])))' "$peer.all" > "$peer"
rm -f "$peer.all"
# RapidOCR's work: never scaled up, one detector pass, crops of the box itself (ocrfleet's
# defaults upscale images under 736 px, look again at small print on large scans and pad crops).
./target/release/ocrfleet bench ocr --models v4 --images "$images" --threads "$threads" --repeat 3 \
  --det-upscale-to 0 --det-small-text-px 0 --crop-padding 0 --batch-sizes "${BATCH_SIZES:-1,2,4,8,16,32,64}" --peer "$peer"
rm -f "$peer"
