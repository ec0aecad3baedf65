"""The model registry: official EfficientAT AudioSet checkpoints and how to get them.

Like whisper's ``_MODELS``, each name maps to a release file; unlike timm, the sha256 is checked
every time a cached file is used and after every download. Only two release hashes are pinned
here (mn04_as from ``shared/weights/MANIFEST.md``, mn10_as from the foundation issue); for the
others the first download's hash is recorded beside the file and checked from then on
(trust on first use), and ``dymn-edge fetch --sha256`` pins one explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import UnknownModelError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "ModelCard",
    "available_models",
    "base_url",
    "cache_dir",
    "demo_clip_path",
    "embedded_bundle_path",
    "is_embedded_bundle",
    "get_card",
]

DEFAULT_BASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
DEFAULT_MODEL = "mn04_as"  # embedded as package data: tagging works with no download


@dataclass(frozen=True)
class ModelCard:
    """One registry entry; ``url`` depends on the base URL so mirrors and test servers can stand in."""

    name: str
    family: str  # "mn" (EfficientAT MobileNetV3) or "dymn" (Dynamic MobileNet)
    width: float
    filename: str  # release asset name
    map: float | None  # AudioSet mAP reported upstream
    sha256: str | None = None  # pinned hash, when known
    size_bytes: int | None = None
    num_classes: int = 527
    embedded: bool = False  # shipped inside the package as a bundle
    released: bool = True  # has a release file to download (our own models live only in the package)

    def url(self, base: str | None = None) -> str:
        base = base or base_url()
        return base.rstrip("/") + "/" + self.filename


_CARDS = [
    ModelCard("mn01_as", "mn", 0.1, "mn01_as_mAP_298.pt", 0.298),
    ModelCard("mn02_as", "mn", 0.2, "mn02_as_mAP_378.pt", 0.378),
    ModelCard(
        "mn04_as", "mn", 0.4, "mn04_as_mAP_432.pt", 0.432,
        sha256="899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
        size_bytes=4_066_513, embedded=True,
    ),
    ModelCard("mn05_as", "mn", 0.5, "mn05_as_mAP_443.pt", 0.443),
    ModelCard(
        "mn10_as", "mn", 1.0, "mn10_as_mAP_471.pt", 0.471,
        sha256="0bd7dc2443af498c289a2e739f02ebb515d6aa3fd3ab9db539c86123ae368a4e",
        size_bytes=19_708_753,
    ),
    ModelCard("mn20_as", "mn", 2.0, "mn20_as_mAP_478.pt", 0.478),
    ModelCard("mn30_as", "mn", 3.0, "mn30_as_mAP_482.pt", 0.482),
    ModelCard("mn40_as", "mn", 4.0, "mn40_as_mAP_484.pt", 0.484),
    ModelCard("mn40_as_ext", "mn", 4.0, "mn40_as_ext_mAP_487.pt", 0.487),
    ModelCard("dymn04_as", "dymn", 0.4, "dymn04_as.pt", 0.450),
    ModelCard("dymn10_as", "dymn", 1.0, "dymn10_as.pt", 0.477),
    ModelCard("dymn20_as", "dymn", 2.0, "dymn20_as_mAP_493.pt", 0.493),
    # The project's own DyMN, distilled from mn04_as on 358 permissive clips (docs/models.md); no AudioSet mAP.
    ModelCard("dymn04_edge", "dymn", 0.4, "dymn04_edge.pt", None, embedded=True, released=False),
]
_REGISTRY = {card.name: card for card in _CARDS}


def available_models() -> list[str]:
    """Registry names, in size order within each family."""
    return list(_REGISTRY)


def get_card(name: str) -> ModelCard:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; expected one of {', '.join(available_models())}, "
            "or a path to a checkpoint (.pt) or a bundle folder"
        ) from None


def base_url() -> str:
    """Release base URL: $DYMN_EDGE_BASE_URL overrides the GitHub release (mirrors, air-gapped servers)."""
    return os.environ.get("DYMN_EDGE_BASE_URL") or DEFAULT_BASE_URL


def cache_dir() -> Path:
    """Where downloads live: $DYMN_EDGE_CACHE, else $XDG_CACHE_HOME/dymn-edge, else ~/.cache/dymn-edge."""
    if os.environ.get("DYMN_EDGE_CACHE"):
        return Path(os.environ["DYMN_EDGE_CACHE"]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "dymn-edge"


def demo_clip_path() -> Path:
    """The shipped demo recording: 10 s of NPS humpback whale song (public domain, see NOTICE)."""
    return Path(str(resources.files(__package__).joinpath("assets", "demo", "humpback_whale.flac")))


def _embedded_models_dir() -> Path:
    """The package-data folder that holds the embedded bundles."""
    return Path(str(resources.files(__package__).joinpath("assets", "models")))


def is_embedded_bundle(path: Path) -> bool:
    """Whether ``path`` is one of the bundles shipped inside the package (which commands must not modify)."""
    return Path(path).resolve().parent == _embedded_models_dir().resolve()


def embedded_bundle_path(name: str = DEFAULT_MODEL) -> Path:
    """Folder of a bundle shipped as package data."""
    card = get_card(name)
    if not card.embedded:
        raise UnknownModelError(f"{name} is not embedded in the package; fetch it with `dymn-edge fetch {name}`")
    return _embedded_models_dir() / name
