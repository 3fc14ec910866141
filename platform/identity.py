"""Run identity: a content hash of the resolved experiment plus the code version.

The identity names the run's storage folder and is an MLflow tag, so re-running the same
experiment finds its own checkpoints and MLflow run without being told where they are.
A change to paralab's code gives a new identity, so a run never resumes under other code.
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


@cache
def source_hash() -> str:
    """Hash of paralab's own Python sources, wherever they are installed from.

    Unlike the git commit, it ignores changes to docs, tests and experiments, and it exists
    for wheel installs on cluster nodes too.
    """
    import paralab.kernels
    import paralab.models
    import paralab.platform

    digest = hashlib.sha256()
    for package in (paralab.kernels, paralab.models, paralab.platform):
        for base in package.__path__:
            for path in sorted(Path(base).rglob("*.py")):
                digest.update(f"{package.__name__}/{path.relative_to(base).as_posix()}".encode())
                digest.update(path.read_bytes())
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
