"""Appends the CTC argmax to the recognisers: models/<set>/rec.argmax.onnx (and
rec.fp16.argmax.onnx and rec.fused.argmax.onnx where rec.fp16.onnx / rec.fused.onnx exist).

The PP-OCR recogniser ends in a softmax over every class at every time step: [N, T, C] floats
with C = 6,625 (v4) or 18,710 (v6). The engine needs only the best class and its probability
per step. This graph surgery adds

    indices = ArgMax(softmax, axis=2, keepdims=0)     int64 [N, T]
    scores  = ReduceMax(softmax, axes=[2], keepdims=0) float [N, T]
    space   = Gather(softmax, C - 1, axis=2)           float [N, T]

and makes them the only outputs, so the device returns 3 values per step instead of C (a v4
line of 80 steps: 5 KB instead of 2 MB), and the host no longer scans C classes per step.
`space` is the probability of the last class, the space: where the model all but read a space
that it then dropped, the engine puts it back (crates/ocr/src/words.rs).
ArgMax keeps the first of equal maxima (select_last_index=0), like the engine's own scan, so the
decoded text is identical (tests/parity.rs checks both forms on every fixture). The class count
is written to the metadata key "classes", which the engine checks against its dictionary.

    .venv/bin/python models/make_argmax.py [--only-fp32 | --only-fp16 | --only-fused] [v4|v6 ...]

models/fetch.sh runs this and checks the result's sha256 against models/MANIFEST.tsv (the
output is deterministic for the pinned onnx version).
"""
import os
import sys

import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))


def add_argmax(model):
    graph = model.graph
    if len(graph.output) != 1:
        raise SystemExit(f"expected one output, found {[o.name for o in graph.output]}")
    probs = graph.output[0]
    dims = probs.type.tensor_type.shape.dim
    classes = dims[2].dim_value
    if len(dims) != 3 or classes <= 0:
        raise SystemExit(f"expected a [N, T, C] output with a fixed C, found {dims}")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    argmax = helper.make_node(
        "ArgMax", [probs.name], ["indices"], name="ocrfleet_argmax", axis=2, keepdims=0
    )
    if opset >= 18:
        axes = helper.make_tensor("ocrfleet_axes", TensorProto.INT64, [1], [2])
        graph.initializer.append(axes)
        reducemax = helper.make_node(
            "ReduceMax", [probs.name, "ocrfleet_axes"], ["scores"], name="ocrfleet_max", keepdims=0
        )
    else:
        reducemax = helper.make_node(
            "ReduceMax", [probs.name], ["scores"], name="ocrfleet_max", axes=[2], keepdims=0
        )
    last = helper.make_tensor("ocrfleet_space_class", TensorProto.INT64, [], [classes - 1])
    graph.initializer.append(last)
    space = helper.make_node(
        "Gather", [probs.name, "ocrfleet_space_class"], ["space"], name="ocrfleet_space", axis=2
    )
    graph.node.extend([argmax, reducemax, space])
    batch = dims[0].dim_param or "N"
    steps = dims[1].dim_param or "T"
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("indices", TensorProto.INT64, [batch, steps]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, steps]),
            helper.make_tensor_value_info("space", TensorProto.FLOAT, [batch, steps]),
        ]
    )
    kept = [p for p in model.metadata_props if p.key != "classes"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.append(onnx.StringStringEntryProto(key="classes", value=str(classes)))
    return model


def verify(src, dst):
    """Runs both models on two random lines with ONNX Runtime: same argmax, same maxima."""
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 320)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    before = ort.InferenceSession(src, opts)
    after = ort.InferenceSession(dst, opts)
    probs = before.run(None, {before.get_inputs()[0].name: x})[0]
    indices, scores, space = after.run(None, {after.get_inputs()[0].name: x})
    if not (np.array_equal(indices, probs.argmax(axis=2)) and np.array_equal(scores, probs.max(axis=2))
            and np.array_equal(space, probs[:, :, -1])):
        raise SystemExit(f"{dst}: argmax outputs differ from the original model's")


VARIANTS = {
    "--only-fp32": ("rec.onnx", "rec.argmax.onnx"),
    "--only-fp16": ("rec.fp16.onnx", "rec.fp16.argmax.onnx"),
    "--only-fused": ("rec.fused.onnx", "rec.fused.argmax.onnx"),
}


def main():
    args = sys.argv[1:]
    sets = [a for a in args if a not in VARIANTS] or ["v4"]
    pairs = [VARIANTS[a] for a in args if a in VARIANTS] or list(VARIANTS.values())
    for s in sets:
        for src_name, dst_name in pairs:
            src = os.path.join(HERE, s, src_name)
            dst = os.path.join(HERE, s, dst_name)
            if not os.path.exists(src):
                if src_name == "rec.onnx":
                    sys.exit(f"{src} is missing: run models/fetch.sh {s} first")
                continue
            model = add_argmax(onnx.load(src))
            onnx.save(model, dst)
            verify(src, dst)
            print(f"wrote {os.path.relpath(dst)} ({os.path.getsize(dst) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
