"""Against a real SeaweedFS: the pyarrow filesystem Ray gets, and restarts."""

from __future__ import annotations

import uuid

import pytest

from paralab.platform.config.schema import StorageConfig
from paralab.platform.services import SeaweedFS
from paralab.platform.storage import Storage, ray_storage

pytestmark = pytest.mark.s3


def test_ray_storage_filesystem_writes_where_boto3_looks(seaweedfs):
    prefix = f"ray/{uuid.uuid4().hex[:8]}"
    storage_path, fs = ray_storage(seaweedfs.storage_config(prefix))
    assert storage_path == f"{seaweedfs.bucket}/{prefix}"

    # What Ray Train does: write files below storage_path/<run name>/ through the fs.
    fs.create_dir(f"{storage_path}/run-1/checkpoint_0")
    with fs.open_output_stream(f"{storage_path}/run-1/checkpoint_0/model.pt") as out:
        out.write(b"weights")

    listed = seaweedfs.client().list_objects_v2(Bucket=seaweedfs.bucket, Prefix=prefix + "/")
    keys = [obj["Key"] for obj in listed.get("Contents", []) if not obj["Key"].endswith("/")]
    assert keys == [f"{prefix}/run-1/checkpoint_0/model.pt"]
    storage = Storage.from_config(seaweedfs.storage_config(prefix))
    assert storage.read_bytes("run-1/checkpoint_0/model.pt") == b"weights"


def test_ray_storage_filesystem_survives_pickling(seaweedfs):
    """Ray ships the filesystem to workers by pickle; the copy must still reach the server."""
    import pickle

    storage_path, fs = ray_storage(seaweedfs.storage_config("pickled"))
    copy = pickle.loads(pickle.dumps(fs))
    with copy.open_output_stream(f"{storage_path}/x") as out:
        out.write(b"1")
    assert seaweedfs.client().get_object(Bucket=seaweedfs.bucket, Key="pickled/x")["Body"].read() == b"1"


def test_data_survives_restart(tmp_path, seaweedfs):
    server = SeaweedFS(tmp_path / "s3", buckets=["keep"])
    with server:
        config = StorageConfig(uri="s3://keep/p", endpoint_url=server.endpoint_url)
        Storage.from_config(config).write_bytes("ckpt/model.pt", b"step 7")
        first_endpoint, first_pid = server.endpoint_url, server.pid
    assert not server.running
    with server:
        assert server.endpoint_url == first_endpoint, "a restart keeps its ports"
        assert server.pid != first_pid
        assert Storage.from_config(config).read_bytes("ckpt/model.pt") == b"step 7"


    # Its own logs stay with its data: nothing is left in the temp dir per start.
    assert any((tmp_path / "s3" / "logs").glob("weed.*.log.INFO.*"))


def test_the_data_folder_is_the_owners_alone(seaweedfs):
    """Checkpoints and data sit in the server's folder as plain files: other local users must
    not read them past the S3 credentials."""
    import stat

    data_dir = seaweedfs.server.data_dir
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "logs").stat().st_mode) == 0o700
