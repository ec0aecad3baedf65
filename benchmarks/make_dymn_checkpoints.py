"""Write randomly initialised DyMN checkpoints for speed benchmarks (no trained DyMN is available here).

Latency does not depend on the weight values, only on the architecture; EfficientAT's own init
keeps activations in range, unlike the seeded fixtures, which overflow on audio they were not
calibrated on. Temperature is 1.0, as in trained AudioSet DyMNs.

    python benchmarks/make_dymn_checkpoints.py OUT_DIR   # writes dymn04_init.pt, dymn10_init.pt
"""

import sys
from pathlib import Path

import torch

from dymn_edge.train import create_model, save_checkpoint

out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
out.mkdir(parents=True, exist_ok=True)
for name in ("dymn04", "dymn10"):
    torch.manual_seed(0)
    model = create_model(name).eval()
    model.set_temperature(1.0)
    save_checkpoint(model, out / f"{name}_init.pt")
    print(out / f"{name}_init.pt")
