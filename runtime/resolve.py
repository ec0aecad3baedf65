"""Turn what a user typed after ``--model`` into a file on disk, without importing torch.

A spec is, in this order: nothing (the embedded default), an existing bundle folder, an
existing checkpoint file, or a registry name (embedded, cached, or downloaded and verified).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import registry
from .bundle import MANIFEST_NAME, is_bundle
from .errors import BundleError, UnknownModelError

__all__ = ["ModelSource", "resolve_model"]


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "bundle" or "checkpoint"
    path: Path
    name: str
    card: registry.ModelCard | None = None

    @property
    def expect(self) -> dict:
        """Architecture facts a registry name promises; checked when the checkpoint loads."""
        if self.card is None:
            return {}
        return {"family": self.card.family, "width_mult": self.card.width, "num_classes": self.card.num_classes}


def resolve_model(spec: str | Path | None = None, *, download: bool = True, base_url: str | None = None, progress: bool = True) -> ModelSource:
    """Find the model a spec names.

    Raises:
        UnknownModelError: neither a path nor a registry name.
        BundleError: a folder without a manifest, or a bare .onnx file.
    """
    if spec is None or str(spec) == "":
        spec = registry.DEFAULT_MODEL
    path = Path(spec).expanduser()
    if path.is_dir():
        if not is_bundle(path):
            raise BundleError(f"{path}: a folder but not a bundle (no {MANIFEST_NAME}); expected a bundle or a checkpoint file")
        return ModelSource("bundle", path, path.name)
    if path.is_file():
        if path.suffix.lower() == ".onnx":
            raise BundleError(f"{path}: a bare ONNX file; pass the bundle folder that contains it (with its {MANIFEST_NAME})")
        if path.name == MANIFEST_NAME:
            return ModelSource("bundle", path.parent, path.parent.name)
        return ModelSource("checkpoint", path, path.stem)
    name = str(spec)
    try:
        card = registry.get_card(name)
    except UnknownModelError:
        if any(sep in name for sep in "/\\") or "." in Path(name).name:
            raise UnknownModelError(f"{name}: no such file or folder, and not a registry name ({', '.join(registry.available_models())})") from None
        raise
    if card.embedded:
        return ModelSource("bundle", registry.embedded_bundle_path(name), name, card)
    # Imported here: the download code brings http, ssl and rich's progress bars, ~10 MB of a
    # tagging process's peak RSS that a local or embedded model never uses.
    from . import hub

    cached = hub.cached_path(name)
    if cached is None:
        if not download:
            raise UnknownModelError(f"{name} is not downloaded; run `dymn-edge fetch {name}`")
        cached = hub.fetch(name, base_url=base_url, progress=progress)
    return ModelSource("checkpoint", cached, name, card)
