"""Resolution of location, endpoint and region: config key, then env, then default."""

from __future__ import annotations

import pytest

from paralab.platform.config.schema import StorageConfig
from paralab.platform.storage import (
    LocalStorage,
    S3Settings,
    S3Storage,
    Storage,
    StorageError,
    resolve_location,
)

ENV = ("PARALAB_STORAGE", "PARALAB_HOME", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
       "AWS_REGION", "AWS_DEFAULT_REGION")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PARALAB_HOME", str(tmp_path / "proj"))


def test_default_is_project_storage_dir(tmp_path):
    storage = Storage.from_config(StorageConfig())
    assert isinstance(storage, LocalStorage)
    assert storage.root == (tmp_path / "proj" / ".paralab" / "storage").resolve()


def test_env_overrides_default_and_config_overrides_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PARALAB_STORAGE", "s3://envbucket/env/prefix")
    from_env = Storage.from_config()
    assert isinstance(from_env, S3Storage)
    assert (from_env.bucket, from_env.prefix) == ("envbucket", "env/prefix")
    assert "PARALAB_STORAGE" in from_env.location.source

    from_config = Storage.from_config(StorageConfig(uri=str(tmp_path / "cfg")))
    assert isinstance(from_config, LocalStorage)
    assert from_config.root == tmp_path / "cfg"


def test_bad_env_uri_is_rejected_like_the_key(monkeypatch):
    monkeypatch.setenv("PARALAB_STORAGE", "gs://bucket/x")
    with pytest.raises(StorageError, match="PARALAB_STORAGE.*gs://bucket/x"):
        resolve_location()


@pytest.mark.parametrize(("uri", "expected"), [
    ("ckpt", "proj/ckpt"),
    ("file://{tmp}/abs", "abs"),
    ("./a/../b", "proj/b"),
], ids=["relative", "file-uri", "dotted"])
def test_local_paths_are_absolute(uri, expected, tmp_path):
    location = resolve_location(StorageConfig(uri=uri.format(tmp=tmp_path)))
    assert location.path == (tmp_path / expected).resolve()


@pytest.mark.parametrize(("uri", "bucket", "prefix", "ray_path"), [
    ("s3://b", "b", "", "b"),
    ("s3://b/", "b", "", "b"),
    ("s3://b/x/y/", "b", "x/y", "b/x/y"),
], ids=["bucket", "bucket-slash", "prefix"])
def test_s3_uri_parsing(uri, bucket, prefix, ray_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
    storage = Storage.from_config(StorageConfig(uri=uri, endpoint_url="http://127.0.0.1:1"))
    assert (storage.bucket, storage.prefix) == (bucket, prefix)
    assert storage.ray_storage()[0] == ray_path
    assert storage.uri_of("k") == f"s3://{ray_path}/k"


def test_endpoint_and_region_precedence(monkeypatch):
    assert S3Settings.from_config().endpoint_url is None
    assert S3Settings.from_config().region == "us-east-1"

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env-generic:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    s = S3Settings.from_config()
    assert (s.endpoint_url, s.endpoint_source, s.region) == (
        "http://env-generic:9000", "env AWS_ENDPOINT_URL", "eu-west-1")

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://env-s3:9000/")
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    s = S3Settings.from_config()
    assert (s.endpoint_url, s.region) == ("https://env-s3:9000", "eu-north-1")

    s = S3Settings.from_config(StorageConfig(endpoint_url="http://cfg:1", region="ap-south-1"))
    assert (s.endpoint_url, s.endpoint_source, s.region) == (
        "http://cfg:1", "storage.endpoint_url", "ap-south-1")


def test_endpoint_with_path_is_refused():
    with pytest.raises(StorageError, match="storage.endpoint_url.*has a path"):
        S3Settings.from_config(StorageConfig(endpoint_url="http://host:9000/s3"))


@pytest.mark.parametrize(("endpoint", "override", "scheme"), [
    ("http://127.0.0.1:8333", "127.0.0.1:8333", "http"),
    ("https://minio.example.com", "minio.example.com", "https"),
], ids=["http-port", "https-default-port"])
def test_pyarrow_fs_gets_endpoint_and_keys(endpoint, override, scheme, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRETEXAMPLE")
    fs = S3Settings.from_config(StorageConfig(endpoint_url=endpoint, region="eu-west-3")).pyarrow_fs()
    # S3FileSystem pickles its options; that is also what Ray ships to workers.
    options = fs.__reduce__()[1][0]
    assert options["endpoint_override"] == override
    assert options["scheme"] == scheme
    assert options["region"] == "eu-west-3"
    assert options["access_key"] == "AKIDEXAMPLE"
    assert options["secret_key"] == "SECRETEXAMPLE"
