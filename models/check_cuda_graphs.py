"""Static check that every graph of the default set runs wholly on the CUDA execution provider
(nothing placed on the CPU between device kernels, which costs copies; it is also what CUDA graph
capture would need, should it come back), since no machine here has a GPU to try it on.

    models/.cache/py/bin/python models/check_cuda_graphs.py [MODELS_DIR]

For each graph of the default set (v4det-v6rec; fused fp32 and fp16, and their uint8-input
variants), at one of its fixed
input shapes:
  1. every operator type must have a CUDA kernel (CUDA_KERNELS: the operators of these graphs
     that docs/OperatorKernels.md of ONNX Runtime lists under CUDAExecutionProvider, read
     2026-12-02);
  2. after ONNX Runtime's optimiser with the input's symbolic dimensions fixed (free dimension
     overrides, as the engine's per-shape sessions do), no shape computation may be left: ONNX
     Runtime places `Shape` and the integer arithmetic on it on the CPU, which CUDA graphs do not
     allow. Without the overrides the PP-OCRv6 recogniser keeps such nodes.
Prints a table; exits 1 when a graph fails either check. Whether the CUDA provider then really
captures every run is for the GPU run to show (tests/bench/gpu.sh).
"""
import collections
import os
import sys
import tempfile

import onnx
import onnxruntime as ort

# Operators of these graphs with a float/float16 CUDA kernel in OperatorKernels.md.
CUDA_KERNELS = {
    "Add", "ArgMax", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Conv",
    "ConvTranspose", "Div", "Erf", "Gather", "Gemm", "GlobalAveragePool", "HardSigmoid",
    "HardSwish", "MatMul", "MaxPool", "Mul", "Pow", "ReduceMax", "ReduceMean", "Relu", "Reshape",
    "Resize", "Shape", "Sigmoid", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub", "Transpose",
    "Unsqueeze", "FusedConv", "Gelu", "BiasGelu", "FastGelu", "LayerNormalization",
    "SkipLayerNormalization", "FusedMatMul", "Where",
}
# Nodes that compute shapes: ONNX Runtime places them on the CPU.
SHAPE_OPS = {"Shape", "Size", "NonZero", "ConstantOfShape"}

GRAPHS = [
    ("v4/det.fused.onnx", [8, 3, 736, 960]),
    ("v4/cls.fused.onnx", [8, 3, 48, 192]),
    ("v6/rec.fused.argmax.onnx", [32, 3, 48, 320]),
    ("v4/det.fp16.onnx", [8, 3, 736, 960]),
    ("v4/cls.fp16.onnx", [8, 3, 48, 192]),
    ("v6/rec.fp16.argmax.onnx", [32, 3, 48, 320]),
    # The uint8-input variants (`--u8-input`, models/make_u8.py): NHWC, 4 channels.
    ("v4/det.fused.u8.onnx", [8, 736, 960, 4]),
    ("v4/cls.fused.u8.onnx", [8, 48, 192, 4]),
    ("v6/rec.fused.argmax.u8.onnx", [32, 48, 320, 4]),
    ("v4/det.fp16.u8.onnx", [8, 736, 960, 4]),
    ("v4/cls.fp16.u8.onnx", [8, 48, 192, 4]),
    ("v6/rec.fp16.argmax.u8.onnx", [32, 48, 320, 4]),
]


def optimised_ops(path, shape, fix):
    """Operator counts of the graph after ONNX Runtime's optimiser (CPU, basic level: the
    provider-independent rewrites, constant folding among them)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if fix:
        inp = onnx.load(path, load_external_data=False).graph.input[0]
        for d, size in zip(inp.type.tensor_type.shape.dim, shape):
            if d.dim_param:
                so.add_free_dimension_override_by_name(d.dim_param, size)
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        g = onnx.load(so.optimized_model_filepath).graph
    return collections.Counter(n.op_type for n in g.node)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__))
    failed = False
    print(f"| graph | input | ops | without a CUDA kernel | shape nodes, symbolic | shape nodes, fixed |")
    print("|---|---|---|---|---|---|")
    for rel, shape in GRAPHS:
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            print(f"| {rel} | | missing (models/fetch.sh) | | | |")
            failed = True
            continue
        ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
        missing = sorted(set(ops) - CUDA_KERNELS)
        symbolic = optimised_ops(path, shape, fix=False)
        fixed = optimised_ops(path, shape, fix=True)
        shape_sym = sum(symbolic[o] for o in SHAPE_OPS)
        shape_fix = sum(fixed[o] for o in SHAPE_OPS)
        failed |= bool(missing) or shape_fix > 0
        print(f"| {rel} | {'x'.join(map(str, shape))} | {len(ops)} types, {sum(ops.values())} nodes | "
              f"{', '.join(missing) or 'none'} | {shape_sym} | {shape_fix} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
