"""Where model versions live: a local directory, or an S3-compatible bucket across hosts.

``LEDREC_MODEL_STORE`` is a directory (the default, ``<home>/models``) or
``s3://bucket/prefix`` (MinIO, AWS S3 or any S3-compatible server: the endpoint from
``LEDREC_S3_ENDPOINT_URL`` or boto3's own ``AWS_ENDPOINT_URL``, the credentials from the
standard ``AWS_*`` variables). A version's *location*, recorded in the registry, says which:
a path, or ``s3://bucket/prefix/<version>``. Every process resolves a location the same way
(``ModelStores``), so a scorer on another host loads what a trainer published.

- **Publish.** Training writes the version directory locally (``stream.artifact``), then
  ``publish`` uploads it: every file first, ``manifest.json`` last, so a half-uploaded
  version has no manifest and is never a version (``versions`` lists only manifests).
- **Fetch.** A version is downloaded once into ``<home>/model-cache/<version>`` (under a
  temporary name, renamed into place), and every load checks every file against the
  manifest's checksums exactly as a local load does (``artifact.load_model``): a corrupted
  or tampered object is refused with ``ArtifactError``.
- **Remove** (pruning): the manifest first (from then on it is not a version), then the rest,
  and the local cached copy.

Objects are immutable: a version name is never reused (``artifact.new_version_name``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from ledrec.settings import Settings
from ledrec.stream.artifact import (
    MANIFEST,
    ArtifactError,
    Model,
    list_versions,
    load_model,
    read_manifest,
)

S3_SCHEME = "s3://"


def is_s3(location: str) -> bool:
    return location.startswith(S3_SCHEME)


class ModelStore(Protocol):
    """One store: publish a local version directory, fetch one, list, remove."""

    def publish(self, path: Path) -> str: ...  # the version's location
    def fetch(self, location: str) -> Path: ...  # a local directory (checked by load_model)
    def versions(self) -> list[str]: ...
    def remove(self, location: str) -> bool: ...  # False: nothing was there


class LocalStore:
    """Version directories under one local (or shared-filesystem) directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def publish(self, path: Path) -> str:
        path = Path(path)
        if path.parent.resolve() != self.root.resolve():  # a directory made elsewhere
            target = self.root / path.name
            if not target.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=self.root))
                shutil.copytree(path, tmp, dirs_exist_ok=True)
                os.rename(tmp, target)
            path = target
        return str(path)

    def fetch(self, location: str) -> Path:
        return Path(location)

    def versions(self) -> list[str]:
        return list_versions(self.root)

    def remove(self, location: str) -> bool:
        return self.remove_dir(location)

    @staticmethod
    def remove_dir(location: str) -> bool:
        path = Path(location)
        if not path.is_dir():
            return False
        shutil.rmtree(path)
        return True


class S3Store:
    """Version directories as objects under ``s3://bucket/prefix/<version>/``."""

    def __init__(self, url: str, cache: Path, endpoint_url: str | None = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.cache = cache
        self.endpoint_url = endpoint_url or None
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
            except ImportError as e:  # the ``s3`` extra
                raise ArtifactError(
                    "an s3:// model store needs boto3: pip install 'ledrec[s3]'"
                ) from e
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url)
        return self._client

    def url_of(self, version: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self._key(version)}"

    def _key(self, version: str, name: str = "") -> str:
        parts = [p for p in (self.prefix, version, name) if p]
        return "/".join(parts)

    def _split(self, location: str) -> tuple[str, str]:
        """(bucket, key prefix of the version) of a location; its version is the last part."""
        parsed = urlparse(location)
        return parsed.netloc, parsed.path.strip("/")

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (a fresh MinIO, the tests)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            with contextlib.suppress(ClientError):  # created meanwhile by another process
                self.client.create_bucket(Bucket=self.bucket)

    def publish(self, path: Path) -> str:
        path = Path(path)
        manifest = read_manifest(path)
        version = str(manifest["version"])
        self.ensure_bucket()
        for name in manifest["files"]:  # the manifest last: until then it is no version
            self.client.upload_file(str(path / name), self.bucket, self._key(version, name))
        self.client.upload_file(str(path / MANIFEST), self.bucket, self._key(version, MANIFEST))
        # The local directory is what a download would produce: it becomes the cached copy.
        cached = self.cache / version
        if not cached.exists() and path.resolve() != cached.resolve():
            self.cache.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # another filesystem: it is downloaded later
                os.rename(path, cached)
        return self.url_of(version)

    def fetch(self, location: str) -> Path:
        from botocore.exceptions import ClientError

        bucket, key = self._split(location)
        version = key.rsplit("/", 1)[-1]
        if not version or version.startswith("."):
            raise ArtifactError(f"not a model version location: {location!r}")
        cached = self.cache / version
        if (cached / MANIFEST).is_file():
            return cached  # checked again by load_model, like any local version
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.cache))
        try:
            try:
                self.client.download_file(bucket, f"{key}/{MANIFEST}", str(tmp / MANIFEST))
                manifest = read_manifest(tmp)
                for name in manifest["files"]:
                    if "/" in name or name.startswith("."):
                        raise ArtifactError(f"{version}: bad file name {name!r} in the manifest")
                    self.client.download_file(bucket, f"{key}/{name}", str(tmp / name))
            except ClientError as e:
                raise ArtifactError(f"{location}: cannot download: {e}") from None
            load_model(tmp)  # checksums and shapes, before it counts as cached
            try:
                os.rename(tmp, cached)
            except OSError:  # another process cached it first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cached

    def versions(self) -> list[str]:
        prefix = self._key("") + "/" if self.prefix else ""
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(prefix) :]
                version, _, name = rest.partition("/")
                if name == MANIFEST:
                    found.append(version)
        return sorted(found)

    def remove(self, location: str) -> bool:
        bucket, key = self._split(location)
        version = key.rsplit("/", 1)[-1]
        shutil.rmtree(self.cache / version, ignore_errors=True)
        listed = self.client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/")
        keys = [obj["Key"] for obj in listed.get("Contents", [])]
        if not keys:
            return False
        keys.sort(key=lambda k: not k.endswith("/" + MANIFEST))  # the manifest first
        for k in keys:
            self.client.delete_object(Bucket=bucket, Key=k)
        return True


class ModelStores:
    """The deployment's store (where ``publish`` puts versions) and the resolution of any
    registered location (a path or an ``s3://`` URL) to a loaded, checked model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = settings.home / "model-cache"
        self._s3: S3Store | None = None
        url = settings.model_store_url
        self.target: ModelStore = (
            self._s3_for(url) if is_s3(url) else LocalStore(settings.model_store_path)
        )

    def _s3_for(self, url: str) -> S3Store:
        if self._s3 is None:
            self._s3 = S3Store(url, self.cache, self.settings.s3_endpoint_url)
        return self._s3

    def store_for(self, location: str) -> ModelStore:
        return self._s3_for(location) if is_s3(location) else LocalStore(Path(location).parent)

    def publish(self, path: Path) -> str:
        """Put the version directory ``path`` in the deployment's store; its location."""
        return self.target.publish(path)

    def fetch(self, location: str) -> Path:
        return self.store_for(location).fetch(location)

    def load(self, location: str) -> Model:
        """The model at ``location``, every file checked against its manifest."""
        return load_model(self.fetch(location))

    def remove(self, location: str) -> bool:
        return self.store_for(location).remove(location)

    def versions(self) -> list[str]:
        return self.target.versions()

    def locate(self, version: str) -> str:
        """The location of ``version`` in the deployment's store (or of a version directory
        given by its path); ArtifactError naming the store when it holds no such version."""
        if (Path(version) / MANIFEST).is_file():
            return version
        known = self.versions()
        if version not in known:
            newest = f"; newest {known[-1]}" if known else ""
            raise ArtifactError(
                f"no model version {version!r} in the model store "
                f"{self.settings.model_store_url} ({len(known)} versions{newest})"
            )
        if isinstance(self.target, S3Store):
            return self.target.url_of(version)
        return str(self.settings.model_store_path / version)
