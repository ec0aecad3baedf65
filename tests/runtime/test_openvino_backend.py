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
