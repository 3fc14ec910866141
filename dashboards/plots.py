"""The study's figure: the metric against each scale axis on log–log axes, one colour per
group, the finished trials as points and each fitted law as a line across their range."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from paralab.dashboards.study import ScalingStudy


def plot_study(study: ScalingStudy, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from paralab.dashboards.powerlaw import PowerLawFit
    from paralab.dashboards.study import AXIS_LABEL

    axes_names = study.axes
    fig, axes = plt.subplots(
        1, len(axes_names), figsize=(5.2 * len(axes_names), 4.2), squeeze=False
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, axis in zip(axes[0], axes_names):
        for i, (label, points) in enumerate(study.groups().items()):
            colour = colours[i % len(colours)]
            xs = np.array([p.x(axis) for p in points])
            ys = np.array([p.metric for p in points])
            ax.scatter(xs, ys, color=colour, s=28, zorder=3)
            fit = study.fits.get((label, axis))
            if isinstance(fit, PowerLawFit):
                grid = np.geomspace(fit.x_min, fit.x_max, 100)
                ax.plot(grid, fit.predict(grid), color=colour,
                        label=f"{label}: α={fit.alpha:.3f}")  # fmt: skip
            else:
                ax.plot([], [], color=colour, label=f"{label}: no fit")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # Losses span less than a decade: label them plainly; x keeps its decade labels only.
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(AXIS_LABEL[axis])
        ax.set_ylabel(study.metric)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, f"{study.metric} ≈ E + A·x^(−α)   ({Path(study.path).name})", path)


def plot_isoflop(study: ScalingStudy, path: Path) -> Path:
    """One row per group: the metric against size at each budget with its parabola and
    optimum (left), and the optimal size and tokens against the budget with their lines (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from paralab.dashboards.isoflop import IsoFlopFit

    fits = {label: fit for label, fit in study.isoflop.items() if isinstance(fit, IsoFlopFit)}
    groups = study.groups()
    rows = max(len(fits), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(10.4, 4.2 * rows), squeeze=False)
    for (left, right), (label, fit) in zip(axes, fits.items()):
        points = [p for p in groups[label] if p.budget is not None]
        cmap = plt.get_cmap("viridis")
        for i, s in enumerate(fit.slices):
            colour = cmap(i / max(len(fit.slices) - 1, 1))
            mine = sorted((p for p in points if p.budget == s.budget), key=lambda p: p.params)
            xs = np.array([p.params for p in mine])
            left.scatter(xs, [p.metric for p in mine], color=colour, s=28, zorder=3,
                         label=f"C = {s.budget:.2g}")  # fmt: skip
            if s.coefficients is not None and s.fitted is not None:
                grid = np.geomspace(*s.fitted, 100)  # only where it was fitted
                left.plot(grid, s.parabola(grid), color=colour, alpha=0.8)
            if s.params_opt is not None:
                left.scatter([s.params_opt], [s.metric_opt], color=colour, marker="*", s=160,
                             edgecolor="black", zorder=4)  # fmt: skip
        left.set_xscale("log")
        left.set_xlabel("non-embedding parameters")
        left.set_ylabel(study.metric)
        left.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        left.set_title(f"{label}: one curve per FLOP budget, ★ its optimum", fontsize=9)
        left.grid(True, which="both", alpha=0.3)
        left.legend(fontsize=7)

        found = [s for s in fit.slices if s.params_opt is not None]
        compute = np.array([s.budget for s in found])
        for name, values, line, colour in (
            ("N_opt", [s.params_opt for s in found], fit.params, "tab:blue"),
            ("D_opt", [s.tokens_opt for s in found], fit.tokens, "tab:orange"),
        ):
            text = f"{name} ∝ C^{line.exponent:.3f}" if line is not None else f"{name} (no line)"
            right.scatter(compute, values, color=colour, s=28, zorder=3, label=text)
            if line is not None:
                grid = np.geomspace(compute.min(), compute.max(), 50)
                right.plot(grid, line.predict(grid), color=colour)
        right.set_xscale("log")
        right.set_yscale("log")
        right.xaxis.set_minor_formatter(NullFormatter())  # budgets within a decade crowd it
        right.set_xlabel("training FLOPs budget C")
        right.set_ylabel("compute-optimal parameters / tokens")
        right.set_title(fit.reason or "compute-optimal allocation", fontsize=9)
        right.grid(True, which="both", alpha=0.3)
        right.legend(fontsize=8)
    return _save(fig, f"IsoFLOP analysis   ({Path(study.path).name})", path)


def _save(fig, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
