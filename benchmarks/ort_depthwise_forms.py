"""One depthwise dynamic convolution in ONNX Runtime, written four ways, at the shapes of dymn10's blocks.

Why `hybrid` banks only the strided depthwise convolutions (export/strategies.py). Each form is a
tiny ONNX graph with the same K = 4 kernels and attention, checked against the first form to
1e-4, and the five are timed side by side (1 thread, 10 interleaved rounds of 3 runs, medians):

* ``run-time``   -- one grouped Conv whose kernel is an input (what grouped/matmul export);
* ``constant``   -- the same Conv with its aggregated kernel as an initializer (a lower bound:
  no real model can do this, the kernel depends on the input);
* ``K scaled-in``  -- K constant-kernel Convs, each on the input times a_k, summed;
* ``K scaled-out`` -- K constant-kernel Convs, each output times a_k, summed (hybrid's form);
* ``expanded``   -- one Conv with K outputs per channel, then Mul and ReduceSum.

    python benchmarks/ort_depthwise_forms.py
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dymn_edge.export.auto import interleaved_medians

K = 4
# (channels, height, width of the input, kernel, stride) of dymn10's 15 depthwise convolutions
# for a 10 s window (128 mel bins, 1000 frames, after the stride-2 stem).
DYMN10 = [(16, 64, 500, 3, 1), (64, 64, 500, 3, 2), (72, 32, 250, 3, 1), (72, 32, 250, 5, 2), (120, 16, 125, 5, 1),
          (120, 16, 125, 5, 1), (240, 16, 125, 3, 2), (200, 8, 63, 3, 1), (184, 8, 63, 3, 1), (184, 8, 63, 3, 1),
          (480, 8, 63, 3, 1), (672, 8, 63, 3, 1), (672, 8, 63, 5, 2), (960, 4, 32, 5, 1), (960, 4, 32, 5, 1)]


def _session(nodes, inputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def forms(channels, height, width, kernel, stride, rng):
    """{form: ms} for one shape; every form's output is checked against the run-time-kernel Conv."""
    x = rng.standard_normal((1, channels, height, width)).astype(np.float32)
    bank = rng.standard_normal((K, channels, 1, kernel, kernel)).astype(np.float32)
    a = rng.random(K).astype(np.float32)
    a /= a.sum()
    weight = np.tensordot(a, bank, 1)
    conv = dict(group=channels, kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4, strides=[stride, stride])
    x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)
    a_in = helper.make_tensor_value_info("a", TensorProto.FLOAT, (K,))
    split = helper.make_node("Split", ["a"], [f"a{i}" for i in range(K)], axis=0)
    kernels = [numpy_helper.from_array(bank[i], f"w{i}") for i in range(K)]

    runtime = _session([helper.make_node("Conv", ["x", "w"], ["y"], **conv)],
                       [x_in, helper.make_tensor_value_info("w", TensorProto.FLOAT, weight.shape)])
    reference = runtime.run(None, {"x": x, "w": weight})[0]
    out_h, out_w = reference.shape[2:]
    sessions = {
        "run-time": (runtime, {"x": x, "w": weight}),
        "constant": (_session([helper.make_node("Conv", ["x", "w"], ["y"], **conv)], [x_in], [numpy_helper.from_array(weight, "w")]), {"x": x}),
    }
    nodes = [split]
    for i in range(K):
        nodes += [helper.make_node("Mul", ["x", f"a{i}"], [f"x{i}"]), helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"c{i}"], **conv)]
    nodes.append(helper.make_node("Sum", [f"c{i}" for i in range(K)], ["y"]))
    sessions["K scaled-in"] = (_session(nodes, [x_in, a_in], kernels), {"x": x, "a": a})
    nodes = [split]
    for i in range(K):
        nodes += [helper.make_node("Conv", ["x", f"w{i}"], [f"c{i}"], **conv), helper.make_node("Mul", [f"c{i}", f"a{i}"], [f"m{i}"])]
    nodes.append(helper.make_node("Sum", [f"m{i}" for i in range(K)], ["y"]))
    sessions["K scaled-out"] = (_session(nodes, [x_in, a_in], kernels), {"x": x, "a": a})
    expanded = bank[:, :, 0].transpose(1, 0, 2, 3).reshape(channels * K, 1, kernel, kernel)  # channel-major
    nodes = [helper.make_node("Conv", ["x", "wx"], ["c"], **conv), helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Mul", ["r", "a5"], ["m"]), helper.make_node("ReduceSum", ["m", "axis"], ["y"], keepdims=0)]
    initializers = [numpy_helper.from_array(expanded, "wx"), numpy_helper.from_array(np.array([1, channels, K, out_h, out_w], np.int64), "shape"),
                    numpy_helper.from_array(np.array([2], np.int64), "axis")]
    a5 = a.reshape(1, 1, K, 1, 1)
    sessions["expanded"] = (_session(nodes, [x_in, helper.make_tensor_value_info("a5", TensorProto.FLOAT, a5.shape)], initializers), {"x": x, "a5": a5})

    for form, (session, feeds) in sessions.items():
        error = np.abs(session.run(None, feeds)[0] - reference).max()
        assert error < 1e-4, f"{form} differs from the run-time-kernel conv by {error:.1e}"
    runners = {form: (lambda _, s=session, f=feeds: s.run(None, f)) for form, (session, feeds) in sessions.items()}
    return interleaved_medians(runners, None, rounds=10, runs_per_round=3)


def main() -> None:
    rng = np.random.default_rng(0)
    totals: dict[str, float] = {}
    print(f"{'C, H, W, k, stride':24s}" + "".join(f"{f:>14s}" for f in ("run-time", "constant", "K scaled-in", "K scaled-out", "expanded")))
    for shape in DYMN10:
        ms = forms(*shape, rng)
        print(f"{str(shape):24s}" + "".join(f"{v:14.3f}" for v in ms.values()), flush=True)
        for form, v in ms.items():
            totals[form] = totals.get(form, 0.0) + v
    print(f"{'total (ms)':24s}" + "".join(f"{v:14.2f}" for v in totals.values()))


if __name__ == "__main__":
    main()
