"""``paralab scaling FILE``: fit power laws to a finished sweep and write the report.

The study is the sweep YAML itself; its ``scaling:`` section says what to fit (defaults:
the sweep's metric against non-embedding parameters and training FLOPs, one fit over all
trials). Trials that set ``train.flops_budget`` also get an IsoFLOP analysis
(:mod:`paralab.dashboards.isoflop`), and a group whose trials differ in tokens a joint fit of
size and data (:mod:`paralab.dashboards.joint`). Re-running the command re-reads MLflow, so a sweep
resumed or extended later is refitted from everything it has.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paralab.dashboards.isoflop import IsoFlopFit, fit_isoflop
from paralab.dashboards.joint import JointFit, fit_joint
from paralab.dashboards.points import (
    ScalingError,
    ScalingPoint,
    collect_points,
    group_label,
    lookup,
)
from paralab.dashboards.powerlaw import PowerLawFit, fit_power_law

AXIS_LABEL = {
    "params": "non-embedding parameters",
    "flops": "training FLOPs",
    "tokens": "training tokens",
}


@dataclass
class ScalingStudy:
    path: str
    metric: str
    axes: list[str]
    points: list[ScalingPoint]
    skipped: list[tuple[str, str]]
    fits: dict[tuple[str, str], PowerLawFit | str] = field(default_factory=dict)
    """(group label, axis) → the fit, or why there is none."""
    isoflop: dict[str, IsoFlopFit | str] = field(default_factory=dict)
    """Group label → its IsoFLOP analysis, or why there is none; only for a study whose trials
    set ``train.flops_budget``."""
    joint: dict[str, JointFit | str] = field(default_factory=dict)
    """Group label → L(N, D) fitted to all its trials, or why not; only for a group whose
    trials differ in tokens."""
    parent_run_id: str = ""
    tracking_uri: str = ""
    experiment: str = ""
    output_dir: Path = Path(".")
    files: dict[str, Path] = field(default_factory=dict)
    artifact_dir: str = ""
    """Where the files went in the parent run's artifacts."""

    def groups(self) -> dict[str, list[ScalingPoint]]:
        out: dict[str, list[ScalingPoint]] = {}
        for p in self.points:
            out.setdefault(group_label(p.group), []).append(p)
        return out


def fit_study(study: ScalingStudy) -> None:
    for label, points in study.groups().items():
        for axis in study.axes:
            xs = [p.x(axis) for p in points]
            try:
                study.fits[(label, axis)] = fit_power_law(xs, [p.metric for p in points])
            except ValueError as err:
                study.fits[(label, axis)] = str(err)
        if len({p.tokens for p in points}) > 1:
            try:
                study.joint[label] = fit_joint([p.params for p in points], [p.tokens for p in points],
                                               [p.metric for p in points])  # fmt: skip
            except ValueError as err:
                study.joint[label] = str(err)
        budgeted = [p for p in points if p.budget is not None]
        if not budgeted:
            continue
        try:
            study.isoflop[label] = fit_isoflop(
                [p.budget for p in budgeted], [p.params for p in budgeted],
                [p.tokens for p in budgeted], [p.metric for p in budgeted],
            )  # fmt: skip
        except ValueError as err:
            study.isoflop[label] = str(err)


def run_study(path: str, overrides: list[str], out: Path | None = None) -> ScalingStudy:
    """Collect, fit, write ``scaling.json|md|png`` and log them to the sweep's parent run."""
    from mlflow.tracking import MlflowClient

    from paralab.platform.config.schema import ScalingConfig, project_dir
    from paralab.platform.tracking.mlflow import sqlite_path, tracking_uri
    from paralab.platform.tune.sweep import plan_sweep

    plan = plan_sweep(path, overrides)
    scaling = plan.cfg.scaling or ScalingConfig(metric=plan.sweep.metric)
    for key in scaling.group_by:
        lookup(plan.cfg, key)  # a typo fails here, before MLflow is read
    uri = tracking_uri(plan.cfg.tracking)
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # MLflow would create an empty store to search
        raise ScalingError(
            f"{path}: no MLflow store at {db} ({uri}); run `paralab sweep {path}` here first, "
            "or point tracking.uri (env MLFLOW_TRACKING_URI) at the store the sweep used"
        )
    client = MlflowClient(tracking_uri=uri)
    parent, points, skipped = collect_points(client, plan, scaling)
    if not points:
        reasons = "; ".join(f"{label}: {why}" for label, why in skipped[:3]) or "no trials"
        raise ScalingError(f"{path}: no finished trial with {scaling.metric} to fit ({reasons})")
    study = ScalingStudy(
        path=str(path), metric=scaling.metric, axes=list(scaling.x), points=points,
        skipped=skipped, parent_run_id=parent.info.run_id, tracking_uri=uri,
        experiment=plan.experiment,
        output_dir=out or project_dir() / ".paralab" / "scaling" / plan.name,
    )  # fmt: skip
    fit_study(study)
    study.output_dir.mkdir(parents=True, exist_ok=True)
    from paralab.dashboards import plots

    study.files = {
        "scaling.json": write_json(study, study.output_dir / "scaling.json"),
        "scaling.md": write_markdown(study, study.output_dir / "scaling.md"),
        "scaling.png": plots.plot_study(study, study.output_dir / "scaling.png"),
    }
    if any(isinstance(fit, IsoFlopFit) for fit in study.isoflop.values()):
        study.files["isoflop.png"] = plots.plot_isoflop(study, study.output_dir / "isoflop.png")
    study.artifact_dir = log_to_mlflow(client, study)
    return study


def write_json(study: ScalingStudy, path: Path) -> Path:
    doc = {
        "study": study.path,
        "metric": study.metric,
        "mlflow": {"tracking_uri": study.tracking_uri, "experiment": study.experiment,
                   "parent_run_id": study.parent_run_id},
        "fits": [
            {"group": label, "x": axis,
             **(fit.to_dict() if isinstance(fit, PowerLawFit) else {"error": fit})}
            for (label, axis), fit in study.fits.items()
        ],
        "points": [
            {"run_id": p.run_id, "trial": p.label, "group": dict(p.group), "params": p.params,
             "flops": p.flops, "tokens": p.tokens, "flops_budget": p.budget, study.metric: p.metric}
            for p in study.points
        ],
        "isoflop": [
            {"group": label, **(fit.to_dict() if isinstance(fit, IsoFlopFit) else {"error": fit})}
            for label, fit in study.isoflop.items()
        ],
        "joint": [
            {"group": label, **(fit.to_dict() if isinstance(fit, JointFit) else {"error": fit})}
            for label, fit in study.joint.items()
        ],
        "skipped": [{"trial": label, "reason": why} for label, why in study.skipped],
    }  # fmt: skip
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path


def write_markdown(study: ScalingStudy, path: Path) -> Path:
    lines = [
        f"# Scaling study: `{study.path}`", "",
        f"{study.metric} ≈ E + A·x^(−α), fitted in log space to {len(study.points)} finished "
        f"trial(s); MLflow parent run `{study.parent_run_id}` in experiment `{study.experiment}`.",
        "", "![fits](scaling.png)", "",
        "| group | x | α | A | E | R² (log) | points | x range |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for (label, axis), fit in study.fits.items():
        if isinstance(fit, PowerLawFit):
            se = f" ± {fit.alpha_stderr:.2g}" if fit.alpha_stderr is not None else ""
            floor = f"{fit.E:.4g}" if fit.floor_fitted else "0 (held: < 4 points)"
            lines.append(
                f"| {label} | {axis} | {fit.alpha:.3f}{se} | {fit.A:.4g} | {floor} | "
                f"{fit.r2_log:.3f} | {fit.n} | {fit.x_min:.3g} … {fit.x_max:.3g} |"
            )
        else:
            lines.append(f"| {label} | {axis} | no fit: {fit} ||||||")
    if study.isoflop:
        lines += ["", *isoflop_markdown(study)]
    if study.joint:
        lines += ["", *joint_markdown(study)]
    lines += ["", "## Points", "", f"| trial | group | params | FLOPs | tokens | {study.metric} |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for p in study.points:
        lines.append(f"| {p.label} | {group_label(p.group)} | {p.params:,} | {p.flops:.3g} | "
                     f"{p.tokens:,} | {p.metric:.4f} |")  # fmt: skip
    if study.skipped:
        lines += ["", "## Left out", ""] + [f"- {label}: {why}" for label, why in study.skipped]
    path.write_text("\n".join(lines) + "\n")
    return path


def isoflop_markdown(study: ScalingStudy) -> list[str]:
    """The report's IsoFLOP section: the exponents per group, then every budget's optimum."""
    lines = [
        "## IsoFLOP: the compute-optimal size at each budget", "",
        f"At each `train.flops_budget` C, a parabola of {study.metric} in ln(params) has its "
        "vertex at the optimal size N_opt; D_opt is the tokens that size trains on at C. "
        "Across budgets, N_opt ∝ C^a and D_opt ∝ C^b (Chinchilla's approach 2).", "",
        "![IsoFLOP](isoflop.png)", "",
        f"| group | a (N_opt ∝ C^a) | b (D_opt ∝ C^b) | frontier: {study.metric} at N_opt | budgets used |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for label, fit in study.isoflop.items():
        if not isinstance(fit, IsoFlopFit):
            lines.append(f"| {label} | no fit: {fit} ||||")
        elif fit.params is None or fit.tokens is None:
            lines.append(f"| {label} | no fit: {fit.reason} ||||")
        else:
            frontier = fit.frontier.formula("C") if fit.frontier is not None else "no fit"
            lines.append(f"| {label} | {_exponent(fit.params)} | {_exponent(fit.tokens)} | "
                         f"{frontier} | {len(fit.used)} of {len(fit.slices)} |")  # fmt: skip
    lines += ["", f"| group | budget C | trials | N_opt | D_opt | {study.metric} at N_opt |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for label, fit in study.isoflop.items():
        for s in fit.slices if isinstance(fit, IsoFlopFit) else []:
            if s.params_opt is None:
                lines.append(f"| {label} | {s.budget:.3g} | {s.n} | no optimum: {s.reason} |||")
            else:
                lines.append(f"| {label} | {s.budget:.3g} | {s.n} | {s.params_opt:.3g} | "
                             f"{s.tokens_opt:.3g} | {s.metric_opt:.4f} |")  # fmt: skip
    return lines


def joint_markdown(study: ScalingStudy) -> list[str]:
    """The report's section on L(N, D) fitted to every trial of a group."""
    lines = [
        f"## Joint fit: {study.metric} ≈ E + A/N^α + B/D^β", "",
        "N is non-embedding parameters and D training tokens; fitted to every trial of a group "
        "with a Huber loss on log(metric) (Chinchilla's approach 3). Under C ∝ N·D it gives "
        "N_opt ∝ C^(β/(α+β)) and D_opt ∝ C^(α/(α+β)).", "",
        "| group | α | β | E | A | B | a = β/(α+β) | b = α/(α+β) | R² (log) | points |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for label, fit in study.joint.items():
        if isinstance(fit, JointFit):
            lines.append(f"| {label} | {fit.alpha:.3f} | {fit.beta:.3f} | {fit.E:.4g} | {fit.A:.4g} | "
                         f"{fit.B:.4g} | {fit.params_exponent:.3f} | {fit.tokens_exponent:.3f} | "
                         f"{fit.r2_log:.3f} | {fit.n} |")  # fmt: skip
        else:
            lines.append(f"| {label} | no fit: {fit} |||||||||")
    return lines


def _exponent(line) -> str:
    se = f" ± {line.exponent_stderr:.2g}" if line.exponent_stderr is not None else ""
    return f"{line.exponent:.3f}{se}"


def _metric_key(*parts: str) -> str:
    """An MLflow metric name from free text (letters, digits, _ - . / and spaces only)."""
    return ".".join(re.sub(r"[^\w\-./ ]", "_", part) for part in parts)


def log_to_mlflow(client: Any, study: ScalingStudy) -> str:
    """The report's files under ``scaling/<UTC time>/`` of the sweep's parent run (a refit
    after the sweep grew never replaces an earlier report), and each fit's exponent and floor
    (and the IsoFLOP and joint-fit exponents) as metrics, so studies can be compared in the MLflow UI.
    Returns the artifact folder."""
    import time

    folder = f"scaling/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    for path in study.files.values():
        client.log_artifact(study.parent_run_id, str(path), artifact_path=folder)
    for (label, axis), fit in study.fits.items():
        if isinstance(fit, PowerLawFit):
            client.log_metric(
                study.parent_run_id, _metric_key("scaling", label, axis, "alpha"), fit.alpha
            )
            client.log_metric(study.parent_run_id, _metric_key("scaling", label, axis, "E"), fit.E)
    for label, fit in study.isoflop.items():
        if isinstance(fit, IsoFlopFit) and fit.params is not None and fit.tokens is not None:
            for name, line in (("params", fit.params), ("tokens", fit.tokens)):
                key = _metric_key("scaling", label, "isoflop", f"{name}_exponent")
                client.log_metric(study.parent_run_id, key, line.exponent)
            if fit.frontier is not None:
                key = _metric_key("scaling", label, "isoflop", "frontier_alpha")
                client.log_metric(study.parent_run_id, key, fit.frontier.alpha)
    for label, fit in study.joint.items():
        if isinstance(fit, JointFit):
            for name in ("alpha", "beta", "E"):
                key = _metric_key("scaling", label, "joint", name)
                client.log_metric(study.parent_run_id, key, getattr(fit, name))
    return folder
