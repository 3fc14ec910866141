"""A throw-away SeaweedFS for tests, shared by every test folder.

A test folder's conftest needs only::

    @pytest.fixture(scope="session")
    def seaweedfs(tmp_path_factory):
        with seaweedfs_for_tests(tmp_path_factory.mktemp("seaweedfs")) as s3:
            yield s3
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from paralab.platform.config.schema import StorageConfig
from paralab.platform.services.seaweedfs import SeaweedFS, random_credentials

# Variables that would change which credentials boto3 picks, hidden while the server runs.
_MASKED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@dataclass(frozen=True)
class S3TestServer:
    """A running SeaweedFS with one bucket and the credentials that open it."""

    endpoint_url: str
    """``http://127.0.0.1:<port>``."""
    bucket: str
    """A bucket that exists, empty at the start of the session."""
    access_key: str
    """Admin access key (also in ``$AWS_ACCESS_KEY_ID`` while the server runs)."""
    secret_key: str = field(repr=False)
    """Admin secret key (also in ``$AWS_SECRET_ACCESS_KEY``)."""
    region: str
    """Region to sign with."""
    server: SeaweedFS = field(repr=False)
    """The server itself, e.g. to restart it."""

    def storage_config(self, prefix: str = "") -> StorageConfig:
        """A ``StorageConfig`` for ``s3://bucket/prefix`` on this server."""
        uri = f"s3://{self.bucket}/{prefix}".rstrip("/")
        return StorageConfig(uri=uri, endpoint_url=self.endpoint_url, region=self.region)

    def client(self):
        """A boto3 client with the admin credentials."""
        return self.server.client()

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (e.g. a Ray worker) that should use this server."""
        return self.server.env()


@contextmanager
def seaweedfs_for_tests(base_dir: str | os.PathLike, *, bucket: str = "paralab-test",
                        set_env: bool = True) -> Iterator[S3TestServer]:
    """Start SeaweedFS under ``base_dir`` with fresh random credentials; stop it afterwards.

    With ``set_env``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` hold the new keys (and
    ``AWS_SESSION_TOKEN``/``AWS_PROFILE`` are hidden) until the block ends, so code that
    reads the standard chain finds them. The endpoint is *not* put in the environment:
    tests pass it explicitly (``storage_config()``), so that moto-based tests elsewhere in
    the same session keep reaching moto.
    """
    access_key, secret_key = random_credentials()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", *_MASKED)}
    if set_env:
        for key in _MASKED:
            os.environ.pop(key, None)
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = access_key, secret_key
    server = SeaweedFS(Path(base_dir) / "data", access_key=access_key, secret_key=secret_key,
                       buckets=[bucket])
    try:
        server.start()
        yield S3TestServer(server.endpoint_url, bucket, access_key, secret_key, server.region,
                           server)
    finally:
        # The data is thrown away, so there is nothing to flush: skip the 4-12 s clean exit.
        server.stop(timeout=1)
        if set_env:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
