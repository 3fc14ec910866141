"""Shared fixtures: the `paralab` CLI in a subprocess with its own home, and a real S3 server.

Plain helpers live in `paralab_testing.py`, which tests import by that unique name.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from paralab_testing import ROOT, run_paralab


def _stray_mlflow_dirs() -> set[Path]:
    return {p for p in [ROOT / "mlruns", *(ROOT / "tests").rglob("mlruns")] if p.exists()}


@pytest.fixture(scope="session", autouse=True)
def _tests_write_no_mlruns_into_the_checkout():
    """MLflow falls back to ``./mlruns`` in the cwd for an experiment made without an artifact
    location; tests must keep every artifact in their own temporary homes."""
    before = _stray_mlflow_dirs()
    yield
    stray = _stray_mlflow_dirs() - before
    assert not stray, f"tests wrote MLflow artifacts into the checkout: {sorted(map(str, stray))}"


@pytest.fixture
def paralab_cli(tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    def call(*args: str, home: Path | None = None, env: dict[str, str] | None = None):
        return run_paralab(home or tmp_path / "home", *args, env=env)

    return call


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real S3 server (SeaweedFS) on loopback for the session, with a bucket and fresh
    credentials in the environment; the endpoint is passed explicitly."""
    from paralab.platform.services import seaweedfs_for_tests

    with seaweedfs_for_tests(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
