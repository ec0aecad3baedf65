"""Parity table of the export issue: every strategy x backend x batch size against PyTorch, max |logit diff|.

Models: the seeded dymn04 and dymn10 fixtures (their own inputs: two noise rows and the real metro
recording, the data their BN statistics came from) and the real mn04_as checkpoint (three real
log-mels). Prints a markdown table and writes benchmarks/results/export_parity.json.

    python benchmarks/export_parity.py [--shared ../shared] [--backends onnxruntime,openvino]

Backends: ``onnxruntime`` and ``openvino`` (CPU, FP32), and where onnxruntime-gpu and an NVIDIA GPU
are present ``onnxruntime-cuda`` (the CUDA provider with ONNX Runtime's default, TF32 allowed) and
``onnxruntime-cuda-fp32`` (``use_tf32=0``, as the runtime opens it). A CUDA row records the operators
that ONNX Runtime left on the CPU, read from its profile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from dymn_edge.export.onnx import export_onnx, probe_features
from dymn_edge.export.strategies import STRATEGIES
from dymn_edge.runtime.machine import machine_info
from dymn_edge.train.checkpoint import load_checkpoint
from dymn_edge.train.models import DyMNConfig

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]
from seeded_models import seeded_reference_model  # noqa: E402  (the fixtures' seeding recipe)
from ort_cuda import session as cuda_session  # noqa: E402  (benchmarks/: a provider that must start, with the runtime's options)


def _dymn04(fx: Path):
    inputs = np.load(fx / "dymn04_reference.npz")["input"]
    weights = fx / "dymn04_reference_weights.pt"
    if weights.exists():
        return load_checkpoint(weights).model, inputs
    # The same weights from the fixtures' seeding recipe (same state sha256): the GPU machine gets no 8 MB file.
    return seeded_reference_model(DyMNConfig(width_mult=0.4), torch.from_numpy(inputs)), inputs


def _dymn10(fx: Path):
    inputs = np.load(fx / "dymn10_reference.npz")["input"]
    return seeded_reference_model(DyMNConfig(width_mult=1.0), torch.from_numpy(inputs)), inputs


def _mn04_as(fx: Path):
    mel = np.load(fx / "frontend_reference.npz")["metro_mel"]
    real = np.stack([mel, probe_features(10.0)[0, 0], mel[:, ::-1].copy()])[:, None]
    weights = fx.parents[1] / "weights" / "mn04_as_mAP_432.pt"
    if not weights.exists():  # the embedded bundle's checkpoint is the same file (same sha256)
        weights = REPO / "runtime" / "assets" / "models" / "mn04_as" / "model.pt"
    return load_checkpoint(weights).model, real


# name -> (label, loader, strategies)
MODELS = {
    "dymn04": ("dymn04 (seeded fixture)", _dymn04, STRATEGIES),
    "dymn10": ("dymn10 (seeded fixture)", _dymn10, STRATEGIES),
    "mn04_as": ("mn04_as (official)", _mn04_as, ("static",)),
}


BACKENDS = ("onnxruntime", "openvino", "onnxruntime-cuda", "onnxruntime-cuda-fp32")


def _cuda_session(path: Path, tf32: bool, profile_dir: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(profile_dir) / "ort")
    return cuda_session(path, "CUDAExecutionProvider", tf32=tf32, options=options)


def _cpu_ops(session: ort.InferenceSession) -> dict[str, int]:
    """Operator types of the nodes that ran on the CPU provider, from the session's profile."""
    events = json.loads(Path(session.end_profiling()).read_text())
    nodes = {e["name"]: e["args"]["op_name"] for e in events
             if e.get("cat") == "Node" and e.get("args", {}).get("provider") == "CPUExecutionProvider"}
    return dict(sorted(Counter(nodes.values()).items()))


def _run(path: Path, backend: str, profile_dir: str):
    if backend == "onnxruntime":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(["logits"], {"mel": x})[0], None
    if backend.startswith("onnxruntime-cuda"):
        session = _cuda_session(path, backend == "onnxruntime-cuda", profile_dir)
        return lambda x: session.run(["logits"], {"mel": x})[0], session
    import openvino as ov  # imported here: the GPU machine has no OpenVINO

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: np.asarray(compiled({0: x})[compiled.outputs[0]]), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "export_parity.json")
    parser.add_argument("--backends", default="onnxruntime,openvino", help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--strategies", default=None, help="comma-separated subset (default: every strategy of each model)")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="export once with a free batch dimension and run it at batch 1 and 3 (half the exports; "
                             "grouped, which needs a fixed batch, is still exported per batch)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the exported files here, as MODEL-STRATEGY[-BATCH].onnx")
    args = parser.parse_args()
    chosen = {}
    for option, given, known in (("--backends", args.backends, BACKENDS), ("--models", args.models, MODELS)):
        chosen[option] = given.split(",")
        unknown = [b for b in chosen[option] if b not in known]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)} (expected some of {', '.join(known)})")
    backends = chosen["--backends"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for key in chosen["--models"]:
            name, load, strategies = MODELS[key]
            if args.strategies:
                strategies = [s for s in strategies if s in args.strategies.split(",")]
            if not strategies:
                continue
            model, inputs = load(args.shared / "fixtures" / "efficientat")
            with torch.no_grad():
                expected = model(torch.from_numpy(inputs))[0].numpy()
            for strategy in strategies:
                exports = {}
                dynamic = args.dynamic_batch and strategy != "grouped"  # grouped folds the batch into conv groups
                for batch in (1, 3):
                    if dynamic and batch == 3:
                        exports[3] = exports[1]
                        continue
                    fixed = None if dynamic else batch
                    file = out / (f"{key}-{strategy}.onnx" if fixed is None else f"{key}-{strategy}-{batch}.onnx")
                    exports[batch] = export_onnx(model, file, strategy="grouped" if strategy == "static" else strategy, batch=fixed)
                for batch, path in exports.items():
                    for backend in backends:
                        run, session = _run(path, backend, tmp)
                        got = np.concatenate([run(inputs[i : i + batch]) for i in range(0, 3, batch)])
                        err = float(np.abs(got - expected).max())
                        row = {"model": name, "strategy": strategy, "batch": batch, "backend": backend,
                               "export_batch": "dynamic" if dynamic else batch, "max_abs_logit_diff": err}
                        if session is not None:
                            row["cpu_ops"] = _cpu_ops(session)
                        rows.append(row)
                        print(f"{name:24s} {strategy:9s} batch {batch} {backend:21s} {err:.2e} {row.get('cpu_ops', '')}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info(), "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
                                          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "results": rows}, indent=2) + "\n")
    print("\n| model | strategy | " + " | ".join(f"{b} b{n}" for b in backends for n in (1, 3)) + " |")
    print("|---|---|" + "---|" * (2 * len(backends)))
    keyed = {(r["model"], r["strategy"], r["backend"], r["batch"]): r["max_abs_logit_diff"] for r in rows}
    for model, strategy in dict.fromkeys((r["model"], r["strategy"]) for r in rows):
        cells = [f"{keyed[model, strategy, b, n]:.1e}" for b in backends for n in (1, 3)]
        print(f"| {model} | {strategy} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
