"""Helpers the test folders share: the `paralab` CLI in a subprocess with its own home, and
MLflow readers. A uniquely named module, since every folder's `conftest` shadows another's."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"


def run_paralab(home: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `paralab ARGS` as a user would, with `home` as its project directory."""
    return subprocess.run([sys.executable, "-m", "paralab.platform.cli", *args], cwd=home,
                          env=paralab_env(home, env), capture_output=True, text=True,
                          timeout=timeout)


def paralab_env(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `paralab` subprocess whose project directory is `home` (created,
    with an empty MLflow store), on its own local Ray cluster and storage."""
    full_env = {**os.environ, "PARALAB_HOME": str(home), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                **(env or {})}
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "PARALAB_STORAGE"):
        full_env.pop(key, None)
    home.mkdir(parents=True, exist_ok=True)
    seed_mlflow_store(home)
    return full_env


@cache
def empty_mlflow_store() -> Path:
    """A new embedded MLflow store, made once per session and copied into each test's home.

    MLflow builds a new SQLite store by running every schema migration, about 3 s on 2 cores,
    and a copy is the same file. The end-to-end tests in `test_run_e2e.py` start without one,
    so the CLI's own first start is still covered.
    """
    folder = Path(tempfile.mkdtemp(prefix="paralab-empty-mlflow-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    store = folder / "mlflow.db"
    code = ("import sys; from mlflow.tracking import MlflowClient; "
            "MlflowClient(tracking_uri=sys.argv[1]).search_experiments()")
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{store}"], check=True,
                   capture_output=True, timeout=300)
    return store


def seed_mlflow_store(home: Path) -> None:
    """Put a copy of :func:`empty_mlflow_store` where paralab's embedded store goes, unless
    one is there."""
    store = home / ".paralab" / "mlflow.db"
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_mlflow_store(), store)


def mlflow_at(home: Path):
    # Imported here: GPU machines run the kernel tests without MLflow installed.
    from mlflow.tracking import MlflowClient

    seed_mlflow_store(home)
    return MlflowClient(tracking_uri=f"sqlite:///{home / '.paralab' / 'mlflow.db'}")


def runs_of(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def metric_by_step(client, run_id: str, key: str) -> dict[int, float]:
    """The last value logged at each step (a resumed run logs some steps twice)."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return {m.step: m.value for m in history}
