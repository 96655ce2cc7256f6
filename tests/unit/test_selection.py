"""Model selection: ``run_train`` publishes the candidate with the best validation NDCG@100,
SVD-only included, and says in the manifest which one it chose and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ledrec.training.finetune as finetune_module
from ledrec.stream.artifact import load_model
from ledrec.training.evaluate import evaluate_scores, led_score_fn
from ledrec.training.finetune import FinetuneConfig, FinetuneResult
from ledrec.training.jobs import PretrainConfig, TrainConfig, run_train
from ledrec.training.selection import Candidate, choose, selection_record, step_floor
from ledrec.training.split import Split
from ledrec.training.synthetic import SyntheticConfig, synthetic_interactions

WORLD = SyntheticConfig(n_users=1500, n_items=200, n_events=40_000, click_in_taste=0.8, seed=1)


def _candidate(name: str, ndcg: float) -> Candidate:
    return Candidate(
        name, np.zeros((2, 1), np.float32), np.zeros(2, np.float32), {"ndcg@100": ndcg}
    )


def test_choose_takes_the_best_validation_and_keeps_the_simpler_on_a_tie() -> None:
    svd, tuned = _candidate("svd_only", 0.342), _candidate("css/train/svd", 0.319)
    assert choose([svd, tuned]) is svd
    assert choose([svd, _candidate("css/train/svd", 0.35)]).name == "css/train/svd"
    assert choose([svd, _candidate("css/train/svd", 0.342)]) is svd
    record = selection_record(svd, [svd, tuned], {"svd_only": {"recall@20": 0.261}})
    assert record["chosen"] == "svd_only" and "0.3420 vs css/train/svd 0.3190" in record["reason"]
    assert record["candidates"]["svd_only"]["test"] == {"recall@20": 0.261}
    with pytest.raises(ValueError):
        choose([])


def test_run_train_publishes_svd_only_when_it_validates_better(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def worse_finetune(split: Split, config: FinetuneConfig, init: Any, *_: Any) -> FinetuneResult:
        # a fine-tuning that learned nothing: random embeddings, popularity-free biases
        rng = np.random.default_rng(0)
        emb = rng.standard_normal((split.train_clicks.shape[1], config.dim)).astype(np.float32)
        biases = np.zeros(emb.shape[0], np.float32)
        val = evaluate_scores(led_score_fn(emb, biases), split.val_in, split.val_out)
        return FinetuneResult(emb, biases, val, 0.0, [{"epoch": 0.0, **val}])

    monkeypatch.setattr(finetune_module, "finetune", worse_finetune)
    config = TrainConfig(PretrainConfig(dim=8, min_count=1), FinetuneConfig(dim=8), n_heldout=150)
    lines: list[str] = []
    model = load_model(
        run_train(synthetic_interactions(WORLD), tmp_path, config, progress=lines.append)
    )

    selection = model.provenance["selection"]
    assert selection["chosen"] == "svd_only" and selection["metric"] == "ndcg@100"
    svd, tuned = selection["candidates"]["svd_only"], selection["candidates"]["css/train/svd"]
    assert svd["validation"]["ndcg@100"] > tuned["validation"]["ndcg@100"]
    # the published figures are the chosen candidate's, validation and test
    assert model.metrics["ndcg@100"] == pytest.approx(svd["validation"]["ndcg@100"])
    assert model.metrics["test_recall@20"] == pytest.approx(svd["test"]["recall@20"])
    assert svd["scale"] == model.provenance["zero_shot_scale"]
    assert any("s  selected svd_only: best validation ndcg@100" in line for line in lines)


def test_step_floor_scales_epochs_and_patience_only_on_small_data() -> None:
    config = FinetuneConfig()  # 40 epochs, patience 4, batch 512
    assert step_floor(config, 4840, 400) == config  # ML-1M: 10 steps an epoch already
    small = step_floor(config, 484, 400)  # one step an epoch
    assert (small.epochs, small.patience) == (400, 40)
    assert step_floor(config, 484, 0) == config
