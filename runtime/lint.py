"""``dymn-edge lint``: will this ONNX graph build on the deployment target, before the device finds out?

Three targets, each checked against its own source of truth:

* **tensorrt** (8.5, 8.6, 10.x): TensorRT cannot run on these machines (no GPU), so the checks come
  from the ONNX-TensorRT parser's documented operator support matrix (onnx/onnx-tensorrt
  ``docs/operators.md``), stored per release in ``assets/tensorrt_onnx_ops.json`` with the commit
  each table was read from; plus the documented constraints that matter for DyMN: convolution
  weights computed at run time cannot be quantized (INT8) and were refused before TensorRT 8.5,
  INT8 grouped convolutions need group sizes that are multiples of 4, and dynamic input axes need
  an optimization profile.
* **onnxruntime**: the installed ONNX Runtime's own kernel registry (every node needs a CPU kernel
  for its opset version and input types, or an ONNX function to expand), then a real session load.
* **openvino**: the installed OpenVINO's ONNX frontend (``convert_partially`` leaves unsupported
  operators as framework nodes) and the CPU plugin's ``query_model``.

Findings are errors (the target will refuse the model) or warnings (it builds, but slower or with
a documented caveat). A report passes when it has no errors. Lint lives in the runtime: it needs
no torch (only the ``onnx`` package, imported when used), and export and calibration both call it.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import BackendUnavailableError, BundleError, DymnEdgeError

__all__ = [
    "TARGETS",
    "TENSORRT_RELEASES",
    "Finding",
    "LintReport",
    "constant_tensors",
    "lint_bundle",
    "lint_onnx",
    "tensorrt_support_table",
]

logger = logging.getLogger(__name__)

TARGETS = ("tensorrt", "onnxruntime", "openvino")
TENSORRT_RELEASES = ("8.5", "8.6", "10")
_TRT_TABLE_KEYS = {"8.5": "8.5", "8.6": "8.6", "10": "10.x"}

# ONNX TensorProto.DataType numbers -> the names the ONNX-TensorRT tables use.
_DTYPE_NAMES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
    9: "BOOL", 10: "FP16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
    16: "BF16", 17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 21: "UINT4", 22: "INT4",
}
# Table spellings differ between releases ("FLOAT32" in the header, "FP32" in rows).
_TYPE_ALIASES = {"FLOAT32": "FP32", "FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16"}
_WEIGHT_OPS = ("Conv", "ConvTranspose")
_QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    check: str  # opset, operator, dtype, constant-weights, int8-groups, dynamic-shape, load
    where: str  # node "name (OpType)" or tensor name
    message: str


@dataclass
class LintReport:
    target: str  # e.g. "tensorrt-8.6", "onnxruntime", "openvino"
    checked_with: str  # what the verdict rests on: a documented table (with commit) or an installed runtime
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def add(self, severity: str, check: str, where: str, message: str) -> None:
        self.findings.append(Finding(severity, check, where, message))

    def summary(self) -> dict[str, Any]:
        """What the manifest records."""
        return {"passed": self.passed, "errors": len(self.errors), "warnings": len(self.warnings), "checked_with": self.checked_with}

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, **self.summary(), "findings": [asdict(f) for f in self.findings]}


def constant_tensors(graph) -> set[str]:
    """Names of the tensors of an ONNX graph known before it runs: initializers, Constant outputs,
    and a DequantizeLinear of either (Q/DQ weights are still constant weights)."""
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in constants:
            constants.update(n.output)
    return constants


class _Graph:
    """The facts every check needs, read once: opset, nodes, constants, tensor types, input shapes."""

    def __init__(self, model) -> None:
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # a graph shape inference cannot handle still deserves the other checks
            inferred = model
        graph = inferred.graph
        self.model = inferred
        self.opsets = {(o.domain or "ai.onnx"): o.version for o in inferred.opset_import}
        self.opset = self.opsets.get("ai.onnx", 0)
        self.nodes = list(graph.node)
        self.initializers = {t.name for t in graph.initializer}
        self.constants = constant_tensors(graph)
        self.dtypes: dict[str, int] = {}
        self.shapes: dict[str, list[int | str | None]] = {}
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            t = vi.type.tensor_type
            self.dtypes[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        for init in graph.initializer:
            self.dtypes[init.name] = init.data_type
            self.shapes[init.name] = list(init.dims)
        self.inputs = [i for i in graph.input if i.name not in self.initializers]

    @staticmethod
    def where(node) -> str:
        return f"{node.name or '?'} ({node.op_type})"

    def attr(self, node, name: str, default=None):
        import onnx

        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def dynamic_inputs(self) -> dict[str, list[int]]:
        """Graph input name -> indices of its dynamic (symbolic or unknown) axes."""
        out = {}
        for i in self.inputs:
            dims = self.shapes.get(i.name, [])
            axes = [k for k, d in enumerate(dims) if not isinstance(d, int) or d <= 0]
            if axes:
                out[i.name] = axes
        return out


def _load(model_path: str | Path):
    import onnx

    try:
        return onnx.load(str(model_path))
    except Exception as e:  # protobuf DecodeError and friends
        raise BundleError(f"{model_path}: not a readable ONNX model ({e})") from e


# --------------------------------------------------------------------------------------- TensorRT


@functools.lru_cache(maxsize=None)
def tensorrt_support_table() -> dict[str, Any]:
    """The ONNX-TensorRT operator matrices per release, as read from onnx/onnx-tensorrt."""
    path = Path(__file__).with_name("assets") / "tensorrt_onnx_ops.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _trt_types(entry: dict[str, Any]) -> set[str]:
    return {_TYPE_ALIASES.get(t.strip().upper(), t.strip().upper()) for t in entry.get("types", [])}


def _lint_tensorrt(g: _Graph, release: str, *, int8: bool, profiles: dict[str, Any] | None) -> LintReport:
    table = tensorrt_support_table()[_TRT_TABLE_KEYS[release]]
    src = table["source"]
    report = LintReport(f"tensorrt-{release}", f"onnx-tensorrt docs/operators.md @ {src['commit'][:12]} ({table.get('version', release)})")
    lo, hi = table.get("opset_min") or 1, table["opset_max"]
    if not lo <= g.opset <= hi:
        report.add("error", "opset", "model", f"opset {g.opset} is outside TensorRT {release}'s supported range {lo}-{hi}; re-export with --opset {min(max(g.opset, lo), hi)}")
    for domain in g.opsets:
        if domain not in ("ai.onnx",):
            users = [n for n in g.nodes if (n.domain or "ai.onnx") == domain]
            if users:
                report.add("error", "operator", g.where(users[0]), f"{len(users)} node(s) from custom domain {domain!r}: TensorRT's ONNX parser only knows the standard domain (a plugin would be needed)")
    ops = table["ops"]
    int64_note = release.startswith("8")
    seen_unsupported: set[str] = set()
    for node in g.nodes:
        if (node.domain or "ai.onnx") != "ai.onnx":
            continue
        entry = ops.get(node.op_type)
        if entry is None or not entry["supported"]:
            if node.op_type not in seen_unsupported:
                count = sum(n.op_type == node.op_type for n in g.nodes)
                report.add("error", "operator", g.where(node), f"{node.op_type} is not supported by TensorRT {release}'s ONNX parser ({count} node(s))")
                seen_unsupported.add(node.op_type)
            continue
        allowed = _trt_types(entry)
        for name in node.input[:1]:  # the data input decides the layer's precision
            dtype = _DTYPE_NAMES.get(g.dtypes.get(name, 0))
            if not dtype or not allowed:
                continue
            if dtype == "INT64" and int64_note:
                continue  # 8.x casts INT64 down to INT32 (documented); reported once below
            if dtype == "DOUBLE":
                continue  # cast down to FP32 by the parser (documented); reported once below
            if dtype not in allowed:
                report.add("error", "dtype", g.where(node), f"{node.op_type} on {dtype} input {name!r}: TensorRT {release} supports {', '.join(sorted(allowed))}")
    _check_convs(report, g, release, int8=int8)
    dtypes = {_DTYPE_NAMES.get(t) for t in g.dtypes.values()}
    if int64_note and "INT64" in dtypes:
        report.add("warning", "dtype", "graph", f"INT64 tensors (shape arithmetic): TensorRT {release} casts them down to INT32, which is safe for shapes")
    if "DOUBLE" in dtypes:
        report.add("warning", "dtype", "graph", "DOUBLE tensors: TensorRT casts them down to FP32, clamping to +-FLT_MAX")
    bad = sorted(d for d in dtypes if d in ("STRING", "COMPLEX64", "COMPLEX128"))
    if bad:
        report.add("error", "dtype", "graph", f"tensors of type {', '.join(bad)}: not representable in TensorRT")
    for name, axes in g.dynamic_inputs().items():
        if not profiles or name not in profiles:
            report.add("error", "dynamic-shape", name, f"input {name!r} has dynamic axes {axes} but no optimization profile: TensorRT needs min/opt/max shapes (export with a fixed --batch and --window, or record a profile)")
    return report


def _check_convs(report: LintReport, g: _Graph, release: str, *, int8: bool) -> None:
    """Run-time conv weights and INT8 group sizes; one finding per kind, naming the first nodes."""
    runtime_weights, bad_groups = [], []
    for node in g.nodes:
        if node.op_type not in _WEIGHT_OPS:
            continue
        weight = node.input[1] if len(node.input) > 1 else ""
        if weight and weight not in g.constants:
            runtime_weights.append(node.name or "?")
        group = int(g.attr(node, "group", 1))
        wshape = g.shapes.get(weight)
        if int8 and group > 1 and wshape and all(isinstance(d, int) for d in wshape[:2]):
            out_per_group, in_per_group = wshape[0] // group, wshape[1]
            depthwise = in_per_group == 1 and out_per_group == 1
            if not depthwise and (in_per_group % 4 or out_per_group % 4):
                bad_groups.append(f"{node.name or '?'} ({in_per_group} in / {out_per_group} out per group)")
    if runtime_weights:
        # The parser imports run-time conv weights since 8.5 (convMultiInput); INT8 quantizes weights
        # ahead of time, and TensorRT before 8.5 refused them (see "facts" in the table file).
        why = ("INT8 needs constant weights to quantize" if int8 else
               f"TensorRT {release} builds them in FP32/FP16 but cannot quantize them to INT8, and TensorRT < 8.5 refuses them")
        report.add("error" if int8 else "warning", "constant-weights", _examples(runtime_weights),
                   f"{len(runtime_weights)} convolution(s) with weights computed at run time: {why}; --strategy expanded gives constant weights")
    if bad_groups:
        report.add("error", "int8-groups", _examples(bad_groups), f"{len(bad_groups)} grouped convolution(s) whose group sizes are not "
                   "multiples of 4, which TensorRT INT8 requires (IConvolutionLayer::setNbGroups)")


def _examples(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# ------------------------------------------------------------------------------------ ONNX Runtime


def _lint_onnxruntime(g: _Graph, model_path: Path) -> LintReport:
    try:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as C
    except ImportError as e:
        raise BackendUnavailableError("linting for onnxruntime uses the installed ONNX Runtime: pip install onnxruntime") from e
    import onnx

    report = LintReport("onnxruntime", f"onnxruntime {ort.__version__} kernel registry (CPU) + session load")
    kernels: dict[tuple[str, str], list] = {}
    for k in C.get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            kernels.setdefault((k.domain or "ai.onnx", k.op_name), []).append(k)
    seen: set[tuple[str, str]] = set()
    for node in g.nodes:
        domain = node.domain or "ai.onnx"
        key = (domain, node.op_type)
        if key in seen or key == ("ai.onnx", "Constant"):  # constants become initializers, no kernel runs
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, g.opsets.get(domain, g.opset), "" if domain == "ai.onnx" else domain)
            since = schema.since_version
        except Exception:
            schema, since = None, None
        candidates = [k for k in kernels.get(key, []) if since is None or k.version_range[0] <= since <= k.version_range[1]]
        if candidates:
            dtype = _ort_type(g.dtypes.get(node.input[0])) if node.input else None
            constraint = _first_input_constraint(schema)
            allowed = {t for k in candidates for t in k.type_constraints.get(constraint, [])} if constraint else set()
            if dtype and allowed and dtype not in allowed:
                report.add("error", "dtype", g.where(node), f"no CPU kernel of {node.op_type} for {dtype} (has {', '.join(sorted(allowed))})")
                seen.add(key)
            continue
        if schema is not None and (schema.has_function or schema.has_context_dependent_function):
            continue  # ONNX Runtime expands function ops (e.g. HardSwish) into supported nodes
        seen.add(key)
        report.add("error", "operator", g.where(node), f"ONNX Runtime {ort.__version__} has no CPU kernel for {domain}.{node.op_type} at opset {g.opsets.get(domain)}")
    try:
        ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors are untyped
        report.add("error", "load", str(model_path), f"ONNX Runtime refuses the model: {str(e).splitlines()[0]}")
    return report


def _ort_type(elem_type: int | None) -> str | None:
    import onnx

    if not elem_type:
        return None
    return f"tensor({onnx.helper.tensor_dtype_to_np_dtype(elem_type).name.replace('float32', 'float').replace('float64', 'double')})"


def _first_input_constraint(schema) -> str | None:
    if schema is None or not schema.inputs:
        return None
    return schema.inputs[0].type_str


# ---------------------------------------------------------------------------------------- OpenVINO


def _lint_openvino(g: _Graph, model_path: Path, device: str = "CPU") -> LintReport:
    try:
        import openvino as ov
        from openvino.frontend import FrontEndManager
    except ImportError as e:
        raise BackendUnavailableError('linting for openvino uses the installed OpenVINO: pip install "dymn-edge[openvino]"') from e
    report = LintReport("openvino", f"openvino {ov.__version__.split('-')[0]} ONNX frontend + {device} query_model")
    manager = FrontEndManager()  # must outlive the frontend and the model, or OpenVINO segfaults
    try:
        frontend = manager.load_by_framework("onnx")
        model = frontend.convert_partially(frontend.load(str(model_path)))
    except Exception as e:  # OpenVINO raises its own exception types
        report.add("error", "load", str(model_path), f"OpenVINO's ONNX frontend cannot read the model: {str(e).splitlines()[0]}")
        return report
    try:
        _check_openvino_model(report, g, model, ov, device)
    finally:
        del model, frontend  # framework nodes die before the frontend library that made them
    return report


def _check_openvino_model(report: LintReport, g: _Graph, model, ov, device: str) -> None:
    # Framework nodes are named after an ONNX node or its output; their get_attributes() segfaults
    # in OpenVINO 2026.4, so the ONNX op type is looked up in our own graph instead.
    op_types = {key: n.op_type for n in g.nodes for key in [n.name, *n.output] if key}
    unsupported: dict[str, int] = {}
    for op in model.get_ops():
        if "FrameworkNode" in op.get_type_name():
            name = op_types.get(op.get_friendly_name(), op.get_friendly_name())
            unsupported[name] = unsupported.get(name, 0) + 1
    for op_type, count in sorted(unsupported.items()):
        report.add("error", "operator", op_type, f"OpenVINO {ov.__version__.split('-')[0]} cannot convert {op_type} ({count} node(s))")
    if unsupported:
        return
    supported = ov.Core().query_model(model, device)
    missing = [op.get_friendly_name() for op in model.get_ops() if op.get_friendly_name() not in supported]
    if missing:
        report.add("error", "operator", missing[0], f"{len(missing)} operation(s) not supported on OpenVINO {device}, e.g. {', '.join(missing[:3])}")


# --------------------------------------------------------------------------------------------- API


def _expand_targets(targets: Iterable[str]) -> list[str]:
    out: list[str] = []
    for t in targets:
        if t == "tensorrt":
            out += [f"tensorrt-{r}" for r in TENSORRT_RELEASES]
        elif t.startswith("tensorrt-") and t.split("-", 1)[1] in TENSORRT_RELEASES:
            out.append(t)
        elif t in ("onnxruntime", "openvino"):
            out.append(t)
        else:
            valid = list(TARGETS) + [f"tensorrt-{r}" for r in TENSORRT_RELEASES]
            raise DymnEdgeError(f"unknown lint target {t!r}; expected one of {', '.join(valid)}")
    return list(dict.fromkeys(out))


def lint_onnx(
    model_path: str | Path,
    targets: Iterable[str] = TARGETS,
    *,
    int8: bool = False,
    profiles: dict[str, Any] | None = None,
) -> list[LintReport]:
    """Lint one ONNX file for each target ("tensorrt" expands to 8.5, 8.6 and 10).

    Args:
        int8: the model is meant to run in INT8 (stricter TensorRT convolution rules).
        profiles: TensorRT optimization profiles, input name -> {"min", "opt", "max"} shapes.
    """
    model_path = Path(model_path)
    g = _Graph(_load(model_path))
    reports = []
    for target in _expand_targets(targets):
        if target.startswith("tensorrt-"):
            reports.append(_lint_tensorrt(g, target.split("-", 1)[1], int8=int8, profiles=profiles))
        elif target == "onnxruntime":
            reports.append(_lint_onnxruntime(g, model_path))
        else:
            reports.append(_lint_openvino(g, model_path))
    return reports


def lint_bundle(bundle, targets: Iterable[str] = TARGETS, *, int8: bool | None = None, record: bool = True) -> list[LintReport]:
    """Lint a bundle's ONNX model and (``record``) store each target's verdict in its manifest."""
    from .bundle import Bundle, load_bundle, update_manifest

    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    onnx_path = bundle.require("onnx", hint="; lint checks the ONNX model a bundle was exported with")
    if int8 is None:
        int8 = bundle.precision == "int8"
    profiles = bundle.manifest.get("shape_profiles")
    reports = lint_onnx(onnx_path, targets, int8=int8, profiles=profiles)
    if record:
        lint = dict(bundle.manifest.get("lint", {}))
        lint.update({r.target: r.summary() for r in reports})
        try:
            update_manifest(bundle, {"lint": lint})
        except OSError as e:  # a read-only bundle (e.g. the embedded one in site-packages) is still linted
            logger.warning("%s: could not record the lint results in the manifest (%s)", bundle.path, e)
    return reports
