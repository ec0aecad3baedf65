"""ONNX bundle -> TensorRT engine bundle, built with TensorRT's Python API on the device that will run it.

Why here and torch-free: an engine is only valid for the TensorRT version and GPU that built it, so
the build happens on the Jetson itself, where torch is usually absent. Building is still an export
step (bundle in, bundle out, like ``export/openvino.py``), so it lives in ``export``; but this module
imports only ``runtime`` (bundles, lint, the Q/DQ rules and calibration cache of ``runtime.tensorrt_int8``,
the TensorRT backend that checks the result), which never imports torch. A test runs it with torch blocked.

The build, one TensorRT call per step (``Builder``, ``OnnxParser.parse_from_file``, an
optimization profile, builder flags, ``build_serialized_network``), dispatched on the version:

* **8.5 / 8.6**: the network is created with the ``EXPLICIT_BATCH`` flag, which the ONNX parser requires.
* **10.x**: networks are always explicit-batch; ``create_network(0)``.
* **11.x**: weak typing is gone (no ``BuilderFlag.FP16``/``INT8``, no INT8 calibrators): FP32 and
  Q/DQ models only.

The workspace is set with ``set_memory_pool_limit`` on every supported version: it exists since
8.4, and ``max_workspace_size`` (deprecated in 8.4) was removed in 10.0.

INT8 comes two ways, as ``dymn-edge calibrate --backend tensorrt`` writes both:

* **explicit**: a Q/DQ bundle; it must pass TensorRT's Q/DQ rules (``check_qdq``), and TensorRT
  places INT8 where the graph says (``BuilderFlag.INT8`` up to 10.x, strong typing in 11.x).
* **implicit** (``--calibration-cache``): the FP32 model plus TensorRT's calibration cache, fed to
  an ``IInt8EntropyCalibrator2`` (or ``IInt8MinMaxCalibrator``, as the cache header says) that only
  ever returns the cache, so no calibration data is needed on the device. The cache must parse,
  name this TensorRT version and cover every tensor of the model; otherwise TensorRT would fall back
  to calibrating with no data, so the build is refused first.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dymn_edge import __version__
from dymn_edge.runtime.tensorrt_int8 import cache_coverage, check_qdq, read_calibration_cache, version_tag
from dymn_edge.runtime.audio import load_audio, seconds_to_samples
from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.backends.tensorrt import api_generation, import_tensorrt
from dymn_edge.runtime.bundle import Bundle, derived_metadata, load_bundle, update_manifest, write_bundle
from dymn_edge.runtime.cuda import cuda_device
from dymn_edge.runtime.errors import BackendUnavailableError, BundleError, ExportError
from dymn_edge.runtime.frontend import log_mel
from dymn_edge.runtime.lint import lint_onnx
from dymn_edge.runtime.registry import demo_clip_path

__all__ = ["DEFAULT_WORKSPACE_MB", "BatchRange", "EnginePlan", "build_tensorrt_bundle", "plan_engine"]

logger = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MB = 1024
ENGINE_NAME = "model.engine"
# Roles copied from the source bundle: the ONNX model stays, so the bundle still runs on ONNX Runtime.
_KEPT_ROLES = ("onnx", "onnx_data", "onnx_openvino", "onnx_openvino_data", "onnx_fp32", "onnx_fp32_data", "checkpoint",
               "openvino_xml", "openvino_bin", "calibration_cache")
# The calibrator class TensorRT must use for a cache, by the algorithm its header names.
_CALIBRATORS = {"EntropyCalibration2": "IInt8EntropyCalibrator2", "MinMaxCalibration": "IInt8MinMaxCalibrator"}
_CACHE_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


@dataclass(frozen=True)
class BatchRange:
    """``--batch MIN:OPT:MAX``: the batch sizes the engine's optimization profile serves."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str) -> "BatchRange":
        try:
            lo, opt, hi = (int(p) for p in text.split(":"))
        except ValueError:
            raise ExportError(f"--batch {text!r}: expected MIN:OPT:MAX, e.g. 1:1:8") from None
        if not 1 <= lo <= opt <= hi:
            raise ExportError(f"--batch {text!r}: expected 1 <= MIN <= OPT <= MAX")
        return cls(lo, opt, hi)


@dataclass(frozen=True)
class EnginePlan:
    """What will be built, decided from the bundle and options before TensorRT is imported."""

    onnx: Path  # the model TensorRT parses
    int8: str | None  # None, "explicit-qdq" or "calibration-cache"
    cache_header: str | None
    cache: Path | None
    profile: dict[str, dict[str, list[int]]]  # input name -> min/opt/max shapes


def plan_engine(bundle: Bundle, *, int8: bool = False, calibration_cache: Path | None = None,
                batch: BatchRange | None = None) -> EnginePlan:
    """Check the bundle and options against each other (no TensorRT needed) and pick the model to build.

    Raises:
        ExportError: an INT8 request without calibration data, a cache that does not fit the model,
            a Q/DQ model TensorRT would refuse, or a batch range the model cannot take.
    """
    if calibration_cache is not None and not int8:
        raise ExportError("--calibration-cache is only used for INT8: add --int8")
    header = None
    if int8 and calibration_cache is not None:
        onnx_path = bundle.file("onnx_fp32") or (bundle.file("onnx") if bundle.precision == "fp32" else None)
        if onnx_path is None:
            raise ExportError(f"{bundle.path}: a calibration cache needs the FP32 model it describes; this {bundle.precision} bundle has none")
        header, scales = read_calibration_cache(Path(calibration_cache))
        missing = cache_coverage(onnx_path, scales)
        if missing:
            raise ExportError(f"{calibration_cache}: no scale for {len(missing)} tensor(s) TensorRT will ask for, e.g. "
                              f"{', '.join(missing[:3])}; the cache was written for another model: recalibrate with "
                              f"`dymn-edge calibrate {bundle.path} --backend tensorrt`")
        mode = "calibration-cache"
    elif int8:
        if bundle.precision != "int8":
            raise ExportError(f"{bundle.path}: --int8 needs calibration data, and this {bundle.precision} bundle has none: pass "
                              "--calibration-cache FILE, or build the Q/DQ bundle that "
                              f"`dymn-edge calibrate {bundle.path} --backend tensorrt --out INT8_BUNDLE` writes")
        onnx_path = bundle.require("onnx")
        problems = check_qdq(onnx_path)
        if problems:
            raise ExportError(f"{onnx_path}: not a Q/DQ model TensorRT accepts: {'; '.join(problems[:3])}"
                              f"{f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''}")
        mode = "explicit-qdq"
    else:
        if bundle.precision == "int8":
            raise ExportError(f"{bundle.path}: this is an INT8 (Q/DQ) bundle: add --int8 to build it")
        onnx_path = bundle.require("onnx", hint="; export it with `dymn-edge export onnx` first")
        mode = None
    return EnginePlan(onnx_path, mode, header, Path(calibration_cache) if calibration_cache else None,
                      _profile(bundle, batch))


def _profile(bundle: Bundle, batch: BatchRange | None) -> dict[str, dict[str, list[int]]]:
    """The manifest's shape profile, with the batch axis replaced by ``--batch``."""
    profiles = {name: {k: list(v) for k, v in p.items()} for name, p in (bundle.manifest.get("shape_profiles") or {}).items()}
    if batch is None:
        return profiles
    declared = bundle.manifest.get("inputs", [{}])[0].get("shape") or [None]
    if isinstance(declared[0], int) and (batch.min, batch.max) != (declared[0], declared[0]):
        raise ExportError(f"{bundle.path}: the model was exported for batch {declared[0]}; --batch "
                          f"{batch.min}:{batch.opt}:{batch.max} needs a re-export with `dymn-edge export onnx --batch dynamic`")
    if not profiles:
        raise ExportError(f"{bundle.path}: the manifest has no shape_profiles to apply --batch to; re-export the bundle")
    for p in profiles.values():
        p["min"][0], p["opt"][0], p["max"][0] = batch.min, batch.opt, batch.max
    return profiles


def _lint(plan: EnginePlan, tensorrt_version: str, generation: int) -> None:
    # 11.x is checked against the newest operator table we have, 10.x's.
    release = "10" if generation >= 10 else "8.6" if tensorrt_version.startswith("8.6") else "8.5"
    report = lint_onnx(plan.onnx, [f"tensorrt-{release}"], int8=plan.int8 is not None, profiles=plan.profile)[0]
    for f in report.warnings:
        logger.warning("lint %s: %s: %s", report.target, f.where, f.message)
    if not report.passed:
        raise ExportError(f"{plan.onnx}: TensorRT {tensorrt_version} would refuse this model ({report.target}): "
                          + "; ".join(f"{f.where}: {f.message}" for f in report.errors[:3]))


def _check_cache_version(plan: EnginePlan, tensorrt_version: str) -> str:
    """The calibrator class for the cache; the cache must name this TensorRT version and a known algorithm."""
    tag, algorithm = _CACHE_HEADER.match(plan.cache_header).groups()
    if tag != version_tag(tensorrt_version):
        raise ExportError(f"{plan.cache}: written for TensorRT {tag} (header {plan.cache_header}), this is TensorRT "
                          f"{tensorrt_version} ({version_tag(tensorrt_version)}); calibration caches are not portable across "
                          f"versions: recalibrate with `dymn-edge calibrate ... --backend tensorrt --tensorrt-version {tensorrt_version}`")
    if algorithm not in _CALIBRATORS:
        raise ExportError(f"{plan.cache}: calibrator {algorithm!r} in the header is not one of {', '.join(_CALIBRATORS)}")
    return _CALIBRATORS[algorithm]


def _cache_calibrator(trt, base_name: str, cache: bytes):
    """A TensorRT INT8 calibrator that hands TensorRT the cache and has no batches of its own."""
    base = getattr(trt, base_name)

    class CacheCalibrator(base):
        def __init__(self) -> None:
            base.__init__(self)  # TensorRT's pybind11 trampolines need the base initialised explicitly

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # only reached if TensorRT rejects the cache: no data, so no calibration
            logger.error("TensorRT asked for calibration batches: it did not accept the calibration cache")
            return None

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data) -> None:
            pass  # the cache came from `dymn-edge calibrate`; it stays the single source

    return CacheCalibrator()


def _create_network(trt, builder, generation: int):
    if generation == 8:
        return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    return builder.create_network(0)


def _parse(trt, network, logger_, onnx_path: Path):
    parser = trt.OnnxParser(network, logger_)
    # parse_from_file, not parse(bytes): it resolves the weights the bundle keeps as external data.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser refused the model: {'; '.join(errors[:3]) or 'no details'}")
    return parser


def _serialize(trt, plan: EnginePlan, generation: int, *, fp16: bool, workspace_mb: int,
               timing_cache: Path | None, calibrator_name: str | None) -> bytes:
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    network = _create_network(trt, builder, generation)
    parser = _parse(trt, network, log, plan.onnx)  # noqa: F841  (the network refers to the parser's weights)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shapes = plan.profile.get(tensor.name)
        if shapes is None:
            if any(d < 0 for d in tensor.shape):
                raise ExportError(f"{plan.onnx}: input {tensor.name!r} has dynamic axes but the manifest has no shape profile for it")
            continue
        profile.set_shape(tensor.name, shapes["min"], shapes["opt"], shapes["max"])
        logger.info("profile %s: min %s opt %s max %s", tensor.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if fp16:
        if not builder.platform_has_fast_fp16:
            logger.warning("this GPU has no fast FP16: the FP16 engine may be no faster than FP32")
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.int8 and generation < 11:
        if not builder.platform_has_fast_int8:
            logger.warning("this GPU has no fast INT8: the INT8 engine may be no faster than FP32")
        config.set_flag(trt.BuilderFlag.INT8)
    if calibrator_name:
        config.int8_calibrator = _cache_calibrator(trt, calibrator_name, plan.cache.read_bytes())
        config.set_calibration_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{plan.onnx}: TensorRT could not build the engine (its log above says why)")
    if cache is not None:
        timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def _parity(bundle: Bundle, reference_onnx: Path) -> float:
    """Max |logit difference| between the engine and ONNX Runtime CPU on the demo recording's first window."""
    import onnxruntime as ort

    wave = load_audio(demo_clip_path(), bundle.frontend.sample_rate_hz)
    x = log_mel(wave[: seconds_to_samples(bundle.window_s, bundle.frontend.sample_rate_hz)], bundle.frontend)[None, None]
    backend = create_backend("tensorrt", bundle)
    if backend.max_batch and backend.max_batch > 1:
        x = np.repeat(x, backend.max_batch, axis=0)
    session = ort.InferenceSession(str(reference_onnx), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    return float(np.abs(backend.infer(x) - expected).max())


def build_tensorrt_bundle(
    source: str | Path | Bundle,
    dest: str | Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    calibration_cache: str | Path | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    batch: BatchRange | None = None,
    timing_cache: str | Path | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Build a TensorRT engine from a bundle's ONNX model and write a bundle with both.

    The manifest's ``tensorrt`` key records the TensorRT version, the GPU (name, compute
    capability), the precision, the INT8 mode, the profile and the engine's parity with ONNX
    Runtime CPU on the demo recording, which the runtime backend checks before loading.

    Raises:
        ExportError: bad option combinations, a model TensorRT refuses, a failed build.
        BackendUnavailableError: TensorRT, cuda-python, the driver or the GPU is missing.
    """
    bundle = source if isinstance(source, Bundle) else load_bundle(source)
    if workspace_mb < 1:
        raise ExportError(f"--workspace {workspace_mb}: expected a positive number of MB")
    plan = plan_engine(bundle, int8=int8, calibration_cache=Path(calibration_cache) if calibration_cache else None, batch=batch)
    trt = import_tensorrt()
    generation = api_generation(trt.__version__)
    if generation >= 11 and fp16:
        raise ExportError(f"TensorRT {trt.__version__} removed BuilderFlag.FP16 (strongly typed networks only): build FP32 or "
                          "a Q/DQ INT8 bundle, or use TensorRT 10.x for --fp16")
    calibrator_name = None
    if plan.int8 == "calibration-cache":
        if generation >= 11 or not hasattr(trt, "IInt8EntropyCalibrator2"):
            raise ExportError(f"TensorRT {trt.__version__} has no INT8 calibrators: build the Q/DQ bundle instead "
                              "(--int8 without --calibration-cache)")
        calibrator_name = _check_cache_version(plan, trt.__version__)
    _lint(plan, trt.__version__, generation)
    device = cuda_device(0)  # before the build: a missing driver gets our message, not TensorRT's
    started = time.perf_counter()
    engine = _serialize(trt, plan, generation, fp16=fp16, workspace_mb=workspace_mb,
                        timing_cache=Path(timing_cache) if timing_cache else None, calibrator_name=calibrator_name)
    build_s = time.perf_counter() - started
    precision = "int8" if plan.int8 else "fp16" if fp16 else "fp32"
    logger.info("built a %s engine (%d bytes) in %.1f s with TensorRT %s on %s", precision, len(engine), build_s, trt.__version__, device.name)
    record: dict[str, Any] = {
        "version": trt.__version__, "api": generation,
        "device": {"name": device.name, "compute_capability": device.compute_capability},
        "precision": precision, "fp16": fp16, "int8": plan.int8, "calibration_cache_header": plan.cache_header,
        "onnx": plan.onnx.name, "profile": plan.profile, "workspace_mb": workspace_mb,
        "timing_cache": str(timing_cache) if timing_cache else None, "build_s": round(build_s, 2),
        "producer": f"dymn-edge {__version__}",
    }
    files = {name: (bundle.path / name, entry["role"]) for name, entry in bundle.manifest["files"].items() if entry["role"] in _KEPT_ROLES}
    # The engine bundle leaves the fused backend's weights behind, so their record goes too.
    metadata = derived_metadata(bundle.manifest)
    metadata.update(precision=precision, tensorrt=record)
    with tempfile.TemporaryDirectory() as tmp:
        engine_file = Path(tmp) / ENGINE_NAME
        engine_file.write_bytes(engine)
        out = write_bundle(dest, {**files, ENGINE_NAME: (engine_file, "tensorrt_engine")}, metadata, labels=bundle.labels, overwrite=overwrite)
    try:
        diff = _parity(out, out.path / plan.onnx.name)
    except (BundleError, BackendUnavailableError) as e:
        raise ExportError(f"{out.path}: the engine was built but does not run here: {e}") from e
    logger.info("engine vs ONNX Runtime CPU: max |logit diff| %.2e", diff)
    return update_manifest(out, {"tensorrt": {**record, "parity": {"reference": "onnxruntime-cpu", "max_abs_logit_diff": diff,
                                                                    "probe": "demo clip, first window"}}})
