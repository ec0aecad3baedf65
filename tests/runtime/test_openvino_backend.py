"""OpenVINO backend: FP32 parity with ONNX Runtime on real audio, device errors."""

import numpy as np
import pytest

from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.errors import BackendUnavailableError
from dymn_edge.runtime.registry import embedded_bundle_path
from dymn_edge.runtime.tagging import Tagger

pytestmark = pytest.mark.openvino
ov = pytest.importorskip("openvino", reason='OpenVINO not installed (pip install "dymn-edge[openvino]")')


def test_openvino_matches_onnxruntime_in_fp32(fixtures_dir):
    """On CPUs with native bf16 OpenVINO would compute in bf16 unless told otherwise (~3e-2 off)."""
    bundle = load_bundle(embedded_bundle_path())
    path = fixtures_dir / "metro_station-paris.wav"
    ov_result = Tagger.from_bundle(bundle, "openvino", threads=1).tag_file(path)
    ort_result = Tagger.from_bundle(bundle, "onnxruntime", threads=1).tag_file(path)
    assert np.abs(ov_result.scores - ort_result.scores).max() < 1e-4
    assert [t.index for t in ov_result.tags] == [t.index for t in ort_result.tags]
    assert ov_result.tags[0].label == "Train"


def test_unknown_device_lists_the_available_ones():
    bundle = load_bundle(embedded_bundle_path())
    with pytest.raises(BackendUnavailableError, match=r"OpenVINO device 'NPU7' not available; this machine has \["):
        Tagger.from_bundle(bundle, "openvino", device="NPU7")


def test_full_windows_run_compiled_for_their_shape_and_other_lengths_share_one_model(fixtures_dir):
    """Full windows (the bundle's 10 s) get a compilation for their exact shape, which OpenVINO's
    CPU plugin runs faster; shorter ones share the dynamic model, so a stream's growing first
    windows do not compile one model each. Every path matches ONNX Runtime."""
    from dymn_edge.runtime.audio import load_audio
    from dymn_edge.runtime.backends import create_backend
    from dymn_edge.runtime.frontend import log_mel

    bundle = load_bundle(embedded_bundle_path())
    backend = create_backend("openvino", bundle, threads=1)
    reference = create_backend("onnxruntime", bundle, threads=1)
    assert backend.input_shape[3] is None and backend.static_frames == 1000
    mel = log_mel(load_audio(fixtures_dir / "metro_station-paris.wav", bundle.frontend.sample_rate_hz), bundle.frontend)
    full = np.ascontiguousarray(mel[None, None, :, :1000], dtype=np.float32)
    assert full.shape[3] == 1000

    def check(x):
        assert np.abs(backend.infer(x) - reference.infer(x)).max() < 1e-4, x.shape

    for frames in (100, 300, 500):
        check(full[..., :frames])
    assert not backend._static and backend._as_written is not None
    shared = backend._as_written
    check(full)
    assert list(backend._static) == [(1, 1, 128, 1000)]
    for batch in (2, 3, 4, 5):  # the embedded model's batch axis is dynamic too
        check(np.repeat(full, batch, axis=0))
    assert list(backend._static) == [(b, 1, 128, 1000) for b in (2, 3, 4, 5)]  # the oldest dropped
    check(full[..., :700])
    assert backend._as_written is shared
