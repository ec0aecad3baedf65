"""PyTorch -> ONNX bundle: rewrite for a strategy, export, simplify, check parity, write the manifest.

MobileNetV3 models export as they are. DyMN models first go through ``strategies.prepare_for_export``
(``grouped`` is the faithful form; see that module). Every export is checked with onnx's checker,
shape-inferred, simplified with onnxslim when it is installed, and compared with PyTorch through
ONNX Runtime on real audio; a bundle whose logits differ by more than ``PARITY_ATOL`` is not written.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from dymn_edge import __version__
from dymn_edge.runtime.audio import load_audio, seconds_to_samples
from dymn_edge.runtime.bundle import INT8_PREFERENCE, Bundle, onnx_payload, write_bundle
from dymn_edge.runtime.errors import ExportError
from dymn_edge.runtime.frontend import FrontendConfig, log_mel, n_frames
from dymn_edge.runtime.labels import LabelSet, audioset_labels
from dymn_edge.runtime.registry import demo_clip_path
from dymn_edge.runtime.tagging import MAX_SINGLE_PASS_S
from dymn_edge.train.checkpoint import LoadedModel, load_checkpoint

from .strategies import STRATEGIES, prepare_for_export

__all__ = ["DEFAULT_OPSET", "PARITY_ATOL", "add_nchwc_graph", "export_bundle", "export_onnx", "probe_features"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4  # max |logit difference| accepted between PyTorch and ONNX Runtime
SANE_LOGIT = 1e3  # |logit| above this on real audio means the model itself is numerically unstable there
INPUT_NAME, OUTPUT_NAMES = "mel", ("logits", "embedding")


def probe_features(seconds: float = 10.0, config: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Log-mel of real audio: the first ``seconds`` of the shipped demo recording (public domain).

    Random Gaussian "mels" are far outside what trained models see and make BN-heavy networks
    numerically explosive, which says nothing about export quality; real audio stays in range.
    Returns (1, 1, n_mels, frames) float32.
    """
    wave = load_audio(demo_clip_path(), config.sample_rate_hz)
    return log_mel(wave[: int(seconds * config.sample_rate_hz)], config)[None, None]


MAX_PROFILE_BATCH = 8  # largest batch a dynamic-batch bundle promises to serve (TensorRT profile)


def shape_profiles(batch: int | None, window_s: float, config: FrontendConfig = FrontendConfig()) -> dict[str, dict[str, list[int]]]:
    """min/opt/max input shapes the runtime will feed, for backends that compile per shape range (TensorRT).

    Frames run from one frame (the shortest clip the runtime tags) to a whole clip tagged in one
    pass (``MAX_SINGLE_PASS_S``) or one window, whichever is longer; the window is the optimum.
    """
    sr = config.sample_rate_hz
    opt_frames = n_frames(seconds_to_samples(window_s, sr), config)
    max_frames = max(opt_frames, n_frames(int(MAX_SINGLE_PASS_S * sr), config))
    lo, hi = (1, MAX_PROFILE_BATCH) if batch is None else (batch, batch)
    return {INPUT_NAME: {"min": [lo, 1, config.n_mels, 1], "opt": [lo, 1, config.n_mels, opt_frames], "max": [hi, 1, config.n_mels, max_frames]}}


def _family(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "family", "")


def _first_line(e: BaseException) -> str:
    """An exporter error without the multi-megabyte TorchScript IR dump torch appends."""
    text = str(e).split("Torch IR graph at exception")[0].strip()
    return text.splitlines()[0] if text else type(e).__name__


def _simplify(path: Path) -> None:
    try:
        import onnxslim
    except ImportError:
        logger.info("onnxslim not installed; skipping graph simplification (pip install \"dymn-edge[export]\")")
        return
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = onnxslim.slim(str(path))
    onnx.save(slim, str(path))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    strategy: str = "grouped",
    batch: int | None = 1,
    opset: int = DEFAULT_OPSET,
    window_s: float = 10.0,
    simplify: bool = True,
) -> Path:
    """Export ``model`` to ONNX with a dynamic frame axis.

    Args:
        strategy: how DyMN's dynamic convolutions are written (``grouped``, ``matmul``, ``expanded``);
            ignored for MobileNetV3.
        batch: fixed batch size, or None for a dynamic batch axis (not with ``grouped``).
        opset: ONNX opset; the written file is checked to carry exactly this opset.
        window_s: length of the example input used for tracing.

    Raises:
        ExportError: unknown strategy, impossible combination, or an exporter failure (first line).
    """
    import onnx

    path = Path(path)
    if batch is not None and batch < 1:
        raise ExportError(f"batch must be >= 1 or dynamic, got {batch}")
    export_model = prepare_for_export(model.eval(), strategy, dynamic_batch=batch is None).eval()
    axes: dict[str, dict[int, str]] = {INPUT_NAME: {3: "frames"}}
    if batch is None:
        axes = {INPUT_NAME: {0: "batch", 3: "frames"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    example = torch.from_numpy(np.repeat(probe_features(window_s), batch or 2, axis=0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter about Python bools and the legacy exporter
            torch.onnx.export(
                export_model, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
            )
    except Exception as e:  # torch.onnx raises many unrelated types
        hint = f" (try a higher --opset; {DEFAULT_OPSET} is the default)" if opset < DEFAULT_OPSET else ""
        raise ExportError(f"ONNX export at opset {opset} failed: {_first_line(e)}{hint}") from e
    try:
        proto = onnx.load(str(path))
        written = {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
        if written != {opset}:
            raise ExportError(f"asked for opset {opset} but the exporter wrote {sorted(written)}")
        onnx.checker.check_model(proto)
        onnx.save(onnx.shape_inference.infer_shapes(proto), str(path))
        if simplify:
            _simplify(path)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"exported ONNX model failed checking: {_first_line(e)}") from e
    return path


def _parity_probes(batch: int | None, window_s: float) -> list[np.ndarray]:
    """Real-audio inputs in every shape the export must serve: two lengths, and batch > 1 when allowed."""
    full, short = probe_features(window_s), probe_features(min(window_s, 3.7))
    if batch is None:
        return [full, short, np.concatenate([full, full[..., ::-1].copy(), full * 0.9])]
    return [np.concatenate([full] * batch), np.concatenate([short] * batch)]


def reference_logits(model: nn.Module, probes: list[np.ndarray]) -> list[np.ndarray]:
    """PyTorch's logits on each probe: computed once per export and compared with every exported path."""
    expected = []
    for x in probes:
        with torch.inference_mode():
            logits = model(torch.from_numpy(x))[0].numpy()
        scale = float(np.abs(logits).max())
        if not np.isfinite(scale) or scale > SANE_LOGIT:
            raise ExportError(
                f"PyTorch itself gives extreme logits (max |logit| {scale:.3g}) on the parity probe {x.shape}: "
                "the model is numerically unstable on this input, so parity cannot be judged; "
                "pass representative features (probe=...)"
            )
        expected.append(logits)
    return expected


def measure_parity(candidate: Path | Callable[[np.ndarray], np.ndarray], probes: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """Max |logit difference| between ``candidate`` and PyTorch's ``expected`` logits (``reference_logits``) over the probes.

    ``candidate`` is an ONNX file (run by ONNX Runtime on CPU) or a function from features to logits.
    """
    if callable(candidate):
        run = candidate
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(["logits"], {INPUT_NAME: x})[0]

    return max(float(np.abs(run(x) - e).max()) for x, e in zip(probes, expected, strict=True))


def export_bundle(
    source: str | Path | LoadedModel,
    dest: str | Path,
    *,
    name: str | None = None,
    strategy: str = "grouped",
    batch: int | None | str = "default",
    opset: int = DEFAULT_OPSET,
    window_s: float = 10.0,
    labels: LabelSet | None = None,
    include_checkpoint: bool = True,
    overwrite: bool = False,
    probe: np.ndarray | None = None,
    verify_parity: bool = True,
    fused: bool = True,
    extra: dict[str, Any] | None = None,
) -> Bundle:
    """Export a checkpoint to an FP32 ONNX bundle.

    Args:
        source: checkpoint path or an already loaded model.
        dest: bundle folder to write.
        name: model name in the manifest (default: the checkpoint's file stem).
        strategy: DyMN export strategy (see ``strategies``), or "auto": the fastest that passes parity,
            per installed backend, measured here (the timings go into the manifest). MobileNetV3
            bundles record "static".
        batch: fixed batch size, None for dynamic; "default" = dynamic for MobileNetV3, 1 for DyMN.
        window_s: the window length the runtime should feed the model.
        labels: class labels; default AudioSet's 527 when the model has 527 classes, else placeholders.
        include_checkpoint: copy the checkpoint into the bundle so the torch backend can run it too.
        probe: (N, 1, n_mels, frames) features for the parity check instead of the demo clip.
        verify_parity: False only for throwaway exports (benchmarks); the manifest then says so.
        fused: also write ``model.fused.npz`` for the fused backend (DyMN and MobileNetV3; checked against PyTorch too).
    """
    if strategy not in (*STRATEGIES, "auto"):
        raise ExportError(f"unknown export strategy {strategy!r}; expected one of {', '.join(STRATEGIES)} or auto")
    if window_s <= 0:
        raise ExportError(f"window must be a positive number of seconds, got {window_s}")
    loaded = source if isinstance(source, LoadedModel) else load_checkpoint(source)
    config, model = loaded.config, loaded.model.eval()
    family = _family(model)
    if batch == "default":
        batch = None if family == "mn" else 1
    if labels is None:
        labels = audioset_labels() if config.num_classes == 527 else LabelSet.placeholder(config.num_classes)
    if len(labels) != config.num_classes:
        raise ExportError(f"{len(labels)} labels given for a model with {config.num_classes} classes")
    if family != "dymn":
        strategy = "grouped"  # MobileNetV3 has no dynamic convolutions: exported as it is ("static")
    candidates = [strategy] if strategy != "auto" else [s for s in STRATEGIES if not (s == "grouped" and batch is None)]
    if probe is not None:
        probes = [np.ascontiguousarray(probe[i : i + (batch or 1)], dtype=np.float32) for i in range(0, len(probe) - (batch or 1) + 1, batch or 1)]
        probe_name = f"caller-supplied, {len(probe)} x {tuple(probe.shape[1:])}"
    else:
        probes, probe_name = _parity_probes(batch, window_s), f"demo clip ({window_s:g} s and 3.7 s)"
    import onnx

    from dymn_edge.runtime.nchwc import stage_nchwc

    expected: list[np.ndarray] | None = None  # PyTorch's logits, once the first export shows the arguments work
    with tempfile.TemporaryDirectory() as tmp:
        exported: dict[str, Path] = {}
        parities: dict[str, float | None] = {}
        failures: dict[str, str] = {}
        for candidate in candidates:
            onnx_path = export_onnx(model, Path(tmp) / f"{candidate}.onnx", strategy=candidate, batch=batch, opset=opset, window_s=window_s)
            if verify_parity and expected is None:
                expected = reference_logits(model, probes)
            parity = measure_parity(onnx_path, probes, expected) if verify_parity else None
            logger.info("exported %s (%s): max |logit diff| vs PyTorch %s", loaded.path, candidate, parity)
            if parity is not None and parity > PARITY_ATOL:
                failures[candidate] = f"ONNX Runtime differs from PyTorch by {parity:.2e} in logits (tolerance {PARITY_ATOL:.0e})"
                continue
            exported[candidate], parities[candidate] = onnx_path, parity
        if not exported:
            raise ExportError("; ".join(f"{s}: {why}" for s, why in failures.items()))
        choice = None
        if strategy == "auto":
            choice = _choose(exported, probes[0], failures)
            strategy = choice["chosen"]["onnxruntime"]
        stage = Path(tmp) / "stage"
        files = onnx_payload(exported[strategy], stage, "model.onnx", "onnx")
        nchwc_record = stage_nchwc(files, probes, expected if verify_parity else None, reference="pytorch",
                                   atol=PARITY_ATOL) if family == "dymn" else None
        if choice and choice["chosen"].get("openvino", strategy) != strategy:
            files.update(onnx_payload(exported[choice["chosen"]["openvino"]], stage, "model.openvino.onnx", "onnx_openvino"))
        if choice:
            choice["int8"] = _int8_choice(exported, choice, files, stage)
        fused_record = _fused_payload(model, files, stage, probes if verify_parity else [], expected) if fused else None
        if include_checkpoint:
            files["model.pt"] = (loaded.path, "checkpoint")
        batch_dim: int | str = "batch" if batch is None else batch
        metadata = {
            "name": name or loaded.path.stem,
            "family": config.family,
            "width": config.width_mult,
            "num_classes": config.num_classes,
            "architecture": config.to_dict(),
            "frontend": FrontendConfig().to_dict(),
            "window_s": window_s,
            "precision": "fp32",
            "export_strategy": strategy if family == "dymn" else "static",
            "temperature": loaded.temperature,
            "inputs": [{"name": INPUT_NAME, "shape": [batch_dim, 1, FrontendConfig().n_mels, "frames"], "dtype": "float32"}],
            "shape_profiles": shape_profiles(batch, window_s),
            "outputs": [
                {"name": "logits", "shape": [batch_dim, config.num_classes], "dtype": "float32"},
                {"name": "embedding", "shape": [batch_dim, model.embedding_dim], "dtype": "float32"},
            ],
            "parity": {"reference": "pytorch", "max_abs_logit_diff": parities[strategy], "probe": probe_name if verify_parity else "not checked"},
            "producer": {
                "name": "dymn-edge", "version": __version__, "torch": torch.__version__,
                "onnx": onnx.__version__, "opset": opset,
            },
            "source": {"file": loaded.path.name, "sha256": loaded.sha256},
            **({"strategy_choice": {**choice, "parity": parities}} if choice else {}),
            **({"fused": fused_record} if fused_record else {}),
            **({"nchwc": nchwc_record} if nchwc_record else {}),
            **(extra or {}),
        }
        bundle = write_bundle(dest, files, metadata, labels=labels, overwrite=overwrite)
    return _lint(bundle)


def _fused_payload(model: nn.Module, files: dict, stage: Path, probes: list[np.ndarray],
                   expected: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Add ``model.fused.npz`` to ``files`` when the fused backend can run ``model`` and matches PyTorch on ``probes``.

    A model it cannot run, or one that misses parity, still exports: the manifest says why the file
    is absent, and ``--backend fused`` then names that reason. ``expected``: PyTorch's logits on
    ``probes`` when the caller has them already.
    """
    from dymn_edge.runtime.backends.fused import FUSED_FILE, LAYOUT_VERSION, FusedBackend
    from dymn_edge.runtime.errors import BackendUnavailableError

    from .fused import unsupported_reason, write_fused

    reason = unsupported_reason(model)
    if reason:
        logger.info("no fused weights: %s", reason)
        return {"included": False, "reason": reason}
    path = write_fused(model, stage / "fused")
    record: dict[str, Any] = {"included": True, "file": FUSED_FILE, "layout_version": LAYOUT_VERSION, "max_abs_logit_diff": None}
    if probes:
        try:
            backend = FusedBackend(path, n_mels=probes[0].shape[2])
        except BackendUnavailableError as e:
            record["parity_note"] = f"not checked: {e}"
            logger.warning("fused weights written without a parity check: %s", e)
        else:
            worst = measure_parity(backend.infer, probes, expected if expected is not None else reference_logits(model, probes))
            record["max_abs_logit_diff"] = worst
            if worst > PARITY_ATOL:
                logger.warning("fused backend differs from PyTorch by %.2e in logits; model.fused.npz left out", worst)
                return {"included": False, "reason": f"fused backend differs from PyTorch by {worst:.2e} in logits (tolerance {PARITY_ATOL:.0e})"}
    files[FUSED_FILE] = (path, "fused_weights")
    return record


def add_nchwc_graph(bundle_path: str | Path, model: nn.Module | None = None, probes: list[np.ndarray] | None = None) -> Bundle:
    """Re-write a bundle exported before model.nchwc.onnx existed (or with an older form of it) with it
    added; the other files stay as they are.

    ``model``: the bundle's own PyTorch model, to check the new graph against (default: the bundle's
    checkpoint, when it has one). Without either, and always for an INT8 bundle, the reference is
    the bundle's own model.onnx, run by ONNX Runtime.
    """
    import shutil

    from dymn_edge.runtime.bundle import derived_metadata, load_bundle
    from dymn_edge.runtime.nchwc import onnxruntime_logits, stage_nchwc

    bundle = load_bundle(bundle_path)
    if bundle.file("onnx_data") is None:
        raise ExportError(f"{bundle.path}: its model.onnx holds its weights inline; export it again to get model.nchwc.onnx")
    if bundle.precision == "int8":
        model = None  # its model.onnx is the quantized model the blocked graph must reproduce
    elif model is None and bundle.file("checkpoint") is not None:
        model = load_checkpoint(bundle.require("checkpoint")).model
    batch = bundle.manifest["inputs"][0]["shape"][0]
    probes = probes if probes is not None else _parity_probes(batch if isinstance(batch, int) else None, bundle.window_s)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        # The new graph is checked beside the weights file it names (a copy: onnx refuses symlinks).
        shutil.copyfile(bundle.require("onnx"), stage / "model.onnx")
        shutil.copyfile(bundle.require("onnx_data"), stage / "model.onnx.data")
        files = {name: (bundle.path / name, entry["role"]) for name, entry in bundle.manifest["files"].items()
                 if entry["role"] != "onnx_nchwc"}
        staged = {"model.onnx": (stage / "model.onnx", "onnx")}
        if model is not None:
            expected, reference = reference_logits(model.eval(), probes), "pytorch"
        else:
            expected, reference = onnxruntime_logits(stage / "model.onnx", probes), "model.onnx"
        record = stage_nchwc(staged, probes, expected, reference=reference, atol=PARITY_ATOL)
        if not record["included"]:
            raise ExportError(f"{bundle.path}: no model.nchwc.onnx: {record['reason']}")
        files[record["file"]] = staged[record["file"]]
        metadata = derived_metadata(bundle.manifest, keep_fused=True)
        return write_bundle(bundle.path, files, {**metadata, "nchwc": record}, overwrite=True)


def _lint(bundle: Bundle) -> Bundle:
    """Record in the manifest which deployment targets the graph passes (``dymn-edge lint`` shows why)."""
    from dymn_edge.runtime.bundle import load_bundle

    from dymn_edge.runtime.lint import TARGETS, lint_bundle

    targets = [t for t in TARGETS if t != "openvino" or _has_openvino()]
    reports = lint_bundle(bundle, targets)
    failed = [r.target for r in reports if not r.passed]
    if failed:
        logger.warning("%s does not pass lint for %s; run `dymn-edge lint %s` for details", bundle.path, ", ".join(failed), bundle.path)
    return load_bundle(bundle.path)


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _choose(exported: dict[str, Path], features: np.ndarray, failures: dict[str, str]) -> dict[str, Any]:
    """Time every parity-checked strategy on every installed backend; the manifest's record of the choice."""
    from dymn_edge.runtime.machine import machine_info

    from dymn_edge.runtime.backends.onnxruntime import open_onnxruntime
    from dymn_edge.runtime.nchwc import write_nchwc

    from .auto import fastest, measure_strategies

    # ONNX Runtime is timed on the form the runtime will run: model.nchwc.onnx where it chooses it here.
    blocked = {}
    for strategy, path in exported.items():
        dest = path.with_name(f"{path.stem}.nchwc.onnx")
        if write_nchwc(path, dest, features).rewritten and open_onnxruntime(path, dest).model_path == dest:
            blocked[strategy] = dest
    threads = 1
    timings, devices = measure_strategies(exported, features, threads=threads, own={"onnxruntime": blocked})
    chosen = fastest(timings)
    logger.info("auto strategy: %s (median ms: %s, on %s)", chosen, timings, devices)
    return {"method": "fastest median latency of the parity-checked strategies, measured at export",
            "threads": threads, "input_shape": list(features.shape), "timings_ms": timings, "devices": devices, "chosen": chosen,
            "onnxruntime_nchwc": sorted(blocked),
            "rejected": failures, "machine": machine_info()}


def _int8_choice(exported: dict[str, Path], choice: dict[str, Any], files: dict, stage: Path) -> dict[str, Any]:
    """The strategy INT8 calibration starts from (``runtime.bundle.INT8_PREFERENCE``), added to the bundle when no FP32 model already has it."""
    strategy = next(s for s in INT8_PREFERENCE if s in exported)
    # Only the files this bundle really holds: OpenVINO gets its own only when its choice differs.
    by_strategy = {choice["chosen"]["onnxruntime"]: "model.onnx"}
    if "model.openvino.onnx" in files:
        by_strategy.setdefault(choice["chosen"]["openvino"], "model.openvino.onnx")
    name = by_strategy.get(strategy)
    if name is None:
        name = "model.int8.onnx"
        files.update(onnx_payload(exported[strategy], stage, name, "onnx_int8"))
    return {"strategy": strategy, "file": name, "method": "best INT8 agreement with FP32 measured per strategy and backend "
            "(benchmarks/int8_strategies.py, docs/benchmarks.md), the faster where they tie"}
