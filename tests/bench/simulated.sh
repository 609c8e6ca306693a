#!/usr/bin/env bash
# The engine's pipeline on a SIMULATED device (crates/ocr/src/instruments/device.rs): every CPU stage runs
# for real on real pages, the models' outputs come from a recording, and each run occupies one
# of the device's K streams for what tests/bench/costs/*.json says its padded tensor costs (the
# CUDA path's tensors: --like-cuda). Prints one table row per K.
#   bash tests/bench/simulated.sh [PAGES_DIR] [COSTS_JSON] [SCALE] [K...]
# Defaults: .eval/real45 (the 30 FUNSD forms and 15 WildReceipt photos of the evaluation set,
# tests/eval/fetch.py), tests/bench/costs/h200-v4.json, scale 8 (a device 8 times slower than
# the H200's measured model-only costs, so that the device and not this 2-core host is the
# bottleneck), K = 1 2 4 with 2K engine calls in flight. "ceiling" is the cost model's: K
# streams divided by the device time a page costs, which is img/s / device_busy. The "pess."
# columns are the same pages on the pessimistic device (Realism::PESSIMISTIC: input copies at a
# PCIe rate, ONNX Runtime's host CPU per run, a second stream adding 30 %), run right after.
# "host CPU" is the process's CPU less the simulator's own bookkeeping (hashing each run's input
# to find its recording: no real device costs the host that), which "sim. CPU" shows apart.
set -euo pipefail
cd "$(dirname "$0")/../.."
pages=${1:-.eval/real45}
costs=${2:-tests/bench/costs/h200-v4.json}
scale=${3:-8}
shift $(( $# < 3 ? $# : 3 ))
ks=${*:-1 2 4}
bin=${OCRFLEET_BIN:-./target/release/ocrfleet}
threads=${THREADS:-2}
echo "| K | lanes | img/s (simulated) | device busy | ceiling img/s | of ceiling | host CPU ms/page | sim. CPU ms/page | busy cores | p50 ms | p99 ms | pess. img/s | pess. busy | pess. host CPU ms/page | pess. p50 ms | pess. p99 ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for k in $ks; do
  json=$("$bin" bench ocr --images "$pages" --simulate --like-cuda --device-costs "$costs" \
    --device-scale "$scale" --device-streams "$k" --lanes $((2 * k)) --threads "$threads" \
    --host-threads "$threads" --repeat "${REPEAT:-2}" --batch-sizes "${BATCH:-8}" \
    --stages pipeline --json 2>/dev/null | tail -n 1)
  python3 - "$k" "$json" <<'PY'
import json, sys
k, v = sys.argv[1], json.loads(sys.argv[2])
ceiling = v["img_per_s"] / max(v["device_busy"], 1e-9)
print(f"| {k} | {v['lanes']} | {v['img_per_s']:.2f} | {v['device_busy']:.3f} | {ceiling:.2f} | "
      f"{100 * v['img_per_s'] / ceiling:.0f} % | {v['host_cpu_ms_per_img']:.1f} | {v.get('simulator_cpu_ms_per_img', 0):.1f} | {v['busy_cores']:.2f} | "
      f"{v['p50_ms']:.0f} | {v['p99_ms']:.0f} | ", end="")
p = v.get("pessimistic")
print(f"{p['img_per_s']:.2f} | {p['device_busy']:.3f} | {p['host_cpu_ms_per_img']:.1f} | {p['p50_ms']:.0f} | "
      f"{p['p99_ms']:.0f} |" if p else "- | - | - | - | - |")
PY
done
