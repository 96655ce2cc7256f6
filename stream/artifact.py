"""The model artifact: the contract between the trainer (writes) and the online side (reads).

A model version is an immutable directory::

    <store>/<version>/
        manifest.json    version, dim, n_items, created_at, parent, provenance, metrics,
                         sha256 + size of every other file
        item_ids.npy     (I,) unicode item ids, row order of the arrays below
        embeddings.npy   (I, d) float32 item embeddings v_i (any projection already folded in)
        biases.npy       (I,) float32 item biases b_i
        index.faiss      optional prebuilt faiss index over [v_i, b_i] (large catalogs)

Arrays are read with ``allow_pickle=False`` and every file is checked against the
manifest's checksum before use, so a truncated or tampered version is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ledrec.errors import LedrecError

MANIFEST = "manifest.json"
ARRAY_FILES = ("item_ids.npy", "embeddings.npy", "biases.npy")
INDEX_FILE = "index.faiss"
FORMAT_VERSION = 1


class ArtifactError(LedrecError, RuntimeError):
    """A model version that is missing, truncated, tampered with or inconsistent."""


@dataclass
class Model:
    """An LED model: one embedding and one bias per item."""

    item_ids: npt.NDArray[np.str_]  # (I,)
    embeddings: npt.NDArray[np.float32]  # (I, d)
    biases: npt.NDArray[np.float32]  # (I,)
    version: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    created_at: float = 0.0
    path: Path | None = None
    _row_of: dict[str, int] | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def n_items(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def row_of(self) -> dict[str, int]:
        """Item id → row, built once on first use."""
        if self._row_of is None:
            self._row_of = {item: row for row, item in enumerate(self.item_ids.tolist())}
        return self._row_of

    def validate(self) -> None:
        i = self.item_ids.shape[0]
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != i:
            raise ArtifactError(f"embeddings shape {self.embeddings.shape} does not match {i} ids")
        if self.biases.shape != (i,):
            raise ArtifactError(f"biases shape {self.biases.shape} does not match {i} ids")
        if self.embeddings.dtype != np.float32 or self.biases.dtype != np.float32:
            raise ArtifactError("embeddings and biases must be float32")
        if self.item_ids.dtype.kind != "U":
            raise ArtifactError(f"item_ids must be unicode strings, got {self.item_ids.dtype}")
        if not (np.isfinite(self.embeddings).all() and np.isfinite(self.biases).all()):
            raise ArtifactError("embeddings or biases contain NaN or inf")
        if len(set(self.item_ids.tolist())) != i:
            raise ArtifactError("item_ids are not unique")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_version_name() -> str:
    """A sortable, unique version name: UTC time plus a random suffix."""
    return time.strftime("v%Y%m%d-%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()


def save_model(model: Model, store: Path, index_bytes: bytes | memoryview | None = None) -> Path:
    """Write ``model`` as a new immutable version directory in ``store``; returns its path.

    The directory is written under a temporary name and renamed into place, so readers
    never see a half-written version.
    """
    model.validate()
    version = model.version or new_version_name()
    store.mkdir(parents=True, exist_ok=True)
    final = store / version
    if final.exists():
        raise ArtifactError(f"model version {version} already exists in {store}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=store))
    try:
        np.save(tmp / "item_ids.npy", model.item_ids, allow_pickle=False)
        np.save(tmp / "embeddings.npy", model.embeddings, allow_pickle=False)
        np.save(tmp / "biases.npy", model.biases, allow_pickle=False)
        files = list(ARRAY_FILES)
        if index_bytes is not None:
            (tmp / INDEX_FILE).write_bytes(index_bytes)
            files.append(INDEX_FILE)
        manifest = {
            "format": FORMAT_VERSION,
            "version": version,
            "dim": model.dim,
            "n_items": model.n_items,
            "created_at": model.created_at or time.time(),
            "parent": model.parent,
            "provenance": model.provenance,
            "metrics": model.metrics,
            "files": {
                name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                for name in files
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    model.version, model.path = version, final
    return final


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} has no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path / MANIFEST} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path / MANIFEST} is not a JSON object")
    if manifest.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: unsupported artifact format {manifest.get('format')!r}")
    for key, kind in (("version", str), ("dim", int), ("n_items", int), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(f"{path / MANIFEST}: {key!r} missing or not a {kind.__name__}")
    return manifest


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Check every file listed in the manifest for size and sha256; every array must be listed
    (an unlisted file would be loaded unchecked)."""
    files = manifest["files"]
    unlisted = [name for name in ARRAY_FILES if name not in files]
    if unlisted:
        raise ArtifactError(f"{path.name}: manifest has no checksum for {', '.join(unlisted)}")
    for name, meta in files.items():
        f = path / name
        if not isinstance(meta, dict) or not isinstance(meta.get("bytes"), int):
            raise ArtifactError(f"{path.name}: malformed manifest entry for {name}")
        if not f.is_file():
            raise ArtifactError(f"{path.name}: missing {name}")
        if f.stat().st_size != meta["bytes"]:
            raise ArtifactError(f"{path.name}: {name} is truncated or altered (size differs)")
        if _sha256(f) != meta["sha256"]:
            raise ArtifactError(f"{path.name}: {name} checksum mismatch (tampered or corrupt)")


def load_model(path: Path) -> Model:
    """Load and validate a model version directory; raises ArtifactError when unusable."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    try:
        arrays = {name: np.load(path / name, allow_pickle=False) for name in ARRAY_FILES}
    except (ValueError, EOFError, OSError) as e:
        raise ArtifactError(f"{path.name}: unreadable array: {e}") from None
    model = Model(
        item_ids=arrays["item_ids.npy"],
        embeddings=arrays["embeddings.npy"],
        biases=arrays["biases.npy"],
        version=str(manifest["version"]),
        metrics=dict(manifest.get("metrics", {})),
        provenance=dict(manifest.get("provenance", {})),
        parent=manifest.get("parent"),
        created_at=float(manifest.get("created_at", 0.0)),
        path=path,
    )
    try:
        model.validate()
    except ArtifactError as e:
        raise ArtifactError(f"{path.name}: {e}") from None
    if model.dim != manifest["dim"] or model.n_items != manifest["n_items"]:
        raise ArtifactError(f"{path.name}: arrays disagree with the manifest's dim/n_items")
    return model


def list_versions(store: Path) -> list[str]:
    """Version names present in the store, oldest first."""
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir() if p.is_dir() and (p / MANIFEST).exists())
