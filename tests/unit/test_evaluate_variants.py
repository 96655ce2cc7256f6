"""``ledrec evaluate --variants``: the default LED rows (Train and Project on the SVD
embeddings) against the whole grid, and the weak protocol refusing the flag."""

import json
from pathlib import Path

import pytest

from ledrec.cli import main
from ledrec.training.jobs import default_finetune_configs, headline_finetune_configs


def test_headline_rows_are_the_default_model_and_its_projection() -> None:
    rows = {(c.loss, c.variant, c.init) for c in headline_finetune_configs(8, 0)}
    assert rows == {("css", "train", "svd"), ("css", "proj", "svd")}
    grid = {(c.loss, c.variant, c.init) for c in default_finetune_configs(8, 0)}
    assert rows < grid  # the default rows are a part of the whole table


def test_cli_default_evaluate_trains_train_and_proj_only(tmp_path: Path) -> None:
    out = tmp_path / "strong"
    argv = ["evaluate", "--dim", "8", "--epochs", "1", "--out", str(out)]
    assert main([*argv, "--synthetic-users", "600", "--synthetic-items", "100"]) == 0
    report = json.loads((out / "report.json").read_text())
    led = [(r["loss"], r["variant"]) for r in report["rows"] if r["model"] == "LED"]
    assert led == [("", "SVD-only"), ("css", "Train"), ("css", "Proj")]
    assert report["scarce_rows"] == []
    assert [r["model"] for r in report["rows"][:3]] == ["Popularity", "EASE", "Item-kNN"]


def test_cli_weak_protocol_refuses_variants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--protocol", "weak", "--variants", "all"]) == 1
    err = capsys.readouterr().err
    assert "--variants" in err and len(err.strip().splitlines()) == 1
