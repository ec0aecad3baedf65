"""``dymn-edge export tensorrt``: build a TensorRT engine from a bundle, on the device that will run it."""

from __future__ import annotations

from pathlib import Path

import click

from dymn_edge.bundle_param import BUNDLE_OR_EMBEDDED

__all__ = ["export_tensorrt_cmd"]


def _batch_range(ctx, param, value):
    if value is None:
        return None
    from dymn_edge.export.tensorrt import BatchRange
    from dymn_edge.runtime.errors import ExportError

    try:
        return BatchRange.parse(value)
    except ExportError as e:
        raise click.BadParameter(str(e)) from e


@click.command("tensorrt")
@click.argument("bundle", type=BUNDLE_OR_EMBEDDED)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--fp16", is_flag=True, help="Let TensorRT use FP16 kernels (TensorRT 8.5 to 10.x).")
@click.option("--int8", is_flag=True, help="INT8: needs --calibration-cache, or a Q/DQ bundle from `dymn-edge calibrate --backend tensorrt`.")
@click.option("--calibration-cache", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TensorRT calibration cache for the implicit INT8 calibrator (with the bundle's FP32 model).")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=1024, show_default=True, metavar="MB",
              help="Builder workspace memory pool limit.")
@click.option("--batch", callback=_batch_range, default=None, metavar="MIN:OPT:MAX",
              help="Batch sizes the engine serves (default: the manifest's shape profile).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Reuse and update TensorRT's timing cache to speed up later builds.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
def export_tensorrt_cmd(bundle, out, fp16, int8, calibration_cache, workspace_mb, batch, timing_cache, force):
    """Build a TensorRT engine for this GPU from BUNDLE's ONNX model (keeps the ONNX model beside it)."""
    from dymn_edge.export.tensorrt import build_tensorrt_bundle

    result = build_tensorrt_bundle(bundle, out, fp16=fp16, int8=int8, calibration_cache=calibration_cache, workspace_mb=workspace_mb,
                                   batch=batch, timing_cache=timing_cache, overwrite=force)
    record = result.manifest["tensorrt"]
    click.echo(f"{result.path}: TensorRT {record['version']} engine ({result.precision}"
               f"{', ' + record['int8'] if record['int8'] else ''}) for {record['device']['name']} "
               f"(compute capability {record['device']['compute_capability']}), built in {record['build_s']:.1f} s")
    click.echo(f"  max |logit diff| vs ONNX Runtime CPU {record['parity']['max_abs_logit_diff']:.1e}")
