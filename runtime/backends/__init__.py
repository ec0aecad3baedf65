"""Inference backends behind one interface; each is imported only when asked for."""

from __future__ import annotations

from pathlib import Path

from ..bundle import Bundle
from ..errors import BackendUnavailableError
from .base import Backend

__all__ = ["BACKENDS", "Backend", "create_backend"]

# torch lives on the train side; the runtime only names it so errors can say where it is.
BACKENDS = ("onnxruntime", "openvino", "torch")


def create_backend(name: str, bundle: Bundle, *, threads: int | None = None, device: str | None = None) -> Backend:
    """Open the bundle's model on backend ``name`` (onnxruntime or openvino)."""
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle.require("onnx"), threads=threads)
    if name == "openvino":
        from .openvino import OpenVinoBackend

        model: Path = bundle.file("openvino_xml") or bundle.require("onnx")
        return OpenVinoBackend(model, threads=threads, device=device or "CPU")
    if name == "torch":
        raise BackendUnavailableError("the torch backend lives in dymn_edge.train (pip install \"dymn-edge[train]\")")
    raise BackendUnavailableError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
