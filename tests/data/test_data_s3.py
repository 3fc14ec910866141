"""The s3:// cache: upload after preparing, download on another machine, refuse a corrupt copy
on a worker and rebuild it (keeping the damaged one) where the source is at hand.

S3 is moto's in-process mock; the real SeaweedFS server is exercised by the `s3`-marked tests
of the platform.
"""

from __future__ import annotations

import boto3
import numpy as np
import pytest
from moto import mock_aws

import paralab.platform.data.shards as shards
from paralab.platform.config.schema import DataConfig
from paralab.platform.data import DataError, S3Mirror, load_prepared, prepare
from paralab.platform.data.s3 import parse_s3_uri


@pytest.fixture
def bucket(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="paralab")
        yield client


@pytest.fixture
def cfg():
    return DataConfig(source="bible", max_tokens=20_000, seq_len=16, cache_dir="s3://paralab/data/")


def _no_build(*args, **kwargs):
    raise AssertionError("tokenized although the S3 cache has the entry")


def test_round_trip(bucket, cfg, tmp_path, monkeypatch):
    built = prepare(cfg, tmp_path / "machine-a")
    listed = bucket.list_objects_v2(Bucket="paralab", Prefix="data/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        f"data/{built.key}/{name}" for name in ("meta.json", "train.bin", "val.bin")]

    monkeypatch.setattr(shards, "_build", _no_build)
    reports = []
    fetched = load_prepared(cfg, built.key, tmp_path / "machine-b", progress=reports.append)
    assert fetched.directory == tmp_path / "machine-b" / built.key
    assert np.array_equal(fetched.train, built.train) and np.array_equal(fetched.val, built.val)
    assert fetched.meta == built.meta
    assert {r.stage for r in reports} == {"download train.bin", "download val.bin"}
    assert all(r.unit == "bytes" for r in reports)
    last = [r for r in reports if r.stage == "download train.bin"][-1]
    assert last.done == last.total == 2 * len(built.train)

    again = prepare(cfg, tmp_path / "machine-c")  # prepare() also downloads instead of building
    assert np.array_equal(again.train, built.train)


def test_local_entry_is_uploaded_when_missing(bucket, cfg, tmp_path):
    local_only = DataConfig(source="bible", max_tokens=20_000, seq_len=16)
    key = prepare(local_only, tmp_path / "cache").key
    assert not S3Mirror(cfg.cache_dir).has(key)
    prepare(cfg, tmp_path / "cache")
    assert S3Mirror(cfg.cache_dir).has(key)


def test_corrupt_copy_is_refused(bucket, cfg, tmp_path, monkeypatch):
    built = prepare(cfg, tmp_path / "machine-a")
    flipped = np.asarray(built.val).copy()
    flipped[0] ^= 1
    bucket.put_object(Bucket="paralab", Key=f"data/{built.key}/val.bin", Body=flipped.tobytes())
    monkeypatch.setattr(shards, "_build", _no_build)
    with pytest.raises(DataError, match=r"data.cache_dir='s3://paralab/data/'.*corrupt .*; "
                                        r"preparing the data again"):
        load_prepared(cfg, built.key, tmp_path / "machine-b")
    assert not (tmp_path / "machine-b" / built.key).exists()


def test_incomplete_copy_is_refused_by_what_is_missing(bucket, cfg, tmp_path, monkeypatch):
    """A shard deleted under its meta.json is not an S3 connection problem."""
    built = prepare(cfg, tmp_path / "machine-a")
    bucket.delete_object(Bucket="paralab", Key=f"data/{built.key}/val.bin")
    monkeypatch.setattr(shards, "_build", _no_build)
    with pytest.raises(DataError, match=r"the copy of .* there is incomplete \(val.bin is missing "
                                        r"under its meta.json\); preparing the data again .* sets it aside "
                                        r"and rebuilds it"):
        load_prepared(cfg, built.key, tmp_path / "machine-b")


def _objects(bucket, prefix: str) -> dict[str, bytes]:
    listed = bucket.list_objects_v2(Bucket="paralab", Prefix=prefix).get("Contents", [])
    return {o["Key"]: bucket.get_object(Bucket="paralab", Key=o["Key"])["Body"].read()
            for o in listed}


@pytest.mark.parametrize("damage", ["corrupt", "incomplete"])
def test_prepare_sets_a_damaged_copy_aside_and_rebuilds_it(bucket, cfg, tmp_path, monkeypatch,
                                                           caplog, damage):
    built = prepare(cfg, tmp_path / "machine-a")
    key = built.key
    if damage == "corrupt":
        flipped = np.asarray(built.val).copy()
        flipped[0] ^= 1
        bucket.put_object(Bucket="paralab", Key=f"data/{key}/val.bin", Body=flipped.tobytes())
    else:
        bucket.delete_object(Bucket="paralab", Key=f"data/{key}/val.bin")
    damaged = _objects(bucket, f"data/{key}/")

    rebuilt = prepare(cfg, tmp_path / "machine-b")  # the driver: it has the source
    assert np.array_equal(rebuilt.train, built.train) and np.array_equal(rebuilt.val, built.val)
    warning = [r.getMessage() for r in caplog.records if "rebuilding it from the source" in r.message]
    assert len(warning) == 1 and damage in warning[0]

    # The damaged objects are kept, byte for byte, under one new name beside the entry ...
    aside = {k: v for k, v in _objects(bucket, "data/").items() if ".damaged-" in k}
    folders = {k.split("/")[1] for k in aside}
    assert len(folders) == 1 and next(iter(folders)).startswith(f"{key}.damaged-")
    assert warning[0].endswith(f"moved it to s3://paralab/data/{next(iter(folders))}/; rebuilding it "
                               "from the source")
    assert {k.rsplit("/", 1)[1]: v for k, v in aside.items()} == {
        k.rsplit("/", 1)[1]: v for k, v in damaged.items()}
    # ... and the entry itself is whole again: a worker downloads it without tokenizing.
    monkeypatch.setattr(shards, "_build", _no_build)
    fetched = load_prepared(cfg, key, tmp_path / "machine-c")
    assert np.array_equal(fetched.val, built.val)


def test_missing_entry_and_bucket(bucket, cfg, tmp_path):
    with pytest.raises(DataError, match=r"'bible-0000' is not in .* or s3://paralab/data/"):
        load_prepared(cfg, "bible-0000", tmp_path)
    cfg.cache_dir = "s3://no-such-bucket/data"
    with pytest.raises(DataError, match=r"data.cache_dir='s3://no-such-bucket/data': S3 request failed"):
        prepare(cfg, tmp_path)


def test_endpoint_from_argument_or_env(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    assert S3Mirror("s3://b/p").client.meta.endpoint_url == "http://127.0.0.1:8333"
    explicit = S3Mirror("s3://b/p", endpoint_url="http://127.0.0.1:9000", region="eu-west-1")
    assert explicit.client.meta.endpoint_url == "http://127.0.0.1:9000"
    assert explicit.client.meta.region_name == "eu-west-1"


def test_shards_go_where_checkpoints_go(monkeypatch):
    """The S3-specific endpoint wins over the generic one for the data cache as for storage:
    else shards and checkpoints would land on two different servers."""
    from paralab.platform.storage.settings import S3Settings

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    mirror = S3Mirror("s3://b/p")
    assert mirror.client.meta.endpoint_url == S3Settings.from_config().endpoint_url
    assert mirror.client.meta.endpoint_url == "http://127.0.0.1:9000"


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(DataError, match="has no bucket"):
        parse_s3_uri("s3:///prefix")


@pytest.mark.s3
def test_a_damaged_copy_is_set_aside_on_a_real_server(seaweedfs, tmp_path):
    """The set-aside's copies and deletes against SeaweedFS (signatures checked), not moto."""
    cfg = DataConfig(source="bible", max_tokens=20_000, seq_len=16,
                     cache_dir=f"s3://{seaweedfs.bucket}/data-aside")
    client = seaweedfs.client()
    built = prepare(cfg, tmp_path / "machine-a", endpoint_url=seaweedfs.endpoint_url,
                    region=seaweedfs.region)
    client.delete_object(Bucket=seaweedfs.bucket, Key=f"data-aside/{built.key}/val.bin")
    rebuilt = prepare(cfg, tmp_path / "machine-b", endpoint_url=seaweedfs.endpoint_url,
                      region=seaweedfs.region)
    assert np.array_equal(rebuilt.val, built.val)
    keys = sorted(o["Key"] for o in client.list_objects_v2(
        Bucket=seaweedfs.bucket, Prefix="data-aside/")["Contents"])
    aside = [k for k in keys if ".damaged-" in k]
    assert [k.rsplit("/", 1)[1] for k in aside] == ["meta.json", "train.bin"]
    assert [k for k in keys if ".damaged-" not in k] == [
        f"data-aside/{built.key}/{name}" for name in ("meta.json", "train.bin", "val.bin")]
