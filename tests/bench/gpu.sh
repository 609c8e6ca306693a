#!/usr/bin/env bash
# GPU benchmark, to run ON the CUDA host (it builds nothing there). Prepare here with
#   bash tests/bench/gpu_prepare.sh [REAL_PAGES_DIR]
# which says which five calls to make; the last one runs
#   source .gpu/4/on-device.sh && bash tests/bench/gpu.sh
# Every section has its own time limit, so a slow one cannot eat the others; tables go to $OUT
# (or ./gpu-out) as they are made: results.txt (every table), stderr.log, worker.log, gpu.txt,
# util.txt (nvidia-smi utilisation every 500 ms).
# Sections, in this order (the scarcest evidence first):
#   2. engine on 40 rendered document pages (~77 lines each), v4, batch 1..32
#   2b. engine on the real pages (when staged), v4 and v6
#   5. end to end: noida-db (Kafka + ES) + loopback image server + one worker on cuda:0, v4,
#      on the real pages when staged, else the rendered ones
#   1. model only (det/rec/cls at fixed shapes, batch 1..64), v4
#   3. the same with v6 (if staged)
#   3b. v4 fp16 (models/make_fp16.py, made here)
#   4. engine on the 31 single-line fixtures, v4
#
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
run=.gpu-run
bin=$run/ocrfleet
dev=${DEVICE:-cuda:0}
extra=/tmp/stage/extra
[ -d $extra/v6 ] && [ ! -e $run/models/v6 ] && ln -s $extra/v6 $run/models/v6
cp $extra/v4/*.fp16.onnx $run/models/v4/ 2>/dev/null || true
pages=$run/pages
[ -d $run/real ] && pages=$run/real
log() { echo "== $(date +%T) $*" | tee -a "$out/results.txt" >>"$out/stderr.log"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
# The device's own utilisation counter, every 500 ms, to set beside the "in run %" columns.
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 500 > "$out/util.txt" 2>&1 &
smi=$!

log "2. engine on pages, v4"
timeout 100 "$bin" bench ocr --device "$dev" --models-dir $run/models --images $run/pages --repeat 2 \
  --batch-sizes 1,8,32 --stages det,rec,pipeline 2>>"$out/stderr.log" | tee -a "$out/results.txt"

if [ -d $run/real ]; then
  log "2b. engine on real pages, v4 then v6"
  timeout 45 "$bin" bench ocr --device "$dev" --models-dir $run/models --images $run/real --repeat 2 \
    --batch-sizes 8,32 --stages pipeline 2>>"$out/stderr.log" | tee -a "$out/results.txt"
  [ -e $run/models/v6 ] && timeout 45 "$bin" bench ocr --device "$dev" --models v6 --models-dir $run/models \
    --images $run/real --repeat 2 --batch-sizes 8,32 --stages pipeline 2>>"$out/stderr.log" | tee -a "$out/results.txt"
fi

log "5. end to end"
timeout 130 python3 tests/bench/e2e.py --kafka noida --noida $extra/noida-db --bin "$bin" \
  --models-dir $run/models --images $pages --copies 20 --partitions 12 --device "$dev" \
  --threads 4 --ocr-batch 32 --no-engine-only --worker-arg=--fetch-concurrency=128 \
  --worker-log "$out/worker.log" 2>>"$out/stderr.log" | tee -a "$out/results.txt"
log "1. model only"
timeout 60 "$bin" bench models --device "$dev" --models-dir $run/models --repeat 20 --batch-sizes 1,8,32,64 \
  --shapes det:960x960,det:960x736,det:640x640,rec:48x320,rec:48x640,rec:48x1280,cls:48x192 \
  2>>"$out/stderr.log" | tee -a "$out/results.txt"

if [ -e $run/models/v6 ]; then
  log "3. engine on pages, v6"
  timeout 50 "$bin" bench ocr --device "$dev" --models v6 --models-dir $run/models --images $run/pages \
    --repeat 2 --batch-sizes 8,32 --stages pipeline 2>>"$out/stderr.log" | tee -a "$out/results.txt"
fi

log "3b. engine on pages, v4 fp16"
timeout 45 "$bin" bench ocr --device "$dev" --fp16 --models-dir $run/models --images $run/pages --repeat 2 \
  --batch-sizes 8,32 --stages pipeline 2>>"$out/stderr.log" | tee -a "$out/results.txt"

log "4. engine on fixtures, v4"
timeout 35 "$bin" bench ocr --device "$dev" --models-dir $run/models --images tests/fixtures/images --repeat 3 \
  --batch-sizes 1,16,64 --stages pipeline 2>>"$out/stderr.log" | tee -a "$out/results.txt"

kill $smi 2>/dev/null
log "done"
