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
echo "# RapidOCR 1.4.4 (Python), $threads threads, $images"
.venv/bin/python tests/bench/rapidocr_bench.py "$images" --threads "$threads" --repeat 3 | tee /dev/stderr >/dev/null
.venv/bin/python tests/bench/rapidocr_bench.py "$images" --threads "$threads" --repeat 3 --json > "$peer"
./target/release/ocrfleet bench ocr --images "$images" --threads "$threads" --repeat 3 \
  --batch-sizes "${BATCH_SIZES:-1,2,4,8,16,32,64}" --peer "$peer"
rm -f "$peer"
