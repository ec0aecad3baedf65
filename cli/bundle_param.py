"""The BUNDLE argument of commands that only read a bundle: a folder, or an embedded model's name."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["BUNDLE_OR_EMBEDDED"]


class _BundleOrEmbedded(click.ParamType):
    """A bundle folder, or the name of a model embedded in the package (for commands that only read it)."""

    name = "BUNDLE"

    def convert(self, value, param, ctx):
        path = Path(value).expanduser()
        if path.is_dir():
            return path
        from dymn_edge.runtime import registry

        embedded = [n for n in registry.available_models() if registry.get_card(n).embedded]
        if str(value) in embedded:
            return registry.embedded_bundle_path(str(value))
        self.fail(f"{value!r}: no such bundle folder, and not an embedded model ({', '.join(embedded)})", param, ctx)


BUNDLE_OR_EMBEDDED = _BundleOrEmbedded()
