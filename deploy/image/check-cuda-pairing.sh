#!/usr/bin/env bash
# Checks that ONNX Runtime's CUDA provider (deploy/image/fetch-ort-gpu.sh) can run on the CUDA
# release of the GPU base image: every cudart, cuBLAS and cuBLASLt symbol the provider imports
# must be exported by those libraries at the given CUDA version (NVIDIA's PyPI wheels of them).
# A provider built against a newer CUDA minor than the base image imports symbols the older
# runtime lacks, and fails at session creation ("undefined symbol"); this finds that at build
# time instead. Not run by CI (it downloads ~500 MB); run it when either side changes:
#   bash deploy/image/check-cuda-pairing.sh [CUDART_VERSION CUBLAS_VERSION]
# Defaults: the first CUDA 13.0 release (cudart 13.0.48, cuBLAS 13.0.0.19), the floor of the
# base image nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 in deploy/Dockerfile.
set -euo pipefail
cudart=${1:-13.0.48}
cublas=${2:-13.0.0.19}
here=$(cd "$(dirname "$0")" && pwd)
work=${TMPDIR:-/tmp}/ocrfleet-cuda-pairing
mkdir -p "$work/ort" "$work/cuda"
bash "$here/fetch-ort-gpu.sh" "$work/ort" "$work/ort-wheel"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheels" \
  "nvidia-cuda-runtime==$cudart" "nvidia-cublas==$cublas"
for w in "$work"/wheels/nvidia_cuda_runtime-"$cudart"-*.whl "$work"/wheels/nvidia_cublas-"$cublas"-*.whl; do
  unzip -q -o "$w" 'nvidia/*' -d "$work/cuda"
done
provider=$work/ort/libonnxruntime_providers_cuda.so
status=0
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13; do
  have=$(find "$work/cuda" -name "$lib" | head -1)
  [ -n "$have" ] || { echo "check-cuda-pairing: $lib not in the wheels" >&2; exit 2; }
  objdump -T "$provider" | awk -v tag="($lib)" '/\*UND\*/ && index($0, tag) {print $NF}' | sort -u > "$work/need"
  objdump -T "$have" | awk '!/\*UND\*/ {print $NF}' | sort -u > "$work/have"
  missing=$(comm -23 "$work/need" "$work/have")
  echo "$lib: the provider imports $(wc -l < "$work/need") symbols; missing at cudart $cudart / cuBLAS $cublas: $(printf '%s' "$missing" | grep -c . || true)"
  if [ -n "$missing" ]; then
    printf '%s\n' "$missing" | sed 's/^/  /'
    status=1
  fi
done
exit "$status"
