"""MLflow bookkeeping for runs: experiments, runs found by identity, params, metrics, artifacts.

Everything goes through ``MlflowClient`` with explicit run ids rather than the fluent API,
whose active run is thread-local and per process: the driver opens the run, and rank 0 of
the training workers logs into it by id.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from paralab.platform.config.schema import TrackingConfig, project_dir

IDENTITY_TAG = "paralab.identity"
GENERATION_TAG = "paralab.generation"
DIVERGED_TAG = "paralab.diverged"
"""``<step>: <metric>=<value>`` of a run whose training stopped on a loss that is not finite."""
MAX_PARAM_LEN = 6000


def tracking_uri(cfg: TrackingConfig) -> str:
    """The YAML's URI, else `MLFLOW_TRACKING_URI`, else the embedded SQLite file."""
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = project_dir() / ".paralab"
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _local_artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite-backed store live beside the database, not in each cwd's ./mlruns."""
    db = sqlite_path(uri)
    return None if db is None else (db.parent / "mlartifacts").as_uri()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` → ``{"train.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """One MLflow run, addressed by id, usable from the driver and from rank 0."""

    def __init__(self, uri: str, run_id: str):
        self.uri = uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=uri)

    @classmethod
    def open(
        cls,
        cfg: TrackingConfig,
        experiment: str,
        identity: str,
        generation: int,
        run_name: str,
        tags: Mapping[str, str] = (),
        parent_run_id: str | None = None,
        mark_running: bool = True,
    ) -> tuple[Tracker, bool]:
        """Reopen the run of this identity and generation, or create it. Returns (tracker, resumed).

        A reopened run is marked RUNNING again unless ``mark_running`` is False (a run that is
        only looked up, such as a complete one, keeps its status)."""
        uri = tracking_uri(cfg)
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = client.create_experiment(experiment, artifact_location=_local_artifact_root(uri))
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp_id)
        found = client.search_runs(
            [exp_id],
            filter_string=f"tags.`{IDENTITY_TAG}` = '{identity}' and tags.`{GENERATION_TAG}` = '{generation}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            if mark_running:
                client.update_run(run_id, status="RUNNING")
            return cls(uri, run_id), True
        all_tags = {IDENTITY_TAG: identity, GENERATION_TAG: str(generation), "mlflow.runName": run_name}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags.update(tags)
        run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
        return cls(uri, run.info.run_id), False

    def log_params(self, params: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """Log the params this run lacks; return ``{key: (logged, now)}`` for those it has
        with another value. MLflow params cannot change, so a resumed run keeps the first."""
        existing = self.client.get_run(self.run_id).data.params
        values = {k: str(v)[:MAX_PARAM_LEN] for k, v in params.items()}
        batch = [Param(k, v) for k, v in values.items() if k not in existing]
        for start in range(0, len(batch), 100):
            self.client.log_batch(self.run_id, params=batch[start : start + 100])
        return {k: (existing[k], v) for k, v in values.items() if k in existing and existing[k] != v}

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 500])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def ui_url(self) -> str | None:
        if self.uri.startswith(("http://", "https://")):
            exp_id = self.client.get_run(self.run_id).info.experiment_id
            return f"{self.uri.rstrip('/')}/#/experiments/{exp_id}/runs/{self.run_id}"
        return None
