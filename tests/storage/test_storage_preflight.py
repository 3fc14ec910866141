"""Preflight turns each common misconfiguration into one line that names the setting."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from paralab.platform.config.schema import StorageConfig
from paralab.platform.services.process import free_ports
from paralab.platform.storage import Storage, StorageError, preflight


def assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"


@pytest.mark.s3
def test_ok_leaves_nothing_behind(seaweedfs, s3_storage):
    s3_storage.preflight()
    assert s3_storage.list() == []


@pytest.mark.s3
def test_unreachable_endpoint_fails_fast(seaweedfs):
    (closed_port,) = free_ports(1)  # nothing listens there
    endpoint = f"http://127.0.0.1:{closed_port}"
    config = StorageConfig(uri=f"s3://{seaweedfs.bucket}/x", endpoint_url=endpoint)
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        preflight(config)
    assert time.monotonic() - start < 10
    assert err.value.reason == "unreachable"
    assert_one_line(err, endpoint, "storage.endpoint_url", "connection refused")


@pytest.mark.s3
def test_unreachable_endpoint_from_env_names_the_variable(seaweedfs, monkeypatch):
    (closed_port,) = free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(StorageError) as err:
        preflight(StorageConfig(uri=f"s3://{seaweedfs.bucket}/x"))
    assert_one_line(err, "env AWS_ENDPOINT_URL")


@pytest.mark.s3
@pytest.mark.parametrize(("variable", "code"), [
    ("AWS_SECRET_ACCESS_KEY", "SignatureDoesNotMatch"),
    ("AWS_ACCESS_KEY_ID", "InvalidAccessKeyId"),
], ids=["wrong-secret", "unknown-key"])
def test_wrong_credentials(seaweedfs, monkeypatch, variable, code):
    monkeypatch.setenv(variable, "WRONG" + uuid.uuid4().hex)
    with pytest.raises(StorageError) as err:
        preflight(seaweedfs.storage_config("x"))
    assert err.value.reason == "credentials"
    assert_one_line(err, code, "AWS_ACCESS_KEY_ID", seaweedfs.endpoint_url)


@pytest.mark.s3
def test_no_credentials_at_all(seaweedfs, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    # Keep boto3 away from ~/.aws and from the EC2 metadata service.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError) as err:
        preflight(seaweedfs.storage_config("x"))
    assert err.value.reason == "credentials"
    assert_one_line(err, "no S3 credentials", "AWS_ACCESS_KEY_ID")


@pytest.mark.s3
def test_missing_bucket_says_how_to_create_it_and_creates_nothing(seaweedfs):
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    config = StorageConfig(uri=f"s3://{bucket}/ckpt", endpoint_url=seaweedfs.endpoint_url)
    with pytest.raises(StorageError) as err:
        preflight(config)
    assert err.value.reason == "bucket"
    assert_one_line(err, f"bucket {bucket!r} does not exist", f"aws s3 mb s3://{bucket}",
                    f"--endpoint-url {seaweedfs.endpoint_url}", "create_bucket=True", "storage.uri=")
    names = [b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]]
    assert bucket not in names


@pytest.mark.s3
def test_create_bucket_flag_creates_it(seaweedfs):
    bucket = f"made-{uuid.uuid4().hex[:8]}"
    config = StorageConfig(uri=f"s3://{bucket}/ckpt", endpoint_url=seaweedfs.endpoint_url)
    storage = preflight(config, create_bucket=True)
    storage.write_bytes("k", b"v")
    assert seaweedfs.client().get_object(Bucket=bucket, Key="ckpt/k")["Body"].read() == b"v"
    assert storage.list() == ["k"], "the preflight probe object was deleted"


@pytest.mark.s3
def test_operations_explain_errors_too(seaweedfs, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    storage = Storage.from_config(seaweedfs.storage_config("x"))
    with pytest.raises(StorageError, match="SignatureDoesNotMatch"):
        storage.write_bytes("k", b"v")


def test_local_ok_creates_the_directory(tmp_path):
    storage = Storage.from_config(StorageConfig(uri=str(tmp_path / "a" / "b")))
    storage.preflight()
    assert (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == [], "the write probe is gone"


def test_local_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    uri = str(tmp_path / "file" / "store")
    with pytest.raises(StorageError) as err:
        preflight(StorageConfig(uri=uri))
    assert err.value.reason == "local"
    assert_one_line(err, uri, "storage.uri", "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_local_read_only_is_refused(tmp_path, monkeypatch):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    monkeypatch.setenv("PARALAB_STORAGE", str(readonly / "store"))
    try:
        with pytest.raises(StorageError) as err:
            preflight()
    finally:
        readonly.chmod(0o755)
    assert_one_line(err, "not writable", "PARALAB_STORAGE")
    assert not (readonly / "store").exists(), "nothing written on failure"
