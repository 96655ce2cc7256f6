"""A saved model version scored on an evaluation protocol's catalog, without training
(``ledrec evaluate --model V``; the quality gate's score of the active version).

The protocol fixes the catalog (the items its training data has) and each user's fold-in
and targets; the model brings its own item vocabulary, matched by id as online: a fold-in
item the model does not know counts for nothing in the user's average (the consumer keeps
it in the timeline, with no embedding) and is never recommended; a target it does not know
stays a target and can only be missed. Items the model knows outside the protocol's catalog
are not ranked: every model of one protocol ranks the same candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ledrec.stream.artifact import Model
from ledrec.training.evaluate import ScoreFn, led_score_fn
from ledrec.training.report import metric_label, write_report

UNKNOWN_BIAS = -1e30  # below any real score: an item the model does not know is never ranked


def catalog_score_fn(model: Model, item_ids: npt.NDArray[np.str_]) -> tuple[ScoreFn, int]:
    """LED's scores of ``model`` over the columns ``item_ids``; and how many of those items
    the model does not know."""
    if model.item_ids.shape == item_ids.shape and (model.item_ids == item_ids).all():
        return led_score_fn(model.embeddings, model.biases), 0  # the model's own catalog
    rows = np.fromiter(
        (model.row_of.get(str(i), -1) for i in item_ids), dtype=np.int64, count=len(item_ids)
    )
    known = rows >= 0
    embeddings = np.zeros((len(rows), model.dim), dtype=np.float32)
    embeddings[known] = model.embeddings[rows[known]]
    biases = np.full(len(rows), UNKNOWN_BIAS, dtype=np.float32)
    biases[known] = model.biases[rows[known]]
    led = led_score_fn(embeddings, biases)
    keep = sp.diags(known.astype(np.float32))

    def score(inputs: sp.csr_matrix) -> npt.NDArray[np.float32]:
        return led(sp.csr_matrix(inputs @ keep))  # unknown fold-in items: not in the mean

    return score, int((~known).sum())


def run_model_evaluate(
    model: Model,
    protocol: str,
    item_ids: npt.NDArray[np.str_],
    score: Callable[[ScoreFn], dict[str, float]],
    out_dir: Path,
    *,
    data: dict[str, Any],
    source: str,
    definition: str,
) -> dict[str, Any]:
    """Score ``model`` on a protocol's catalog ``item_ids`` with the protocol's ``score``
    (its test users' figures of a score function); writes report.json and report.md."""
    score_fn, unknown = catalog_score_fn(model, item_ids)
    report = model_report(model, protocol, score(score_fn), unknown, data, source, definition)
    write_report(report, out_dir, render_model_markdown)
    return report


def model_report(
    model: Model,
    protocol: str,
    metrics: dict[str, float],
    unknown_items: int,
    data: dict[str, Any],
    source: str,
    definition: str,
) -> dict[str, Any]:
    """The ``evaluate --model`` report: the version, what it was trained on, its figures."""
    return {
        "protocol": protocol,
        "model": model.version,
        "model_source": model.provenance.get("source", ""),
        "chosen": model.provenance.get("selection", {}).get("chosen", ""),
        "source": source,
        "definition": definition,
        "data": {
            **data,
            "catalog_items_unknown_to_model": unknown_items,
            "model_items": model.n_items,
        },
        "rows": [{"model": "LED", "variant": f"saved {model.version}", **metrics}],
    }


def render_model_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: what was scored on what, and the metrics table."""
    metrics = [k for k in report["rows"][0] if "@" in k]
    d = report["data"]
    trained_on = (
        "the same data" if report["model_source"] == report["source"].split(" (")[0]
        else report["model_source"] or "unrecorded data"
    )  # fmt: skip
    lines = [
        f"# LED evaluation of the saved model {report['model']} — {report['protocol']} protocol",
        "",
        f"Data: {report['source']}. {report['definition']} The model ({d['model_items']} "
        f"items, trained on {trained_on}"
        f"{', its selection ' + report['chosen'] if report['chosen'] else ''}) was not "
        "trained here; "
        f"{d['catalog_items_unknown_to_model']} of the protocol's catalog items are unknown "
        "to it: they count for nothing in a fold-in and are never recommended, and as "
        "targets they are misses.",
        "",
        "| Model | Variant | " + " | ".join(map(metric_label, metrics)) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]  # fmt: skip
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['variant']} | "
            + " | ".join(f"{r[m]:.4f}" for m in metrics)
            + " |"
        )
    return "\n".join([*lines, ""])
