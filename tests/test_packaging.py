"""The wheel a user installs holds every module and asset of the checkout.

An editable install reads the source tree, so a file that ``package_data`` forgets works in
development and is missing from ``pip install .`` (the demo clip was, until this test).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = {"cli": "dymn_edge", "runtime": "dymn_edge/runtime", "train": "dymn_edge/train", "export": "dymn_edge/export",
         "calibration": "dymn_edge/calibration"}


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", *PARTS], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    return out.stdout.split()


def _in_wheel(path: str) -> str:
    top, rest = path.split("/", 1)
    return f"{PARTS[top]}/{rest}"


def test_wheel_holds_every_module_and_asset(tmp_path):
    # Build from a copy of the tracked files: setuptools reuses a build/ folder, which may hold
    # files that the current package_data would no longer collect.
    tracked = _tracked()
    source = tmp_path / "src"
    for path in tracked + ["setup.py", "README.md"]:
        if (REPO / path).is_file():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, source / path)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("dymn_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [p for p in tracked if p.endswith(".py") or "/assets/" in p]
    assert any(p.endswith("humpback_whale.flac") for p in wanted)
    missing = [p for p in wanted if _in_wheel(p) not in names]
    assert not missing, f"{len(missing)} tracked file(s) missing from {wheel.name}: {missing[:10]}"
