#!/usr/bin/env bash
# Prepares everything tests/bench/gpu.sh needs on the GPU host, which builds nothing, reaches no
# registry and takes at most 64 MiB per call. Run here, in the project's root, after
# `bash tests/run.sh` (whose `models/fetch.sh` installs v4 and v6 and makes the argmax, fused and fp16 variants; needs a .venv with
# noida-db, pillow, numpy, onnx and onnxruntime):
#   bash tests/bench/gpu_prepare.sh [REAL_PAGES_DIR]
# Fills the git-ignored folders
#   .gpu/1..4   ONNX Runtime's CUDA provider in parts (../shared/gpu/stage.sh)
#   .gpu-extra/ v6 models, v4 fp16 models and noida-db (one call of its own, into /tmp/stage/extra)
#   .gpu-run/   the stripped `--features cuda` binary, models/v4, 40 rendered pages and, when
#               REAL_PAGES_DIR is given, its images as real pages (they are not in git)
# The calls, one after another (device tool `run`):
#   1-3: carry .gpu/N        mkdir -p /tmp/stage && cp .gpu/N/* /tmp/stage/
#   4:   carry .gpu-extra    mkdir -p /tmp/stage/extra && cp -r .gpu-extra/* /tmp/stage/extra/
#   5:   carry .gpu/4 .gpu-run   source .gpu/4/on-device.sh && bash tests/bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
real=${1:-}
[ -d .gpu/1 ] || ../shared/gpu/stage.sh
cargo build --release -p ocrfleet --features cuda
rm -rf .gpu-run .gpu-extra && mkdir -p .gpu-run/models/v4 .gpu-extra/v6 .gpu-extra/v4
strip -o .gpu-run/ocrfleet target/release/ocrfleet
# The fused graphs (models/make_fused.py), which the engine loads by default; the downloaded ones
# do not fit in the 64 MiB of a call as well (run 3 in the README measured them).
cp models/v4/{det,cls}.fused.onnx models/v4/rec.fused.argmax.onnx .gpu-run/models/v4/
cp models/v6/{det,cls}.fused.onnx models/v6/rec.fused.argmax.onnx .gpu-extra/v6/
cp models/v4/{det,cls}.fp16.onnx models/v4/rec.fp16.argmax.onnx .gpu-extra/v4/
cp "$(.venv/bin/python -c 'import noida_db, os; print(os.path.dirname(noida_db.__file__))')/noida-db" .gpu-extra/
.venv/bin/python tests/bench/make_pages.py .gpu-run/pages --count 40
if [ -n "$real" ]; then
  mkdir -p .gpu-run/real
  find "$real" -maxdepth 1 \( -name '*.png' -o -name '*.jpg' -o -name '*.jpeg' \) -exec cp {} .gpu-run/real/ \;
fi
for d in .gpu-extra .gpu-run; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; done
du -sh .gpu/* .gpu-extra .gpu-run
