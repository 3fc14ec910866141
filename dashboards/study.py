"""``paralab scaling FILE``: fit power laws to a finished sweep and write the report.

The study is the sweep YAML itself; its ``scaling:`` section says what to fit (defaults:
the sweep's metric against non-embedding parameters and training FLOPs, one fit over all
trials). Trials that set ``train.flops_budget`` also get an IsoFLOP analysis
(:mod:`paralab.dashboards.isoflop`), and their per-axis laws are fitted to the best trial at
each budget; a group whose trials differ in tokens gets a joint fit of size and data
(:mod:`paralab.dashboards.joint`). Re-running the command re-reads MLflow, so a sweep
resumed or extended later is refitted from everything it has.
"""

from __future__ import annotations

import json
import math
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
    frontier: dict[str, int] = field(default_factory=dict)
    """Group label → its budgets, for a group of IsoFLOP trials: its per-axis laws are fitted
    to the best trial at each budget, not to every trial."""
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


def compute_frontier(points: list[ScalingPoint]) -> list[ScalingPoint] | None:
    """The best trial at each ``train.flops_budget``, when every trial set one and some budget
    has several sizes (an IsoFLOP grid); None otherwise.

    A law over every size at every budget mixes trials far from each budget's optimum: on
    Chinchilla's law over 5 budgets × 9 sizes it gave α = 0.27 against FLOPs (R² 0.78) where
    the compute frontier's is 0.15.
    """
    if any(p.budget is None for p in points):
        return None
    best: dict[float, ScalingPoint] = {}
    for p in points:
        if p.budget not in best or p.metric < best[p.budget].metric:
            best[p.budget] = p
    if len(best) == len(points):  # one trial per budget: already a frontier
        return None
    return [best[budget] for budget in sorted(best)]


def fit_study(study: ScalingStudy) -> None:
    for label, points in study.groups().items():
        frontier = compute_frontier(points)
        if frontier is not None:
            study.frontier[label] = len(frontier)
        fitted = frontier or points
        for axis in study.axes:
            xs = [p.x(axis) for p in fitted]
            try:
                study.fits[(label, axis)] = fit_power_law(xs, [p.metric for p in fitted])
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
    path.write_text(json.dumps(_finite(doc), indent=1, default=str, allow_nan=False) + "\n")
    return path


def _finite(node: Any) -> Any:
    """``node`` with every non-finite float as None: strict JSON has no NaN or Infinity."""
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {key: _finite(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_finite(value) for value in node]
    return node


def write_markdown(study: ScalingStudy, path: Path) -> Path:
    lines = [
        f"# Scaling study: `{study.path}`", "",
        f"{study.metric} ≈ E + A·x^(−α), fitted in log space to {len(study.points)} finished "
        f"trial(s); MLflow parent run `{study.parent_run_id}` in experiment `{study.experiment}`.",
        "", "![fits](scaling.png)", "",
        "| group | x | α (± s.e., dof) | A | E | R² (log) | points | x range |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    notes = []
    for (label, axis), fit in study.fits.items():
        if isinstance(fit, PowerLawFit):
            se = f" ± {fit.alpha_stderr:.2g} ({fit.dof})" if fit.alpha_stderr is not None else ""
            floor = f"{fit.E:.4g}" if fit.floor_fitted else "0 (held: < 4 distinct x)"
            mark = " ⚠" if fit.note else ""
            lines.append(
                f"| {label} | {axis} | {fit.alpha:.3f}{se}{mark} | {fit.A:.4g} | {floor} | "
                f"{fit.r2_log:.3f} | {fit.n} | {fit.x_min:.3g} … {fit.x_max:.3g} |"
            )
            if fit.note:
                notes.append(f"- ⚠ {label}, {axis}: {fit.note}; do not read α as a law.")
        else:
            lines.append(f"| {label} | {axis} | no fit: {fit} ||||||")
    for label, budgets in study.frontier.items():
        notes.append(f"- {label}: IsoFLOP trials, so each law is fitted to the best trial at each "
                     f"of its {budgets} budgets (the compute frontier), not to every trial.")
    if any(isinstance(fit, PowerLawFit) and fit.dof <= 2 for fit in study.fits.values()):
        notes.append("- With 2 or fewer residual degrees of freedom, ± s.e. is rough: a 95 % "
                     "interval is wider than ± 2 s.e. (Student's t: ± 4.3 s.e. at 2 dof).")
    if notes:
        lines += ["", *notes]
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
    (and the IsoFLOP and joint-fit exponents) as metrics, so studies can be compared in the MLflow UI;
    a fit this refit could not make is logged as NaN, so no earlier value stays the latest.
    Returns the artifact folder."""
    import time

    folder = f"scaling/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    for path in study.files.values():
        client.log_artifact(study.parent_run_id, str(path), artifact_path=folder)
    nan = float("nan")

    def log(value: float | None, *parts: str) -> None:
        client.log_metric(study.parent_run_id, _metric_key("scaling", *parts),
                          nan if value is None else value)  # fmt: skip

    for (label, axis), fit in study.fits.items():
        ok = isinstance(fit, PowerLawFit)
        log(fit.alpha if ok else None, label, axis, "alpha")
        log(fit.E if ok else None, label, axis, "E")
    for label, fit in study.isoflop.items():
        ok = isinstance(fit, IsoFlopFit)
        for name in ("params", "tokens"):
            line = getattr(fit, name) if ok else None
            log(line.exponent if line is not None else None, label, "isoflop", f"{name}_exponent")
        frontier = fit.frontier if ok else None
        log(frontier.alpha if frontier is not None else None, label, "isoflop", "frontier_alpha")
    for label, fit in study.joint.items():
        for name in ("alpha", "beta", "E"):
            log(getattr(fit, name) if isinstance(fit, JointFit) else None, label, "joint", name)
    return folder
