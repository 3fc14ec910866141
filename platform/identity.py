"""Run identity: a content hash of the resolved experiment plus the code version.

The identity names the run's storage folder and is an MLflow tag, so re-running the same
experiment finds its own checkpoints and MLflow run without being told where they are.
A change to the code that computes a run (models, kernels, the training loop, data) gives a
new identity, so a run never resumes under other code.
Keys that change where results go or how often they are printed, but not the results
themselves, are left out of the hash.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from paralab.platform.config.load import to_dict
from paralab.platform.config.schema import ExperimentConfig

# Dotted keys that never change what a run computes.
NON_SEMANTIC = (
    "storage",
    "sweep",
    "scaling",
    "tracking",
    "data.cache_dir",
    "train.log_every",
    "train.max_failures",
    "train.keep_checkpoints",
    "train.cpus_per_worker",
)


@cache
def package_version() -> str:
    try:
        return version("paralab")
    except PackageNotFoundError:
        return "0+unknown"


@cache
def git_commit() -> str | None:
    """The commit of the checkout paralab runs from, or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


COMPUTING_PACKAGES = (
    "paralab.models",
    "paralab.kernels",
    "paralab.platform.train",
    "paralab.platform.data",
)
"""The code whose edits can change what a run computes. The CLI, sweeps, tracking, storage
and job submission are left out: fixing a message there must not restart runs from step 0."""


@cache
def source_hash() -> str:
    """Hash of the Python sources that compute a run, wherever they are installed from.

    Unlike the git commit, it ignores changes to docs, tests and experiments, and it exists
    for wheel installs on cluster nodes too. A package may be found in several places (an
    installed paralab and a copy shipped with a Ray job); each file is hashed from the first
    place that has it, which is the one ``import`` loads.
    """
    from importlib.util import find_spec

    # find_spec locates a package without running it: hashing must not import torch.
    return hash_sources((name, find_spec(name).submodule_search_locations)
                        for name in COMPUTING_PACKAGES)


def hash_sources(packages) -> str:
    """Hash ``(package name, [folders it is found in])`` pairs' ``*.py`` files, each file
    from the first folder that has it."""
    digest = hashlib.sha256()
    for name, folders in packages:
        files: dict[str, Path] = {}
        for base in folders:
            for path in Path(base).rglob("*.py"):
                files.setdefault(path.relative_to(base).as_posix(), path)
        for relative in sorted(files):
            digest.update(f"{name}/{relative}".encode())
            digest.update(files[relative].read_bytes())
    return digest.hexdigest()[:12]


def code_version() -> str:
    """``<package version>+<source hash>``: part of every run's identity."""
    return f"{package_version()}+{source_hash()}"


def drop_key(tree: dict[str, Any], dotted: str) -> None:
    """Remove a dotted key (``data.cache_dir``) from a ``to_dict`` tree, if it is there."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.get(key) or {}
    tree.pop(leaf, None)


def run_identity(cfg: ExperimentConfig, code: str | None = None) -> str:
    """A 12-hex-digit hash of what the run computes and the code that computes it."""
    tree = to_dict(cfg)
    for key in NON_SEMANTIC:
        drop_key(tree, key)
    blob = json.dumps({"config": tree, "code": code or code_version()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
