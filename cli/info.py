"""Describe a model (bundle, checkpoint or registry name) as a plain dict for ``dymn-edge info``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dymn_edge.runtime import hub, registry
from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.errors import UnknownModelError
from dymn_edge.runtime.resolve import resolve_model

__all__ = ["model_info", "registry_table"]


def _card_info(card: registry.ModelCard) -> dict[str, Any]:
    return {
        "name": card.name, "family": card.family, "width": card.width, "classes": card.num_classes,
        "audioset_map": card.map, "url": card.url() if card.released else None, "sha256": card.sha256, "size_bytes": card.size_bytes,
    }


def registry_table() -> list[dict[str, Any]]:
    """Every registry entry with where it is available locally."""
    rows = []
    for name in registry.available_models():
        card = registry.get_card(name)
        row = _card_info(card)
        cached = hub.cached_path(name)
        if card.embedded:
            row["installed"] = "embedded"
            row["path"] = str(registry.embedded_bundle_path(name))
        elif cached is not None:
            row["installed"] = "cached"
            row["path"] = str(cached)
        else:
            row["installed"] = ""
            row["path"] = None
        rows.append(row)
    return rows


def local_bundles() -> list[Path]:
    """Bundles converted or exported into the cache (``<cache>/bundles``)."""
    root = registry.cache_dir() / "bundles"
    return sorted(p for p in root.glob("*") if (p / "manifest.json").is_file()) if root.is_dir() else []


def model_info(spec: str | None) -> dict[str, Any]:
    """What a model is: architecture, classes, files and hashes; no download, no torch for bundles."""
    try:
        source = resolve_model(spec, download=False)
    except UnknownModelError:
        if spec is not None and spec in registry.available_models():
            return {**_card_info(registry.get_card(spec)), "installed": False}
        raise
    if source.kind == "bundle":
        bundle = load_bundle(source.path)
        m = bundle.manifest
        return {
            "kind": "bundle", "path": str(bundle.path), "name": bundle.name, "family": bundle.family,
            "width": bundle.width, "classes": bundle.num_classes, "precision": bundle.precision,
            "export_strategy": bundle.export_strategy, "window_s": bundle.window_s,
            "temperature": m.get("temperature"), "frontend": m["frontend"], "inputs": m.get("inputs"),
            "outputs": m.get("outputs"), "parity": m.get("parity"), "producer": m["producer"],
            "source": m.get("source"), "files": m["files"], "verified": True,
        }
    from dymn_edge.loader import require_torch

    require_torch(f"describing checkpoint {source.path}")
    from dymn_edge.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(source.path, expect=source.expect)
    params = sum(p.numel() for p in loaded.model.parameters())
    info = {
        "kind": "checkpoint", "path": str(source.path), "name": source.name, "family": loaded.config.family,
        "width": loaded.config.width_mult, "classes": loaded.config.num_classes, "parameters": params,
        "temperature": loaded.temperature, "sha256": loaded.sha256, "architecture": loaded.config.to_dict(),
    }
    if source.card is not None:
        info["registry"] = _card_info(source.card)
    return info
