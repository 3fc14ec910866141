"""One point per finished trial of a sweep, read back from MLflow.

A point's scale comes from the trial's exact config, rebuilt from the sweep YAML and the
values its MLflow run is tagged with, never from logged strings: non-embedding parameters
and training FLOPs are the closed forms of ``paralab.models.flops``, and tokens are
steps × batch × sequence length. The metric is the last value the run logged; a trial whose
metric is not finite (diverged) is left out and listed, and a trial run more than once
counts by its newest finished run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from paralab.platform.config.load import ConfigError


class ScalingError(ConfigError):
    """A study that cannot be fitted as asked; the message is meant for the user as is."""


@dataclass(frozen=True)
class ScalingPoint:
    run_id: str
    label: str
    group: tuple[tuple[str, Any], ...]
    """(key, value) of each ``scaling.group_by`` key."""
    params: int
    """Non-embedding parameters."""
    flops: float
    """Training FLOPs: per-token forward + backward (Newton iterations included) × tokens."""
    tokens: int
    metric: float
    budget: float | None = None
    """The trial's ``train.flops_budget`` (None when it set ``train.steps`` instead)."""

    def x(self, axis: str) -> float:
        return float(getattr(self, axis))


def group_label(group: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in group) or "all trials"


def lookup(cfg: Any, dotted: str, source: str = "scaling.group_by") -> Any:
    """The value at a dotted key of an experiment config."""
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, part):
            raise ScalingError(f"{source}: {dotted!r} is not an experiment key (e.g. model.cell)")
        node = getattr(node, part)
    return node


def find_sweep_run(client, plan) -> Any:
    """The latest MLflow parent run of this sweep (same sweep id, same experiment)."""
    from paralab.platform.tune.trial import SWEEP_TAG

    experiment = client.get_experiment_by_name(plan.experiment)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{SWEEP_TAG}` = '{plan.sweep_id}' and tags.`paralab.kind` = 'sweep'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    if not runs:
        raise ScalingError(
            f"{plan.path}: no sweep of this file (sweep id {plan.sweep_id}) in MLflow experiment "
            f"{plan.experiment!r}; run `paralab sweep {plan.path}` with the same overrides first"
        )
    return runs[0]


def collect_points(client, plan, scaling) -> tuple[Any, list[ScalingPoint], list[tuple[str, str]]]:
    """(parent run, points, [(trial label, why it was left out)])."""
    from paralab.models.flops import param_count, training_flops_per_token
    from paralab.platform.tune.trial import sweep_runs, trial_values

    parent = find_sweep_run(client, plan)
    # Its children, and runs it reused from an earlier sweep (an extended grid).
    children = sweep_runs(client, parent.info.experiment_id, parent.info.run_id, plan.sweep_id)
    points: list[ScalingPoint] = []
    skipped: list[tuple[str, str]] = []
    latest: dict[str, str] = {}  # trial values → label of the newest finished run of them
    for run in sorted(children, key=lambda r: r.info.start_time or 0, reverse=True):
        label = run.data.tags.get("mlflow.runName", run.info.run_id)
        if run.info.status != "FINISHED":
            stopped = run.data.tags.get("paralab.sweep.stopped_at_step")
            why = f"stopped early at step {stopped}" if stopped else f"status {run.info.status}"
            skipped.append((label, why))
            continue
        values = trial_values(run, plan.sweep_id)
        if values is None:
            skipped.append((label, "not a trial of this sweep (no values tag)"))
            continue
        # One point per trial: a trial trained again (the sweep re-run after a code change,
        # which gives its runs a new identity) counts once, by its newest run.
        trial = json.dumps(values, sort_keys=True, default=str)
        if trial in latest:
            skipped.append((label, f"superseded by a newer run of the same trial ({latest[trial]})"))
            continue
        metric = run.data.metrics.get(scaling.metric)
        if metric is None:
            skipped.append((label, f"never logged {scaling.metric}"))
            continue
        if not math.isfinite(metric):
            skipped.append((label, f"{scaling.metric} is {metric} (the run diverged)"))
            continue
        latest[trial] = label
        cfg = plan.trial_cfg(values)
        tokens = cfg.train.steps * cfg.train.batch_size * cfg.data.seq_len
        points.append(ScalingPoint(
            run_id=run.info.run_id, label=label,
            group=tuple((key, lookup(cfg, key)) for key in scaling.group_by),
            params=param_count(cfg.model, embeddings=False),
            flops=training_flops_per_token(cfg.model, cfg.data.seq_len) * tokens,
            tokens=tokens, metric=float(metric), budget=cfg.train.flops_budget,
        ))  # fmt: skip
    points.sort(key=lambda p: (_sortable(p.group), p.params, p.tokens))  # by group, then scale
    skipped.reverse()  # oldest first, as the runs were made
    return parent, points, skipped


def _sortable(group: tuple[tuple[str, Any], ...]) -> tuple:
    """A group's sort key: numbers in order, then text; None (``null``) first."""
    def rank(value: Any) -> tuple:
        if value is None:
            return (0, 0)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (1, value)
        return (2, str(value))

    return tuple((key, rank(value)) for key, value in group)
