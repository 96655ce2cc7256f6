from pathlib import Path

import numpy as np
import pytest

from ledrec.stream.artifact import ArtifactError, Model, list_versions, load_model, save_model


def _model(n: int = 20, d: int = 4) -> Model:
    rng = np.random.default_rng(0)
    return Model(
        item_ids=np.array([f"item-{i}" for i in range(n)]),
        embeddings=rng.normal(size=(n, d)).astype(np.float32),
        biases=rng.normal(size=n).astype(np.float32),
        metrics={"recall@20": 0.3},
        provenance={"source": "test"},
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = save_model(_model(), tmp_path)
    loaded = load_model(path)
    assert loaded.version == path.name
    assert loaded.metrics == {"recall@20": 0.3}
    np.testing.assert_array_equal(loaded.embeddings, _model().embeddings)
    assert loaded.row_of["item-3"] == 3
    assert list_versions(tmp_path) == [path.name]


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = save_model(_model(), tmp_path)
    data = (path / "embeddings.npy").read_bytes()
    (path / "embeddings.npy").write_bytes(data[:-8])
    with pytest.raises(ArtifactError, match="truncated"):
        load_model(path)


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    path = save_model(_model(), tmp_path)
    raw = bytearray((path / "biases.npy").read_bytes())
    raw[-1] ^= 0xFF
    (path / "biases.npy").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(path)


def test_pickled_arrays_are_refused(tmp_path: Path) -> None:
    path = save_model(_model(), tmp_path)
    np.save(path / "item_ids.npy", np.array([object()] * 20), allow_pickle=True)
    with pytest.raises(ArtifactError):
        load_model(path)


@pytest.mark.parametrize(
    "broken",
    [
        lambda m: setattr(m, "biases", m.biases[:-1]),
        lambda m: setattr(m, "embeddings", m.embeddings.astype(np.float64)),
        lambda m: m.embeddings.__setitem__((0, 0), np.nan),
        lambda m: m.item_ids.__setitem__(1, "item-0"),
    ],
)
def test_inconsistent_models_are_not_saved(tmp_path: Path, broken) -> None:  # type: ignore[no-untyped-def]
    model = _model()
    broken(model)
    with pytest.raises(ArtifactError):
        save_model(model, tmp_path)
