"""``ledrec train --variant both``: Train and Project are both fine-tuned and judged on the
same validation users; the manifest says which was published and why."""

from __future__ import annotations

import json
from pathlib import Path

from ledrec.cli import main


def test_variant_both_selects_between_train_and_proj(tmp_path: Path) -> None:
    argv = ["--home", str(tmp_path), "train", "--variant", "both", "--dim", "8"]
    argv += ["--epochs", "2", "--synthetic-users", "1500", "--synthetic-items", "150"]
    assert main(argv) == 0
    (manifest,) = tmp_path.rglob("manifest.json")
    selection = json.loads(manifest.read_text())["provenance"]["selection"]
    assert set(selection["candidates"]) == {"svd_only", "css/train/svd", "css/proj/svd"}
    best = max(
        selection["candidates"], key=lambda c: selection["candidates"][c]["validation"]["ndcg@100"]
    )
    assert selection["chosen"] == best
