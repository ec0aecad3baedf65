"""The fused backend (runtime/csrc/fused_dymn.c): parity with PyTorch on the seeded fixtures and the
trained dymn04_edge, both compiled builds, batches and threads, and every bad input it names."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dymn_edge.export.fused import add_fused_weights, fused_arrays, unsupported_reason, write_fused
from dymn_edge.export.onnx import export_bundle
from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.backends import fused as fused_module
from dymn_edge.runtime.backends.fused import FusedBackend, library_variant
from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.errors import BackendUnavailableError, BundleError, ExportError
from dymn_edge.runtime.frontend import log_mel
from dymn_edge.runtime.registry import demo_clip_path, embedded_bundle_path
from dymn_edge.train import create_model
from dymn_edge.train.checkpoint import load_checkpoint
from dymn_edge.train.models import DyMNConfig
from bundle_copies import without_fused_weights
from seeded_models import seeded_reference_model

ATOL = 1e-4
BUILDS = fused_module.runnable_builds()


@pytest.fixture(params=BUILDS)
def build(request, monkeypatch):
    """Each compiled variant in turn (AVX2 and AVX-512 only where the CPU runs them)."""
    monkeypatch.setenv("DYMN_EDGE_FUSED_BUILD", request.param)
    monkeypatch.setattr(fused_module, "_LIBRARY", None)
    assert library_variant()[0] == request.param
    yield request.param
    fused_module._LIBRARY = None


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x))[0].numpy()


def test_the_library_was_built_for_this_cpu():
    variant, path = library_variant()
    assert path.is_file() and variant == fused_module.runnable_builds()[0]


def test_seeded_dymn04_fixture_matches_efficientat(build, fixtures_dir, tmp_path):
    """The EfficientAT reference logits of the seeded dymn04, all three inputs in one batch; row 2 (real audio)
    amplifies float32 rounding ~1000x and is the tight one (ONNX exports land at 7e-5 to 1e-4 there too)."""
    model = load_checkpoint(fixtures_dir / "dymn04_reference_weights.pt").model.eval()
    reference = np.load(fixtures_dir / "dymn04_reference.npz")
    backend = FusedBackend(write_fused(model, tmp_path), n_mels=128)
    got = backend.infer(reference["input"])
    assert got.shape == (3, 527)
    assert np.abs(got - reference["logits"]).max() < ATOL
    assert np.abs(got - _torch_logits(model, reference["input"])).max() < ATOL
    if build in ("avx2", "avx512"):
        # With FMA and BN's scale applied to the GEMM outputs (not folded into the aggregated
        # kernels, which rounded every weight twice), row 2 is 4.7e-5 off; folded, it was 9.4e-5.
        assert np.abs(got[2] - reference["logits"][2]).max() < 7e-5


def test_seeded_dymn10_fixture_matches_pytorch(fixtures_dir, tmp_path):
    inputs = np.load(fixtures_dir / "dymn10_reference.npz")["input"]
    model = seeded_reference_model(DyMNConfig(width_mult=1.0), torch.from_numpy(inputs))
    got = FusedBackend(write_fused(model, tmp_path), n_mels=128, threads=2).infer(inputs)
    assert np.abs(got - _torch_logits(model, inputs)).max() < ATOL


def test_dilated_reduced_tail_dymn_matches_pytorch(tmp_path, rng):
    """Dilation 2 in the tail takes the generic depthwise path (not the unrolled 3x3/5x5 ones)."""
    torch.manual_seed(0)
    model = create_model("dymn04", dilated=True, reduced_tail=True).eval()
    model.set_temperature(1.0)
    assert {layer.depth_conv.dilation for layer in model.layers} == {1, 2}
    x = log_mel(load_audio(demo_clip_path()))[None, None, :, :640].astype(np.float32)
    got = FusedBackend(write_fused(model, tmp_path), n_mels=128).infer(x)
    assert np.abs(got - _torch_logits(model, x)).max() < ATOL


@pytest.mark.parametrize("kernels", [3, 8])
def test_dymn_with_other_kernel_counts_matches_pytorch(kernels, tmp_path):
    """The kernel aggregation runs a copy with K = 4 (every DyMN's) as a constant; other K take the
    general loop. Random BN statistics and a louder classifier keep the logits far from zero."""
    torch.manual_seed(0)
    model = create_model("dymn04", dyconv_k=kernels).eval()
    model.set_temperature(1.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5), m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.1, 0.1)
        model.classifier[2].weight.mul_(10), model.classifier[5].weight.mul_(100)
    assert model.layers[0].depth_conv.k == kernels
    x = log_mel(load_audio(demo_clip_path()))[None, None, :, :400].astype(np.float32)
    expected = _torch_logits(model, x)
    assert np.abs(expected).max() > 1.0
    got = FusedBackend(write_fused(model, tmp_path), n_mels=128).infer(x)
    assert np.abs(got - expected).max() < ATOL


def test_trained_dymn04_edge_on_real_audio_batches_and_threads(build, shared):
    """The embedded bundle's fused weights against its ONNX model on real clips of two lengths, on one
    thread and with each block's rows split between 2 and 3 threads; a batch gives the rows of its windows."""
    bundle = load_bundle(embedded_bundle_path("dymn04_edge"))
    onnx = create_backend("onnxruntime", bundle, threads=1)
    fused = {t: create_backend("fused", bundle, threads=t) for t in (1, 2, 3)}
    clips = [demo_clip_path(), *sorted((shared / "data" / "esc50").glob("*.flac"))[:2]]
    windows = [log_mel(load_audio(p))[None, None, :, :500].astype(np.float32) for p in clips]
    long = log_mel(load_audio(demo_clip_path()))[None, None].astype(np.float32)  # the 10 s window the tagger feeds
    for x in [*windows, long]:
        expected = onnx.infer(x)
        for backend in fused.values():
            assert np.abs(backend.infer(x) - expected).max() < ATOL
    batch = np.concatenate(windows)
    singles = np.concatenate([fused[1].infer(x) for x in windows])
    np.testing.assert_array_equal(fused[1].infer(batch), singles)
    # Threads sum the time pooling of their rows apart, then add: the order differs, the values barely.
    assert np.abs(fused[2].infer(batch) - singles).max() < 1e-5 and np.abs(fused[3].infer(batch) - singles).max() < 1e-5


def test_export_records_fused_parity_for_dymn_and_mn(mn04_checkpoint, tmp_path):
    bundle = load_bundle(embedded_bundle_path("dymn04_edge"))
    record = bundle.manifest["fused"]
    assert record["included"] and record["max_abs_logit_diff"] < ATOL and bundle.file("fused_weights").name == "model.fused.npz"
    assert record["layout_version"] == 1  # the embedded file predates mn blocks and still loads
    mn = export_bundle(mn04_checkpoint, tmp_path / "mn", include_checkpoint=False)
    assert mn.manifest["fused"]["included"] and mn.manifest["fused"]["layout_version"] == 2
    assert 0 < mn.manifest["fused"]["max_abs_logit_diff"] < ATOL
    no_fused = export_bundle(mn04_checkpoint, tmp_path / "mn-plain", include_checkpoint=False, fused=False, verify_parity=False)
    with pytest.raises(BundleError, match=r"bundle has no 'fused_weights' file .*fused backend runs DyMN and MobileNetV3 bundles"):
        create_backend("fused", no_fused)


def test_real_mn04_as_matches_pytorch_with_squeeze_excitation_split_between_threads(build, shared, mn04_checkpoint, tmp_path):
    """The released mn04_as (MobileNetV3 blocks, channel SE): the SE blocks run in two passes (depthwise
    output kept whole, then projected with an SE-scaled kernel), and both passes split between threads."""
    model = load_checkpoint(mn04_checkpoint).model.eval()
    weights = write_fused(model, tmp_path)
    clips = [demo_clip_path(), *sorted((shared / "data" / "esc50").glob("*.flac"))[:2]]
    windows = [log_mel(load_audio(p))[None, None, :, :500].astype(np.float32) for p in clips]
    windows.append(log_mel(load_audio(demo_clip_path()))[None, None].astype(np.float32))
    for x in windows:
        expected = _torch_logits(model, x)
        assert np.abs(expected).max() > 5.0
        for threads in (1, 2, 3):
            assert np.abs(FusedBackend(weights, n_mels=128, threads=threads).infer(x) - expected).max() < ATOL


def test_an_mn_variant_the_fused_code_lacks_exports_without_it(tmp_path):
    torch.manual_seed(0)
    model = create_model("mn04", se_dims="cf").eval()
    assert unsupported_reason(model) == "se_dims='cf': the fused code implements squeeze-excitation over channels only"
    assert unsupported_reason(create_model("mn04", se_dims="none")) is None


def test_a_dymn_variant_the_fused_code_lacks_exports_without_it_and_says_why(tmp_path):
    torch.manual_seed(0)
    model = create_model("dymn04", no_ca=True).eval()
    assert unsupported_reason(model) == "the fused code implements the full DyMN block, not no_ca"
    with pytest.raises(ValueError, match="not no_ca"):
        fused_arrays(model)
    checkpoint = tmp_path / "noca.pt"
    from dymn_edge.train import save_checkpoint

    save_checkpoint(model, checkpoint)
    bundle = export_bundle(checkpoint, tmp_path / "b", include_checkpoint=False, verify_parity=False)
    assert bundle.manifest["fused"] == {"included": False, "reason": "the fused code implements the full DyMN block, not no_ca"}
    with pytest.raises(BundleError, match="this one has none because the fused code implements the full DyMN block, not no_ca"):
        create_backend("fused", bundle)


def test_add_fused_weights_to_an_older_bundle(tmp_path, mn04_checkpoint):
    dest = without_fused_weights("dymn04_edge", tmp_path / "old")
    manifest = json.loads((dest / "manifest.json").read_text())
    with pytest.raises(BundleError, match="bundle has no 'fused_weights' file"):
        create_backend("fused", load_bundle(dest))
    model = load_checkpoint(dest / "model.pt").model
    bundle = add_fused_weights(dest, model)
    assert bundle.manifest["fused"]["max_abs_logit_diff"] < ATOL and bundle.manifest["training"] == manifest["training"]
    assert create_backend("fused", bundle).infer(np.zeros((1, 1, 128, 200), np.float32)).shape == (1, 527)
    mn = export_bundle(mn04_checkpoint, tmp_path / "mn", include_checkpoint=False, fused=False)
    with pytest.raises(ExportError, match="a mn bundle, but the model given is a dymn; pass the bundle's own checkpoint"):
        add_fused_weights(mn.path, model)
    assert add_fused_weights(mn.path, load_checkpoint(mn04_checkpoint).model).manifest["fused"]["max_abs_logit_diff"] < ATOL


@pytest.fixture
def weights(tmp_path):
    return fused_arrays(load_checkpoint(embedded_bundle_path("dymn04_edge") / "model.pt").model.eval())


def _save(arrays, tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.update({"layout_version": np.array([7], np.int32)}), r"fused weight layout 7; this dymn-edge reads layouts 1, 2"),
        (lambda a: a.pop("b3/proj_w"), r"fused weights lack 'b3/proj_w'"),
        (lambda a: a.update({"b2/dw_w": a["b2/dw_w"][:, :, :, :8]}), r"fused weight 'b2/dw_w' has shape \(4, 3, 3, 8\), expected \(4, 3, 3, 32\)"),
        (lambda a: a.update({"b5/meta": a["b5/meta"] * np.array([1, 1, 1, 5] + [1] * 11, np.int32)}),
         r"block 5 has kernel 25 and 4 dynamic kernels; the fused code takes at most 16 and 8"),
        (lambda a: a.update({"b5/meta": a["b5/meta"][:12]}), r"block 5 has 12 meta values; layout 2 has 15"),
        (lambda a: a.update({"b5/meta": a["b5/meta"] + np.array([0] * 12 + [2, 0, 0], np.int32)}),
         r"block 5 is of kind 2; the fused code runs DyMN \(0\) and mn \(1\) blocks"),
        (lambda a: a.update({"head/meta": a["head/meta"] + np.array([8, 0, 0, 0], np.int32)}),
         r"the head takes 72 channels but the last block gives 64"),
    ],
)
def test_broken_fused_weights_are_named(weights, tmp_path, edit, message):
    edit(weights)
    with pytest.raises(BundleError, match=message):
        FusedBackend(_save(weights, tmp_path), n_mels=128)


def test_unreadable_weights_and_wrong_inputs(weights, tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"junk\.npz: cannot read the fused weights"):
        FusedBackend(junk, n_mels=128)
    backend = FusedBackend(_save(weights, tmp_path), n_mels=128)
    for bad in (np.zeros((1, 1, 64, 100), np.float32), np.zeros((1, 128, 100), np.float32), np.zeros((1, 2, 128, 100), np.float32)):
        with pytest.raises(BundleError, match=r"expects \(batch, 1, 128, frames\) features, got"):
            backend.infer(bad)
    nan = np.zeros((1, 1, 128, 100), np.float32)
    nan[0, 0, 3, 4] = np.nan
    with pytest.raises(BundleError, match="features hold NaN or inf"):
        backend.infer(nan)


def test_missing_library_and_bad_build_choice(monkeypatch):
    monkeypatch.setattr(fused_module, "_LIBRARY", None)
    monkeypatch.setattr(fused_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailableError, match="fused backend's C library was not built .*needs a C compiler"):
        library_variant()
    monkeypatch.setenv("DYMN_EDGE_FUSED_BUILD", "avx1024")
    with pytest.raises(BackendUnavailableError, match="DYMN_EDGE_FUSED_BUILD='avx1024'; expected one of avx512, avx2, generic"):
        library_variant()
    monkeypatch.setenv("DYMN_EDGE_FUSED_BUILD", "avx512")
    monkeypatch.setitem(fused_module.BUILDS, "avx512", lambda: False)  # a CPU without AVX-512
    with pytest.raises(BackendUnavailableError, match="DYMN_EDGE_FUSED_BUILD=avx512, but this CPU lacks AVX-512F"):
        library_variant()


def test_growing_windows_keep_a_few_plans_and_concurrent_calls_agree():
    """A stream's windows grow hop by hop: the backend keeps plans for the recent lengths only, and
    calls from several threads at once (a listener and a file tagger sharing it) give each its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    backend = create_backend("fused", load_bundle(embedded_bundle_path("dymn04_edge")), threads=2)
    mel = log_mel(load_audio(demo_clip_path()))[None, None].astype(np.float32)
    for frames in range(100, 1001, 100):
        backend.infer(mel[..., :frames])
    assert list(backend._plans) == [700, 800, 900, 1000]
    inputs = [mel[..., :frames] for frames in (300, 1000, 500, 1000, 300, 800)]
    alone = [backend.infer(x) for x in inputs]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(backend.infer, inputs))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


def test_helper_threads_sleep_between_windows_and_a_forked_child_still_answers():
    """A plan keeps its helper threads across windows. Between windows they must block, not spin (an
    idle listener would burn a core), and a process forked after they started (which has none of
    them) must still get the same answer instead of waiting for them forever."""
    import os
    import signal

    bundle = load_bundle(embedded_bundle_path("mn04_as"))
    x = log_mel(load_audio(demo_clip_path()))[None, None].astype(np.float32)
    expected = create_backend("fused", bundle, threads=1).infer(x)
    backend = create_backend("fused", bundle, threads=2)
    np.testing.assert_array_equal(backend.infer(x), expected)
    assert next(iter(backend._plans.values()))._team  # the helpers exist and outlive the call
    before = os.times()
    time.sleep(1.0)
    after = os.times()
    assert (after.user + after.system) - (before.user + before.system) < 0.2
    pid = os.fork()
    if pid == 0:  # the child: no helper threads; exit status 0 only for the same logits
        # A child stuck in C waiting for helpers must die instead of hanging the suite: the default
        # action, since a Python handler (pytest-timeout's) never runs while the C code spins.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(30)
        os._exit(0 if np.array_equal(backend.infer(x), expected) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    np.testing.assert_array_equal(backend.infer(x), expected)


def test_the_same_logits_whichever_thread_runs_which_chunk():
    """Threads claim chunks of each block as they come, so who runs what changes from window to
    window (3 threads on this 2-core machine, more so). The time sums are kept per chunk and added in
    chunk order, so the logits of the trained dymn04_edge must not change at all between runs."""
    bundle = load_bundle(embedded_bundle_path("dymn04_edge"))
    x = log_mel(load_audio(demo_clip_path()))[None, None].astype(np.float32)
    for threads in (2, 3):
        backend = create_backend("fused", bundle, threads=threads)
        first = backend.infer(x)
        for _ in range(40):
            np.testing.assert_array_equal(backend.infer(x), first)


@pytest.mark.skipif("avx512" not in fused_module.runnable_builds(), reason="this CPU lacks AVX-512F: one x86 build only")
def test_the_avx2_and_avx512_builds_give_the_same_logits_bit_for_bit(monkeypatch):
    """The AVX-512 build tiles its GEMMs differently (16-float vectors, other tile heights), but each
    output is the same chain of FMAs, the frequency sums add rows in pairs whatever the tile, and
    the epilogue's BN scale is rounded on its own in both. So a model gives one answer on x86 with
    FMA, whichever build the CPU picks; windows of 10 s and 6.3 s (odd tile remainders)."""
    x = log_mel(load_audio(demo_clip_path()))[None, None].astype(np.float32)
    for name in ("dymn04_edge", "mn04_as"):
        bundle = load_bundle(embedded_bundle_path(name))
        logits = {}
        for variant in ("avx2", "avx512"):
            monkeypatch.setenv("DYMN_EDGE_FUSED_BUILD", variant)
            monkeypatch.setattr(fused_module, "_LIBRARY", None)
            for threads in (1, 2):
                backend = create_backend("fused", bundle, threads=threads)
                logits[variant, threads] = [backend.infer(x), backend.infer(x[..., :630])]
        monkeypatch.setattr(fused_module, "_LIBRARY", None)
        for threads in (1, 2):
            for a, b in zip(logits["avx2", threads], logits["avx512", threads]):
                assert np.abs(a).max() > 1.0  # real logits, not zeros
                np.testing.assert_array_equal(a, b, err_msg=f"{name}, {threads} threads")


def test_weights_and_workspace_start_on_cache_lines():
    """The C code's 8-float loads only stay within one cache line when every buffer starts on one:
    numpy's own 16-byte alignment left it about 9 % slower on half of the allocations."""
    backend = create_backend("fused", load_bundle(embedded_bundle_path("dymn04_edge")))
    backend.infer(log_mel(load_audio(demo_clip_path()))[None, None].astype(np.float32))
    plan = next(iter(backend._plans.values()))
    misaligned = [k for k, a in backend.weights.arrays.items() if a.dtype == np.float32 and a.ctypes.data % 64]
    assert misaligned == [] and plan.work.ctypes.data % 64 == 0
    for n in (1, 7, 1000):
        a = fused_module.aligned_empty((n, 3))
        assert a.shape == (n, 3) and a.dtype == np.float32 and a.ctypes.data % 64 == 0 and a.flags.c_contiguous


def test_listen_with_the_fused_backend_finds_the_same_events(shared, tmp_path):
    """`dymn-edge listen` on the ESC-50 mixture (2 s windows, 0.5 s hop): the same events, onsets and
    offsets as ONNX Runtime."""
    mixture = shared / "data" / "mixture" / "esc50_mixture_40s.flac"

    def events(backend):
        proc = subprocess.run([sys.executable, "-m", "dymn_edge", "listen", str(embedded_bundle_path("dymn04_edge")), "--input", str(mixture),
                               "--backend", backend, "--jsonl", "-"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert sum(r["type"] == "scores" for r in rows) == 80
        return [(r["label"], r["onset"], r["offset"]) for r in rows if r["type"] == "event"]

    fused = events("fused")
    assert len(fused) > 100 and fused == events("onnxruntime")


def test_openvino_ir_bundles_keep_fused_weights_only_in_fp32(tmp_path):
    pytest.importorskip("openvino", reason='OpenVINO not installed (pip install "dymn-edge[openvino]")')
    from dymn_edge.export.openvino import export_openvino

    source = load_bundle(embedded_bundle_path("dymn04_edge"))
    fp32 = export_openvino(source, tmp_path / "ov32")
    assert fp32.manifest["fused"] == source.manifest["fused"] and fp32.file("fused_weights") is not None
    x = log_mel(load_audio(demo_clip_path()))[None, None].astype(np.float32)
    np.testing.assert_array_equal(create_backend("fused", fp32).infer(x), create_backend("fused", source).infer(x))
    fp16 = export_openvino(source, tmp_path / "ov16", fp16=True)
    assert "fused" not in fp16.manifest and fp16.file("fused_weights") is None


@pytest.mark.parametrize("name, options", [("mn04", {"se_dims": "none"}), ("mn04", {"dilated": True}), ("mn10", {})])
def test_mn_variants_without_se_dilated_and_wide_match_pytorch(name, options, tmp_path):
    """Blocks without SE, the dilated tail (stride 1, dilation 2) and the full width, on random BN
    statistics and a louder classifier, so that the logits are far from EfficientAT's near-zero init."""
    torch.manual_seed(0)
    model = create_model(name, **options).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5), m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.1, 0.1)
        model.classifier[2].weight.mul_(10), model.classifier[5].weight.mul_(100)
    assert unsupported_reason(model) is None
    weights = write_fused(model, tmp_path)
    x = log_mel(load_audio(demo_clip_path()))[None, None, :, :400].astype(np.float32)
    expected = _torch_logits(model, x)
    assert np.abs(expected).max() > 1.0
    for threads in (1, 2):
        assert np.abs(FusedBackend(weights, n_mels=128, threads=threads).infer(x) - expected).max() < ATOL
