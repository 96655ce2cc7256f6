"""``ledrec demo`` end to end, as ``make demo`` runs it, on a small MovieLens-format directory
(synthetic clicks, latin-1 titles): online == offline, every quality figure names the users
it was measured on, no ``nan``, and one test user's clicks and recommendations by title."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ledrec.training.synthetic import SyntheticConfig, synthetic_interactions


def _movielens_dir(root: Path) -> Path:
    """ratings.dat (every synthetic view a 5: a click) and movies.dat, as in ML-1M."""
    data = synthetic_interactions(SyntheticConfig(n_users=2000, n_items=150, n_events=100_000))
    views = data.views.tocoo()
    pairs = zip(views.row.tolist(), views.col.tolist(), strict=True)
    lines = [f"{u + 1}::{i + 1}::5::0" for u, i in pairs]
    root.mkdir()
    (root / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    movies = [f"{i + 1}::Film n°{i + 1} (Café)::Drama" for i in range(data.n_items)]
    (root / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    return root


def test_the_demo_shows_titles_and_labels_every_figure(tmp_path: Path) -> None:
    movielens = _movielens_dir(tmp_path / "ml")
    run = subprocess.run(
        [sys.executable, "-m", "ledrec.cli", "demo", "--movielens", str(movielens),
         "--users", "40", "--dim", "16"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    assert "online == offline: yes" in out
    assert not re.search(r"\bnan\b", out, re.I), out
    assert re.search(r"published \S+: validation recall@20 [\d.]+, .*; test recall@20 ", out)
    assert re.search(r"validation {7}Recall@20 [\d.]+", out)
    assert re.search(r"test Recall@20 {3}online [\d.]+ {3}offline [\d.]+", out)
    assert "150 titles in Redis" in out
    example = out[out.index("one test user") :]
    assert "the last 5 of their" in example
    assert len(re.findall(r"^ {23}Film n°\d+ \(Café\)$", example, re.M)) == 5
    assert len(re.findall(r"^ {17}[* ] {1,2}\d+\. Film n°\d+ \(Café\)$", example, re.M)) == 10
