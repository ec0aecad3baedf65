"""Copies of the embedded bundles for tests that need one edited."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dymn_edge.runtime.registry import embedded_bundle_path


def without_fused_weights(name: str, dest: Path) -> Path:
    """The embedded bundle ``name`` at ``dest`` as exported with --no-fused: no model.fused.npz, no record of it."""
    shutil.copytree(embedded_bundle_path(name), dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    del manifest["files"]["model.fused.npz"], manifest["fused"]
    (dest / "model.fused.npz").unlink()
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest
