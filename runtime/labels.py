"""Class label lists: the 527 AudioSet classes ship as package data (CC BY 4.0, Google)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import BundleError

__all__ = ["Label", "LabelSet", "audioset_labels", "read_labels", "write_labels"]

AUDIOSET_CSV = "class_labels_indices.csv"


@dataclass(frozen=True)
class Label:
    index: int
    mid: str
    name: str


class LabelSet:
    """An ordered list of class labels with lookup by display name or mid."""

    def __init__(self, labels: list[Label]) -> None:
        for i, label in enumerate(labels):
            if label.index != i:
                raise ValueError(f"label {label.name!r} has index {label.index}; expected {i} (labels must be in order)")
        self.labels = list(labels)
        self._by_key = {label.name: label for label in labels} | {label.mid: label for label in labels if label.mid}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Label:
        return self.labels[index]

    def __iter__(self):
        return iter(self.labels)

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def find(self, key: str) -> Label:
        """Look a label up by exact display name or mid."""
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"unknown label {key!r}; expected one of the {len(self)} display names or mids") from None

    @classmethod
    def placeholder(cls, n: int) -> "LabelSet":
        """Names ``class_0 … class_{n-1}`` for a model that came without a label list."""
        return cls([Label(i, "", f"class_{i}") for i in range(n)])


def _parse(text: str, source: str) -> LabelSet:
    reader = csv.DictReader(io.StringIO(text))
    expected = {"index", "mid", "display_name"}
    if reader.fieldnames is None or not expected <= set(reader.fieldnames):
        raise BundleError(f"{source}: expected CSV columns {sorted(expected)}, got {reader.fieldnames}")
    try:
        labels = [Label(int(row["index"]), row["mid"], row["display_name"]) for row in reader]
        return LabelSet(labels)
    except ValueError as e:
        raise BundleError(f"{source}: {e}") from e


def read_labels(path: str | Path) -> LabelSet:
    """Read a label CSV with columns index, mid, display_name (AudioSet's class_labels_indices.csv layout)."""
    path = Path(path)
    return _parse(path.read_text(encoding="utf-8"), str(path))


def write_labels(labels: LabelSet, path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["index", "mid", "display_name"])
        for label in labels:
            writer.writerow([label.index, label.mid, label.name])


@lru_cache(maxsize=1)
def audioset_labels() -> LabelSet:
    """The 527 AudioSet classes in the order every EfficientAT model predicts them."""
    text = resources.files(__package__).joinpath("assets", AUDIOSET_CSV).read_text(encoding="utf-8")
    return _parse(text, f"package data {AUDIOSET_CSV}")
