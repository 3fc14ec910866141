"""Shared helpers for the data-pipeline tests: small configs and a private cache folder."""

from __future__ import annotations

import pytest

from paralab.platform.config.schema import DataConfig


@pytest.fixture
def cache(tmp_path):
    """A fresh local cache folder for prepare()."""
    return tmp_path / "cache"


@pytest.fixture
def small_bible():
    """The bible corpus capped at 20k tokens: 19.8k train, 200 val; seq_len 16."""
    return DataConfig(source="bible", max_tokens=20_000, seq_len=16)


@pytest.fixture(autouse=True)
def _project_home(tmp_path, monkeypatch):
    # prepare() falls back to $PARALAB_HOME/.paralab/data; keep any stray default out of the repo.
    monkeypatch.setenv("PARALAB_HOME", str(tmp_path / "home"))
