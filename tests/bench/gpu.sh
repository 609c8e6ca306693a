#!/usr/bin/env bash
# GPU benchmark, to run ON the CUDA host (it builds nothing there). Prepare here:
#   ../shared/gpu/stage.sh                                   # fills .gpu/1..4 (CUDA provider parts)
#   cargo build --release -p ocrfleet --features cuda
#   mkdir -p .gpu-run && cp target/release/ocrfleet .gpu-run/ && cp -r models/v4 .gpu-run/
# then carry .gpu/1, .gpu/2, .gpu/3 into /tmp/stage/ (one call each, see ../shared/gpu/README.md)
# and finally carry .gpu/4 and .gpu-run and run:  source .gpu/4/on-device.sh && bash tests/bench/gpu.sh
# Tables go to $OUT (or ./gpu-out).
set -euo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out" .gpu-run/models
[ -d .gpu-run/models/v4 ] || mv .gpu-run/v4 .gpu-run/models/v4
bin=.gpu-run/ocrfleet
dev=${DEVICE:-cuda:0}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1 || true
# Model-only: the shapes of ../shared/gpu/README.md, batch 1..64.
"$bin" bench models --device "$dev" --models-dir .gpu-run/models --repeat 20 --batch-sizes 1,8,16,32,64 \
  --shapes det:960x960,det:640x640,rec:48x160,rec:48x320,rec:48x640,rec:48x1280,cls:48x192 \
  2>"$out/models.log" | tee "$out/models.txt"
# Whole engine, per stage and pipeline, batch 1..64, on the fixtures.
"$bin" bench ocr --device "$dev" --models-dir .gpu-run/models --images tests/fixtures/images --repeat 5 \
  --batch-sizes 1,4,16,32,64 2>"$out/ocr.log" | tee "$out/ocr.txt"
