"""Parity table of the export issue: every strategy x backend x batch size against PyTorch, max |logit diff|.

Models: the seeded dymn04 and dymn10 fixtures (their own inputs: two noise rows and the real metro
recording, the data their BN statistics came from) and the real mn04_as checkpoint (three real
log-mels). Prints a markdown table and writes benchmarks/results/export_parity.json.

    python benchmarks/export_parity.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch

from dymn_edge.export.onnx import export_onnx, probe_features
from dymn_edge.export.strategies import STRATEGIES
from dymn_edge.runtime.machine import machine_info
from dymn_edge.train.checkpoint import load_checkpoint
from dymn_edge.train.models import DyMNConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from seeded_models import seeded_reference_model  # noqa: E402  (the fixtures' seeding recipe)


def _models(shared: Path):
    fx = shared / "fixtures" / "efficientat"
    dymn04_in = np.load(fx / "dymn04_reference.npz")["input"]
    yield "dymn04 (seeded fixture)", load_checkpoint(fx / "dymn04_reference_weights.pt").model, dymn04_in, STRATEGIES
    dymn10_in = np.load(fx / "dymn10_reference.npz")["input"]
    yield "dymn10 (seeded fixture)", seeded_reference_model(DyMNConfig(width_mult=1.0), torch.from_numpy(dymn10_in)), dymn10_in, STRATEGIES
    mel = np.load(fx / "frontend_reference.npz")["metro_mel"]
    real = np.stack([mel, probe_features(10.0)[0, 0], mel[:, ::-1].copy()])[:, None]
    yield "mn04_as (official)", load_checkpoint(shared / "weights" / "mn04_as_mAP_432.pt").model, real, ("static",)


def _run(path: Path, backend: str):
    if backend == "onnxruntime":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(["logits"], {"mel": x})[0]
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: np.asarray(compiled({0: x})[compiled.outputs[0]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "export_parity.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, inputs, strategies in _models(args.shared):
            with torch.no_grad():
                expected = model(torch.from_numpy(inputs))[0].numpy()
            for strategy in strategies:
                for batch in (1, 3):
                    path = export_onnx(model, Path(tmp) / f"{strategy}-{batch}.onnx", strategy="grouped" if strategy == "static" else strategy, batch=batch)
                    for backend in ("onnxruntime", "openvino"):
                        run = _run(path, backend)
                        got = np.concatenate([run(inputs[i : i + batch]) for i in range(0, 3, batch)])
                        err = float(np.abs(got - expected).max())
                        rows.append({"model": name, "strategy": strategy, "batch": batch, "backend": backend, "max_abs_logit_diff": err})
                        print(f"{name:24s} {strategy:9s} batch {batch} {backend:12s} {err:.2e}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info(), "results": rows}, indent=2) + "\n")
    print("\n| model | strategy | ONNX Runtime b1 | ONNX Runtime b3 | OpenVINO b1 | OpenVINO b3 |\n|---|---|---|---|---|---|")
    keyed = {(r["model"], r["strategy"], r["backend"], r["batch"]): r["max_abs_logit_diff"] for r in rows}
    for model, strategy in dict.fromkeys((r["model"], r["strategy"]) for r in rows):
        cells = [f"{keyed[model, strategy, b, n]:.1e}" for b in ("onnxruntime", "openvino") for n in (1, 3)]
        print(f"| {model} | {strategy} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
