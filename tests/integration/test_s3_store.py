"""The s3:// model store across hosts, on a real local S3 server (moto's ThreadedMotoServer):
a version published from one home directory is served by a scorer on another with an empty
cache; a corrupted object or a half-upload is never a usable version; pruning removes the
objects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream.artifact import MANIFEST, ArtifactError, save_model
from ledrec.stream.client import RecommenderClient
from ledrec.stream.model_store import ModelStores, S3Store
from ledrec.stream.registry import Registry
from tests.helpers import random_model, running_server, settings_env

pytestmark = pytest.mark.s3


def _host(settings: Settings, home: Path, store: str, endpoint: str) -> Settings:
    """The same deployment seen from another machine: its own home (and model cache)."""
    return settings.model_copy(
        update={"home": home, "model_store": store, "s3_endpoint_url": endpoint}
    )


def _publish(settings: Settings, client: redis.Redis, seed: int, activate: bool) -> str:
    model = random_model(n_items=100, dim=8, seed=seed)
    path = save_model(model, settings.model_store_path)
    location = ModelStores(settings).publish(path)
    registry = Registry(client, settings.key_prefix)
    registry.register(model, location=location)
    if activate:
        registry.activate(model.version)
    return model.version


def test_published_on_one_host_served_from_another(
    settings: Settings, redis_client: redis.Redis, s3_store: str, s3_server: str, tmp_path: Path
) -> None:
    trainer = _host(settings, tmp_path / "trainer-host", s3_store, s3_server)
    scorer = _host(settings, tmp_path / "scorer-host", s3_store, s3_server)
    version = _publish(trainer, redis_client, seed=1, activate=True)
    registry = Registry(redis_client, settings.key_prefix)
    assert registry.location(version) == f"{s3_store}/{version}"
    assert ModelStores(scorer).versions() == [version]
    assert not (scorer.home / "model-cache").exists()  # nothing local on the scorer's host

    with running_server(scorer, redis_client):
        rpc = RecommenderClient(redis_client, settings.request_queue, settings.key_prefix, 10.0)
        rec = rpc.request(items=["i1", "i2"], k=5)
    assert rec.version == version and len(rec.items) == 5
    assert (scorer.home / "model-cache" / version / MANIFEST).is_file()  # downloaded, checked

    # `ledrec models prune` on a third host: a refused (staged) version's objects go.
    staged = _publish(trainer, redis_client, seed=2, activate=False)
    assert ModelStores(scorer).versions() == sorted([version, staged])
    pruner = _host(settings, tmp_path / "ops-host", s3_store, s3_server)
    run = subprocess.run(
        [sys.executable, "-m", "ledrec.cli", "models", "prune", "--keep", "0"],
        env=settings_env(pruner), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "pruned 1 version" in run.stdout
    assert ModelStores(scorer).versions() == [version]  # the active one stays
    assert registry.info(staged)["pruned_at"] > 0


def test_a_corrupted_object_or_a_half_upload_is_refused(
    settings: Settings, redis_client: redis.Redis, s3_store: str, s3_server: str, tmp_path: Path
) -> None:
    trainer = _host(settings, tmp_path / "trainer-host", s3_store, s3_server)
    version = _publish(trainer, redis_client, seed=3, activate=False)
    location = Registry(redis_client, settings.key_prefix).location(version)
    store = S3Store(s3_store, tmp_path / "unused", s3_server)
    key = f"models/{version}/embeddings.npy"
    body = store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    flipped = body[:-1] + bytes([body[-1] ^ 0xFF])  # same size, one byte altered
    store.client.put_object(Bucket=store.bucket, Key=key, Body=flipped)

    reader = _host(settings, tmp_path / "reader-host", s3_store, s3_server)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        ModelStores(reader).load(location)
    cache = reader.home / "model-cache"
    assert not (cache / version).exists() and list(cache.iterdir()) == []  # nothing kept

    # A half-upload (the arrays, no manifest yet) is not a version.
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=store.bucket, Key="models/v-half/embeddings.npy", Body=b"x")
    assert ModelStores(reader).versions() == [version]
    with pytest.raises(ArtifactError, match="cannot download"):
        ModelStores(reader).load(f"{s3_store}/v-half")


def test_a_local_load_of_the_cached_copy_checks_it_again(
    settings: Settings, redis_client: redis.Redis, s3_store: str, s3_server: str, tmp_path: Path
) -> None:
    """A cached copy altered on disk is refused too: every load checks the checksums."""
    trainer = _host(settings, tmp_path / "trainer-host", s3_store, s3_server)
    version = _publish(trainer, redis_client, seed=4, activate=False)
    location = f"{s3_store}/{version}"
    reader = _host(settings, tmp_path / "reader-host", s3_store, s3_server)
    model = ModelStores(reader).load(location)
    assert model.version == version and model.embeddings.dtype == np.float32
    cached = reader.home / "model-cache" / version / "biases.npy"
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        ModelStores(reader).load(location)


def test_evaluate_scores_a_version_of_the_s3_store(
    s3_store: str, s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ledrec evaluate --model V`` on another host reads V from the deployment's store:
    the figures are those ``ledrec train`` measured on the same test users."""
    import json

    from ledrec.cli import main

    monkeypatch.setenv("LEDREC_MODEL_STORE", s3_store)
    monkeypatch.setenv("LEDREC_S3_ENDPOINT_URL", s3_server)
    data = ["--synthetic-users", "600", "--synthetic-items", "100"]
    trainer, reader = tmp_path / "trainer-host", tmp_path / "reader-host"
    assert main(["--home", str(trainer), "train", "--svd-only", "--dim", "8", *data]) == 0
    (version,) = ModelStores(Settings(home=trainer)).versions()
    out = tmp_path / "report"
    argv = ["--home", str(reader), "evaluate", "--model", version, *data, "--out", str(out)]
    assert main(argv) == 0
    (row,) = json.loads((out / "report.json").read_text())["rows"]
    model = ModelStores(Settings(home=reader)).load(f"{s3_store}/{version}")
    assert {k: row[k] for k in ("recall@20", "recall@50", "ndcg@100")} == {
        k: model.metrics[f"test_{k}"] for k in ("recall@20", "recall@50", "ndcg@100")
    }
    assert main(["--home", str(reader), "evaluate", "--model", "v-gone", *data]) == 1
