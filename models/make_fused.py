"""Makes the CPU-fast variants of the installed fp32 models: models/<set>/<name>.fused.onnx for
det, cls and rec. The engine loads them by default (`fused`); the downloaded originals stay for
`--fused false`, the fp16 variants and the RapidOCR parity references.

The PP-OCR exports spell every activation and every learnable affine block as separate
element-wise nodes, and ONNX Runtime (1.32, all optimisations on) fuses none of them:

    Conv -> Mul(s1) -> Add(b1)                              # learnable affine block
         -> Add(3) -> Clip(0, 6) -> Mul(x) -> Div(6)        # hardswish
         -> Mul(s2) -> Add(b2) -> Conv                      # learnable affine block

Each node is a pass over the whole activation tensor, and its NCHWc layout (the blocked layout
ONNX Runtime's CPU Conv runs in) does not cover scalar Add/Mul/Div/Clip, so every block also
converts its tensor out of the blocked layout and back. Profiled on PP-OCRv4's recogniser at one
thread (48x320, batch 8): Conv 31 % of the time, Mul 21 %, Add 17 %, Clip 8 %, Div 6 %, the
layout conversions 11 %.

This script rewrites the graph into an equivalent one (equal up to float rounding):

1. Conv -> Mul(scalar) / Add(scalar), where the Conv's only consumer: folded into the Conv's
   weights and bias (W*s, B*s + b).
2. Add(3) -> Clip(0, 6) -> Mul(x) -> Div(6) becomes HardSigmoid(1/6, 1/2) -> Mul(x), which ONNX
   Runtime fuses with the Conv before it into one Conv with a HardSwish activation.
3. Mul(scalar) -> Conv: folded into the Conv's weights (exact also at zero-padded borders,
   since s*0 = 0); Add(scalar) -> Conv only where the Conv pads nothing (B + b*sum(W)).
4. What is left of the affine blocks, Mul(scalar) -> Add(scalar) on a Conv's output, becomes one
   BatchNormalization (scale s, bias b, mean 0, variance and epsilon that sum to exactly 1),
   which ONNX Runtime runs in the blocked layout.

It starts from ONNX Runtime's basic, hardware-independent optimisations (constant folding, so
every constant is an initializer; make_fp16.py's `optimised`). It refuses to write a model whose outputs
on a fixed input differ from the original's by more than TOLERANCE. The engine's parity tests
check that the fused models read every fixture exactly as the originals do (crates/ocr/tests/
parity.rs), and crates/ocr/docs/models.md "Fused graphs" has the speed and the evaluation-set accuracy.

    .venv/bin/python models/make_fused.py [v4|v6 ...]

models/fetch.sh runs it and checks each result's sha256 against models/MANIFEST.tsv (the output
is deterministic for the pinned onnx, onnxruntime and numpy).
"""
import collections
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from make_fp16 import optimised  # ONNX Runtime's basic optimisation, saved (same folder)

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("det", "cls", "rec")
# A fixed input per model (batch 2): det an image-sized tensor, cls and rec a 48-high line.
SHAPES = {"det": (2, 3, 320, 320), "cls": (2, 3, 48, 192), "rec": (2, 3, 48, 320)}
# Largest accepted difference between the fused and the original outputs (probabilities).
TOLERANCE = 1e-4
BN_EPSILON = 1e-5
assert np.float32(1.0 - BN_EPSILON) + np.float32(BN_EPSILON) == np.float32(1.0)


class Graph:
    """The graph, its initializers as arrays by name, and helpers to rewrite it."""

    def __init__(self, model):
        self.model = model
        self.g = model.graph
        self.values = {i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}
        self.fresh = 0
        self.stats = collections.Counter()

    def scalar(self, name):
        """The value of a one-element constant, else None."""
        v = self.values.get(name)
        if v is None or v.size != 1 or v.dtype.kind != "f":
            return None
        return float(v.reshape(-1)[0])

    def consumers(self):
        c = collections.defaultdict(list)
        for n in self.g.node:
            for x in n.input:
                c[x].append(n)
        return c

    def producers(self):
        return {o: n for n in self.g.node for o in n.output}

    def only_consumer(self, name, consumers):
        us = consumers.get(name, [])
        if len(us) != 1 or name in self.outputs:
            return None
        return us[0]

    def add_initializer(self, prefix, array):
        self.fresh += 1
        name = f"ocrfleet_{prefix}{self.fresh}"
        self.g.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
        self.values[name] = array
        return name

    def conv_weights(self, conv):
        w = self.values[conv.input[1]].astype(np.float64)
        b = (self.values[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2]
             else np.zeros(w.shape[0]))
        return w, b

    def set_conv_weights(self, conv, w, b):
        names = [self.add_initializer("w", w), self.add_initializer("b", b)]
        del conv.input[1:]
        conv.input.extend(names)

    def rename_input(self, old, new):
        for n in self.g.node:
            for i, x in enumerate(n.input):
                if x == old:
                    n.input[i] = new

    def replace_nodes(self, drop, insert_before=None):
        """Removes the nodes in `drop` (by id) and puts insert_before[id(n)] in front of n."""
        insert_before = insert_before or {}
        kept = []
        for n in self.g.node:
            if id(n) in insert_before:
                kept.append(insert_before[id(n)])
            if id(n) not in drop:
                kept.append(n)
        del self.g.node[:]
        self.g.node.extend(kept)

    def const_operand(self, node, x):
        """For a binary node with `x` as one input, the scalar value of the other, else None."""
        if len(node.input) != 2 or x not in node.input:
            return None
        other = node.input[1] if node.input[0] == x else node.input[0]
        return None if other == x else self.scalar(other)

    def prune(self):
        used = {x for n in self.g.node for x in n.input} | self.outputs
        kept = [i for i in self.g.initializer if i.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(kept)


def is_conv_with_const_weights(g, n):
    return n.op_type == "Conv" and n.input[1] in g.values and (len(n.input) < 3 or n.input[2] in g.values)


def fold_affine_into_conv(g):
    """1. Conv -> Mul(s) / Add(b) into the Conv's weights and bias."""
    while True:
        consumers = g.consumers()
        for conv in g.g.node:
            if not is_conv_with_const_weights(g, conv):
                continue
            u = g.only_consumer(conv.output[0], consumers)
            if u is None or u.op_type not in ("Mul", "Add") or u.output[0] in g.outputs:
                continue
            s = g.const_operand(u, conv.output[0])
            if s is None:
                continue
            w, b = g.conv_weights(conv)
            w, b = (w * s, b * s) if u.op_type == "Mul" else (w, b + s)
            g.set_conv_weights(conv, w, b)
            g.rename_input(u.output[0], conv.output[0])
            g.replace_nodes({id(u)})
            g.stats["conv+" + u.op_type] += 1
            break
        else:
            return


def hardswish_to_hardsigmoid(g):
    """2. Add(x, 3) -> Clip(0, 6) -> Mul(x) -> Div(6) into HardSigmoid -> Mul(x)."""
    consumers = g.consumers()
    drop, before = set(), {}
    for add in g.g.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        x = next((c for c in add.input if c not in g.values and g.const_operand(add, c) == 3.0), None)
        if x is None:
            continue
        clip = g.only_consumer(add.output[0], consumers)
        if (clip is None or clip.op_type != "Clip" or len(clip.input) != 3
                or g.scalar(clip.input[1]) != 0.0 or g.scalar(clip.input[2]) != 6.0):
            continue
        mul = g.only_consumer(clip.output[0], consumers)
        if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted([x, clip.output[0]]):
            continue
        div = g.only_consumer(mul.output[0], consumers)
        if div is None or div.op_type != "Div" or div.input[0] != mul.output[0] or g.scalar(div.input[1]) != 6.0:
            continue
        hsig = helper.make_node("HardSigmoid", [x], [add.output[0] + "_ocrfleet_hsig"],
                                name=add.name + "_ocrfleet_hsig", alpha=1.0 / 6.0, beta=0.5)
        del mul.input[:]
        mul.input.extend([x, hsig.output[0]])
        mul.output[0] = div.output[0]
        drop |= {id(add), id(clip), id(div)}
        before[id(mul)] = hsig
        g.stats["hardswish"] += 1
    g.replace_nodes(drop, before)


def pads_nothing(conv):
    for a in conv.attribute:
        if a.name == "pads" and any(p != 0 for p in a.ints):
            return False
        if a.name == "auto_pad" and a.s not in (b"NOTSET", b"VALID"):
            return False
    return True


def ends_an_activation(x, producers):
    """Whether `x` comes out of a Conv, a BatchNormalization, Relu, Clip, HardSigmoid or a
    hardswish (Mul by a HardSigmoid). Folding is limited to these: a Mul(0.5) that ends a GELU
    (x * 0.5 * (1 + erf(x / sqrt 2))) must stay where it is, or ONNX Runtime no longer sees the
    GELU and runs its five nodes one by one (measured on v6's recogniser: 20 % slower)."""
    p = producers.get(x)
    if p is None:
        return False
    if p.op_type in ("Conv", "BatchNormalization", "Relu", "Clip", "HardSigmoid"):
        return True
    return p.op_type == "Mul" and any(
        producers.get(i) is not None and producers[i].op_type == "HardSigmoid" for i in p.input)


def fold_into_next_conv(g):
    """3. Mul(s) -> Conv into the weights; Add(b) -> Conv into the bias where nothing is padded."""
    while True:
        consumers, producers = g.consumers(), g.producers()
        for n in g.g.node:
            if n.op_type not in ("Mul", "Add") or len(n.input) != 2:
                continue
            conv = g.only_consumer(n.output[0], consumers)
            if conv is None or not is_conv_with_const_weights(g, conv) or conv.input[0] != n.output[0]:
                continue
            xs = [i for i in n.input if g.scalar(i) is None]
            if len(xs) != 1:
                continue
            # The data input ends an activation, or is that times a scalar (an affine block).
            p = producers.get(xs[0])
            scaled = (p is not None and p.op_type == "Mul" and len(p.input) == 2
                      and any(g.scalar(i) is not None for i in p.input))
            source = next((i for i in p.input if g.scalar(i) is None), None) if scaled else xs[0]
            if source is None or not ends_an_activation(source, producers):
                continue
            s = g.const_operand(n, xs[0])
            w, b = g.conv_weights(conv)
            if n.op_type == "Mul":
                w = w * s
            elif pads_nothing(conv):
                b = b + s * w.sum(axis=tuple(range(1, w.ndim)))
            else:
                continue
            g.set_conv_weights(conv, w, b)
            conv.input[0] = xs[0]
            g.replace_nodes({id(n)})
            g.stats[n.op_type + "+conv"] += 1
            break
        else:
            return


def affine_to_batchnorm(g):
    """4. Mul(s) -> Add(b) on a Conv-derived 4-D tensor into one BatchNormalization."""
    consumers, producers = g.consumers(), g.producers()

    def channels(x, depth=0):
        p = producers.get(x)
        if p is None or depth > 4:
            return None
        if p.op_type == "Conv" and p.input[1] in g.values:
            return g.values[p.input[1]].shape[0]
        if p.op_type in ("Mul", "Add", "HardSigmoid", "Relu", "Clip", "Div"):
            for i in p.input:
                if i not in g.values:
                    return channels(i, depth + 1)
        return None

    drop, before = set(), {}
    for mul in g.g.node:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        xs = [i for i in mul.input if g.scalar(i) is None]
        if len(xs) != 1:
            continue
        s = g.const_operand(mul, xs[0])
        add = g.only_consumer(mul.output[0], consumers)
        if add is None or add.op_type != "Add":
            continue
        b = g.const_operand(add, mul.output[0])
        c = channels(xs[0])
        if b is None or not c:
            continue
        # Variance 1 - eps with eps = 1e-5: in float32, var + eps is exactly 1, so the
        # normalisation divides by exactly 1, and no provider has to clamp a zero epsilon
        # (cuDNN's smallest is 1e-5).
        params = [g.add_initializer(k, v) for k, v in (
            ("bn_scale", np.full(c, s)), ("bn_bias", np.full(c, b)),
            ("bn_mean", np.zeros(c)), ("bn_var", np.full(c, np.float32(1.0 - BN_EPSILON))))]
        before[id(mul)] = helper.make_node("BatchNormalization", [xs[0], *params], [add.output[0]],
                                           name=f"ocrfleet_affine{g.fresh}", epsilon=BN_EPSILON)
        drop |= {id(mul), id(add)}
        g.stats["affine->bn"] += 1
    g.replace_nodes(drop, before)


def fuse(src):
    g = Graph(optimised(src))
    fold_affine_into_conv(g)
    hardswish_to_hardsigmoid(g)
    fold_into_next_conv(g)
    affine_to_batchnorm(g)
    g.prune()
    onnx.checker.check_model(g.model)
    return g


def largest_difference(src, dst, shape):
    """Max |fused - original| over every output, on a fixed image-like input."""
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    runs = [ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for p in (src, dst)]
    a, b = (s.run(None, {s.get_inputs()[0].name: x}) for s in runs)
    return max(float(np.abs(u.astype(np.float64) - v).max()) for u, v in zip(a, b))


def main():
    sets = sys.argv[1:] or ["v4"]
    for s in sets:
        for name in MODELS:
            src = os.path.join(HERE, s, f"{name}.onnx")
            dst = os.path.join(HERE, s, f"{name}.fused.onnx")
            if not os.path.exists(src):
                sys.exit(f"{src} is missing: run models/fetch.sh first")
            g = fuse(src)
            onnx.save(g.model, dst)
            diff = largest_difference(src, dst, SHAPES[name])
            if diff > TOLERANCE:
                os.remove(dst)
                sys.exit(f"{dst}: outputs differ from the original's by {diff:.2e} (> {TOLERANCE})")
            nodes = collections.Counter(n.op_type for n in g.g.node)
            print(f"wrote {os.path.relpath(dst)}: {dict(g.stats)}; {sum(nodes.values())} nodes; "
                  f"largest output difference {diff:.1e}")


if __name__ == "__main__":
    main()
