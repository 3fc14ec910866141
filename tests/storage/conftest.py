"""Fixtures for storage tests: a real SeaweedFS for the session, and one storage per backend.

The session's SeaweedFS server is the ``seaweedfs`` fixture of ``tests/conftest.py``,
shared with every other test folder.
"""

from __future__ import annotations

import uuid

import pytest

from paralab.platform.config.schema import StorageConfig
from paralab.platform.storage import Storage


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
