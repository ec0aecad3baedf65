"""Model bundles: a folder with the model file(s) and a ``manifest.json`` that describes them.

The manifest carries everything a device needs to run the model without its source code:
architecture (family, width, classes), labels, frontend parameters, window length, precision,
export strategy, the producing tool versions and the sha256 of every payload file. The runtime
validates a bundle before use and refuses a tampered or incomplete one.

Layout::

    mn04_as/
      manifest.json
      model.onnx        role "onnx"
      model.onnx.data   role "onnx_data" (the weights as ONNX external data; bundles before 0.1 inline them)
      model.nchwc.onnx  role "onnx_nchwc" (optional: model.onnx in ONNX Runtime's blocked CPU form, reading model.onnx.data)
      model.openvino.onnx  role "onnx_openvino" (+ ".data"; optional: --strategy auto chose another strategy for OpenVINO)
      model.int8.onnx   role "onnx_int8" (+ ".data"; optional: the strategy INT8 calibration starts from, when no FP32 model above has it)
      model.fp32.onnx   role "onnx_fp32" (+ ".data"; TensorRT INT8 bundles: the FP32 graph its calibration.cache describes)
      model.pt          role "checkpoint" (optional: lets the torch backend run the same bundle)
      labels.csv        role "labels"
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .checksum import sha256_file
from .errors import BundleError, ChecksumError
from .frontend import FrontendConfig
from .labels import LabelSet, read_labels, write_labels

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ROLES",
    "Bundle",
    "derived_metadata",
    "is_bundle",
    "load_bundle",
    "onnx_payload",
    "update_manifest",
    "write_bundle",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "dymn-edge-bundle"
FORMAT_VERSION = 1
# What a payload file is for; a bundle holds at most one file per role.
ROLES = (
    "onnx", "onnx_data", "onnx_nchwc", "onnx_openvino", "onnx_openvino_data", "onnx_int8", "onnx_int8_data", "onnx_fp32", "onnx_fp32_data", "checkpoint", "labels",
    "openvino_xml", "openvino_bin", "tensorrt_engine", "calibration_cache", "fused_weights",
)

# DyMN export strategies by how well they quantize, best first, for every backend: ``--strategy
# auto`` hands INT8 calibration the first one it exported, and calibration warns about the others.
# It lives here, not in export, so that calibration (no torch) can read it. Measured on the trained
# dymn04_edge (benchmarks/int8_strategies.py: each strategy x backend calibrated on 64 pool windows,
# top-5 agreement with its own FP32 on 300 ESC-50 clips; grouped and matmul on ONNX Runtime and
# OpenVINO over calibration seeds 0-2, the rest seed 0). grouped is best or tied everywhere and the
# fastest INT8: ONNX Runtime grouped 0.744 (mean of 3 seeds) against matmul 0.663; OpenVINO grouped
# 0.766, matmul 0.773 (a tie); TensorRT Q/DQ grouped 0.869, matmul 0.867. expanded quantizes its
# constant K-kernel banks: ONNX Runtime 0.757 (a tie) at 6x grouped's INT8 latency, TensorRT 0.575,
# and OpenVINO collapses (0.002).
INT8_PREFERENCE = ("grouped", "matmul", "expanded")

MODEL_ROLES = ("onnx", "checkpoint", "openvino_xml", "tensorrt_engine", "fused_weights")
PRECISIONS = ("fp32", "fp16", "int8")

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "name": str,
    "family": str,
    "width": (int, float),
    "num_classes": int,
    "frontend": dict,
    "window_s": (int, float),
    "precision": str,
    "export_strategy": str,
    "producer": dict,
    "files": dict,
}


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def width(self) -> float:
        return float(self.manifest["width"])

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def export_strategy(self) -> str:
        return self.manifest["export_strategy"]

    def strategy_for(self, backend: str) -> str:
        """The export strategy of the model ``backend`` runs (``--strategy auto`` may pick one per backend)."""
        return self.manifest.get("strategy_choice", {}).get("chosen", {}).get(backend, self.export_strategy)

    def int8_source(self, backend: str) -> tuple[Path, str]:
        """(ONNX file, strategy) that INT8 calibration for ``backend`` quantizes.

        ``--strategy auto`` records the strategy that quantizes best; otherwise it is the model
        ``backend`` runs in FP32.
        """
        int8 = self.manifest.get("strategy_choice", {}).get("int8")
        if int8:
            if int8["file"] not in self.manifest["files"]:
                raise BundleError(f"{self.path}: strategy_choice.int8 names {int8['file']!r}, which the bundle does not hold "
                                  f"(it has {', '.join(sorted(self.manifest['files']))}); export the bundle again")
            return self.path / int8["file"], int8["strategy"]
        own = self.file("onnx_openvino") if backend == "openvino" else None
        return own or self.require("onnx"), self.strategy_for(backend)

    @property
    def window_s(self) -> float:
        return float(self.manifest["window_s"])

    @property
    def frontend(self) -> FrontendConfig:
        return FrontendConfig.from_dict(self.manifest["frontend"])

    @property
    def architecture(self) -> dict[str, Any]:
        return dict(self.manifest.get("architecture", {}))

    def file(self, role: str) -> Path | None:
        """Path of the payload with this role, or None when the bundle has none."""
        for name, entry in self.manifest["files"].items():
            if entry["role"] == role:
                return self.path / name
        return None

    def require(self, role: str, hint: str = "") -> Path:
        path = self.file(role)
        if path is None:
            have = sorted({e["role"] for e in self.manifest["files"].values()})
            raise BundleError(f"{self.path}: bundle has no {role!r} file (it has {', '.join(have)}){hint}")
        return path

    @property
    def labels(self) -> LabelSet:
        path = self.file("labels")
        if path is None:
            return LabelSet.placeholder(self.num_classes)
        return read_labels(path)


def _check_manifest(manifest: Any, where: Path) -> None:
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: manifest must be a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{where}: 'format' is {manifest.get('format')!r}; expected {FORMAT_NAME!r}")
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise BundleError(
            f"{where}: bundle format {version} was written by a newer dymn-edge; "
            f"this version reads format {FORMAT_VERSION}. Upgrade dymn-edge."
        )
    for key, kind in _REQUIRED.items():
        if key not in manifest:
            raise BundleError(f"{where}: manifest lacks required key {key!r}")
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise BundleError(f"{where}: manifest key {key!r} must be {expected}, got {manifest[key]!r}")
    if manifest["precision"] not in PRECISIONS:
        raise BundleError(f"{where}: precision {manifest['precision']!r} is not one of {PRECISIONS}")
    try:
        FrontendConfig.from_dict(manifest["frontend"])
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: invalid 'frontend': {e}") from e
    roles = []
    for name, entry in manifest["files"].items():
        _check_file_name(name, where)
        if not isinstance(entry, dict) or not {"sha256", "bytes", "role"} <= set(entry):
            raise BundleError(f"{where}: files[{name!r}] must have 'sha256', 'bytes' and 'role'")
        if entry["role"] not in ROLES:
            raise BundleError(f"{where}: files[{name!r}] has unknown role {entry['role']!r}; expected one of {ROLES}")
        roles.append(entry["role"])
    duplicated = {r for r in roles if roles.count(r) > 1}
    if duplicated:
        raise BundleError(f"{where}: more than one file with role(s) {sorted(duplicated)}")
    if "onnx_nchwc" in roles and "onnx" not in roles:
        # It is a faster form of model.onnx for one backend and reads its weights file; never the only model.
        raise BundleError(f"{where}: an 'onnx_nchwc' file needs the portable 'onnx' model beside it")
    if not set(roles) & set(MODEL_ROLES):
        raise BundleError(f"{where}: bundle lists no model file (one of roles {MODEL_ROLES})")
    fused = manifest.get("fused")
    # A derived bundle (INT8, FP16 IR, engine) that leaves the fused weights behind must drop their
    # record too; three writers do, and this keeps a fourth from claiming a file it lacks.
    if isinstance(fused, dict) and fused.get("included") and "fused_weights" not in roles:
        raise BundleError(f"{where}: manifest 'fused' says {fused.get('file')!r} is included, but no file has role 'fused_weights'")
    nchwc = manifest.get("nchwc")
    if isinstance(nchwc, dict) and nchwc.get("included") and "onnx_nchwc" not in roles:
        raise BundleError(f"{where}: manifest 'nchwc' says {nchwc.get('file')!r} is included, but no file has role 'onnx_nchwc'")


def _check_file_name(name: str, where: Path) -> None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name != p.name:
        raise BundleError(f"{where}: file name {name!r} must be a plain name inside the bundle folder")


def is_bundle(path: str | Path) -> bool:
    """True for a folder that has a manifest (validity is checked by load_bundle)."""
    path = Path(path)
    return path.is_dir() and (path / MANIFEST_NAME).is_file()


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and validate a bundle.

    Args:
        path: the bundle folder.
        verify: check size and sha256 of every payload (always on in the runtime; tools that only
            print the manifest may skip the hashing).

    Raises:
        BundleError: not a bundle, bad manifest, missing or extra-large files.
        ChecksumError: a payload file was modified after the bundle was written.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle folder (expected a directory containing {MANIFEST_NAME})")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{path}: incomplete bundle: {MANIFEST_NAME} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from e
    _check_manifest(manifest, path)
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: incomplete bundle: {name} ({entry['role']}) is listed in the manifest but missing")
        if not verify:
            continue
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise ChecksumError(f"{file}: size {size} bytes differs from the manifest's {entry['bytes']}; bundle was modified")
        actual = sha256_file(file)
        if actual != entry["sha256"]:
            raise ChecksumError(f"{file}: sha256 mismatch: manifest says {entry['sha256']}, file has {actual}; bundle was modified")
    bundle = Bundle(path, manifest)
    if verify and bundle.file("labels") is not None and len(bundle.labels) != bundle.num_classes:
        raise BundleError(f"{path}: labels.csv has {len(bundle.labels)} classes; manifest says {bundle.num_classes}")
    return bundle


def write_bundle(
    dest: str | Path,
    files: dict[str, tuple[str | Path, str]],
    metadata: dict[str, Any],
    *,
    labels: LabelSet | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Write a bundle atomically (a temporary folder renamed into place).

    Args:
        dest: bundle folder to create.
        files: bundle file name -> (source path, role); sources are copied.
        metadata: manifest keys other than ``format``, ``format_version`` and ``files``.
        labels: written as ``labels.csv`` (role ``labels``) when given.
        overwrite: replace an existing bundle at ``dest``.
    """
    dest = Path(dest)
    if dest.exists():
        if not overwrite:
            raise BundleError(f"{dest}: already exists; pass overwrite=True (--force) to replace it")
        if not is_bundle(dest):
            raise BundleError(f"{dest}: exists and is not a bundle; refusing to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        entries: dict[str, dict[str, Any]] = {}
        for name, (src, role) in files.items():
            _check_file_name(name, dest)
            shutil.copyfile(src, tmp / name)
            entries[name] = {"role": role}
        if labels is not None:
            write_labels(labels, tmp / "labels.csv")
            entries["labels.csv"] = {"role": "labels"}
        for name, entry in entries.items():
            entry["bytes"] = (tmp / name).stat().st_size
            entry["sha256"] = sha256_file(tmp / name)
        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **metadata, "files": entries}
        _check_manifest(manifest, dest)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a bundle is shared data
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote bundle %s (%s)", dest, ", ".join(f"{n}: {e['role']}" for n, e in entries.items()))
    return load_bundle(dest)


def onnx_payload(src: str | Path, stage: Path, name: str, role: str) -> dict[str, tuple[Path, str]]:
    """An ONNX model as the bundle files ``name`` and ``name.data`` (its weights as external data).

    The graph names its weights file, so the pair is re-saved, into ``stage``, under the names it
    will have in the bundle. External data lets ONNX Runtime read the weights without first holding
    the whole protobuf: a dymn10 session peaks 19 MB lower (125 -> 106 MB). Needs the ``onnx`` package.
    """
    import onnx

    folder = Path(stage) / f"staged-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(onnx.load(str(src)), str(folder / name), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.data", size_threshold=1024)
    return {name: (folder / name, role), f"{name}.data": (folder / f"{name}.data", f"{role}_data")}


# Keys that describe the payload itself; tools may only add their own records beside them.
_PROTECTED = ("format", "format_version", "files")


def derived_metadata(manifest: dict[str, Any], *, drop: tuple[str, ...] = (), keep_fused: bool = False,
                     keep_nchwc: bool = False) -> dict[str, Any]:
    """Manifest keys for a bundle made from another one (INT8, an IR, an engine, a benchmark copy).

    Leaves out what ``write_bundle`` writes itself, the keys in ``drop``, the ``fused`` record
    unless the new bundle carries model.fused.npz too (``keep_fused``), and the ``nchwc`` record
    unless it carries model.nchwc.onnx and model.onnx unchanged (``keep_nchwc``): a record of a
    file the bundle lacks is refused when it loads.
    """
    gone = {*_PROTECTED, *drop, *(() if keep_fused else ("fused",)), *(() if keep_nchwc else ("nchwc",))}
    return {k: v for k, v in manifest.items() if k not in gone}


def update_manifest(bundle: Bundle, changes: dict[str, Any]) -> Bundle:
    """Add or replace manifest keys that record findings about a bundle (lint verdicts, timings).

    Payload files and their hashes are left alone, so a bundle stays verifiable. The manifest is
    rewritten atomically (temporary file, then rename).
    """
    bad = sorted(set(changes) & set(_PROTECTED))
    if bad:
        raise BundleError(f"{bundle.path}: manifest keys {bad} describe the payload and cannot be updated")
    manifest = {**bundle.manifest, **changes}
    _check_manifest(manifest, bundle.path)
    tmp = bundle.path / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, bundle.path / MANIFEST_NAME)
    return Bundle(bundle.path, manifest)
