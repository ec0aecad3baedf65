"""Write randomly initialised DyMN checkpoints for speed benchmarks (no trained DyMN is available here).

Latency does not depend on the weight values, only on the architecture; EfficientAT's own init
keeps activations in range, unlike the seeded fixtures, which overflow on audio they were not
calibrated on. Temperature is 1.0, as in trained AudioSet DyMNs. The INT8 benchmarks import
``write_init_checkpoint`` and ``init_export`` from here.

    python benchmarks/make_dymn_checkpoints.py OUT_DIR   # writes dymn04_init.pt, dymn10_init.pt
"""

import sys
from pathlib import Path

import torch

from dymn_edge.train import create_model, save_checkpoint


def write_init_checkpoint(name: str, path: Path) -> Path:
    """``name`` (dymn04, dymn10, ...) with EfficientAT's initialisation, seed 0, temperature 1.0, saved at ``path``."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    model.set_temperature(1.0)
    save_checkpoint(model, path)
    return path


def init_export(name: str, strategy: str, work: Path) -> Path:
    """A throwaway FP32 bundle (batch 1, no parity check) of the initialised ``name`` in ``strategy``, under ``work``."""
    from dymn_edge.export.onnx import export_bundle
    from dymn_edge.train.checkpoint import load_checkpoint

    checkpoint = work / f"{name}_init.pt"
    if not checkpoint.exists():
        write_init_checkpoint(name, checkpoint)
    return export_bundle(load_checkpoint(checkpoint), work / f"{name}-{strategy}", name=name, strategy=strategy, batch=1,
                         include_checkpoint=False, verify_parity=False, overwrite=True).path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("dymn04", "dymn10"):
        print(write_init_checkpoint(name, out / f"{name}_init.pt"))
