"""Makes fp16 variants of the installed models: models/<set>/<name>.fp16.onnx, used by
`ocrfleet ... --fp16`. Inputs and outputs stay float32 (keep_io_types), so the engine's tensors
do not change. Measured on an H200 (../shared/gpu/README.md): 5-15 % faster on CUDA. On CPU,
ONNX Runtime has few fp16 kernels and inserts casts, so keep fp32 there.

Each model first goes through ONNX Runtime's basic, hardware-independent graph optimisations
(constant folding, BatchNormalization folded into the Conv before it) and only then to fp16.
Converted as exported, PP-OCRv4's detector was unusable in fp16: a BatchNormalization in its
head has running variances up to 9.8e7, past fp16's largest value (65504), so they became
infinite and the probability map saturated (322,676 text pixels against 44,986 in fp32 on a
rendered page; on 40 pages 1,683 boxes against 3,080). Folded into the Conv weights, the
largest value is 45, and the fp16 map matches fp32 within 0.03.

The script refuses to write a model with a weight outside fp16's range (the converter would
clamp it to 65504 silently), or whose outputs on a fixed random input differ from the fp32
original's by more than 0.05 (the unfolded detector differed by 1.0; the folded one by 0.0002).

    .venv/bin/pip install onnx onnxruntime==1.32.0
    .venv/bin/python models/make_fp16.py [v4|v6 ...]
"""
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.transformers.float16 import convert_float_to_float16

HERE = os.path.dirname(os.path.abspath(__file__))
# A fixed input per model (batch 2): det a 320×320 image-like tensor, cls and rec a 48-high line.
SHAPES = {"det": (2, 3, 320, 320), "cls": (2, 3, 48, 192), "rec": (2, 3, 48, 320)}
# Largest accepted difference between fp16 and fp32 outputs (probabilities) on that input.
TOLERANCE = 0.05
FP16_MAX = 65504.0


def optimised(src):
    """The model after ONNX Runtime's basic (hardware-independent) optimisations."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "basic.onnx")
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def float_values(model):
    """Every float32 weight and constant in the graph, by name."""
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            yield init.name, numpy_helper.to_array(init)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == onnx.TensorProto.FLOAT:
                yield node.output[0], numpy_helper.to_array(attr.t)


def outputs(model_bytes, x):
    s = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def main():
    sets = sys.argv[1:] or ["v4"]
    rng = np.random.default_rng(7)
    for s in sets:
        for name in ["det", "cls", "rec"]:
            src = os.path.join(HERE, s, f"{name}.onnx")
            dst = os.path.join(HERE, s, f"{name}.fp16.onnx")
            if not os.path.exists(src):
                sys.exit(f"{src} is missing: run models/fetch.sh {s} first")
            fp32 = optimised(src)
            big = [n for n, v in float_values(fp32) if v.size and np.abs(v).max() > FP16_MAX]
            if big:
                sys.exit(f"{src}: {len(big)} weights exceed fp16's range even after folding (first: {big[0]}); not written")
            fp16 = convert_float_to_float16(fp32, keep_io_types=True)
            x = rng.uniform(-2.0, 2.0, SHAPES[name]).astype(np.float32)
            diff = float(np.abs(outputs(fp16.SerializeToString(), x) - outputs(src, x)).max())
            if not diff <= TOLERANCE:
                sys.exit(f"{src}: fp16 differs from fp32 by {diff:.4f} (> {TOLERANCE}); not written")
            onnx.save(fp16, dst)
            print(f"wrote {os.path.relpath(dst)} ({os.path.getsize(dst) / 1e6:.1f} MB), "
                  f"largest difference from fp32 on a fixed input {diff:.4f}")


if __name__ == "__main__":
    main()
