"""The installable wheel holds every module of the source tree, under the fedlora namespace
only (an editable install would hide a package missing from pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"server": "server", "client": "client", "common": "common", "proto": "proto", "deploy": "deploy",
           "methods": "methods"}


def test_wheel_contains_every_module_and_nothing_outside_fedlora(tmp_path):
    src = tmp_path / "src"  # a clean copy: setuptools' build/ folder would mask a missing package
    for folder in [*FOLDERS.values()]:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    wheel = next(tmp_path.glob("fedlora-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"fedlora/{pkg}/{f.relative_to(ROOT / folder)}" for pkg, folder in FOLDERS.items()
            for f in (ROOT / folder).rglob("*.py")}
    assert sorted(want - names) == []
    top = {n.split("/")[0] for n in names if not n.startswith("fedlora-")}
    assert top == {"fedlora"}
    assert "fedlora/deploy/demo.yaml" in names and "fedlora/proto/v1/fedlora.proto" in names
