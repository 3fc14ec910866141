"""Where checkpoints and run outputs live: a local directory or an S3 prefix.

    storage = Storage.from_config(cfg.storage)   # config, then env, then default
    storage.preflight()                          # one-line StorageError if it cannot work
    path, fs = storage.ray_storage()             # RunConfig(storage_path=path, storage_filesystem=fs)
    storage.child(run_hash).write_bytes("config.yaml", text.encode())

See ``docs/storage.md`` for pointing paralab at AWS, MinIO or SeaweedFS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paralab.platform.storage.backends import LocalStorage, S3Storage, Storage, join
from paralab.platform.storage.errors import StorageError
from paralab.platform.storage.settings import Location, S3Settings, resolve_location, s3_client

if TYPE_CHECKING:
    import pyarrow.fs

    from paralab.platform.config.schema import StorageConfig


def ray_storage(config: StorageConfig | None = None) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig``; see
    :meth:`Storage.ray_storage`. ``config`` is a ``StorageConfig`` (None: env and defaults)."""
    return Storage.from_config(config).ray_storage()


def preflight(config: StorageConfig | None = None, *, create_bucket: bool = False) -> Storage:
    """Check the configured storage (see :meth:`Storage.preflight`) and return it."""
    storage = Storage.from_config(config)
    storage.preflight(create_bucket=create_bucket)
    return storage


__all__ = [
    "LocalStorage",
    "Location",
    "S3Settings",
    "S3Storage",
    "Storage",
    "StorageError",
    "join",
    "preflight",
    "ray_storage",
    "resolve_location",
    "s3_client",
]
