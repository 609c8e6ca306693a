#!/usr/bin/env bash
# Fetches ONNX Runtime's CUDA build (the PyPI wheel onnxruntime-gpu, built for CUDA 13) and installs
# its three libraries into DEST, each checked against deploy/image/ort-gpu.sha256:
#   DEST/libonnxruntime.so.1.31.1  DEST/libonnxruntime_providers_cuda.so
#   DEST/libonnxruntime_providers_shared.so  DEST/libonnxruntime.so -> libonnxruntime.so.1.31.1
# The CUDA provider is loaded by ONNX Runtime from the directory of libonnxruntime.so, so the three
# files must stay together. Usage: fetch-ort-gpu.sh DEST [CACHE_DIR]
set -euo pipefail
VERSION=1.31.1
dest=${1:?usage: fetch-ort-gpu.sh DEST [CACHE_DIR]}
cache=${2:-${TMPDIR:-/tmp}/ort-gpu-wheel}
sums="$(cd "$(dirname "$0")" && pwd)/ort-gpu.sha256"
mkdir -p "$cache" "$dest"
whl="$cache/onnxruntime_gpu-$VERSION-cp311-cp311-manylinux_2_28_x86_64.whl"
if [ ! -f "$whl" ]; then
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 -d "$cache" "onnxruntime-gpu==$VERSION"
fi
(cd "$cache" && grep ' onnxruntime_gpu-' "$sums" | sha256sum -c --quiet -) || {
  echo "fetch-ort-gpu.sh: wheel checksum mismatch; removing it" >&2; rm -f "$whl"; exit 1; }
for f in "libonnxruntime.so.$VERSION" libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so; do
  unzip -q -o -j "$whl" "onnxruntime/capi/$f" -d "$dest"
done
(cd "$dest" && grep ' libonnxruntime' "$sums" | sha256sum -c --quiet -)
ln -sf "libonnxruntime.so.$VERSION" "$dest/libonnxruntime.so"
echo "ONNX Runtime $VERSION (CUDA) installed in $dest" >&2
