"""Corrupt model versions: refused at load with a clear error; the running system keeps the
version it serves.

Every corruption below is refused by ``load_model`` with ``ArtifactError`` (never another
exception type, which a caller would not expect). Activating a corrupt version through the
registry under a running scorer and consumer (real processes) changes nothing they do: the
scorer keeps answering with the previous version, the consumer keeps applying events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream.artifact import ArtifactError, load_model, save_model
from ledrec.stream.client import RecommenderClient
from ledrec.stream.producer import EventPublisher
from ledrec.stream.registry import Registry
from ledrec.stream.state import UserStateStore
from tests.helpers import publish_model, random_model, settings_env, start_cli, wait_until


def _manifest(path: Path) -> dict[str, object]:
    manifest: dict[str, object] = json.loads((path / "manifest.json").read_text())
    return manifest


def _write_manifest(path: Path, manifest: dict[str, object]) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


def _logged(log: Path, text: str) -> bool:
    return text in log.read_text()


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _truncate(path: Path) -> None:
    f = path / "embeddings.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    f = path / "biases.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))


def _unlisted_tamper(path: Path) -> None:
    """Alter embeddings and drop them from the manifest, so no checksum covers them."""
    manifest = _manifest(path)
    files = manifest["files"]
    assert isinstance(files, dict)
    del files["embeddings.npy"]
    _write_manifest(path, manifest)
    e = np.load(path / "embeddings.npy")
    np.save(path / "embeddings.npy", np.zeros_like(e))  # same shape: only a checksum tells


def _resealed(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """Apply ``change`` and rewrite the manifest's checksums to match (a bad trainer)."""

    def corrupt(path: Path) -> None:
        import hashlib

        change(path)
        manifest = _manifest(path)
        files = manifest["files"]
        assert isinstance(files, dict)
        for name in files:
            data = (path / name).read_bytes()
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        _write_manifest(path, manifest)

    return corrupt


def _nan(path: Path) -> None:
    e = np.load(path / "embeddings.npy")
    e[0, 0] = np.nan
    np.save(path / "embeddings.npy", e)


def _set(key: str, value: object) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        manifest = _manifest(path)
        manifest[key] = value
        _write_manifest(path, manifest)

    return corrupt


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated array": _truncate,
    "flipped byte": _flip_byte,
    "missing file": lambda p: (p / "item_ids.npy").unlink(),
    "no manifest": lambda p: (p / "manifest.json").unlink(),
    "manifest not JSON": lambda p: _write(p / "manifest.json", b"\x00{not json"),
    "manifest not a map": lambda p: _write(p / "manifest.json", b"[1, 2]"),
    "array not listed in manifest": _unlisted_tamper,
    "malformed file entry": _set("files", {"item_ids.npy": "deadbeef"}),
    "files not a map": _set("files", ["item_ids.npy"]),
    "no version": lambda p: _write_manifest(
        p, {k: v for k, v in _manifest(p).items() if k != "version"}
    ),
    "wrong dim": _set("dim", 3),
    "dim not a number": _set("dim", "eight"),
    "unknown format": _set("format", 99),
    "resealed truncated array": _resealed(_truncate),
    "resealed NaN embedding": _resealed(_nan),
    "resealed wrong-shape biases": _resealed(
        lambda p: np.save(p / "biases.npy", np.zeros(3, dtype=np.float32))
    ),
    "resealed pickled object array": _resealed(
        lambda p: np.save(p / "item_ids.npy", np.array([{"x": 1}], dtype=object))
    ),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_version_is_refused_with_a_clear_error(tmp_path: Path, corruption: str) -> None:
    path = save_model(random_model(n_items=50, dim=8), tmp_path)
    CORRUPTIONS[corruption](path)
    with pytest.raises(ArtifactError) as refused:
        load_model(path)
    assert path.name in str(refused.value)  # says which version, and why


def test_activating_a_corrupt_version_keeps_the_running_system_on_the_old_one(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    good = publish_model(settings, redis_client, random_model(n_items=200, dim=8, seed=1))
    env = settings_env(settings)
    scorer_log, consumer_log = tmp_path / "scorer.log", tmp_path / "consumer.log"
    scorer = start_cli(["serve"], env, scorer_log)
    consumer = start_cli(["consume"], env, consumer_log)
    rpc = RecommenderClient(redis_client, settings.request_queue, settings.key_prefix)
    store = UserStateStore(redis_client, settings.key_prefix, settings.timeline_max, 60)
    publisher = EventPublisher(settings, settings.kafka_bootstrap)

    def applied(user: str, n: int) -> bool:
        state = store.read(user, [good.version])
        return state is not None and len(state.timeline) == n

    try:
        publisher.send("alice", "i1", "view")
        publisher.flush()
        wait_until(lambda: applied("alice", 1), 60, "the consumer applying an event")
        assert rpc.request(user_id="alice").version == good.version

        registry = Registry(redis_client, settings.key_prefix)
        corruptions = ("truncated array", "flipped byte", "resealed NaN embedding")
        for n, corruption in enumerate(corruptions):
            bad = random_model(n_items=200, dim=8, seed=10 + n)
            path = save_model(bad, settings.model_store_path)
            registry.register(bad)
            CORRUPTIONS[corruption](path)
            registry.activate(bad.version)
            wait_until(partial(_logged, scorer_log, bad.version), 10, "the scorer noticing")
            for _ in range(20):
                assert rpc.request(user_id="alice").version == good.version
            publisher.send("alice", f"i{n + 2}", "view")
            publisher.flush()
            wait_until(partial(applied, "alice", n + 2), 30, "the consumer still applying")
        assert scorer.poll() is None and consumer.poll() is None
    finally:
        for proc in (scorer, consumer):
            proc.terminate()
            proc.wait(timeout=20)
    refusals = scorer_log.read_text().count("ArtifactError")
    print(f"\n3 corrupt versions activated: scorer kept {good.version}, {refusals} refusals logged")
