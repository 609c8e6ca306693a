#!/usr/bin/env bash
# Prepares everything tests/bench/gpu.sh needs on the GPU host, which builds nothing, reaches no
# registry and takes at most 64 MiB per call. Run here, in the project's root, after
# `bash tests/run.sh` (models, .venv with noida-db) and `python3 tests/eval/fetch.py` (the real
# pages; .eval/images):
#   bash tests/bench/gpu_prepare.sh            # builds the CUDA binary, stages, checks sizes
#   bash tests/bench/gpu_prepare.sh --dry-run  # no CUDA build, no staging: the CPU binary stands
#                                              # in, for the dry run in the test suite
# It fills the git-ignored .gpu-run/ (the stripped `--features cuda` binary, xz-compressed; the
# default model set, fused fp32 and fp16; the 45 real pages: the evaluation set's 30 FUNSD forms
# and 15 WildReceipt photos; noida-db, compressed; the commit) and checks that every call stays
# under 64 MiB. The four device calls (tool `run`), one after another:
#   1-3: carry .gpu/N              mkdir -p /tmp/stage && cp .gpu/N/* /tmp/stage/
#   4:   carry .gpu/4 .gpu-run     source .gpu/4/on-device.sh && bash tests/bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
dry=false
[ "${1:-}" = --dry-run ] && dry=true
limit=$((64 * 1024 * 1024))
# Every image of PAGES goes (default: .eval/real45, the evaluation set's 30 FUNSD forms and 15
# WildReceipt photos, made by `mkdir .eval/real45 && ln -s $PWD/.eval/images/{funsd,wildreceipt}_* .eval/real45/`).
pages=${PAGES:-.eval/real45}
if $dry; then
  bin=target/release/ocrfleet
else
  [ -d .gpu/1 ] || ../shared/gpu/stage.sh
  cargo build --release -p ocrfleet --features cuda
  bin=target/release/ocrfleet
fi
rm -rf .gpu-run && mkdir -p .gpu-run/models/v4 .gpu-run/models/v6 .gpu-run/real
strip -o .gpu-run/ocrfleet "$bin"
xz -6 -T2 -f .gpu-run/ocrfleet
# The default set (v4det-v6rec): the fused graphs the engine loads by default, and fp16.
cp models/v4/{det,cls}.fused.onnx models/v4/{det,cls}.fp16.onnx .gpu-run/models/v4/
cp models/v6/rec.fused.argmax.onnx models/v6/rec.fp16.argmax.onnx .gpu-run/models/v6/
noida=$(.venv/bin/python -c 'import noida_db, os; print(os.path.dirname(noida_db.__file__))')/noida-db
xz -6 -T2 -c "$noida" > .gpu-run/noida-db.xz
if [ -d "$pages" ]; then
  find -L "$pages" -maxdepth 1 \( -name '*.png' -o -name '*.jpg' -o -name '*.jpeg' \) -exec cp -L {} .gpu-run/real/ \;
else
  echo "gpu_prepare.sh: no $pages (tests/eval/fetch.py, then the two commands above); the fixtures stand in" >&2
  cp tests/fixtures/images/* .gpu-run/real/
fi
git rev-parse --short HEAD > .gpu-run/commit 2>/dev/null || echo unknown > .gpu-run/commit
# (.gpu-run/ is in .gitignore; nothing here writes inside .git, which a checkout may lack.)
# The calls' sizes: the script and the checkout travel too (a few MB; measured as what git tracks,
# or, outside a git checkout, every file but the ignored build, model and cache folders).
tracked() {
  git ls-files -z 2>/dev/null && return
  find . \( -path ./target -o -path ./.git -o -path ./.venv -o -path ./.venv-peers -o -path ./models/v4 -o -path ./models/v6 \
    -o -path ./models/lib -o -path ./models/.cache -o -path ./.gpu -o -path ./.gpu-run -o -path ./.eval \
    -o -path ./.ci-cache -o -path ./.ci/tools -o -path ./.noida \) -prune \
    -o -type f -print0
}
tree=$(tracked | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
size() { du -cb "$@" 2>/dev/null | tail -1 | cut -f1; }
fail=0
report() { # name bytes
  printf '%-28s %6.1f MiB%s\n' "$1" "$(echo "$2 / 1048576" | bc -l)" "$([ "$2" -gt "$limit" ] && echo '  OVER 64 MiB')"
  [ "$2" -le "$limit" ] || fail=1
}
for n in 1 2 3; do
  [ -d .gpu/$n ] && report "call $n (.gpu/$n)" $(( $(size .gpu/$n) + tree ))
done
four=$(( $(size .gpu-run) + tree ))
[ -d .gpu/4 ] && four=$(( four + $(size .gpu/4) ))
report "call 4 (.gpu/4 .gpu-run)" "$four"
if [ ! -d .gpu/4 ]; then
  # Dry run: .gpu/4 is the core library (xz, about 7 MiB), the provider bridge and scripts.
  report "call 4 with ~8 MiB of .gpu/4" $(( four + 8 * 1024 * 1024 ))
fi
exit $fail
