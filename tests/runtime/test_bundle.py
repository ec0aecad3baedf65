"""Bundle format: the embedded bundle validates; tampered, incomplete or malformed bundles are refused."""

import json
import shutil

import pytest

from dymn_edge.runtime.bundle import FORMAT_VERSION, derived_metadata, is_bundle, load_bundle, write_bundle
from dymn_edge.runtime.errors import BundleError, ChecksumError
from dymn_edge.runtime.labels import LabelSet
from dymn_edge.runtime.registry import embedded_bundle_path


@pytest.fixture
def bundle_copy(tmp_path):
    dest = tmp_path / "mn04_as"
    shutil.copytree(embedded_bundle_path(), dest)
    return dest


def _edit_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_embedded_bundle_is_valid_and_describes_mn04(shared):
    bundle = load_bundle(embedded_bundle_path())
    assert (bundle.name, bundle.family, bundle.width, bundle.num_classes) == ("mn04_as", "mn", 0.4, 527)
    assert bundle.precision == "fp32" and bundle.window_s == 10.0
    assert bundle.frontend.sample_rate_hz == 32000 and bundle.frontend.n_mels == 128
    assert len(bundle.labels) == 527 and bundle.labels[0].name == "Speech"
    # The shipped checkpoint is byte-identical to the official release (sha256 from shared/weights/MANIFEST.md).
    assert bundle.manifest["files"]["model.pt"]["sha256"] == "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"
    assert bundle.manifest["source"]["sha256"] == bundle.manifest["files"]["model.pt"]["sha256"]
    assert bundle.manifest["parity"]["max_abs_logit_diff"] < 1e-4


def test_tampered_payload_is_refused(bundle_copy):
    data = bytearray((bundle_copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"model\.onnx: sha256 mismatch: manifest says [0-9a-f]{64}, file has [0-9a-f]{64}"):
        load_bundle(bundle_copy)


def test_truncated_payload_is_refused_by_size(bundle_copy):
    data = (bundle_copy / "labels.csv").read_bytes()
    (bundle_copy / "labels.csv").write_bytes(data[:-10])
    with pytest.raises(ChecksumError, match="labels.csv: size"):
        load_bundle(bundle_copy)


def test_missing_payload_is_incomplete(bundle_copy):
    (bundle_copy / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"incomplete bundle: model\.pt \(checkpoint\) is listed in the manifest but missing"):
        load_bundle(bundle_copy)


def test_missing_or_broken_manifest(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="not a bundle folder"):
        load_bundle(tmp_path / "nope")
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(bundle_copy)
    assert not is_bundle(bundle_copy)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "something-else"}, "'format' is 'something-else'"),
        ({"format_version": FORMAT_VERSION + 1}, "written by a newer dymn-edge"),
        ({"num_classes": None}, "lacks required key 'num_classes'"),
        ({"width": "wide"}, "'width' must be int/float"),
        ({"precision": "int4"}, "precision 'int4' is not one of"),
        ({"frontend": {"n_mels": 128, "bogus": 1}}, "invalid 'frontend'"),
        ({"num_classes": 50}, "labels.csv has 527 classes; manifest says 50"),
    ],
)
def test_invalid_manifest_fields(bundle_copy, changes, message):
    _edit_manifest(bundle_copy, **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_a_fused_record_without_its_file_is_refused(bundle_copy):
    """A derived bundle that leaves model.fused.npz behind must drop its manifest record too."""
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    assert manifest["fused"]["included"]
    del manifest["files"]["model.fused.npz"]
    (bundle_copy / "model.fused.npz").unlink()
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'fused' says 'model.fused.npz' is included, but no file has role 'fused_weights'"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"../model.onnx": {"sha256": "0" * 64, "bytes": 1, "role": "onnx"}}, "must be a plain name"),
        ({"model.onnx": {"sha256": "0" * 64, "bytes": 1, "role": "weights"}}, "unknown role 'weights'"),
        ({"labels.csv": {"sha256": "0" * 64, "bytes": 1, "role": "labels"}}, "lists no model file"),
        ({"model.onnx": {"role": "onnx"}}, "must have 'sha256', 'bytes' and 'role'"),
    ],
)
def test_invalid_file_entries(bundle_copy, files, message):
    _edit_manifest(bundle_copy, files=files)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_write_bundle_is_atomic_and_refuses_to_clobber(bundle_copy, tmp_path):
    source = load_bundle(bundle_copy)
    meta = derived_metadata(source.manifest)
    assert "fused" in source.manifest and "fused" not in meta and "files" not in meta
    assert derived_metadata(source.manifest, drop=("lint",), keep_fused=True)["fused"] == source.manifest["fused"]
    files = {"model.onnx": (bundle_copy / "model.onnx", "onnx")}
    dest = tmp_path / "out"
    written = write_bundle(dest, files, meta, labels=source.labels)
    assert set(written.manifest["files"]) == {"model.onnx", "labels.csv"}
    assert oct(dest.stat().st_mode & 0o777) == "0o755"
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(dest, files, meta)
    write_bundle(dest, files, meta, labels=LabelSet.placeholder(527), overwrite=True)
    assert load_bundle(dest).labels[3].name == "class_3"
    (tmp_path / "plain").mkdir()
    with pytest.raises(BundleError, match="is not a bundle; refusing to replace it"):
        write_bundle(tmp_path / "plain", files, meta, overwrite=True)
    # a failed write leaves nothing behind
    with pytest.raises(BundleError):
        write_bundle(tmp_path / "bad", files, {**meta, "precision": "int4"})
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*"))


def test_update_manifest_records_findings_but_never_the_payload(bundle_copy):
    from dymn_edge.runtime.bundle import update_manifest

    updated = update_manifest(load_bundle(bundle_copy), {"lint": {"onnxruntime": {"passed": True}}})
    assert load_bundle(bundle_copy).manifest["lint"] == {"onnxruntime": {"passed": True}} == updated.manifest["lint"]
    for key in ("files", "format", "format_version"):
        with pytest.raises(BundleError, match=f"manifest keys \\['{key}'\\] describe the payload"):
            update_manifest(load_bundle(bundle_copy), {key: {}})


def test_int8_source_the_bundle_does_not_hold_is_named(bundle_copy):
    """An auto bundle records the file INT8 calibration starts from; a name it does not hold is an error, not a crash later."""
    _edit_manifest(bundle_copy, strategy_choice={"int8": {"strategy": "grouped", "file": "model.openvino.onnx"}})
    bundle = load_bundle(bundle_copy)
    with pytest.raises(BundleError, match=r"strategy_choice\.int8 names 'model\.openvino\.onnx', which the bundle does not hold .*model\.onnx"):
        bundle.int8_source("onnxruntime")
    _edit_manifest(bundle_copy, strategy_choice={"int8": {"strategy": "grouped", "file": "model.onnx"}})
    assert load_bundle(bundle_copy).int8_source("openvino") == (bundle_copy / "model.onnx", "grouped")
