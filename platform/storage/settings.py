"""Resolve where storage lives from a :class:`StorageConfig` and the environment.

Precedence, for every setting: the config key, then the environment, then a default.

============  ===========================  ====================================================
setting       config key                   environment, then default
============  ===========================  ====================================================
location      ``storage.uri``              ``PARALAB_STORAGE``, else ``<project>/.paralab/storage``
endpoint      ``storage.endpoint_url``     ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, else AWS
region        ``storage.region``           ``AWS_REGION``, ``AWS_DEFAULT_REGION``, else ``us-east-1``
credentials   (never in YAML)              boto3's chain: env keys, ``AWS_PROFILE``, files, roles
============  ===========================  ====================================================

boto3 reads the endpoint variables itself but pyarrow does not, so both clients are built
from the one :class:`S3Settings` here and always agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig

from paralab.platform.config.schema import StorageConfig, project_dir
from paralab.platform.storage.errors import StorageError

if TYPE_CHECKING:
    import pyarrow.fs

DEFAULT_REGION = "us-east-1"
# Credentials that boto3 read from a static place can be handed to pyarrow as-is. Anything
# else (instance roles, SSO, assumed roles) expires, so pyarrow must refresh it through its
# own AWS SDK chain instead of receiving a frozen copy.
STATIC_CREDENTIAL_METHODS = ("env", "explicit", "shared-credentials-file", "config-file",
                             "boto-config")


@dataclass(frozen=True)
class Location:
    """Where the storage root is: a local directory or an S3 bucket and prefix."""

    scheme: str
    """``"local"`` or ``"s3"``."""
    path: Path | None
    """Absolute local directory (local only)."""
    bucket: str
    """Bucket name (S3 only; empty for local)."""
    prefix: str
    """Key prefix inside the bucket without leading or trailing slash (S3 only; may be empty)."""
    source: str
    """Which setting gave it, e.g. ``storage.uri='s3://b/p'`` or ``env PARALAB_STORAGE=...``."""

    @property
    def uri(self) -> str:
        """``s3://bucket/prefix`` or the absolute local path."""
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return str(self.path)


def resolve_location(config: StorageConfig | None = None) -> Location:
    """Where the storage root is, from ``config.uri``, ``$PARALAB_STORAGE`` or the default.

    Relative local paths are taken relative to the project directory (``$PARALAB_HOME`` or
    the current directory), so that Ray workers, which need absolute paths, agree.
    """
    config = config or StorageConfig()
    if config.uri:
        raw, source = config.uri, f"storage.uri={config.uri!r}"
    elif os.environ.get("PARALAB_STORAGE"):
        raw = os.environ["PARALAB_STORAGE"]
        source = f"env PARALAB_STORAGE={raw!r}"
        try:
            StorageConfig(uri=raw)  # the same checks as the config key
        except ValueError as err:
            raise StorageError(f"env PARALAB_STORAGE: {err}") from None
    else:
        path = project_dir() / ".paralab" / "storage"
        return Location("local", path, "", "", f"default {path}")
    if raw.startswith("s3://"):
        bucket, _, prefix = raw[5:].partition("/")
        return Location("s3", None, bucket, prefix.strip("/"), source)
    if raw.startswith("file://"):
        raw = raw[7:]
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = project_dir() / path
    return Location("local", path.resolve(), "", "", source)


@dataclass(frozen=True)
class S3Settings:
    """Endpoint, region and credential lookup shared by boto3 and pyarrow clients."""

    endpoint_url: str | None
    """``http(s)://host[:port]`` of a non-AWS server, or None for AWS itself."""
    region: str
    """Region sent with every signed request."""
    endpoint_source: str
    """Which setting gave the endpoint, for error messages."""

    @classmethod
    def from_config(cls, config: StorageConfig | None = None) -> S3Settings:
        """Resolve endpoint and region from ``config``, then the environment, then defaults."""
        config = config or StorageConfig()
        endpoint, source = config.endpoint_url, "storage.endpoint_url"
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if not endpoint and os.environ.get(var):
                endpoint, source = os.environ[var], f"env {var}"
        if not endpoint:
            endpoint, source = None, "the AWS default endpoint"
        else:
            endpoint = endpoint.rstrip("/")
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise StorageError(f"{source}={endpoint!r} must look like http://host:port")
            if parts.path not in ("", "/"):
                raise StorageError(f"{source}={endpoint!r} has a path; S3 endpoints are "
                                   f"scheme://host:port only")
        region = (config.region or os.environ.get("AWS_REGION")
                  or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION)
        return cls(endpoint, region, source)

    def describe_endpoint(self) -> str:
        """The endpoint and where it came from, for messages."""
        if self.endpoint_url is None:
            return f"AWS S3 ({self.region})"
        return f"{self.endpoint_url} (from {self.endpoint_source})"

    def cli_endpoint_flag(self) -> str:
        """`` --endpoint-url URL`` for an `aws` command line, or nothing for AWS."""
        return f" --endpoint-url {self.endpoint_url}" if self.endpoint_url else ""

    def session(self) -> boto3.Session:
        """A boto3 session with this region; credentials come from boto3's standard chain
        (``AWS_ACCESS_KEY_ID``..., then ``AWS_PROFILE`` and ``~/.aws``, then roles)."""
        return boto3.Session(region_name=self.region)

    def credential_source(self) -> str:
        """A short note on where boto3 found credentials (``env``, ``shared-credentials-file``...)."""
        creds = self.session().get_credentials()
        if creds is None:
            return "nowhere"
        return f"{creds.method}, key id {creds.access_key[:4]}..."

    def client(self, *, connect_timeout: float = 5.0, read_timeout: float = 60.0,
               max_attempts: int = 5):
        """A boto3 S3 client for these settings.

        Non-AWS endpoints get path-style addressing (``host/bucket/key``), which MinIO and
        SeaweedFS serve without wildcard DNS.
        """
        config = BotoConfig(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        return self.session().client("s3", endpoint_url=self.endpoint_url, config=config)

    def pyarrow_fs(self) -> pyarrow.fs.S3FileSystem:
        """A ``pyarrow.fs.S3FileSystem`` for these settings.

        pyarrow ignores ``AWS_ENDPOINT_URL``, so the endpoint is passed as
        ``endpoint_override="host:port"`` with ``scheme``. Static credentials are passed in;
        refreshable ones are left to pyarrow's own chain (see ``STATIC_CREDENTIAL_METHODS``).
        """
        from pyarrow import fs

        kwargs: dict = {"region": self.region, "connect_timeout": 5.0}
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            kwargs["scheme"] = parts.scheme
            kwargs["endpoint_override"] = parts.netloc
        creds = self.session().get_credentials()
        if creds is not None and creds.method in STATIC_CREDENTIAL_METHODS:
            frozen = creds.get_frozen_credentials()
            kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key,
                          session_token=frozen.token)
        return fs.S3FileSystem(**kwargs)


def s3_client(config: StorageConfig | None = None, **client_options):
    """A boto3 S3 client with the endpoint, region and credentials paralab uses.

    ``client_options`` go to :meth:`S3Settings.client` (``connect_timeout``,
    ``read_timeout``, ``max_attempts``).
    """
    return S3Settings.from_config(config).client(**client_options)
