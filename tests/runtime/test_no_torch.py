"""The runtime, and `dymn-edge tag` on a bundle, must work on a device with no torch at all.

Each check runs in a fresh interpreter with an import hook that makes ``import torch`` fail, as on
a device where torch is not installed, and asserts torch never entered ``sys.modules``.
"""

import json
import subprocess
import sys

import pytest

from dymn_edge.runtime.registry import demo_clip_path

BLOCK_TORCH = """
import sys, importlib.abc
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


def _run(code, tmp_path):
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_every_runtime_module_imports_without_torch(tmp_path):
    code = """
import pkgutil, importlib, dymn_edge.runtime as rt
names = [m.name for m in pkgutil.walk_packages(rt.__path__, "dymn_edge.runtime.")]
for name in names:
    if name.endswith(".openvino"):
        continue  # optional extra, imported lazily by the backend factory
    importlib.import_module(name)
assert "torch" not in sys.modules
print(len(names))
"""
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 12


def _tag_without_torch(tmp_path, *args, check: str = "") -> dict:
    """`dymn-edge tag --json ARGS demo.flac` in an interpreter where torch cannot be imported; its JSON.
    ``check``: more Python run in that interpreter after the command."""
    argv = ["dymn-edge", "tag", "--json", *args, str(demo_clip_path())]
    code = f"""
from dymn_edge.cli import main
sys.argv = {argv!r}
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
assert "torch" not in sys.modules
{check}
"""
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_tag_on_the_embedded_bundle_runs_without_torch(tmp_path, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason='OpenVINO not installed (pip install "dymn-edge[openvino]")')
    result = _tag_without_torch(tmp_path, "--backend", backend)
    assert result["model"] == "mn04_as"
    assert result["tags"][0]["label"] == "Whale vocalization" and result["tags"][0]["score"] > 0.8


def test_tag_on_a_local_model_leaves_the_download_code_unloaded(tmp_path):
    """http, ssl and rich's progress bars cost a tagging process ~5 MB of peak RSS (dymn10 hybrid,
    142.0 -> 137.0 MB); only a registry name that is not embedded needs them."""
    check = """
loaded = sorted({"dymn_edge.runtime.hub", "http.client", "ssl", "rich.progress"} & set(sys.modules))
assert not loaded, loaded
"""
    assert _tag_without_torch(tmp_path, check=check)["tags"][0]["label"] == "Whale vocalization"


def test_tag_with_the_fused_backend_runs_without_torch(tmp_path):
    """The embedded dymn04_edge on the fused C kernels, torch blocked: the same tags as ONNX Runtime."""
    fused = _tag_without_torch(tmp_path, "-m", "dymn04_edge", "--backend", "fused")
    # ONNX Runtime runs the bundle's model.nchwc.onnx; loading it needs neither the onnx package
    # nor the module that wrote it.
    check = """
loaded = sorted({"onnx", "dymn_edge.runtime.nchwc"} & set(sys.modules))
assert not loaded, loaded
"""
    onnx = _tag_without_torch(tmp_path, "-m", "dymn04_edge", "--backend", "onnxruntime", check=check)
    assert [t["label"] for t in fused["tags"]] == [t["label"] for t in onnx["tags"]]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(fused["tags"], onnx["tags"])) < 1e-4


def test_torch_backend_without_torch_says_how_to_install(tmp_path):
    code = f"""
from dymn_edge.cli import main
sys.argv = ["dymn-edge", "tag", "--backend", "torch", {str(demo_clip_path())!r}]
main()
"""
    proc = _run(code, tmp_path)
    assert proc.returncode == 1
    assert "needs PyTorch: pip install" in proc.stderr and "Traceback" not in proc.stderr
