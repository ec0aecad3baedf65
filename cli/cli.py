"""The ``dymn-edge`` command line: a thin layer over library functions.

Heavy imports (torch, onnxruntime) happen inside commands, so ``dymn-edge --help`` is instant and
``tag`` on a bundle never loads torch. A ``DymnEdgeError`` becomes a one-line ``Error: ...`` and
exit code 1; bad options exit 2 (click's usage errors).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from dymn_edge import __version__
from dymn_edge.bundle_param import BUNDLE_OR_EMBEDDED
from dymn_edge.doctor import doctor
from dymn_edge.export_tensorrt import export_tensorrt_cmd
from dymn_edge.training import train
from dymn_edge.runtime.errors import DymnEdgeError

__all__ = ["cli", "main"]

BACKEND_CHOICES = ["torch", "onnxruntime", "openvino", "tensorrt", "fused"]


class _Group(click.Group):
    """Turns library errors into clean CLI errors (exit 1) instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DymnEdgeError as e:
            raise click.ClickException(str(e)) from e
        except FileNotFoundError as e:
            raise click.ClickException(str(e)) from e


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dymn-edge")
@click.option("-v", "--verbose", count=True, help="-v for progress details, -vv for debugging.")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Train, export, quantize and run DyMN / EfficientAT audio taggers on edge devices."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"verbose": verbose}


def _positive_seconds(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be a positive number of seconds, got {value}")
    return value


@cli.command()
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-m", "--model", default=None, metavar="NAME|PATH|BUNDLE", help="Registry name, checkpoint (.pt) or bundle folder. Default: the embedded mn04_as.")
@click.option("-b", "--backend", type=click.Choice(BACKEND_CHOICES), default=None, help="Default: onnxruntime for bundles, torch for checkpoints.")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Tags to show per clip (and per window).")
@click.option("--window", "window_s", type=float, default=None, callback=_positive_seconds, metavar="SECONDS", help="Window length for a timeline (default 10 with --hop).")
@click.option("--hop", "hop_s", type=float, default=None, callback=_positive_seconds, metavar="SECONDS", help="Tag sliding windows this far apart and print a timeline.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout.")
@click.option("--all-scores", is_flag=True, help="With --json: every class's probability, in label order.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads (default: the backend's).")
@click.option("--device", default=None,
              help="onnxruntime: CPU, CUDA or TensorRT (default: the best this onnxruntime has); openvino: CPU, GPU or NPU (default CPU).")
def tag(audio, model, backend, top_k, window_s, hop_s, as_json, all_scores, threads, device):
    """Tag audio files with AudioSet labels (sigmoid probabilities, best first)."""
    from dymn_edge.loader import load_tagger

    tagger = load_tagger(model, backend, threads=threads, device=device)
    failed = 0
    for path in audio:
        try:
            result = tagger.tag_file(path, top_k=top_k, window_s=window_s, hop_s=hop_s)
        except DymnEdgeError as e:  # one bad file must not stop a batch
            click.echo(f"Error: {e}", err=True)
            failed += 1
            continue
        if as_json:
            click.echo(json.dumps(result.to_json(all_scores=all_scores)))
        else:
            from dymn_edge.display import print_tag_result

            print_tag_result(result)
    if failed:
        raise click.ClickException(f"{failed} of {len(audio)} file(s) could not be tagged")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def models(as_json):
    """List the model registry and what is installed locally."""
    from dymn_edge.info import local_bundles, registry_table

    rows = registry_table()
    if as_json:
        click.echo(json.dumps({"models": rows, "bundles": [str(p) for p in local_bundles()]}, indent=2))
        return
    from dymn_edge.display import print_registry

    print_registry(rows, local_bundles())


@cli.command()
@click.argument("name")
@click.option("--base-url", default=None, envvar="DYMN_EDGE_BASE_URL", help="Release mirror (default: EfficientAT's GitHub release; env DYMN_EDGE_BASE_URL).")
@click.option("--sha256", default=None, metavar="HEX", help="Expected sha256, for models the registry has no pinned hash for.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fetch(name, base_url, sha256, quiet):
    """Download a registry model into the cache, resuming and verifying its sha256."""
    from dymn_edge.runtime.checksum import sha256_file
    from dymn_edge.runtime.hub import fetch as fetch_model

    path = fetch_model(name, base_url=base_url, sha256=sha256, progress=not quiet)
    click.echo(f"{name}: {path} (sha256 {sha256_file(path)})")


@cli.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(model, as_json):
    """Describe a model: registry name, checkpoint or bundle (default: the embedded model)."""
    from dymn_edge.info import model_info

    data = model_info(model)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    from dymn_edge.display import print_info

    print_info(data)


def _batch(ctx, param, value):
    if value is None or value == "dynamic":
        return value
    try:
        batch = int(value)
    except ValueError:
        batch = 0
    if batch < 1:
        raise click.BadParameter(f"must be 'dynamic' or a positive integer, got {value!r}")
    return batch


@cli.group()
def export():
    """Export models: PyTorch -> ONNX bundle -> OpenVINO IR."""


@export.command("onnx")
@click.argument("model", metavar="MODEL")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--strategy", type=click.Choice(["grouped", "matmul", "expanded", "hybrid", "auto"]), default="matmul", show_default=True,
              help="How DyMN's dynamic convolutions are written; auto measures each on every installed backend "
                   "and keeps the fastest that passes parity (MobileNetV3 ignores it).")
@click.option("--opset", type=click.IntRange(7, 23), default=17, show_default=True)
@click.option("--batch", default=None, callback=_batch, metavar="dynamic|N", help="Default: dynamic for mn, 1 for dymn.")
@click.option("--window", "window_s", type=float, default=10.0, show_default=True, callback=_positive_seconds, metavar="SECONDS")
@click.option("--name", default=None, help="Model name in the manifest (default: the model's).")
@click.option("--no-checkpoint", is_flag=True, help="Leave the PyTorch checkpoint out of the bundle.")
@click.option("--no-fused", is_flag=True, help="Leave out model.fused.npz (the weights --backend fused reads).")
@click.option("--probe-audio", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Recording to check parity on (default: the shipped demo clip).")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Label list (index,mid,display_name). Default: labels.csv beside the checkpoint (as `train finetune` writes), "
                   "else AudioSet's 527 for 527 classes.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
def export_onnx_cmd(model, out, strategy, opset, batch, window_s, name, no_checkpoint, no_fused, probe_audio, labels_file, force):
    """Export MODEL (registry name, checkpoint or bundle) to an ONNX bundle, parity-checked against PyTorch."""
    from dymn_edge.export.onnx import export_bundle
    from dymn_edge.loader import load_torch_model
    from dymn_edge.runtime.labels import read_labels

    loaded, default_name = load_torch_model(model)
    beside = Path(model).parent / "labels.csv" if Path(model).is_file() else None
    if labels_file is None and beside is not None and beside.is_file():
        labels_file = beside
    labels = read_labels(labels_file) if labels_file is not None else None
    batch = "default" if batch is None else None if batch == "dynamic" else batch
    probe = None
    if probe_audio is not None:
        from dymn_edge.runtime.audio import load_audio, seconds_to_samples
        from dymn_edge.runtime.frontend import log_mel

        wave = load_audio(probe_audio)
        probe = log_mel(wave[: seconds_to_samples(window_s)])[None, None]
    bundle = export_bundle(
        loaded, out, name=name or default_name, strategy=strategy, batch=batch, opset=opset, window_s=window_s,
        include_checkpoint=not no_checkpoint, overwrite=force, probe=probe, labels=labels, fused=not no_fused,
    )
    parity = bundle.manifest["parity"]["max_abs_logit_diff"]
    click.echo(f"{bundle.path}: {bundle.family} {bundle.export_strategy}, opset {opset}, max |logit diff| vs PyTorch {parity:.1e}")
    choice = bundle.manifest.get("strategy_choice")
    if choice:
        for backend, by_strategy in choice["timings_ms"].items():
            timings = ", ".join(f"{s} {ms:.1f} ms" for s, ms in sorted(by_strategy.items(), key=lambda kv: kv[1]))
            device = choice.get("devices", {}).get(backend, "CPU").removesuffix("ExecutionProvider")  # older bundles: CPU
            click.echo(f"  auto: {backend} -> {choice['chosen'][backend]} ({timings}; {device}, {choice['threads']} thread)")
        click.echo(f"  auto: INT8 calibration -> {choice['int8']['strategy']} ({choice['int8']['file']}; it quantizes best, docs/calibration.md)")
    for key, what in (("nchwc", "for ONNX Runtime on CPU"), ("fused", "")):
        record = bundle.manifest.get(key)
        if record:
            parity = record.get("max_abs_logit_diff")
            checked = f"max |logit diff| vs PyTorch {parity:.1e}" if parity is not None else record.get("parity_note", "parity not checked")
            click.echo(f"  {key}: {record['file']} ({what + '; ' if what else ''}{checked})" if record["included"]
                       else f"  {key}: left out ({record['reason']})")
    verdicts = ", ".join(f"{t} {'pass' if v['passed'] else 'FAIL'}" for t, v in bundle.manifest.get("lint", {}).items())
    click.echo(f"  lint: {verdicts}")


@export.command("openvino")
@click.argument("bundle", type=BUNDLE_OR_EMBEDDED)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--fp16", is_flag=True, help="Compress weights to half precision.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
def export_openvino_cmd(bundle, out, fp16, force):
    """Convert an ONNX bundle to OpenVINO IR (keeps the ONNX model beside it)."""
    from dymn_edge.export.openvino import export_openvino

    result = export_openvino(bundle, out, fp16=fp16, overwrite=force)
    parity = result.manifest["openvino"]["parity"]["max_abs_logit_diff"]
    click.echo(f"{result.path}: OpenVINO IR ({result.precision}), max |logit diff| vs ONNX Runtime {parity:.1e}")


@export.command("refresh")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The bundle's PyTorch checkpoint, when it does not carry model.pt (needed for model.fused.npz).")
def export_refresh_cmd(bundle, checkpoint):
    """Bring a bundle an older dymn-edge exported up to date, in place: add or rewrite model.nchwc.onnx
    (DyMN) and add model.fused.npz; model.onnx and the other files stay as they are."""
    from dymn_edge.export.refresh import refresh_bundle

    result, changes = refresh_bundle(bundle, checkpoint)
    click.echo(f"{result.path}: " + ("up to date" if not changes else f"{len(changes)} change(s)"))
    for line in changes:
        click.echo(f"  {line}")


def _csv(kind, choices=None):
    def parse(ctx, param, value):
        items = [v.strip() for v in value.split(",") if v.strip()]
        try:
            items = [kind(v) for v in items]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list of {kind.__name__}, got {value!r}") from None
        bad = [v for v in items if choices and v not in choices]
        if bad or not items:
            raise click.BadParameter(f"expected a comma-separated subset of {', '.join(map(str, choices or []))}, got {value!r}")
        if kind is int and min(items) < 1:
            raise click.BadParameter(f"thread counts must be >= 1, got {value!r}")
        return items
    return parse


@cli.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL|BUNDLE...")
@click.option("--backend", "backends", default="torch,onnxruntime,openvino,fused", show_default=True,
              callback=_csv(str, BACKEND_CHOICES), help="Comma-separated backends; torch is the eager reference, fused needs model.fused.npz.")
@click.option("--strategy", "strategies", default="grouped,matmul,expanded,hybrid", show_default=True,
              callback=_csv(str, ["grouped", "matmul", "expanded", "hybrid"]), help="DyMN strategies to export and compare.")
@click.option("--threads", default="1", show_default=True, callback=_csv(int), help="Comma-separated thread counts, e.g. 1,2.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--window", "window_s", type=float, default=10.0, show_default=True, callback=_positive_seconds, metavar="SECONDS")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True, help="Interleaved rounds of 5 runs per candidate.")
@click.option("--json", "as_json", is_flag=True, help="Print the results (with the machine) as JSON.")
def bench(models, backends, strategies, threads, batch, window_s, rounds, as_json):
    """Latency, throughput, real-time factor and peak RSS of models on backends, side by side."""
    from dymn_edge.benchmark import run_benchmark

    report = run_benchmark(list(models), backends=backends, strategies=strategies, threads=threads, batch=batch,
                           window_s=window_s, rounds=rounds, progress=not as_json)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from dymn_edge.display import print_benchmark

    print_benchmark(report)


@cli.command()
@click.argument("bundle", type=BUNDLE_OR_EMBEDDED)
@click.option("--target", "targets", multiple=True,
              type=click.Choice(["tensorrt", "tensorrt-8.5", "tensorrt-8.6", "tensorrt-10", "onnxruntime", "openvino"]),
              help="Repeatable; tensorrt means 8.5, 8.6 and 10. Default: all.")
@click.option("--int8", "int8", flag_value=True, default=None, help="Apply INT8 rules (default: when the bundle is INT8).")
@click.option("--no-record", is_flag=True, help="Do not write the verdicts into the bundle's manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def lint(bundle, targets, int8, no_record, as_json):
    """Check a bundle's ONNX graph against what each deployment target supports; exit 1 on errors.

    BUNDLE may name an embedded model; its verdicts are printed but never written into the installed package.
    """
    from dymn_edge.runtime.lint import TARGETS, lint_bundle
    from dymn_edge.runtime.registry import is_embedded_bundle

    reports = lint_bundle(bundle, targets or TARGETS, int8=int8, record=not no_record and not is_embedded_bundle(bundle))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        from dymn_edge.display import print_lint

        print_lint(bundle, reports)
    failed = [r.target for r in reports if not r.passed]
    if failed:
        raise click.exceptions.Exit(1)


def _print_devices() -> None:
    from dymn_edge.runtime.stream.capture import input_devices

    devices = input_devices()
    if not devices:
        click.echo("no audio input devices found (is a microphone connected, or PulseAudio running?)")
    for d in devices:
        mark = "*" if d["default"] else " "
        click.echo(f"{mark} {d['index']:3d}  {d['name']}  ({d['hostapi']}, {d['channels']} ch, {d['rate']} Hz)")


@cli.command()
@click.argument("model", required=False, metavar="[BUNDLE]")
@click.option("-b", "--backend", type=click.Choice(BACKEND_CHOICES), default=None, help="Default: onnxruntime for bundles.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads (default: the backend's).")
@click.option("--backend-device", default=None, help="onnxruntime: CPU, CUDA or TensorRT (default: the best present); openvino: CPU, GPU or NPU.")
@click.option("--device", default=None, metavar="NAME|INDEX", help="Microphone (see --list-devices); default: the system's default input.")
@click.option("--list-devices", is_flag=True, help="List audio input devices and exit.")
@click.option("--input", "input_spec", default=None, metavar="FILE|-", help="Read a file (as fast as possible) or raw PCM from stdin instead of a microphone.")
@click.option("--input-rate", type=click.IntRange(min=1), default=None, help="Sample rate of raw PCM on stdin.")
@click.option("--input-format", type=click.Choice(["s16le", "s24le", "s32le", "f32le", "f64le", "u8"]), default="s16le", show_default=True)
@click.option("--input-channels", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--window", "window_s", type=float, default=2.0, show_default=True, callback=_positive_seconds, metavar="SECONDS",
              help="Audio per inference; short windows localize events (docs/streaming.md).")
@click.option("--hop", "hop_s", type=float, default=0.5, show_default=True, callback=_positive_seconds, metavar="SECONDS")
@click.option("--labels", "label_names", multiple=True, metavar="LABEL", help="Watch only these classes (repeatable; AudioSet names contain commas).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3, show_default=True, help="Onset threshold for events.")
@click.option("--thresholds", "thresholds_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Per-class onset thresholds: CSV 'label,threshold' or JSON {label: threshold}; others keep --threshold.")
@click.option("--offset-ratio", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True, help="Offset threshold as a fraction of the onset threshold.")
@click.option("--min-duration", "min_duration_s", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="SECONDS")
@click.option("--smoothing", type=click.Choice(["none", "ema", "median"]), default="none", show_default=True)
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Tags per scores line.")
@click.option("--jsonl", default=None, metavar="PATH|-", help="Write scores and events as JSON Lines (- for stdout).")
@click.option("--mqtt", "mqtt_url", default=None, metavar="mqtt://HOST:PORT/TOPIC", help="Publish events (QoS 1).")
@click.option("--mqtt-scores", is_flag=True, help="Publish scores lines too.")
@click.option("--record-events", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR", help="Write a WAV snippet of each event.")
@click.option("--queue", "queue_size", type=click.IntRange(min=1), default=4, show_default=True, help="Windows waiting for inference before the oldest is dropped.")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop after this much stream time.")
@click.option("--no-view", is_flag=True, help="No live terminal view (it is off anyway when stderr is not a terminal).")
def listen(model, backend, threads, backend_device, device, list_devices, input_spec, input_rate, input_format, input_channels,
           window_s, hop_s, label_names, threshold, thresholds_file, offset_ratio, min_duration_s, smoothing, top_k,
           jsonl, mqtt_url, mqtt_scores, record_events, queue_size, max_seconds, no_view):
    """Tag live audio (microphone, file or raw PCM on stdin): scores and events to the terminal, JSONL, MQTT."""
    if list_devices:
        _print_devices()
        return
    from dymn_edge.listening import run_listen

    summary = run_listen(
        model, backend=backend, threads=threads, backend_device=backend_device, device=device, input_spec=input_spec,
        input_rate=input_rate, input_format=input_format, input_channels=input_channels, window_s=window_s, hop_s=hop_s,
        label_names=list(label_names), threshold=threshold, thresholds_file=thresholds_file, offset_ratio=offset_ratio,
        min_duration_s=min_duration_s, smoothing=smoothing, top_k=top_k, jsonl=jsonl, mqtt_url=mqtt_url,
        mqtt_scores=mqtt_scores, record_events=record_events, queue_size=queue_size, max_seconds=max_seconds,
        view=not no_view,
    )
    click.echo(
        f"listened to {summary['stream_s']:.1f} s in {summary['wall_s']:.1f} s: {summary['windows']} windows, "
        f"{summary['events']} events, {summary['dropped_windows']} dropped, latency median {summary['latency_ms_median']:.0f} ms, "
        f"CPU {summary['cpu_percent']:.0f}% ({_steady(summary)}), restarts {summary['restarts']}, lost input {summary['lost_input_s']:.1f} s",
        err=True)


def _steady(summary: dict) -> str:
    steady = summary.get("cpu_percent_steady")
    return "steady n/a" if steady is None else f"steady {steady:.1f}%"


@cli.command()
@click.argument("bundle", type=BUNDLE_OR_EMBEDDED)
@click.option("--audio", required=True, type=click.Path(exists=True, path_type=Path), metavar="DIR|CSV", help="Calibration audio: a folder, or a CSV of path[,labels].")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="INT8 bundle folder to write (not needed with --sensitivity).")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None,
              help="Activation ranges. Default: percentile for onnxruntime and tensorrt, minmax for openvino (the most accurate on real audio).")
@click.option("--activations", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
              help="onnxruntime: activation type. uint8 (U8S8) runs faster on x86 CPUs but agrees less with FP32 (docs/calibration.md).")
@click.option("--keep-fp", multiple=True, metavar="PATTERN",
              help="Keep matching nodes in floating point: attention, context, stem, classifier, or a glob on node names/types. Repeatable.")
@click.option("--scope", type=click.Choice(["pointwise", "all"]), default=None,
              help="What to quantize: pointwise (wide 1x1 convolutions and matrix products outside the classifier, where INT8 is faster "
                   "on CPUs) or all. "
                   "Default: pointwise for onnxruntime and openvino, all for tensorrt.")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Windows to calibrate on (class-balanced when labels are known).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--accuracy-control", is_flag=True, help="OpenVINO: NNCF's accuracy-controlled quantization against --validation-audio.")
@click.option("--validation-audio", type=click.Path(exists=True, path_type=Path), default=None, metavar="DIR|CSV",
              help="Held-out audio for --accuracy-control and --sensitivity (disjoint from --audio).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=0.01, show_default=True, help="Accuracy control: largest metric drop allowed.")
@click.option("--tensorrt-version", default="8.5.2", show_default=True, help="TensorRT version the calibration cache header names.")
@click.option("--sensitivity", is_flag=True, help="Rank the model's parts by the damage INT8 does to each alone, print the table, write nothing.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
def calibrate(bundle, audio, out, backend, method, activations, keep_fp, scope, samples, seed, accuracy_control, validation_audio, max_drop,
              tensorrt_version, sensitivity, force):
    """Quantize an FP32 bundle to INT8 for a backend, calibrated on real audio through the runtime's frontend."""
    from dymn_edge.calibration.calibrate import calibrate_bundle

    if sensitivity:
        from dymn_edge.calibration.session import sensitivity_table
        from dymn_edge.display import print_sensitivity

        print_sensitivity(sensitivity_table(bundle, audio, validation_audio, method=method, scope=scope, samples=samples, seed=seed))
        return
    if out is None:
        raise click.UsageError("--out is required (unless --sensitivity)")
    result = calibrate_bundle(bundle, audio, out, backend=backend, method=method, activations=activations, keep_fp=list(keep_fp), scope=scope,
                              samples=samples, seed=seed,
                              accuracy_control=accuracy_control, validation_audio=validation_audio, max_drop=max_drop,
                              tensorrt_version=tensorrt_version, overwrite=force)
    q = result.manifest["quantization"]
    layers = f" of {q['scope_layers']} layers" if "scope_layers" in q else ""
    click.echo(f"{result.path}: INT8 for {backend} ({q['method']}, {q['scope']} scope{layers}{', uint8 activations' if activations == 'uint8' else ''}), "
               f"{q['windows']} windows from {q['files']} files"
               + (f", {len(q['skipped_files'])} skipped" if q["skipped_files"] else ""))
    for name, verdict in result.manifest.get("lint", {}).items():
        if not verdict["passed"]:
            click.echo(f"  lint {name}: FAIL ({verdict['errors']} errors; dymn-edge lint {result.path} --target {name} --int8)")


@cli.command()
@click.option("--reference", required=True, type=BUNDLE_OR_EMBEDDED, help="The FP32 bundle (a folder, or an embedded model's name).")
@click.option("--candidate", "candidates", multiple=True, required=True, metavar="BUNDLE[@BACKEND]",
              help="Bundle(s) to judge against the reference; @openvino/@onnxruntime picks the backend. Repeatable.")
@click.option("--audio", required=True, type=click.Path(exists=True, path_type=Path), metavar="DIR|CSV")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV of file,labels for the files of --audio (else labels come from an --audio CSV, if it has them).")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for report.html, report.json and plots.")
@click.option("--gate", "gates", multiple=True, metavar="NAME=VALUE", help="e.g. map_drop=0.005, top5_agreement=0.95. Repeatable.")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Validate on at most this many windows.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Inference threads for every model.")
def validate(reference, candidates, audio, labels_csv, report, gates, samples, threads):
    """Judge quantized (or any) bundles against a reference on real audio; exit 1 when a gate fails."""
    from dymn_edge.calibration.session import validate_bundles
    from dymn_edge.display import print_validation

    result, html_path = validate_bundles(reference, list(candidates), audio, labels_csv=labels_csv, report=report,
                                         gates=list(gates), samples=samples, threads=threads)
    print_validation(result)
    click.echo(f"report: {html_path}")
    failed = [(c["name"], g) for c in result["candidates"] for g in c["gates"] if not g["passed"]]
    if failed:
        for name, g in failed:
            value = "n/a" if g["value"] is None else f"{g['value']:.4g}"
            click.echo(f"gate failed: {name}: {g['gate']} = {value}, must be {g['direction']} {g['threshold']:g}", err=True)
        raise click.exceptions.Exit(1)


export.add_command(export_tensorrt_cmd)
cli.add_command(doctor)
cli.add_command(train)


def main() -> None:
    cli(prog_name="dymn-edge")


if __name__ == "__main__":
    main()
