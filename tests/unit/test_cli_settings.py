"""Flags that name paths reach the settings validated, so a job saves where it was told."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ledrec.cli import _settings, build_parser, main


def _train(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ledrec.cli", *flags, "train", "--svd-only", "--dim", "8"]
    cmd += ["--synthetic-users", "3000", "--synthetic-items", "200"]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flag", ["--home", "--model-store"])
def test_train_saves_into_the_folder_the_flag_names(tmp_path: Path, flag: str) -> None:
    target = tmp_path / "chosen"
    out = _train(tmp_path, flag, str(target))
    assert out.returncode == 0, out.stderr[-2000:]
    manifests = list(target.rglob("manifest.json"))
    assert len(manifests) == 1, (out.stdout, sorted(target.rglob("*")))
    assert not (tmp_path / ".ledrec").exists()  # not the default home


def test_flags_are_validated_like_the_environment(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--home", str(tmp_path), "--model-store", "m", "train"])
    settings = _settings(args)
    assert settings.home == tmp_path and settings.model_store_path == Path("m")


def test_n_heldout_too_large_for_the_data_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--home", str(tmp_path), "train", "--svd-only", "--dim", "8"]
    argv += ["--synthetic-users", "3000", "--synthetic-items", "200", "--n-heldout", "2000"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--n-heldout 2000" in err and len(err.strip().splitlines()) == 1
