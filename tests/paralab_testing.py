"""Helpers the test folders share: the `paralab` CLI in a subprocess with its own home, and
MLflow readers. A uniquely named module, since every folder's `conftest` shadows another's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"


def run_paralab(home: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `paralab ARGS` as a user would, with `home` as its project directory."""
    full_env = {**os.environ, "PARALAB_HOME": str(home), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                **(env or {})}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PARALAB_STORAGE"):
        full_env.pop(key, None)
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "paralab.platform.cli", *args], cwd=home,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def mlflow_at(home: Path):
    # Imported here: GPU machines run the kernel tests without MLflow installed.
    from mlflow.tracking import MlflowClient

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
