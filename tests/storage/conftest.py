"""Fixtures for storage tests: a real SeaweedFS for the session, and one storage per backend.

Other test folders reuse the server the same way, through
:func:`paralab.platform.services.seaweedfs_for_tests`.
"""

from __future__ import annotations

import uuid

import pytest

from paralab.platform.config.schema import StorageConfig
from paralab.platform.services import S3TestServer, seaweedfs_for_tests
from paralab.platform.storage import Storage


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> S3TestServer:
    """A SeaweedFS on loopback with a bucket and fresh credentials (also in the env)."""
    with seaweedfs_for_tests(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_storage(seaweedfs, request) -> Storage:
    """An S3 storage under a fresh prefix of the session bucket."""
    return Storage.from_config(seaweedfs.storage_config(f"t/{uuid.uuid4().hex[:8]}"))


@pytest.fixture
def local_storage(tmp_path) -> Storage:
    """A local storage in a fresh directory."""
    return Storage.from_config(StorageConfig(uri=str(tmp_path / "store")))


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage(request) -> Storage:
    """Each backend in turn; S3-backed cases carry the ``s3`` marker."""
    return request.getfixturevalue(f"{request.param}_storage")
