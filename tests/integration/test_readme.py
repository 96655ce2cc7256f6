"""The README's Python blocks run as written, as a newcomer would run them: after `ledrec
stack up` (a real redis-server and broker on free ports), a trained and activated model,
and a consumer and a scorer started from the CLI. Nothing is configured but the home."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.readme


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def _newcomer_env(home: Path) -> dict[str, str]:
    """This environment without any ledrec setting, but the home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDREC_")}
    env.pop("KAFKA_BOOTSTRAP", None)
    env.pop("REDIS_URL", None)
    return {**env, "LEDREC_HOME": str(home)}


def _cli(home: Path, *args: str, timeout: float = 300) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "ledrec.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=_newcomer_env(home),
    )  # fmt: skip
    assert out.returncode == 0, f"ledrec {' '.join(args)}: {out.stderr[-2000:]}"
    return out.stdout


def test_the_readme_python_blocks_run_against_a_local_stack(tmp_path: Path) -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has no Python block"
    home = tmp_path / "home"
    _cli(home, "stack", "up", timeout=120)
    services: list[subprocess.Popen[bytes]] = []
    try:
        _cli(home, "train", "--activate", "--svd-only", "--dim", "16",
             "--synthetic-users", "3000", "--synthetic-items", "300")  # fmt: skip
        for role in ("consume", "serve"):
            log = open(tmp_path / f"{role}.log", "wb")  # noqa: SIM115  # closed with the process
            services.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ledrec.cli", role],
                    stdout=log,
                    stderr=log,
                    env=_newcomer_env(home),
                )
            )
        time.sleep(2.0)  # the scorer loads the active model
        active = re.search(r"(\S+)\s+active\s", _cli(home, "models", "list"))
        assert active is not None
        for code in blocks:
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                cwd=tmp_path, env=_newcomer_env(home),
            )  # fmt: skip
            assert out.returncode == 0, out.stderr[-3000:]
            assert out.stdout.split()[0] == active.group(1), out.stdout  # answered by the model
    finally:
        for proc in services:
            proc.terminate()
            proc.wait(timeout=20)
        _cli(home, "stack", "down", timeout=60)
