"""One exception hierarchy for the whole toolchain.

Every error a user can cause (a bad file, a wrong option, a tampered bundle) is a
``DymnEdgeError``; the CLI turns these into a one-line message and exit code 1.
Mixing in builtins lets callers catch either family (``except ValueError`` still works).
"""

from __future__ import annotations

__all__ = [
    "DymnEdgeError",
    "AudioFormatError",
    "BackendUnavailableError",
    "BundleError",
    "CalibrationError",
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "ExportError",
    "TrainingError",
    "UnknownModelError",
]


class DymnEdgeError(Exception):
    """Base class: an error caused by input, not a bug in dymn-edge."""


class AudioFormatError(DymnEdgeError, ValueError):
    """Audio that cannot be decoded, is empty, too short, or holds NaN/inf."""


class BackendUnavailableError(DymnEdgeError, ImportError):
    """An optional inference backend (or torch) is not installed."""


class BundleError(DymnEdgeError, ValueError):
    """A model bundle is missing, incomplete or has an invalid manifest."""


class ChecksumError(BundleError):
    """A file's sha256 differs from the one it was published or bundled with."""


class CheckpointError(DymnEdgeError, ValueError):
    """A checkpoint file is unreadable, unsafe, or does not match a known architecture."""


class DownloadError(DymnEdgeError, OSError):
    """A model download failed after retries."""


class ExportError(DymnEdgeError, RuntimeError):
    """Exporting a model (ONNX, OpenVINO, TensorRT) failed."""


class CalibrationError(DymnEdgeError, RuntimeError):
    """INT8 calibration could not be carried out."""


class TrainingError(DymnEdgeError, ValueError):
    """Training input that cannot be used: missing files, unknown labels, mismatched teacher logits or checkpoints."""


class UnknownModelError(DymnEdgeError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr with quotes
        return str(self.args[0]) if self.args else ""
