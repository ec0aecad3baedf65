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


def test_each_window_length_gets_its_own_static_compilation_and_the_same_logits(fixtures_dir):
    """The embedded bundle has a dynamic frame axis; OpenVINO compiles per concrete shape (a
    static shape runs faster on its CPU plugin) and keeps only the last few."""
    from dymn_edge.runtime.backends import create_backend
    from dymn_edge.runtime.frontend import log_mel
    from dymn_edge.runtime.audio import load_audio

    bundle = load_bundle(embedded_bundle_path())
    backend = create_backend("openvino", bundle, threads=1)
    reference = create_backend("onnxruntime", bundle, threads=1)
    assert backend.input_shape[3] is None
    mel = log_mel(load_audio(fixtures_dir / "metro_station-paris.wav", bundle.frontend.sample_rate_hz), bundle.frontend)
    lengths = [1000, 500, 300, 200, 100]
    for frames in lengths:
        x = np.ascontiguousarray(mel[None, None, :, :frames], dtype=np.float32)
        assert np.abs(backend.infer(x) - reference.infer(x)).max() < 1e-4, frames
    assert list(backend._requests) == [(1, 1, bundle.frontend.n_mels, f) for f in lengths[-backend.max_shapes:]]
    x = np.ascontiguousarray(mel[None, None, :, :1000], dtype=np.float32)  # recompiled after eviction
    assert np.abs(backend.infer(x) - reference.infer(x)).max() < 1e-4
    assert len(backend._requests) == backend.max_shapes
