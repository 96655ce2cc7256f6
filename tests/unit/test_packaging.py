"""The wheel built from the tree: one top-level package, typed, with every source module."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_one_typed_package_with_every_module(tmp_path: Path) -> None:
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    source = tmp_path / "src"
    skip = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, ignore=skip, symlinks=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("ledrec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "ledrec"
    }
    assert "ledrec/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    for folder in ("stream", "training", "deploy"):
        for source in (ROOT / folder).rglob("*.py"):
            installed = f"ledrec/{source.relative_to(ROOT).as_posix()}"
            assert installed in names, installed
