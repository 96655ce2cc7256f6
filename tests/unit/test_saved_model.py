"""``ledrec evaluate --model V``: a saved version scored offline, as in-process evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from ledrec.cli import main
from ledrec.stream.artifact import Model, load_model
from ledrec.training.evaluate import evaluate_scores, led_score_fn, recall_at_k
from ledrec.training.saved_model import catalog_score_fn
from ledrec.training.split import default_n_heldout, strong_generalization_split
from ledrec.training.synthetic import (
    SyntheticConfig,
    synthetic_interactions,
    synthetic_timed_events,
)
from ledrec.training.time_protocol import time_metrics, time_split
from ledrec.training.weak_protocol import split_one_source, weak_metrics

DATA = ["--synthetic-users", "600", "--synthetic-items", "100"]
CONFIG = SyntheticConfig(n_users=600, n_items=100)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Model]:
    """A tiny version trained by ``ledrec train`` into a model store."""
    home = tmp_path_factory.mktemp("home")
    assert main(["--home", str(home), "train", "--svd-only", "--dim", "8", *DATA]) == 0
    (version,) = [p for p in (home / "models").iterdir() if not p.name.startswith(".")]
    return home, load_model(version)


def _evaluate(home: Path, out: Path, *argv: str) -> dict[str, float]:
    assert main(["--home", str(home), "evaluate", *argv, *DATA, "--out", str(out)]) == 0
    (row,) = json.loads((out / "report.json").read_text())["rows"]
    return {k: v for k, v in row.items() if "@" in k}


def test_strong_figures_are_the_in_process_ones(
    trained: tuple[Path, Model], tmp_path: Path
) -> None:
    home, model = trained
    got = _evaluate(home, tmp_path, "--model", model.version)
    data = synthetic_interactions(CONFIG)
    split = strong_generalization_split(data, n_heldout=default_n_heldout(data), seed=0)
    assert (split.item_ids == model.item_ids).all()  # the same split as ``ledrec train``'s
    expected = evaluate_scores(
        led_score_fn(model.embeddings, model.biases), split.test_in, split.test_out
    )
    assert got == expected
    assert got == {k[len("test_") :]: v for k, v in model.metrics.items() if k.startswith("test_")}
    assert "| LED | saved " in (tmp_path / "report.md").read_text()


def test_weak_and_time_figures_are_the_in_process_ones(
    trained: tuple[Path, Model], tmp_path: Path
) -> None:
    home, model = trained
    led = led_score_fn(model.embeddings, model.biases)
    weak = split_one_source(synthetic_interactions(CONFIG), seed=0)
    got = _evaluate(home, tmp_path / "weak", "--protocol", "weak", "--model", model.version)
    assert got == weak_metrics(led, weak) and set(got) == {"recall@20", "ndcg@20"}
    timed = time_split(synthetic_timed_events(CONFIG), 0.7)
    argv = ["--protocol", "time", "--cutoff", "0.7", "--model", str(model.path)]  # a directory
    got = _evaluate(home, tmp_path / "time", *argv)
    # the time split's catalog is in id order (i0, i1, i10, ...): the model's rows by id
    rows = [model.row_of[i] for i in timed.split.item_ids]
    assert sorted(rows) == list(range(model.n_items))
    assert got == time_metrics(
        led_score_fn(model.embeddings[rows], model.biases[rows]), timed.split
    )
    assert set(got) == {"recall@20", "recall@50", "ndcg@100"}


def test_unknown_version_is_one_line(
    trained: tuple[Path, Model], capsys: pytest.CaptureFixture[str]
) -> None:
    home, model = trained
    assert main(["--home", str(home), "evaluate", "--model", "v-none", *DATA]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model version 'v-none'" in err and model.version in err


def test_items_the_model_does_not_know() -> None:
    """Unknown fold-in items count for nothing; unknown items are never recommended."""
    v = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    model = Model(np.array(["a", "b"]), v, np.array([0.5, 0.0], dtype=np.float32))
    score, unknown = catalog_score_fn(model, np.array(["c", "b", "a"]))
    assert unknown == 1
    inputs = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0]], dtype=np.float32))  # c + b; c
    scores = score(inputs)
    np.testing.assert_allclose(scores[0, 1:], [1.0, 0.5])  # u = v_b alone, not (v_b + 0) / 2
    np.testing.assert_allclose(scores[1, 1:], [0.0, 0.5])  # only c: the empty timeline
    assert (scores[:, 0] < -1e29).all()
    # a target the model does not know is a miss: user 0's c, even among 2 of 3 items
    heldout = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 1]], dtype=np.float32))
    assert recall_at_k(scores, heldout, 2) == pytest.approx(0.5)
