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
    fig.suptitle(f"{study.metric} ≈ E + A·x^(−α)   ({Path(study.path).name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
