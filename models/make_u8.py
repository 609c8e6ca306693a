"""Makes the uint8-input variants of the fused and fp16 graphs: models/<set>/<graph>.u8.onnx,
loaded by `ocrfleet ... --u8-input` (issue 21, part 3: fewer bytes to the device).

Every PP-OCR model here takes float32 BGR planes normalised as `x * (2/255) - 1`, the padding
of the classifier and recogniser lines left at 0 (PaddleOCR's normalised mid-grey, pixel
value 127.5, which no uint8 can express). The derived graph takes instead

    x: uint8 [N, H, W, 4]   channels B, G, R and a mask (255 for an image pixel, 0 for padding)

and computes, in front of the unchanged model,

    Where(mask != 0, float(bgr) * (2/255) - 1, 0), transposed to [N, 3, H, W]

so the engine sends 4 bytes a pixel instead of 12 (3x fewer), and every value the model sees
is the one the host used to compute, padding included. The first and third dimensions keep the
original's symbolic names, so the engine's per-shape sessions still fix them.

The script runs each derived graph next to its original on a fixed random input (with masked
padding) and refuses to write one whose outputs differ by more than 1e-5 (measured: 0 or a few
ulps, from the optimiser's different fusions).

    models/.cache/py/bin/python models/make_u8.py [--models DIR] [--present] [v4|v6 ...]

--models reads and writes another models folder (tests/bench/gpu.sh makes the variants of the
graphs it carries on the GPU host); --present skips the graphs that folder lacks.

models/fetch.sh runs this and checks every result's sha256 against models/MANIFEST.tsv (the
output is deterministic for the pinned onnx version).
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
# The graphs that get a uint8 variant: the ones a GPU run loads (fused fp32 and fp16; the
# recogniser with its argmax).
GRAPHS = ["det.fused", "cls.fused", "rec.fused.argmax", "det.fp16", "cls.fp16", "rec.fp16.argmax"]
# A fixed input per model (batch 2, NHWC): det an image-like canvas, cls and rec a 48-high line.
SHAPES = {"det": (2, 320, 320), "cls": (2, 48, 192), "rec": (2, 48, 320)}
TOLERANCE = 1e-5
# The host's constant: 2.0f32 / 255.0f32 (crates/ocr/src/preprocess.rs), computed in float32.
SCALE = np.float32(2.0) / np.float32(255.0)


def with_u8_input(model):
    graph = model.graph
    if len(graph.input) != 1:
        raise SystemExit(f"expected one input, found {[i.name for i in graph.input]}")
    old = graph.input[0]
    dims = old.type.tensor_type.shape.dim
    if len(dims) != 4 or dims[1].dim_value != 3:
        raise SystemExit(f"expected an [N, 3, H, W] input, found {dims}")
    name = old.name
    inner = name + "_f32"
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = inner

    def dim(d):
        return d.dim_param if d.dim_param else (d.dim_value if d.dim_value > 0 else None)

    new = helper.make_tensor_value_info(
        name, TensorProto.UINT8, [dim(dims[0]), dim(dims[2]), dim(dims[3]), 4]
    )
    p = name + "_u8."
    consts = [
        numpy_helper.from_array(np.array([0], np.int64), p + "c0"),
        numpy_helper.from_array(np.array([3], np.int64), p + "c3"),
        numpy_helper.from_array(np.array([4], np.int64), p + "c4"),
        numpy_helper.from_array(np.array([3], np.int64), p + "axis"),
        numpy_helper.from_array(np.array(SCALE, np.float32), p + "scale"),
        numpy_helper.from_array(np.array(1.0, np.float32), p + "one"),
        numpy_helper.from_array(np.array(0.0, np.float32), p + "zero"),
    ]
    nodes = [
        helper.make_node("Slice", [name, p + "c0", p + "c3", p + "axis"], [p + "bgr"]),
        helper.make_node("Slice", [name, p + "c3", p + "c4", p + "axis"], [p + "m"]),
        helper.make_node("Cast", [p + "bgr"], [p + "f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [p + "f", p + "scale"], [p + "s"]),
        helper.make_node("Sub", [p + "s", p + "one"], [p + "n"]),
        helper.make_node("Cast", [p + "m"], [p + "mask"], to=TensorProto.BOOL),
        helper.make_node("Where", [p + "mask", p + "n", p + "zero"], [p + "w"]),
        helper.make_node("Transpose", [p + "w"], [inner], perm=[0, 3, 1, 2]),
    ]
    graph.input.remove(old)
    graph.input.insert(0, new)
    graph.initializer.extend(consts)
    # The front first, then the model's nodes in a topological order (the fp16 converter
    # appends its input casts at the end of the list, which ONNX Runtime accepts but the checker
    # does not).
    ordered = topological(nodes + list(graph.node), graph)
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.checker.check_model(model)
    return model


def topological(nodes, graph):
    """`nodes` ordered so that each comes after the producers of its inputs (stable: a node
    whose inputs are ready keeps its place)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    out, pending = [], list(nodes)
    while pending:
        left = []
        for node in pending:
            if all(x in ready for x in node.input):
                out.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            raise SystemExit(f"the graph has a cycle or a missing input at {left[0].name}")
        pending = left
    return out


def sample(name, rng):
    """A uint8 NHWC input with a masked right band (a line's padding) and its float32 planes."""
    n, h, w = SHAPES[name]
    u8 = rng.integers(0, 256, (n, h, w, 4), dtype=np.uint8)
    u8[..., 3] = 255
    u8[:, :, w * 3 // 4 :, :] = 0
    f = u8[..., :3].astype(np.float32) * SCALE - np.float32(1.0)
    f[u8[..., 3] == 0] = 0.0
    return u8, np.ascontiguousarray(f.transpose(0, 3, 1, 2))


def run(model, x):
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def main():
    args = sys.argv[1:]
    root, present = HERE, False
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag == "--models" and args:
            root = args.pop(0)
        elif flag == "--present":
            present = True
        else:
            sys.exit(f"unknown option {flag}; usage: make_u8.py [--models DIR] [--present] [v4|v6 ...]")
    sets = args or ["v4", "v6"]
    rng = np.random.default_rng(11)
    for s in sets:
        for g in GRAPHS:
            src = os.path.join(root, s, f"{g}.onnx")
            dst = os.path.join(root, s, f"{g}.u8.onnx")
            if not os.path.exists(src):
                if present:
                    continue
                sys.exit(f"{src} is missing: run models/fetch.sh first")
            model = with_u8_input(onnx.load(src))
            u8, f = sample(g.split(".")[0], rng)
            got = run(model.SerializeToString(), u8)
            want = run(src, f)
            diff = max(
                float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
                for a, b in zip(got, want)
            )
            if diff > TOLERANCE:
                sys.exit(f"{dst}: outputs differ from {src} by {diff} (> {TOLERANCE}); not written")
            onnx.save(model, dst)
            print(f"wrote {os.path.relpath(dst, root)} (max difference {diff:.2g})", file=sys.stderr)


if __name__ == "__main__":
    main()
