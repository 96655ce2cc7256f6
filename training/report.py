"""The evaluation jobs' reports on disk: ``report.json`` (every figure) and ``report.md``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_report(
    report: dict[str, Any], out_dir: Path, render: Callable[[dict[str, Any]], str]
) -> None:
    """``report`` as ``out_dir/report.json`` and, rendered, ``out_dir/report.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    (out_dir / "report.md").write_text(render(report))


def metric_label(name: str) -> str:
    """``recall@20`` → ``Recall@20``: a metric's name in a table header."""
    return name.replace("recall", "Recall").replace("ndcg", "NDCG")
