"""``ledrec evaluate --variants``: the default LED rows (Train and Project on the SVD
embeddings) against the whole grid, and the weak protocol refusing the flag; fine-tunings
side by side in processes give what they give one after the other."""

import json
from pathlib import Path

import numpy as np
import pytest

from ledrec.cli import main
from ledrec.training.finetune import FinetuneConfig
from ledrec.training.jobs import default_finetune_configs, headline_finetune_configs
from ledrec.training.parallel import FinetuneTask, finetune_many
from ledrec.training.split import strong_generalization_split
from ledrec.training.synthetic import SyntheticConfig, synthetic_interactions


def test_headline_rows_are_the_default_model_and_its_projection() -> None:
    rows = {(c.loss, c.variant, c.init) for c in headline_finetune_configs(8, 0)}
    assert rows == {("css", "train", "svd"), ("css", "proj", "svd")}
    grid = {(c.loss, c.variant, c.init) for c in default_finetune_configs(8, 0)}
    assert rows < grid  # the default rows are a part of the whole table


def test_cli_default_evaluate_trains_train_and_proj_only(tmp_path: Path) -> None:
    out = tmp_path / "strong"
    argv = ["evaluate", "--dim", "8", "--epochs", "1", "--workers", "1", "--out", str(out)]
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


def test_fine_tunings_in_processes_match_one_after_the_other() -> None:
    data = synthetic_interactions(SyntheticConfig(n_users=600, n_items=80, seed=0))
    split = strong_generalization_split(data, n_heldout=50, seed=0)
    tasks = [
        FinetuneTask(loss, split, FinetuneConfig(loss=loss, init="random", dim=8, epochs=2), None)
        for loss in ("css", "bpr")
    ]
    here, apart = finetune_many(tasks, workers=1), finetune_many(tasks, workers=2)
    for a, b in zip(here, apart, strict=True):
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
        assert a.val_metrics == b.val_metrics
    assert not np.array_equal(here[0].embeddings, here[1].embeddings)  # two different runs


def test_cli_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--workers", "0"])
    assert "--workers" in capsys.readouterr().err
