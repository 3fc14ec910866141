"""Mirror prepared shards to `s3://bucket/prefix/<key>/` and fetch them on other machines.

An entry is complete once its `meta.json` exists: uploads write the shards first and
`meta.json` last, and downloads read `meta.json` first and check the shard sizes against it.
The endpoint and region are resolved as for storage (``S3Settings``): the arguments (the
run's `storage.endpoint_url` and `storage.region`), else env `AWS_ENDPOINT_URL_S3`, then
`AWS_ENDPOINT_URL` (MinIO, SeaweedFS, ...); credentials come from boto3's usual chain.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paralab.platform.errors import first_line

from .errors import DamagedCopy, DataError

SHARDS = ("train.bin", "val.bin")
REBUILD_HINT = ("preparing the data again (`paralab run` and `paralab sweep` do, before any "
                "worker starts) sets it aside and rebuilds it")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``."""
    if not uri.startswith("s3://"):
        raise DataError(f"data.cache_dir={uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise DataError(f"data.cache_dir={uri!r} has no bucket; use s3://bucket/prefix")
    return bucket, prefix.strip("/")


class S3Mirror:
    """The prepared-data entries under one `s3://bucket/prefix` URI."""

    def __init__(self, uri: str, *, endpoint_url: str | None = None, region: str | None = None,
                 client: Any = None) -> None:
        self.uri = uri
        self.bucket, self.prefix = parse_s3_uri(uri)
        if client is None:
            from paralab.platform.config.schema import StorageConfig
            from paralab.platform.storage.settings import s3_client

            # The same endpoint, region and addressing as the run's checkpoints, so that shards
            # and checkpoints never land on two different servers.
            client = s3_client(StorageConfig(endpoint_url=endpoint_url, region=region))
        self.client = client

    def _object(self, key: str, name: str) -> str:
        return "/".join(p for p in (self.prefix, key, name) if p)

    def has(self, key: str) -> bool:
        """Whether a complete entry `key` exists (its `meta.json` is there)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object(key, "meta.json"))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(e) from e
        except Exception as e:  # no credentials, endpoint unreachable, ...
            raise self._error(e) from e

    def upload(self, local_dir: Path, key: str,
               progress: Callable[[str, int, int], None] | None = None) -> None:
        """Upload the shards, then `meta.json`, which marks the entry complete."""
        for name in (*SHARDS, "meta.json"):
            path = local_dir / name
            callback = _byte_counter(progress, f"upload {name}", path.stat().st_size)
            try:
                self.client.upload_file(str(path), self.bucket, self._object(key, name),
                                        Callback=callback)
            except Exception as e:
                raise self._error(e) from e

    def download(self, key: str, dest_dir: Path,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """Download entry `key` into `dest_dir` (which must exist); returns its meta."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._object(key, "meta.json"))
            meta = json.loads(body["Body"].read())
            (dest_dir / "meta.json").write_text(json.dumps(meta, indent=2))
            for name in SHARDS:
                size = self._size(key, name)
                self.client.download_file(self.bucket, self._object(key, name),
                                          str(dest_dir / name),
                                          Callback=_byte_counter(progress, f"download {name}", size))
        except DataError:
            raise
        except Exception as e:
            raise self._error(e) from e
        return meta

    def _size(self, key: str, name: str) -> int:
        """A shard's size; a shard missing under a `meta.json` is an incomplete copy."""
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._object(key, name))["ContentLength"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise DamagedCopy(
                    f"data.cache_dir={self.uri!r}: the copy of {key!r} there is incomplete ({name} "
                    f"is missing under its meta.json); {REBUILD_HINT}"
                ) from None
            raise

    def set_aside(self, key: str) -> str:
        """Move entry `key` to `<key>.damaged-<UTC time>` under the same prefix and return that
        URI: its `meta.json` goes first, so no reader takes what is left for a complete entry.
        Nothing is deleted before its copy exists."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = f"{key}.damaged-{stamp}-{uuid.uuid4().hex[:6]}"
        try:
            listed = self.client.list_objects_v2(Bucket=self.bucket,
                                                 Prefix=self._object(key, "") + "/")
            names = [o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])]
            names.sort(key=lambda name: name != "meta.json")
            for name in names:
                # The managed copy: multipart past 5 GiB, where a single CopyObject stops.
                self.client.copy({"Bucket": self.bucket, "Key": self._object(key, name)},
                                 self.bucket, self._object(aside, name))
            for name in names:
                self.client.delete_object(Bucket=self.bucket, Key=self._object(key, name))
        except Exception as e:
            raise self._error(e) from e
        return f"s3://{self.bucket}/{self._object(aside, '')}/"

    def _error(self, e: BaseException) -> DataError:
        return DataError(
            f"data.cache_dir={self.uri!r}: S3 request failed ({first_line(e, typed=True)}); "
            "check the endpoint (storage.endpoint_url or AWS_ENDPOINT_URL), the bucket and the "
            "credentials"
        )


def _byte_counter(progress: Callable[[str, int, int], None] | None, stage: str,
                  total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    done = 0

    def callback(n: int) -> None:
        nonlocal done
        done += n
        progress(stage, done, total)

    progress(stage, 0, total)
    return callback
