"""Small file operations over a storage root, on local disk or S3.

Paths passed to a :class:`Storage` are *keys*: ``/``-separated and relative to the root
(``runs/3f2a/config.yaml``). A key names a file, or a directory when other keys continue
it with ``/``; S3 has no directories, so a "directory" exists while something is in it.

Each backend has one implementation: :class:`LocalStorage` uses the OS, :class:`S3Storage`
uses boto3. Both are checked by the same tests in ``tests/storage``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from paralab.platform.config.schema import StorageConfig
from paralab.platform.storage.errors import (
    DENIED_CODES,
    StorageError,
    error_code,
    explain_s3_error,
    no_credentials_message,
)
from paralab.platform.storage.settings import Location, S3Settings, resolve_location

if TYPE_CHECKING:
    import pyarrow.fs

TRANSFER_THREADS = 8
"""Files moved at once by ``upload_dir``/``download_dir`` on S3."""


def join(*parts: str) -> str:
    """Join key parts with ``/``, dropping empty parts and doubled slashes.

    ``join("runs/", "/3f2a", "", "ckpt")`` is ``"runs/3f2a/ckpt"``. Rejects ``..`` so that a
    key can never leave the storage root.
    """
    segments = [s for part in parts for s in str(part).split("/") if s and s != "."]
    if ".." in segments:
        raise ValueError(f"storage keys may not contain '..': {parts!r}")
    return "/".join(segments)


class Storage(ABC):
    """A storage root with a handful of file operations; build one with :meth:`from_config`."""

    location: Location

    @staticmethod
    def from_config(config: StorageConfig | None = None) -> Storage:
        """The storage that ``config`` (then ``$PARALAB_STORAGE``, then the default) names.

        Builds no connection; call :meth:`preflight` to check it works.
        """
        config = config or StorageConfig()
        location = resolve_location(config)
        if location.scheme == "s3":
            return S3Storage(location, S3Settings.from_config(config))
        return LocalStorage(location)

    @staticmethod
    def join(*parts: str) -> str:
        """See :func:`join`."""
        return join(*parts)

    @property
    def uri(self) -> str:
        """The root as ``s3://bucket/prefix`` or an absolute local path."""
        return self.location.uri

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    @abstractmethod
    def uri_of(self, *parts: str) -> str:
        """The full URI (or absolute path) of a key, e.g. to log where a checkpoint went."""

    @abstractmethod
    def child(self, *parts: str) -> Storage:
        """The same storage rooted at a sub-key (e.g. one run's checkpoint prefix)."""

    @abstractmethod
    def ray_storage(self) -> tuple[str, pyarrow.fs.FileSystem | None]:
        """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig``.

        S3: ``("bucket/prefix", pyarrow.fs.S3FileSystem(...))``, the filesystem carrying
        endpoint, region and credentials. Local: ``("/abs/path", None)``; Ray resolves local
        paths itself.
        """

    @abstractmethod
    def preflight(self, *, create_bucket: bool = False) -> None:
        """Check that the root is reachable and writable before anything starts.

        Raises :class:`StorageError` with one line that names the setting to fix. On
        failure nothing has been written. On success a local root exists (it is created),
        and on S3 a probe object was written and deleted again. ``create_bucket`` creates a
        missing bucket instead of failing.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` is a file or a non-empty directory."""

    @abstractmethod
    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        """Keys under the directory ``prefix``, sorted, relative to the root.

        ``recursive=True``: every file below. ``recursive=False``: the immediate children,
        directories with a trailing ``/``. A missing prefix gives ``[]``.
        """

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The file's content; :class:`FileNotFoundError` when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write a file atomically: readers see the old content or the new, never a part."""

    @abstractmethod
    def upload_dir(self, local_dir: str | os.PathLike, key: str) -> list[str]:
        """Copy every file under ``local_dir`` to the directory ``key``; returns the keys."""

    @abstractmethod
    def download_dir(self, key: str, local_dir: str | os.PathLike) -> list[Path]:
        """Copy every file under the directory ``key`` into ``local_dir``; returns the paths."""

    @abstractmethod
    def delete(self, key: str) -> int:
        """Delete a file, or a directory and everything in it; returns the files removed.

        A missing key removes nothing. The root itself cannot be deleted this way.
        """


def _nonempty(key: str) -> str:
    key = join(key)
    if not key:
        raise ValueError("refusing to act on the storage root itself; pass a key")
    return key


class LocalStorage(Storage):
    """A directory on local (or network-mounted) disk."""

    def __init__(self, location: Location) -> None:
        assert location.scheme == "local" and location.path is not None
        self.location = location
        self.root = location.path

    def _path(self, key: str) -> Path:
        key = join(key)
        return self.root / key if key else self.root

    def uri_of(self, *parts: str) -> str:
        return str(self._path(join(*parts)))

    def child(self, *parts: str) -> LocalStorage:
        path = self._path(join(*parts))
        return LocalStorage(Location("local", path, "", "", self.location.source))

    def ray_storage(self) -> tuple[str, None]:
        return str(self.root), None

    def preflight(self, *, create_bucket: bool = False) -> None:
        where = f"{self.root} (from {self.location.source})"
        existing = self.root
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise StorageError(f"local storage {where} cannot be created: {existing} is a "
                               f"file; point storage.uri or PARALAB_STORAGE at a directory",
                               "local")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(f"local storage {where} is not writable ({existing} denies "
                               f"writes); choose another storage.uri or PARALAB_STORAGE", "local")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root, prefix=".paralab-preflight-"):
                pass
        except OSError as err:
            raise StorageError(f"local storage {where} is not writable: {err.strerror}; "
                               f"choose another storage.uri or PARALAB_STORAGE", "local") from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        if recursive:
            found = [p for p in base.rglob("*") if p.is_file()]
            return sorted(p.relative_to(self.root).as_posix() for p in found)
        return sorted(p.relative_to(self.root).as_posix() + ("/" if p.is_dir() else "")
                      for p in base.iterdir())

    def read_bytes(self, key: str) -> bytes:
        path = self._path(_nonempty(key))
        if not path.is_file():
            raise FileNotFoundError(f"no such file in storage: {path}")
        return path.read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(_nonempty(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory, so os.replace is a rename within one filesystem: atomic on POSIX.
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def upload_dir(self, local_dir: str | os.PathLike, key: str) -> list[str]:
        source = Path(local_dir)
        if not source.is_dir():
            raise FileNotFoundError(f"not a directory: {source}")
        keys = []
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            rel = join(key, file.relative_to(source).as_posix())
            dest = self._path(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, dest)
            keys.append(rel)
        return keys

    def download_dir(self, key: str, local_dir: str | os.PathLike) -> list[Path]:
        base = self._path(key)
        dest_root = Path(local_dir)
        paths = []
        for rel in self.list(key):
            dest = dest_root / self._path(rel).relative_to(base)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self._path(rel), dest)
            paths.append(dest)
        return paths

    def delete(self, key: str) -> int:
        path = self._path(_nonempty(key))
        if path.is_dir():
            count = sum(1 for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path)
            return count
        if path.exists():
            path.unlink()
            return 1
        return 0


class S3Storage(Storage):
    """A prefix in an S3 bucket (AWS, MinIO, SeaweedFS...), through boto3."""

    def __init__(self, location: Location, settings: S3Settings) -> None:
        assert location.scheme == "s3"
        self.location = location
        self.settings = settings
        self.bucket = location.bucket
        self.prefix = location.prefix
        self._client = None

    @property
    def client(self):
        """The boto3 client (built on first use)."""
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    def __getstate__(self) -> dict:
        # boto3 clients do not pickle; a copy sent to a Ray worker builds its own.
        return {**self.__dict__, "_client": None}

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def _dir(self, key: str) -> str:
        """The object-key prefix that lists a directory: ``prefix/key/`` (or ``""``)."""
        full = self._key(key)
        return full + "/" if full else ""

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def _call(self, action: str, key: str, fn, /, *args, **kwargs):
        """Run a boto3 call; fixable failures become one-line :class:`StorageError`."""
        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError) as err:
            explained = explain_s3_error(err, self.settings, self.bucket, self._key(key),
                                         action=action, source=self.location.source)
            if explained is None:
                raise
            raise explained from None

    def uri_of(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self._key(join(*parts))}".rstrip("/")

    def child(self, *parts: str) -> S3Storage:
        prefix = self._key(join(*parts))
        loc = Location("s3", None, self.bucket, prefix, self.location.source)
        return S3Storage(loc, self.settings)

    def ray_storage(self) -> tuple[str, pyarrow.fs.S3FileSystem]:
        return f"{self.bucket}/{self.prefix}".rstrip("/"), self.settings.pyarrow_fs()

    def preflight(self, *, create_bucket: bool = False) -> None:
        if self.settings.session().get_credentials() is None:
            raise StorageError(no_credentials_message(self.uri), "credentials")
        # Short timeouts and few retries: a dead endpoint should fail in seconds, not minutes.
        client = self.settings.client(connect_timeout=3.0, read_timeout=10.0, max_attempts=2)
        # A GET has an error body (a HEAD has none), so wrong keys and a missing bucket
        # come back as different codes.
        try:
            self._call("list", "", client.list_objects_v2, Bucket=self.bucket,
                       Prefix=self._dir(""), MaxKeys=1)
        except StorageError as err:
            if not (create_bucket and err.reason == "bucket"):
                raise
            self._create_bucket(client)
        probe = self._key(f".paralab-preflight-{uuid.uuid4().hex[:12]}")
        self._call("write", "", client.put_object, Bucket=self.bucket, Key=probe, Body=b"")
        self._call("delete", "", client.delete_object, Bucket=self.bucket, Key=probe)

    def _create_bucket(self, client) -> None:
        kwargs: dict = {"Bucket": self.bucket}
        if self.settings.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        try:
            self._call("create", "", client.create_bucket, **kwargs)
        except ClientError as err:
            if error_code(err) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def exists(self, key: str) -> bool:
        if join(key) and self._is_object(key):
            return True
        found = self._call("list", key, self.client.list_objects_v2, Bucket=self.bucket,
                           Prefix=self._dir(key), MaxKeys=1)
        return found.get("KeyCount", 0) > 0

    def _is_object(self, key: str) -> bool:
        try:
            self._call("read", key, self.client.head_object, Bucket=self.bucket,
                       Key=self._key(key))
            return True
        except ClientError as err:
            if error_code(err) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _iter_keys(self, key: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._dir(key))
        for page in self._call("list", key, list, pages):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):  # "folder" markers some tools create
                    yield obj["Key"]

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        if recursive:
            return sorted(self._rel(k) for k in self._iter_keys(prefix))
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._dir(prefix), Delimiter="/")
        names = []
        for page in self._call("list", prefix, list, pages):
            names += [self._rel(o["Key"]) for o in page.get("Contents", [])
                      if not o["Key"].endswith("/")]
            names += [self._rel(p["Prefix"].rstrip("/")) + "/"
                      for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    def read_bytes(self, key: str) -> bytes:
        full = self._key(_nonempty(key))
        try:
            response = self._call("read", key, self.client.get_object,
                                  Bucket=self.bucket, Key=full)
        except ClientError as err:
            if error_code(err) in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no such file in storage: s3://{self.bucket}/{full}") from None
            raise
        return response["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        # One PUT replaces the object atomically; readers never see part of it.
        self._call("write", key, self.client.put_object, Bucket=self.bucket,
                   Key=self._key(_nonempty(key)), Body=data)

    def upload_dir(self, local_dir: str | os.PathLike, key: str) -> list[str]:
        source = Path(local_dir)
        if not source.is_dir():
            raise FileNotFoundError(f"not a directory: {source}")
        files = sorted(p for p in source.rglob("*") if p.is_file())
        keys = [join(key, f.relative_to(source).as_posix()) for f in files]
        client = self.client  # built once, here, not racing in the threads

        def upload(pair: tuple[Path, str]) -> None:
            file, rel = pair
            self._call("write", rel, client.upload_file, str(file), self.bucket, self._key(rel))

        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            list(pool.map(upload, zip(files, keys)))
        return keys

    def download_dir(self, key: str, local_dir: str | os.PathLike) -> list[Path]:
        dest_root = Path(local_dir)
        base = self._dir(key)
        full_keys = list(self._iter_keys(key))
        paths = [dest_root / k[len(base):] for k in full_keys]
        client = self.client

        def download(pair: tuple[str, Path]) -> None:
            full, dest = pair
            dest.parent.mkdir(parents=True, exist_ok=True)
            # s3transfer writes to a temporary name and renames, so a crash leaves no part.
            self._call("read", self._rel(full), client.download_file, self.bucket, full,
                       str(dest))

        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            list(pool.map(download, zip(full_keys, paths)))
        return paths

    def delete(self, key: str) -> int:
        full = self._key(_nonempty(key))
        doomed = list(self._iter_keys(key))
        if self._is_object(key):
            doomed.append(full)
        for start in range(0, len(doomed), 1000):  # DeleteObjects takes 1000 keys at most
            batch = [{"Key": k} for k in doomed[start:start + 1000]]
            response = self._call("delete", key, self.client.delete_objects, Bucket=self.bucket,
                                  Delete={"Objects": batch, "Quiet": True})
            # DeleteObjects answers 200 even when keys were refused; each refusal is in Errors.
            if errors := response.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"S3 refused to delete {len(errors)} of {len(batch)} object(s) under "
                    f"s3://{self.bucket}/{full}, e.g. {first.get('Key')}: {first.get('Code')} "
                    f"({first.get('Message', '').rstrip('.')}); they are still there",
                    "denied" if first.get("Code") in DENIED_CODES else "setting",
                )
        return len(doomed)
