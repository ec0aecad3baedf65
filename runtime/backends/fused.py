"""``fused``: DyMN (and MobileNetV3) run by hand-fused C kernels (runtime/csrc/fused_dymn.c), without ONNX.

Why a backend of its own: with standard ONNX operators, ONNX Runtime and OpenVINO keep dymn04 at
2.6-3.4x mn04's latency, because every dynamic block becomes dozens of memory-bound passes and
loses the fast convolution paths (docs/benchmarks.md). The C code aggregates each block's kernels
once per window and runs expansion, depthwise convolution with Dy-ReLU and coordinate attention,
and projection row by row. MobileNetV3 ("mn") blocks run through the same rows with static
kernels, so mn04 and dymn04 can be compared in one backend. Weights come from the bundle's
``model.fused.npz``, which ``dymn-edge export onnx`` writes. Needs numpy only; the C library is
compiled at install time: a generic build, and on x86-64 an AVX2/FMA build and an AVX-512 build,
the best one this CPU runs picked at load time.

``threads`` > 1 splits each block's output rows, and a DyMN block's gates, Dy-ReLU coefficients
and kernel aggregation, into chunks that many threads (at most 8) claim; the context's shared conv,
the stem and the classifier stay on the calling thread. The logits are the same from run to run,
whichever thread runs which chunk. A plan keeps its helper threads, asleep between windows.
"""

from __future__ import annotations

import ctypes as C
import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, BundleError

__all__ = ["FUSED_FILE", "LAYOUT_VERSION", "FusedBackend", "block_dims", "library_variant", "load_library"]

logger = logging.getLogger(__name__)

FUSED_FILE = "model.fused.npz"
LAYOUT_VERSION = 2  # 2 added MobileNetV3 ("mn") blocks; layout 1 files (DyMN only) still load
READABLE_LAYOUTS = (1, 2)
# Per-block integers in "b{i}/meta", in this order (export/fused.py writes them). Layout 1 had
# the first 12; its blocks are DyMN blocks, so the last three read as 0.
BLOCK_META = ("cin", "cexp", "cout", "k", "stride", "dil", "pad", "H", "K", "residual", "exp_act", "has_exp",
              "kind", "dw_act", "has_se")
KIND_DYMN, KIND_MN = 0, 1
MAX_KERNEL, MAX_K = 16, 8  # the C code's fixed limits: depthwise rows per output row, kernels per dynamic conv
MAX_THREADS = 8  # MAX_THREADS in fused_dymn.c

_FP = C.POINTER(C.c_float)
_BLOCK_ARRAYS = (
    "exp_w exp_att_w exp_att_b exp_scale exp_shift dw_w dw_att_w dw_att_b dw_scale dw_shift dy_w dy_b lambdas init_v "
    "proj_w proj_att_w proj_att_b proj_scale proj_shift joint_w joint_scale joint_shift cf_w cf_b ct_w ct_b "
    "se1_w se1_b se2_w se2_b"
).split()
_HEAD_ARRAYS = "outc_w outc_scale outc_shift fc1_w fc1_b fc2_w fc2_b".split()


class _Block(C.Structure):
    _fields_ = [(n, C.c_int) for n in ("F", "T", "Fo", "To", *BLOCK_META)] + [("inv_temp", C.c_float)] + [(n, _FP) for n in _BLOCK_ARRAYS]


class _Net(C.Structure):
    _fields_ = [(n, C.c_int) for n in "F T C0 n_blocks c_last c_head hidden classes_padded threads".split()] + [
        ("stem_w", _FP), ("stem_scale", _FP), ("stem_shift", _FP), ("blocks", C.POINTER(_Block))] + [
        (n, _FP) for n in (*_HEAD_ARRAYS, "work")] + [("team", C.c_void_p)]


def _cpu_features() -> dict:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return features


def _cpu_has_avx2_fma() -> bool:
    features = _cpu_features()
    return bool(features.get("AVX2") and features.get("FMA3"))


def _cpu_has_avx512() -> bool:
    return _cpu_has_avx2_fma() and bool(_cpu_features().get("AVX512F"))


BUILDS = {"avx512": _cpu_has_avx512, "avx2": _cpu_has_avx2_fma, "generic": lambda: True}  # best first
_NEEDS = {"avx512": "AVX-512F, AVX2 or FMA", "avx2": "AVX2 or FMA"}
BUILD_FLAGS = {"avx512": ["-mavx2", "-mfma", "-mavx512f"], "avx2": ["-mavx2", "-mfma"], "generic": []}  # as setup.py compiles them


def runnable_builds() -> list[str]:
    """The compiled variants this CPU can run, fastest first (whether installed or not)."""
    return [name for name, runs in BUILDS.items() if runs()]


def library_path(variant: str) -> Path | None:
    """Where the installed library of a build ("avx512", "avx2", "generic") is, or None if it was not built."""
    spec = importlib.util.find_spec("dymn_edge.runtime._fused_dymn" + ("" if variant == "generic" else f"_{variant}"))
    return Path(spec.origin) if spec is not None and spec.origin else None


def library_variant() -> tuple[str, Path]:
    """(variant, path) of the compiled library this CPU should use: "avx512", "avx2" or "generic".

    The AVX-512 build runs the GEMM tiles, their epilogue and the depthwise convolution on 16-float
    vectors, with logits bit-identical to the AVX2 build's: dymn10 1.40x and mn04_as 1.36x faster
    than the AVX2 build on an AMD EPYC with AVX-512 (benchmarks/fused_builds.py, docs/benchmarks.md).
    ``DYMN_EDGE_FUSED_BUILD=generic`` (or ``avx2``, ``avx512``) forces one, for tests and comparisons.
    """
    forced = os.environ.get("DYMN_EDGE_FUSED_BUILD")
    if forced not in (None, "", *BUILDS):
        raise BackendUnavailableError(f"DYMN_EDGE_FUSED_BUILD={forced!r}; expected one of {', '.join(BUILDS)}")
    if forced and not BUILDS[forced]():
        raise BackendUnavailableError(f"DYMN_EDGE_FUSED_BUILD={forced}, but this CPU lacks {_NEEDS[forced]}")
    candidates = [forced] if forced else runnable_builds()
    for variant in candidates:
        path = library_path(variant)
        if path is not None:
            return variant, path
    raise BackendUnavailableError(
        "the fused backend's C library was not built (pip compiles runtime/csrc/fused_dymn.c at install time "
        "and needs a C compiler: apt install gcc, then pip install --force-reinstall --no-deps dymn-edge)")


_LIBRARY: C.CDLL | None = None


def load_library(path: str | Path) -> C.CDLL:
    """A build of fused_dymn.c with its entry points typed (benchmarks/fused_profile.py loads a profiling build)."""
    lib = C.CDLL(str(path))
    lib.dymn_workspace_floats.restype = C.c_size_t
    lib.dymn_workspace_floats.argtypes = [C.POINTER(_Net)]
    lib.dymn_forward.restype = C.c_int
    lib.dymn_forward.argtypes = [C.POINTER(_Net), _FP, _FP]
    lib.dymn_team_new.restype = C.c_void_p
    lib.dymn_team_new.argtypes = [C.c_int]
    lib.dymn_team_free.restype = None
    lib.dymn_team_free.argtypes = [C.c_void_p]
    return lib


def _library() -> C.CDLL:
    global _LIBRARY
    if _LIBRARY is None:
        variant, path = library_variant()
        _LIBRARY = load_library(path)
        logger.info("fused backend: %s build (%s)", variant, path.name)
    return _LIBRARY


CACHE_LINE = 64


def aligned_empty(shape: int | tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised array whose data starts on a cache line.

    numpy only promises 16 bytes. Every row and channel group the C code touches is a multiple of
    32 bytes from its buffer's start, so on a 64-byte base no 8-float load straddles two cache
    lines; on a 16-byte base half of them do, and dymn04_edge ran about 9 % slower (machine B,
    the same build timed with both kinds of workspace in one process).
    """
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.empty(n * dtype.itemsize + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def block_dims(size: int, k: int, stride: int, dil: int, pad: int) -> int:
    """Output length of a convolution along one axis (PyTorch's formula)."""
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


class _Weights:
    """model.fused.npz, checked once: every array float32 and contiguous, every shape as the C code reads it."""

    def __init__(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as npz:
                # One array at a time onto a cache line: holding every array twice while copying
                # raised a dymn10 tagger's peak RSS by the whole 33 MB of weights.
                arrays = {k: _aligned_copy(v.astype(np.float32, copy=False)) if v.dtype.kind == "f" else v
                          for k, v in ((k, npz[k]) for k in npz.files)}
        except Exception as e:  # zipfile and numpy raise many types for a broken file
            raise BundleError(f"{path}: cannot read the fused weights: {e}") from e
        version = int(arrays.get("layout_version", np.array([-1]))[0])
        if version not in READABLE_LAYOUTS:
            raise BundleError(f"{path}: fused weight layout {version}; this dymn-edge reads layouts "
                              f"{', '.join(map(str, READABLE_LAYOUTS))} (export the bundle again)")
        self.path = path
        self.arrays = arrays
        self.n_blocks = int(self._get("n_blocks")[0])
        self.c0 = int(self._get("stem/w").shape[-1])
        self.c_last, self.c_head, self.hidden, self.classes = (int(v) for v in self._get("head/meta"))
        self.blocks = []
        n_meta = 12 if version == 1 else len(BLOCK_META)
        for i in range(self.n_blocks):
            meta = [int(v) for v in self._get(f"b{i}/meta")]
            if len(meta) != n_meta:
                raise BundleError(f"{path}: block {i} has {len(meta)} meta values; layout {version} has {n_meta}")
            self.blocks.append(dict(zip(BLOCK_META, meta + [0] * (len(BLOCK_META) - n_meta))))
        self._check()

    def _get(self, key: str) -> np.ndarray:
        if key not in self.arrays:
            raise BundleError(f"{self.path}: fused weights lack {key!r}; export the bundle again")
        return self.arrays[key]

    def _expect(self, key: str, shape: tuple[int, ...]) -> None:
        got = tuple(self._get(key).shape)
        if got != shape:
            raise BundleError(f"{self.path}: fused weight {key!r} has shape {got}, expected {shape}")

    def _check_mn_block(self, i: int, b: dict) -> None:
        """A MobileNetV3 block: one static kernel per convolution (K = 1, BN scales folded in), H the SE width."""
        cin, cexp, cout, k, H = b["cin"], b["cexp"], b["cout"], b["k"], b["H"]
        if b["K"] != 1 or b["dw_act"] not in (1, 2) or (b["has_se"] and H < 8):
            raise BundleError(f"{self.path}: mn block {i} has K={b['K']}, activation {b['dw_act']}, SE width {H}; "
                              "expected one kernel, ReLU (1) or Hardswish (2), and an SE width of at least 8")
        shapes = {"dw_w": (1, k, k, cexp), "dw_shift": (cexp,), "proj_w": (1, cexp, cout), "proj_shift": (cout,)}
        if b["has_exp"]:
            shapes.update({"exp_w": (1, cin, cexp), "exp_shift": (cexp,)})
        if b["has_se"]:
            shapes.update({"se1_w": (cexp, H), "se1_b": (H,), "se2_w": (H, cexp), "se2_b": (cexp,)})
        for name, shape in shapes.items():
            self._expect(f"b{i}/{name}", shape)

    def _check(self) -> None:
        self._expect("stem/w", (3, 3, self.c0))
        channels = [self.c0]
        for i, b in enumerate(self.blocks):
            if b["cin"] != channels[-1]:
                raise BundleError(f"{self.path}: block {i} takes {b['cin']} channels but the previous layer gives {channels[-1]}")
            if b["k"] > MAX_KERNEL or b["K"] > MAX_K or b["K"] < 1:
                raise BundleError(f"{self.path}: block {i} has kernel {b['k']} and {b['K']} dynamic kernels; the fused code takes at most {MAX_KERNEL} and {MAX_K}")
            cin, cexp, cout, k, K, H = b["cin"], b["cexp"], b["cout"], b["k"], b["K"], b["H"]
            if any(c % 8 for c in (cin, cexp, cout, H)):
                raise BundleError(f"{self.path}: block {i} channels {cin}/{cexp}/{cout}/{H} are not multiples of 8")
            if b["kind"] not in (KIND_DYMN, KIND_MN):
                raise BundleError(f"{self.path}: block {i} is of kind {b['kind']}; the fused code runs DyMN (0) and mn (1) blocks")
            if b["kind"] == KIND_MN:
                self._check_mn_block(i, b)
                channels.append(cout)
                continue
            shapes = {"dw_w": (K, k, k, cexp), "dw_att_w": (K, H), "dw_att_b": (K,), "dw_scale": (cexp,), "dw_shift": (cexp,),
                      "dy_w": (H, 4 * cexp), "dy_b": (4 * cexp,), "lambdas": (4,), "init_v": (4,), "proj_w": (K, cexp, cout),
                      "proj_att_w": (K, H), "proj_att_b": (K,), "proj_scale": (cout,), "proj_shift": (cout,), "joint_w": (cin, H),
                      "joint_scale": (H,), "joint_shift": (H,), "cf_w": (H, cexp), "cf_b": (cexp,), "ct_w": (H, cexp), "ct_b": (cexp,)}
            if b["has_exp"]:
                shapes.update({"exp_w": (K, cin, cexp), "exp_att_w": (K, H), "exp_att_b": (K,), "exp_scale": (cexp,), "exp_shift": (cexp,)})
            for name, shape in shapes.items():
                self._expect(f"b{i}/{name}", shape)
            channels.append(cout)
        if self.c_last != channels[-1]:
            raise BundleError(f"{self.path}: the head takes {self.c_last} channels but the last block gives {channels[-1]}")
        padded = (self.classes + 7) // 8 * 8
        for name, shape in {"outc_w": (self.c_last, self.c_head), "outc_scale": (self.c_head,), "outc_shift": (self.c_head,),
                            "fc1_w": (self.c_head, self.hidden), "fc1_b": (self.hidden,), "fc2_w": (self.hidden, padded),
                            "fc2_b": (padded,)}.items():
            self._expect(f"head/{name}", shape)


class _Plan:
    """The C structs for one input size: block dims, pointers into the weights, and a workspace."""

    def __init__(self, lib: C.CDLL, w: _Weights, n_mels: int, frames: int, threads: int = 1) -> None:
        a = w.arrays
        ptr = lambda key: a[key].ctypes.data_as(_FP)  # noqa: E731
        blocks = (_Block * w.n_blocks)()
        F, T = (n_mels + 1) // 2, (frames + 1) // 2  # after the 3x3 stride-2 stem
        for i, (b, meta) in enumerate(zip(blocks, w.blocks)):
            for key, value in meta.items():
                setattr(b, key, value)
            b.F, b.T = F, T
            b.Fo, b.To = (block_dims(n, meta["k"], meta["stride"], meta["dil"], meta["pad"]) for n in (F, T))
            b.inv_temp = float(a[f"b{i}/inv_temp"][0]) if f"b{i}/inv_temp" in a else 1.0  # mn blocks have no attention
            for name in _BLOCK_ARRAYS:
                if f"b{i}/{name}" in a:
                    setattr(b, name, ptr(f"b{i}/{name}"))
            F, T = b.Fo, b.To
        net = _Net(F=n_mels, T=frames, C0=w.c0, n_blocks=w.n_blocks, c_last=w.c_last, c_head=w.c_head, hidden=w.hidden,
                   classes_padded=(w.classes + 7) // 8 * 8, threads=threads)
        net.stem_w, net.stem_scale, net.stem_shift = ptr("stem/w"), ptr("stem/scale"), ptr("stem/shift")
        net.blocks = blocks
        for name in _HEAD_ARRAYS:
            setattr(net, name, ptr(f"head/{name}"))
        self.work = aligned_empty(lib.dymn_workspace_floats(C.byref(net)))
        self.work[:] = 0
        net.work = self.work.ctypes.data_as(_FP)
        # The structs point into w's arrays: hold w, or a plan outliving its weights would read freed memory.
        self.lib, self.net, self.blocks, self.classes, self.weights = lib, net, blocks, w.classes, w
        self.logits = np.zeros(net.classes_padded, np.float32)
        # Helper threads that live as long as the plan and sleep between windows (None: 1 thread, or
        # none could start; dymn_forward then runs alone or makes helpers per call).
        self._team = lib.dymn_team_new(threads) if threads > 1 else None
        net.team = self._team

    def __del__(self) -> None:
        team, self._team = getattr(self, "_team", None), None
        if team:
            self.lib.dymn_team_free(team)

    def run(self, window: np.ndarray) -> np.ndarray:
        self.lib.dymn_forward(C.byref(self.net), window.ctypes.data_as(_FP), self.logits.ctypes.data_as(_FP))
        return self.logits[: self.classes].copy()


class FusedBackend:
    name = "fused"

    def __init__(self, weights_path: str | Path, *, n_mels: int, threads: int | None = None) -> None:
        self.lib = _library()
        self.weights = _Weights(Path(weights_path))
        self.n_mels = n_mels
        self.threads = min(max(1, threads or 1), MAX_THREADS)
        self.max_batch = None
        self.input_shape: list[int | None] = [None, 1, n_mels, None]
        self.output_shape: list[int | None] = [None, self.weights.classes]
        # Plans (structs + workspace) per input length. A stream's growing windows bring a new
        # length each hop until the window is full: keep the recent few.
        self._plans: OrderedDict[int, _Plan] = OrderedDict()
        self._lock = threading.Lock()  # plans own their workspaces: one infer at a time

    MAX_PLANS = 4

    def _plan_for(self, frames: int) -> _Plan:
        if frames not in self._plans:
            self._plans[frames] = _Plan(self.lib, self.weights, self.n_mels, frames, self.threads)
        self._plans.move_to_end(frames)
        while len(self._plans) > self.MAX_PLANS:
            self._plans.popitem(last=False)
        return self._plans[frames]

    def infer(self, features: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 4 or features.shape[1] != 1 or features.shape[2] != self.n_mels or features.shape[3] < 1:
            raise BundleError(f"{self.weights.path}: the fused backend expects (batch, 1, {self.n_mels}, frames) features, got {features.shape}")
        if not np.isfinite(features).all():
            raise BundleError(f"{self.weights.path}: features hold NaN or inf")
        with self._lock:
            plan = self._plan_for(features.shape[3])
            return np.stack([plan.run(features[i, 0]) for i in range(features.shape[0])])
