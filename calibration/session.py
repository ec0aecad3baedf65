"""What ``dymn-edge validate`` and ``calibrate --sensitivity`` do, end to end, for the CLI and for scripts."""

from __future__ import annotations

from pathlib import Path

from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.errors import CalibrationError
from dymn_edge.runtime.machine import machine_info

from .dataset import FeatureSet, build_feature_set
from .report import write_report
from .validate import compare, parse_gate, run_model

__all__ = ["sensitivity_table", "validate_bundles"]


def _candidate(spec: str) -> tuple[str, str | None]:
    path, sep, backend = spec.rpartition("@")
    if sep and backend in ("onnxruntime", "openvino"):
        return path, backend
    return spec, None


def validate_bundles(reference, candidates: list[str], audio, *, labels_csv=None, report: Path, gates: list[str] = (),
                     samples: int | None = None, threads: int = 1, progress: bool = True) -> tuple[dict, Path]:
    parsed_gates = [parse_gate(g) for g in gates]
    ref_bundle = load_bundle(reference)
    data = build_feature_set(audio, config=ref_bundle.frontend, window_s=ref_bundle.window_s, labels=ref_bundle.labels,
                             labels_csv=labels_csv, samples=samples, progress=progress, min_samples=1)
    ref_run = run_model(ref_bundle, data, threads=threads)
    runs = []
    for spec in candidates:
        path, backend = _candidate(spec)
        bundle = load_bundle(path)
        if bundle.num_classes != ref_bundle.num_classes:
            raise CalibrationError(f"{bundle.path}: {bundle.num_classes} classes; the reference {ref_bundle.path} has {ref_bundle.num_classes}")
        if bundle.labels.names != ref_bundle.labels.names:
            raise CalibrationError(f"{bundle.path}: its class labels differ from the reference's ({ref_bundle.path})")
        runs.append(run_model(bundle, data, backend=backend, threads=threads))
    result = compare(ref_run, runs, data, parsed_gates)
    result["passed"] = all(c["passed"] for c in result["candidates"])
    result["settings"] = {"audio": str(audio), "labels_csv": str(labels_csv) if labels_csv else None, "windows": len(data),
                          "files": len(data.files), "window_s": ref_bundle.window_s, "labelled": data.targets is not None,
                          "skipped": data.skipped, "warnings": data.warnings, "threads": threads, "machine": machine_info()}
    return result, write_report(result, report, ref_bundle.labels)


def _split(data: FeatureSet) -> tuple[FeatureSet, FeatureSet]:
    """Alternate files into two disjoint halves."""
    files = data.files
    first = {f for i, f in enumerate(files) if i % 2 == 0}
    a = [i for i, w in enumerate(data.windows) if w[0] in first]
    b = [i for i, w in enumerate(data.windows) if w[0] not in first]

    def take(idx):
        targets = data.targets[idx] if data.targets is not None else None
        return FeatureSet([data.features[i] for i in idx], [data.windows[i] for i in idx], targets)
    return take(a), take(b)


def sensitivity_table(bundle, audio, validation_audio=None, *, method: str | None = None, scope: str | None = None, samples: int | None = None,
                      seed: int = 0) -> dict:
    from .calibrate import DEFAULT_METHODS, DEFAULT_SCOPES, sensitivity

    method = method or DEFAULT_METHODS["onnxruntime"]  # the table ranks ONNX Runtime QDQ damage
    scope = scope or DEFAULT_SCOPES["onnxruntime"]
    source = load_bundle(bundle)
    kwargs = {"config": source.frontend, "window_s": source.window_s, "labels": source.labels, "seed": seed}
    data = build_feature_set(audio, samples=samples, **kwargs)
    if validation_audio is None:
        calibration, validation = _split(data)
        how = "alternate files of --audio"
    else:
        calibration, validation = data, build_feature_set(validation_audio, min_samples=1, **kwargs)
        how = str(validation_audio)
    if not len(validation) or not len(calibration):
        raise CalibrationError("sensitivity needs audio for both calibration and validation")
    rows = sensitivity(source, calibration, validation, method=method, scope=scope)
    return {"bundle": str(source.path), "method": method, "scope": scope, "calibration_windows": len(calibration),
            "validation_windows": len(validation), "validation": how, "rows": rows}
