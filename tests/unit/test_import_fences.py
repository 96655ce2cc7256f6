"""Import fences: the event schema loads without Redis or faiss (producers in other services
import it), and only the private RESP module reaches into redis-py's parsers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_LAUNCHER = re.compile(r"^\s*(?:from|import) ledrec\.deploy\b", re.M)


def test_the_event_schema_imports_neither_redis_nor_faiss() -> None:
    code = (
        "import sys, ledrec.stream.events\n"
        "print(sorted(m for m in ('redis', 'faiss', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.strip()
    assert "redis" not in loaded and "faiss" not in loaded, loaded


def test_only_the_resp_module_imports_redis_parsers() -> None:
    users = [
        p.relative_to(ROOT).as_posix()
        for folder in ("stream", "training", "deploy", "ledrec", "benchmarks")
        for p in (ROOT / folder).rglob("*.py")
        if "redis._parsers" in p.read_text() and not p.is_symlink()
    ]
    assert users == ["stream/_resp.py"]


def test_the_runtime_does_not_import_the_dev_launcher() -> None:
    """Services, clients and training find servers through ledrec.connect; only the commands
    that start a local stack (``ledrec stack``, the demo) use ledrec.deploy."""
    users = sorted(
        p.relative_to(ROOT).as_posix()
        for folder in ("stream", "training", "ledrec")
        for p in (ROOT / folder).rglob("*.py")
        if _LAUNCHER.search(p.read_text()) and not p.is_symlink()
    )
    assert users == ["ledrec/cli.py", "ledrec/demo.py"], users
    cli = (ROOT / "ledrec" / "cli.py").read_text()
    assert len(_LAUNCHER.findall(cli)) == 1  # cmd_stack's import
