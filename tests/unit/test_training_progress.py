"""The training progress lines, as ``ledrec train`` and the demo print them: no ``nan``
(epoch 0 is the initial model and has no training loss), and every quality figure says
whether validation or test users measured it."""

from __future__ import annotations

import math
import re
from pathlib import Path

from ledrec.training.finetune import FinetuneConfig, finetune
from ledrec.training.jobs import PretrainConfig, TrainConfig, run_train
from ledrec.training.split import strong_generalization_split
from ledrec.training.synthetic import SyntheticConfig, synthetic_interactions

WORLD = SyntheticConfig(n_users=1500, n_items=200, n_events=40_000, click_in_taste=0.8, seed=1)


def test_progress_lines_carry_no_nan_and_name_the_users_measured(tmp_path: Path) -> None:
    data = synthetic_interactions(WORLD)
    tuning = FinetuneConfig(dim=8, epochs=2, batch_size=128, n_negatives=20, patience=5)
    config = TrainConfig(PretrainConfig(dim=8, min_count=1), tuning, n_heldout=150)
    lines: list[str] = []
    run_train(data, tmp_path, config, progress=lines.append)

    assert lines and not [line for line in lines if re.search(r"\bnan\b", line, re.I)], lines
    epochs = [line for line in lines if "  epoch " in line]
    assert len(epochs) == 3 and "initial model" in epochs[0] and "loss" not in epochs[0]
    assert all("loss " in line for line in epochs[1:])
    (published,) = [line for line in lines if " published " in line]
    assert "validation recall@20 " in published and "; test recall@20 " in published


def test_the_history_has_a_loss_from_epoch_1() -> None:
    split = strong_generalization_split(synthetic_interactions(WORLD), n_heldout=150, seed=0)
    config = FinetuneConfig(init="random", dim=8, epochs=2, batch_size=128, n_negatives=20)
    history = finetune(split, config, None).history
    assert "loss" not in history[0]
    assert all(math.isfinite(h["loss"]) for h in history[1:])
