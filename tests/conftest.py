"""Shared fixtures: the `paralab` CLI in a subprocess with its own home, and a real S3 server.

Plain helpers live in `paralab_testing.py`, which tests import by that unique name.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Triton runs on CPU only through its interpreter, which is chosen when `@triton.jit`
# decorates: set before any test imports a kernel module, so that a model or kernel test
# run on its own behaves as under `make test`. A GPU machine runs the compiled kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from paralab_testing import ROOT, run_paralab  # noqa: E402


@functools.cache
def _ray_scopes(module: Path) -> dict[str, str]:
    """Test name -> scheduling scope (``ray`` or ``ray-last``) for the tests of ``module``
    marked ``ray``; the name ``*`` when the module's ``pytestmark`` marks them all."""
    try:
        tree = ast.parse(module.read_text())
    except (OSError, SyntaxError):
        return {}

    def scope(node: ast.AST) -> str | None:
        for n in ast.walk(node):  # breadth first: `mark.ray(...)` before its `mark.ray`
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "ray":
                last = any(k.arg == "last" and getattr(k.value, "value", False) for k in n.keywords)
                return "ray-last" if last else "ray"
            if isinstance(n, ast.Attribute) and n.attr == "ray":
                return "ray"
        return None

    scopes = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ) and (found := scope(node.value)):
            scopes["*"] = found
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            if found := next(filter(None, map(scope, node.decorator_list)), None):
                scopes[node.name] = found
    return scopes


def _ray_scope(rootpath: Path, nodeid: str) -> str | None:
    path, _, rest = nodeid.partition("::")
    scopes = _ray_scopes(rootpath / path)
    return scopes.get(rest.split("::")[0].split("[")[0], scopes.get("*"))


@pytest.hookimpl(optionalhook=True)  # pytest without xdist (benchmarks/gpu_check.sh) runs too
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``make test`` (two pytest-xdist workers), the tests marked ``ray`` run on one
    worker, in order, while the other worker takes every other test as it frees up.

    Two local Ray clusters at once on 2 cores would each believe they own every core and
    starve each other; a Ray test mostly waits on processes starting, and the CPU-bound tests
    beside it fill that time. Those marked ``ray(last=True)`` (long ones) wait until every
    other test is handed out, and then go to the first worker free: without them, the other
    worker idled for the last third of the suite. The controller does not collect, so the
    marks are read from the test modules' source. (``--dist loadgroup`` would say this with
    markers, but it does not group under pytest 9.2, whose node ids it can no longer rewrite.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class RayTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _ray_scope(config.rootpath, nodeid) or nodeid

        def _assign_work_unit(self, node) -> None:
            if len(self.workqueue) > 1 and "ray-last" in self.workqueue:
                self.workqueue.move_to_end("ray-last")
            super()._assign_work_unit(node)

    return RayTestsTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``ray`` mark the scheduler above cannot see would put two Ray clusters side by side."""
    for item in items:
        if item.get_closest_marker("ray") and not _ray_scope(config.rootpath, item.nodeid):
            raise pytest.UsageError(
                f"{item.nodeid} is marked ray, but tests/conftest.py cannot see the mark in its "
                "source: mark the test function, or its module with `pytestmark`"
            )


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
