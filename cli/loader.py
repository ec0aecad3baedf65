"""Model spec + backend -> a ready Tagger; the one place runtime, train and export meet for tagging.

Bundles on onnxruntime/openvino stay torch-free. torch is imported only for ``--backend torch``
or to convert a checkpoint to a bundle for an ONNX backend (cached by checkpoint hash, so the
export happens once).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dymn_edge.runtime.backends.onnxruntime import nchwc_outdated
from dymn_edge.runtime.bundle import Bundle, is_bundle, load_bundle
from dymn_edge.runtime.errors import BackendUnavailableError
from dymn_edge.runtime.registry import cache_dir
from dymn_edge.runtime.resolve import ModelSource, resolve_model
from dymn_edge.runtime.checksum import sha256_file
from dymn_edge.runtime.tagging import Tagger

__all__ = ["bundle_for_checkpoint", "default_backend", "load_tagger", "load_torch_model", "require_torch"]

logger = logging.getLogger(__name__)


def require_torch(purpose: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(f"{purpose} needs PyTorch: pip install \"dymn-edge[train]\" (torch==2.13.0 on CPU machines)") from e


def default_backend(source: ModelSource, bundle: Bundle | None) -> str:
    """onnxruntime for bundles with an ONNX model, torch for checkpoints."""
    if bundle is not None and bundle.file("onnx") is not None:
        return "onnxruntime"
    if bundle is not None and bundle.file("openvino_xml") is not None:
        return "openvino"
    return "torch"


def bundle_for_checkpoint(source: ModelSource) -> Bundle:
    """Export a checkpoint to an ONNX bundle once, cached under the cache dir by its sha256."""
    require_torch(f"running checkpoint {source.path} on an ONNX backend")
    from dymn_edge.export.onnx import export_bundle
    from dymn_edge.train.checkpoint import load_checkpoint

    digest = sha256_file(source.path)
    dest = cache_dir() / "bundles" / f"{source.name}-{digest[:12]}"
    if is_bundle(dest):
        bundle = load_bundle(dest)
        return _with_nchwc(bundle, source) if nchwc_outdated(bundle.manifest) else bundle
    logger.warning("exporting %s to an ONNX bundle in %s (once; later runs reuse it)", source.path, dest)
    loaded = load_checkpoint(source.path, expect=source.expect)
    return export_bundle(loaded, dest, name=source.name, overwrite=True)


def _with_nchwc(bundle: Bundle, source: ModelSource) -> Bundle:
    """A DyMN bundle cached before model.nchwc.onnx existed, or with an older form of it, gets it
    (again), once (runtime/nchwc.py); when it cannot, the manifest records why, so later runs do
    not try again."""
    from dymn_edge.export.refresh import refresh_nchwc
    from dymn_edge.train.checkpoint import load_checkpoint

    logger.warning("adding model.nchwc.onnx (ONNX Runtime's blocked depthwise kernels) to %s (once)", bundle.path)
    bundle, line = refresh_nchwc(bundle, load_checkpoint(source.path, expect=source.expect).model)
    logger.log(logging.INFO if bundle.manifest["nchwc"]["included"] else logging.WARNING, "%s: %s", bundle.path, line)
    return bundle


def load_tagger(
    spec: str | Path | None = None,
    backend: str | None = None,
    *,
    threads: int | None = None,
    device: str | None = None,
    progress: bool = True,
    spin: bool = True,
) -> Tagger:
    """Resolve ``spec`` (None = embedded default) and open it on ``backend`` (None = the natural one)."""
    source = resolve_model(spec, progress=progress)
    bundle = load_bundle(source.path) if source.kind == "bundle" else None
    backend = backend or default_backend(source, bundle)
    if device is not None and backend not in ("onnxruntime", "openvino"):
        raise BackendUnavailableError(f"a device ({device!r}) can be chosen for the onnxruntime and openvino backends, not for {backend}")
    if backend == "torch":
        require_torch("--backend torch")
        from dymn_edge.train.inference import torch_tagger

        if bundle is not None:
            return torch_tagger(bundle, threads=threads)
        return torch_tagger(source.path, name=source.name, expect=source.expect, threads=threads)
    if bundle is None:
        bundle = bundle_for_checkpoint(source)
    return Tagger.from_bundle(bundle, backend, threads=threads, device=device, spin=spin)


def load_torch_model(spec: str | Path):
    """A registry name, checkpoint or bundle (with its checkpoint) as a loaded PyTorch model."""
    require_torch("exporting a model")
    from dymn_edge.train.checkpoint import load_checkpoint

    source = resolve_model(spec)
    if source.kind == "bundle":
        bundle = load_bundle(source.path)
        path = bundle.require("checkpoint", hint="; exporting needs the PyTorch checkpoint")
        return load_checkpoint(path, temperature=bundle.manifest.get("temperature")), bundle.name
    return load_checkpoint(source.path, expect=source.expect), source.name
