#!/usr/bin/env bash
# GPU benchmark, to run ON the CUDA host (it builds nothing there). Prepare here with
#   bash tests/bench/gpu_prepare.sh [REAL_PAGES_DIR]
# which says which calls to make; the last one runs
#   source .gpu/4/on-device.sh && bash tests/bench/gpu.sh [SECTION ...]
# Every section has its own time limit, so a slow one cannot eat the others; tables go to $OUT
# (or ./gpu-out) as they are made: results.txt (every table), stderr.log, worker.log, gpu.txt,
# util.txt (nvidia-smi utilisation every 500 ms). Sections, in the default order (the scarcest
# evidence first):
#   pages      engine on the rendered document pages (~77 lines each), v4, batch 1..32, and the
#              pipeline at batch 32 with the overlap off, for comparison
#   e2e        noida-db (Kafka + ES) + loopback image server + one worker on cuda:0, v4, on the
#              real pages when staged, else the rendered ones
#   real       engine on the real pages (when staged), v4, and v6 when staged
#   models     model only (det/rec/cls at fixed shapes, batch 1..64), v4
#   v6         engine on the rendered pages with v6 (when staged)
#   mixed      engine on the rendered pages with v4det-v6rec, the default set (when v6 is staged)
#   fp16       engine on the rendered pages with v4 fp16 (when staged)
#   fixtures   engine on the 31 single-line fixtures, v4
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
run=.gpu-run
bin=$run/ocrfleet
dev=${DEVICE:-cuda:0}
extra=/tmp/stage/extra
[ -d $extra/v6 ] && [ ! -e $run/models/v6 ] && ln -s $extra/v6 $run/models/v6
cp $extra/v4/*.onnx $run/models/v4/ 2>/dev/null || true
noida=$run/noida-db
[ -x $noida ] || noida=$extra/noida-db
pages=$run/pages
[ -d $run/real ] && pages=$run/real
# The figures so far are PP-OCRv4's: every section runs v4 unless it names a set (the default set,
# v4det-v6rec, needs models/v6 from the extra stage; section `mixed` runs it).
export OCRFLEET_MODELS=v4
log() { echo "== $(date +%T) $*" | tee -a "$out/results.txt" >>"$out/stderr.log"; }
ocr() { # time-limit, then bench ocr arguments
  local t=$1
  shift
  timeout "$t" "$bin" bench ocr --device "$dev" --models-dir $run/models "$@" \
    2>>"$out/stderr.log" | tee -a "$out/results.txt"
}

s_pages() {
  ocr 90 --images $run/pages --repeat 2 --batch-sizes 1,8,32 --stages det,rec,pipeline
  ocr 35 --images $run/pages --repeat 2 --batch-sizes 32 --stages pipeline --no-overlap
}
s_real() {
  [ -d $run/real ] || return 0
  ocr 80 --images $run/real --repeat 2 --batch-sizes 1,8,32 --stages det,rec,pipeline
  [ -e $run/models/v6 ] && ocr 40 --models v6 --images $run/real --repeat 2 --batch-sizes 8,32 --stages pipeline
}
s_e2e() {
  timeout 100 python3 tests/bench/e2e.py --deadline 80 --kafka noida --noida $noida --bin "$bin" --models v4 \
    --models-dir $run/models --images $pages --copies 20 --partitions 12 --device "$dev" \
    --threads 4 --ocr-batch 32 --no-engine-only --worker-arg=--fetch-concurrency=128 \
    --worker-log "$out/worker.log" 2>>"$out/stderr.log" | tee -a "$out/results.txt"
}
s_models() {
  timeout 45 "$bin" bench models --device "$dev" --models-dir $run/models --repeat 20 --batch-sizes 1,8,32,64 \
    --shapes det:960x960,det:960x736,det:640x640,rec:48x320,rec:48x640,rec:48x1280,cls:48x192 \
    2>>"$out/stderr.log" | tee -a "$out/results.txt"
}
s_v6() { [ -e $run/models/v6 ] && ocr 35 --models v6 --images $run/pages --repeat 2 --batch-sizes 8,32 --stages pipeline; }
s_mixed() { [ -e $run/models/v6 ] && ocr 35 --models v4det-v6rec --images $run/pages --repeat 2 --batch-sizes 8,32 --stages pipeline; }
s_fp16() { [ -e $run/models/v4/det.fp16.onnx ] && ocr 35 --fp16 --images $run/pages --repeat 2 --batch-sizes 8,32 --stages pipeline; }
s_fixtures() { ocr 25 --images tests/fixtures/images --repeat 3 --batch-sizes 1,16,64 --stages pipeline; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
# The device's own utilisation counter, every 500 ms, to set beside the "in run %" columns.
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 500 > "$out/util.txt" 2>&1 &
smi=$!
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(pages e2e real models v6 mixed fp16 fixtures)
for s in "${sections[@]}"; do
  log "$s"
  "s_$s"
done
kill $smi 2>/dev/null
log "done"
