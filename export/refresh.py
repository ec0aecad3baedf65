"""Bring a bundle that an older dymn-edge exported up to date, in place.

Bundles outlive the version that wrote them. Two files were added to DyMN and MobileNetV3 bundles
after the first exports, and one changed form:

- ``model.nchwc.onnx`` (DyMN): ONNX Runtime's blocked depthwise kernels (runtime/nchwc.py),
  1.2-1.35x faster on an AVX-512 CPU. Its first format failed at run time on AVX2 CPUs, where the
  runtime now falls back to the slower ``model.onnx``.
- ``model.fused.npz`` (DyMN, MobileNetV3): the weights ``--backend fused`` reads. Needs the PyTorch
  model: the bundle's own ``model.pt``, or the checkpoint passed in.

``model.onnx`` and every other file stay as they are, and each new file is checked like export
checks it. Re-exporting from the checkpoint does the same and more; this is for bundles whose
``model.onnx`` has already been validated or deployed.
"""

from __future__ import annotations

from pathlib import Path

from dymn_edge.runtime.backends.fused import FUSED_FILE
from dymn_edge.runtime.backends.onnxruntime import NCHWC_FILE, nchwc_outdated
from dymn_edge.runtime.bundle import Bundle, load_bundle, update_manifest
from dymn_edge.runtime.errors import ExportError
from dymn_edge.train.checkpoint import load_checkpoint

from .fused import add_fused_weights
from .onnx import _family, add_nchwc_graph

__all__ = ["refresh_bundle", "refresh_nchwc"]


def refresh_nchwc(bundle: Bundle, model) -> tuple[Bundle, str]:
    """Add or rewrite ``bundle``'s model.nchwc.onnx (``add_nchwc_graph``, checked against ``model``, or
    model.onnx when None); when it cannot be made, the manifest records why, so it is not retried.
    Returns the bundle and a line that says what happened."""
    before = bundle.manifest.get("nchwc")
    try:
        bundle = add_nchwc_graph(bundle.path, model)  # an INT8 bundle is checked against its own model.onnx
    except ExportError as e:
        return update_manifest(bundle, {"nchwc": {"included": False, "reason": str(e)}}), f"left out {NCHWC_FILE}: {e}"
    record = bundle.manifest["nchwc"]
    return bundle, (f"{'rewrote' if before else 'added'} {NCHWC_FILE} ({record['rewritten']} depthwise convolutions blocked; "
                    f"max |logit diff| vs {record['reference']} {record['max_abs_logit_diff']:.1e})")


def refresh_bundle(bundle_path: str | Path, checkpoint: str | Path | None = None) -> tuple[Bundle, list[str]]:
    """Add or rewrite what ``bundle_path`` lacks; returns the bundle and one line per change (none: it was current).

    ``checkpoint``: the bundle's own PyTorch checkpoint, when the bundle does not carry it as model.pt.
    A file that cannot be made is left out, with the reason in the manifest and in the returned lines.
    """
    bundle = load_bundle(bundle_path)
    source = checkpoint if checkpoint is not None else bundle.file("checkpoint")
    model = load_checkpoint(source).model if source is not None else None
    if model is not None and _family(model) != bundle.family:
        raise ExportError(f"{source}: a {_family(model) or 'non-DyMN/MobileNetV3'} checkpoint, but {bundle.path} is a "
                          f"{bundle.family} bundle; pass the checkpoint it was exported from")
    changes = []
    if nchwc_outdated(bundle.manifest):
        bundle, line = refresh_nchwc(bundle, model)
        changes.append(line)
    if bundle.family in ("dymn", "mn") and bundle.precision != "int8" and bundle.file("fused_weights") is None:
        if model is None:
            changes.append(f"left out {FUSED_FILE}: it is made from the PyTorch model, which the bundle does not carry; "
                           "pass its checkpoint")
        else:
            try:
                bundle = add_fused_weights(bundle.path, model)
            except ExportError as e:
                changes.append(f"left out {FUSED_FILE}: {e}")
            else:
                diff = bundle.manifest["fused"]["max_abs_logit_diff"]
                changes.append(f"added {FUSED_FILE} (" + (f"max |logit diff| vs PyTorch {diff:.1e})" if diff is not None else "parity not checked)"))
    return bundle, changes
