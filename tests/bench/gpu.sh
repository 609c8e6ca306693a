#!/usr/bin/env bash
# The GPU benchmark: one prepared call ON the CUDA host (it builds nothing there). Prepare here
# with `bash tests/bench/gpu_prepare.sh`, which lists the device calls; the last one runs
#   source .gpu/4/on-device.sh && bash tests/bench/gpu.sh
# Every step has its own time limit and is skipped when too little of the budget (GPU_BUDGET,
# 360 s) is left, so the scarcest evidence comes first. Tables go to $OUT (or ./gpu-out) as they
# are made: results.txt (every table, with date, commit and device), stderr.log, worker.log,
# util.txt (nvidia-smi utilisation and memory every 500 ms). Steps, in order:
#   env       the device, its driver, whether TensorRT is installed
#   parity    the real pages read on the device and on the host's CPU (`ocrfleet ocr`), their
#             text compared page by page (tests/bench/parity.py): the set's CER of the GPU
#             text against the CPU text must be at most 0.001 (fp32), else the step says FAILED
#             loudly (every later figure is then a figure of wrong text)
#   models    model only, the default set's models at their bucket shapes, fused fp32 and fp16
#   pipeline  the engine on the real pages at K = 1, 2, 4 runners per model (2K calls in
#             flight): warm-up seconds, sessions, img/s, device busy; the best K is kept
#   e2e       the worker end to end at the best K (noida-db Kafka and Elasticsearch, the real
#             pages over a loopback image server)
#   discount  the batch discount: img/s and p50/p99 latency at batch 1, 8, 32, best K
#   recbatch  the recogniser alone at 64, 128 and 256 lines a run (two widths): whether its cost
#             per line keeps falling past the default batch of 32 (issue 26, part 3)
#   arenas    an arena per session (--separate-arenas, ONNX Runtime's default) at the best K,
#             against the shared arena of the pipeline step: memory peak and img/s
#   u8        the uint8-input graphs (--u8-input, 4 bytes a pixel to the device instead of 12),
#             made there from the carried ones by models/make_u8.py with the host's Python
#             (onnx, onnxruntime): the pipeline at the best K, fused fp32 and fp16, then
#             fused fp32 through IoBinding with pinned buffers (--io-binding; GPU only)
# GPU_DRY_RUN=1 runs every step on the CPU with tiny inputs and a stub nvidia-smi (the test
# suite does, so that the script cannot rot).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
run=.gpu-run
dry=${GPU_DRY_RUN:-0}
budget=${GPU_BUDGET:-360}
start=$(date +%s)
dev=cuda:0
if [ "$dry" = 1 ]; then
  dev=cpu
  # The CPU build of ONNX Runtime stands in for the CUDA one that on-device.sh sets up.
  ORT_DYLIB_PATH=$(ls "$PWD"/models/lib/libonnxruntime.so.* | head -n 1)
  export ORT_DYLIB_PATH
fi
# CUDA libraries from pip's nvidia-* wheels (nvidia-cudnn-cu12, nvidia-cublas-cu12, ...; there
# when PyTorch or onnxruntime-gpu was installed with pip), after those on-device.sh found.
pip_cuda=()
if [ "$dry" != 1 ]; then
  for site in $(python3 -c 'import site; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
    for lib in "$site"/nvidia/*/lib; do
      [ -d "$lib" ] && pip_cuda+=("$lib")
    done
  done
  if [ ${#pip_cuda[@]} -gt 0 ]; then
    LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$(IFS=:; echo "${pip_cuda[*]}")"
    export LD_LIBRARY_PATH
  fi
fi
[ -x $run/ocrfleet ] || xz -dkf $run/ocrfleet.xz
[ -x $run/noida-db ] || { xz -dkc $run/noida-db.xz > $run/noida-db && chmod +x $run/noida-db; }
bin=$run/ocrfleet
pages=$run/real
commit=$(cat $run/commit 2>/dev/null || echo unknown)
res="$out/results.txt"
left() { echo $(( budget - ($(date +%s) - start) )); }
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$res" >> "$out/stderr.log"; }
# step NAME SECONDS: true when the step fits in what is left of the budget (else logged skipped)
fits() {
  if [ "$(left)" -lt "$2" ]; then
    log "$1 skipped: $(left) s of the budget left, needs $2"
    return 1
  fi
  log "$1 (limit $2 s)"
}
bench() { # seconds, bench arguments...
  local t=$1
  shift
  timeout "$t" "$bin" bench "$@" --device "$dev" --models-dir $run/models 2>>"$out/stderr.log"
}
small=()
[ "$dry" = 1 ] && small=(--threads 1 --host-threads 1)

log "ocrfleet GPU benchmark, commit $commit, dry run $dry"
log "CUDA libraries from pip's nvidia-* packages: ${#pip_cuda[@]} folder(s) ${pip_cuda[*]:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "host cores: $(nproc)"; } 2>&1 | tee -a "$res"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 500 > "$out/util.txt" 2>&1 &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT
# The sampler's mean utilisation and peak memory since line $1 of util.txt.
util_since() {
  tail -n +"$1" "$out/util.txt" | awk -F', ' '{gsub(/ %/,"",$2); gsub(/ MiB/,"",$3); if ($2+0==$2) {u+=$2; n++; if ($3>m) m=$3}} END {if (n) printf "GPU util mean %.0f %% over %d samples, memory peak %d MiB", u/n, n, m; else print "no nvidia-smi samples"}'
}

# The shared arena's figures in a `bench ocr --json` line (issue 26, part 2).
arena_of() {
  echo "$1" | python3 -c 'import json,sys
v = json.load(sys.stdin); a = v.get("arena"); w = v.get("arena_after_warm_up")
if a: print("shared arena: %d MiB reserved after warm-up, %d MiB at the end, %d MiB the most in use" % ((w or a)["reserved_bytes"] >> 20, a["reserved_bytes"] >> 20, a["max_in_use_bytes"] >> 20))
else: print("no shared arena (an arena per session)")' 2>/dev/null || echo "arena: no JSON line"
}

if fits env 20; then
  ( ldconfig -p 2>/dev/null | grep -i -E 'nvinfer|tensorrt' | head -3
    python3 -c 'import tensorrt; print("tensorrt", tensorrt.__version__)' 2>&1 | tail -1 ) | tee -a "$res"
fi

if fits parity 70; then
  lim=(--threads 0)
  [ "$dry" = 1 ] && lim=(--threads 1)
  timeout 60 "$bin" ocr --ndjson --device "$dev" --models-dir $run/models "${lim[@]}" $pages \
    > "$out/parity-device.ndjson" 2>>"$out/stderr.log"
  timeout 60 "$bin" ocr --ndjson --device cpu --models-dir $run/models "${lim[@]}" $pages \
    > "$out/parity-cpu.ndjson" 2>>"$out/stderr.log"
  if python3 tests/bench/parity.py "$out/parity-cpu.ndjson" "$out/parity-device.ndjson" --max-cer 0.001 | tee -a "$res"; then
    echo "parity: ok" | tee -a "$res"
  else
    echo "parity: FAILED: the device's text is not the CPU's (see the lines above); every figure below measures wrong text" | tee -a "$res"
  fi
fi

if fits models 60; then
  shapes=det:960x736,det:960x960,det:480x384,rec:48x320,rec:48x640,rec:48x960,cls:48x192
  points=(--repeat 10 --batch-sizes 1,8,32)
  [ "$dry" = 1 ] && { shapes=det:480x384,rec:48x320,cls:48x192; points=(--repeat 1 --batch-sizes 1); }
  for variant in "" "--fp16"; do
    echo "# variant: ${variant:-fused fp32}" | tee -a "$res"
    bench 25 models $variant "${points[@]}" --shapes $shapes "${small[@]}" | tee -a "$res"
  done
fi

best_k=1
best_ips=0
if fits pipeline 150; then
  for k in 1 2 4; do
    [ "$(left)" -lt 45 ] && { log "pipeline K=$k skipped: $(left) s left"; continue; }
    n=$(wc -l < "$out/util.txt")
    json=$(bench 45 ocr --images $pages --device-streams $k --lanes $((2 * k)) --repeat 2 \
      --batch-sizes 16 --stages pipeline --json "${small[@]}" | tee -a "$res" | tail -1)
    echo "K=$k: $(util_since "$n"); $(arena_of "$json")" | tee -a "$res"
    ips=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["img_per_s"])' 2>/dev/null || echo 0)
    if python3 -c "import sys; sys.exit(0 if $ips > $best_ips else 1)"; then best_k=$k; best_ips=$ips; fi
  done
  echo "best K: $best_k ($best_ips img/s)" | tee -a "$res"
fi

if fits e2e 100; then
  n=$(wc -l < "$out/util.txt")
  copies=20
  [ "$dry" = 1 ] && copies=1
  timeout 90 python3 tests/bench/e2e.py --deadline 75 --kafka noida --noida $run/noida-db \
    --bin "$bin" --models-dir $run/models --images $pages --copies $copies --partitions 12 \
    --device "$dev" --threads 4 --ocr-batch 16 --no-engine-only \
    --worker-arg=--device-streams=$best_k --worker-arg=--fetch-concurrency=128 \
    --worker-log "$out/worker.log" 2>>"$out/stderr.log" | tee -a "$res"
  echo "e2e: $(util_since "$n")" | tee -a "$res"
fi

if fits discount 60; then
  bench 55 ocr --images $pages --device-streams $best_k --lanes $((2 * best_k)) --repeat 1 \
    --batch-sizes 1,8,32 --stages pipeline "${small[@]}" | tee -a "$res"
fi
if fits recbatch 30; then
  rb=(--repeat 5 --batch-sizes 64,128,256 --shapes rec:48x320,rec:48x640)
  [ "$dry" = 1 ] && rb=(--repeat 1 --batch-sizes 2 --shapes rec:48x320)
  bench 25 models "${rb[@]}" "${small[@]}" | tee -a "$res"
fi
if fits arenas 50; then
  # An arena per session (ONNX Runtime's default, --separate-arenas) against the shared one
  # at the best K: memory peak and img/s (issue 26, part 2).
  n=$(wc -l < "$out/util.txt")
  json=$(bench 45 ocr --images $pages --device-streams $best_k --lanes $((2 * best_k)) --repeat 2 \
    --batch-sizes 16 --stages pipeline --json --separate-arenas "${small[@]}" | tee -a "$res" | tail -1)
  echo "separate arenas, K=$best_k: $(util_since "$n"); $(arena_of "$json")" | tee -a "$res"
fi
if fits u8 100; then
  py=python3
  [ "$dry" = 1 ] && py=models/.cache/py/bin/python
  if "$py" models/make_u8.py --models $run/models --present v4 v6 2>>"$out/stderr.log"; then
    variants=("" "--fp16")
    # IoBinding needs a session per shape, which only CUDA makes.
    [ "$dry" = 1 ] || variants+=("--io-binding")
    for variant in "${variants[@]}"; do
      json=$(bench 30 ocr --images $pages --device-streams $best_k --lanes $((2 * best_k)) --repeat 2 \
        --batch-sizes 16 --stages pipeline --json --u8-input $variant "${small[@]}" | tee -a "$res" | tail -1)
      echo "u8 ${variant:-fused fp32}: $json" | tee -a "$res"
    done
  else
    echo "u8: models/make_u8.py failed here (see stderr.log); not measured" | tee -a "$res"
  fi
fi
log "done in $(( $(date +%s) - start )) s"
