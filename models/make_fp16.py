"""Makes fp16 variants of the installed models: models/<set>/<name>.fp16.onnx, used by
`ocrfleet ... --fp16`. Inputs and outputs stay float32 (keep_io_types), so the engine's tensors
do not change. Measured on an H200 (../shared/gpu/README.md): 5-15 % faster on CUDA. On CPU,
ONNX Runtime has few fp16 kernels and inserts casts, so keep fp32 there.

    .venv/bin/pip install onnx onnxruntime==1.32.0
    .venv/bin/python models/make_fp16.py [v4|v6 ...]
"""
import os
import sys

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    sets = sys.argv[1:] or ["v4"]
    for s in sets:
        for name in ["det", "cls", "rec"]:
            src = os.path.join(HERE, s, f"{name}.onnx")
            dst = os.path.join(HERE, s, f"{name}.fp16.onnx")
            if not os.path.exists(src):
                sys.exit(f"{src} is missing: run models/fetch.sh {s} first")
            model = onnx.load(src)
            fp16 = convert_float_to_float16(model, keep_io_types=True)
            onnx.save(fp16, dst)
            print(f"wrote {os.path.relpath(dst)} ({os.path.getsize(dst) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
