"""A finished (or interrupted) sweep on disk: best.yaml, summary.csv and summary.png."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from paralab.platform.config.load import to_yaml
from paralab.platform.tune.space import format_value

if TYPE_CHECKING:
    from paralab.platform.tune.sweep import SweepPlan, TrialOutcome

COLUMNS = ("trial_id", "name", "status", "step")
METRICS = ("loss", "val_loss", "val_ppl", "tokens_per_s")


def write(plan: SweepPlan, trials: list[TrialOutcome], best: TrialOutcome | None,
          folder: Path) -> dict[str, Path]:
    """Write the sweep's files into ``folder``; returns file name → path."""
    files = {"summary.csv": write_csv(plan, trials, folder / "summary.csv")}
    plot = write_plot(plan, trials, folder / "summary.png")
    if plot:
        files["summary.png"] = plot
    if best is not None:
        files["best.yaml"] = write_best(plan, best, folder / "best.yaml")
    return files


def ranked(plan: SweepPlan, trials: list[TrialOutcome]) -> list[TrialOutcome]:
    """Best first; trials without the metric last, in creation order."""
    sign = 1 if plan.sweep.mode == "min" else -1
    return sorted(trials, key=lambda t: (t.metric is None, sign * t.metric if t.metric is not None else 0))


def write_csv(plan: SweepPlan, trials: list[TrialOutcome], path: Path) -> Path:
    metric = plan.sweep.metric
    extra = [m for m in METRICS if m != metric]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, *plan.sweep.params, metric, *extra, "mlflow_run_id", "identity", "error"])
        for t in ranked(plan, trials):
            writer.writerow([
                t.trial_id, t.label, t.status, "" if t.step is None else t.step,
                *(t.values.get(k, "") for k in plan.sweep.params),
                "" if t.metric is None else t.metric,
                *(t.metrics.get(m, "") for m in extra),
                t.run_id or "", t.identity or "", t.error or "",
            ])
    return path


def write_plot(plan: SweepPlan, trials: list[TrialOutcome], path: Path) -> Path | None:
    """The metric against each swept key, one panel per key (numeric keys on a numeric axis)."""
    scored = [t for t in trials if t.metric is not None]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(plan.sweep.params)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    colors = {"FINISHED": "tab:blue", "STOPPED": "tab:orange"}
    for ax, key in zip(axes[0], keys):
        space = plan.sweep.params[key]
        xs = [t.values.get(key) for t in scored]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if not numeric:
            categories = list(dict.fromkeys(format_value(x) for x in xs))
            xs = [categories.index(format_value(x)) for x in xs]
            ax.set_xticks(range(len(categories)), categories)
        for status in sorted({t.status for t in scored}):
            picked = [(x, t.metric) for x, t in zip(xs, scored) if t.status == status]
            ax.scatter([p[0] for p in picked], [p[1] for p in picked], label=status.lower(),
                       color=colors.get(status, "tab:gray"), alpha=0.8)
        if space.type == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(plan.sweep.metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{plan.name}: {plan.sweep.metric} ({plan.sweep.mode}) per trial", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_best(plan: SweepPlan, best: TrialOutcome, path: Path) -> Path:
    """The best trial's experiment, without ``sweep:``, as YAML that ``paralab run`` accepts."""
    cfg = plan.trial_cfg(best.values)
    header = [
        f"# Best trial of sweep {plan.name} ({plan.path}): {plan.sweep.metric}={best.metric:.6g} "
        f"({plan.sweep.mode}), status {best.status.lower()}",
        f"# Swept values: {best.label}",
        f"# MLflow child run: {best.run_id or '-'}; run identity {best.identity or '-'}",
        f"# `paralab run {path.name}` finds that run (complete or not) by its identity.",
    ]
    path.write_text("\n".join(header) + "\n" + to_yaml(cfg))
    return path
