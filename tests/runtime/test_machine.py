"""Machine descriptions for benchmark records."""

import sys

from dymn_edge.runtime.machine import machine_info


def test_machine_info_describes_cpu_and_versions_without_torch():
    had_torch = "torch" in sys.modules
    info = machine_info()
    assert info["cores"] >= 1 and info["cpu"] and info["python"].count(".") == 2
    assert info["numpy"] and info["onnxruntime"]
    assert ("torch" in sys.modules) == had_torch
