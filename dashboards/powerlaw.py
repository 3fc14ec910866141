"""Saturating power laws, metric ≈ E + A·x^(−α), fitted in log space.

Scaling studies fit loss against parameters or compute over a few orders of magnitude, with
a floor E (the loss no scale removes). The fit minimises the squared error of log(metric):
each point counts by its relative error, as on the log–log plots where it is read. With
fewer than four distinct x (repeats, such as seeds, do not count) a three-parameter fit is
not identified, so E is held at 0 and the law is a straight line in log–log. A fit that
ends on a bound of α or E says so in :attr:`PowerLawFit.note`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# A three-parameter fit needs one point more than it has parameters to say anything.
MIN_POINTS_WITH_FLOOR = 4


@dataclass(frozen=True)
class PowerLawFit:
    """metric ≈ E + A·x^(−α), fitted to ``n`` points spanning [x_min, x_max]."""

    E: float
    A: float
    alpha: float
    alpha_stderr: float | None
    """Standard error of α from the fit's Jacobian; None when there is no residual dof."""
    dof: int
    """Residual degrees of freedom behind ``alpha_stderr``: with one or two, it is rough."""
    r2_log: float
    """R² of log(metric) (1 is a perfect fit)."""
    n: int
    x_min: float
    x_max: float
    floor_fitted: bool
    """False when E was held at 0 (fewer than four distinct x)."""
    note: str | None = None
    """Why the fit should not be read as a law: it ended on a bound of α or E."""

    def predict(self, x) -> np.ndarray:
        return self.E + self.A * np.asarray(x, dtype=float) ** (-self.alpha)

    def to_dict(self) -> dict:
        return asdict(self)

    def formula(self, x_name: str = "x") -> str:
        floor = f"{self.E:.4g} + " if self.floor_fitted else ""
        return f"{floor}{self.A:.4g}·{x_name}^(−{self.alpha:.4g})"


def fit_power_law(x, y) -> PowerLawFit:
    """Fit ``y ≈ E + A·x^(−α)`` with E ∈ [0, min y), α ≥ 0.

    Raises ``ValueError`` for fewer than two distinct x, or for non-positive or non-finite
    values, since neither has a power law.
    """
    from scipy.optimize import least_squares

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d and equally long, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or (x <= 0).any() or (y <= 0).any():
        raise ValueError("a power law needs positive, finite x and metric values")
    if len(np.unique(x)) < 2:
        raise ValueError(
            f"a power law needs at least two distinct x values, got {len(np.unique(x))}"
        )
    lx, ly = np.log(x), np.log(y)

    # Without a floor the law is a line in log–log: the start point, and the answer for
    # small studies.
    slope, intercept = np.polyfit(lx, ly, 1)
    alpha0, log_a0 = max(-slope, 0.0), intercept
    floor = len(np.unique(x)) >= MIN_POINTS_WITH_FLOOR

    def model(theta):
        log_a, alpha = theta[0], theta[1]
        e = theta[2] if floor else 0.0
        return np.log(e + np.exp(log_a - alpha * lx))

    if floor:
        theta0 = np.array([log_a0, alpha0, 0.5 * y.min()])
        lower, upper = [-np.inf, 0.0, 0.0], [np.inf, 10.0, y.min() * (1 - 1e-9)]
        # Start E inside its bounds, and A so that the start passes through the data's middle.
        theta0[0] = math.log(max(np.exp(ly).mean() - theta0[2], 1e-12)) + alpha0 * lx.mean()
    else:
        theta0 = np.array([log_a0, alpha0])
        lower, upper = [-np.inf, 0.0], [np.inf, 10.0]
    result = least_squares(lambda t: model(t) - ly, theta0, bounds=(lower, upper), method="trf")
    theta = result.x
    residual = model(theta) - ly
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / total if total > 0 else 1.0
    dof = len(x) - len(theta)
    alpha_stderr = None
    if dof > 0:
        jac = result.jac
        try:
            cov = np.linalg.inv(jac.T @ jac) * (residual**2).sum() / dof
            alpha_stderr = float(math.sqrt(max(cov[1, 1], 0.0)))
        except np.linalg.LinAlgError:
            alpha_stderr = None
    return PowerLawFit(
        E=float(theta[2]) if floor else 0.0,
        A=float(math.exp(theta[0])),
        alpha=float(theta[1]),
        alpha_stderr=alpha_stderr,
        dof=dof,
        r2_log=float(r2),
        n=len(x),
        x_min=float(x.min()),
        x_max=float(x.max()),
        floor_fitted=floor,
        note=_on_bound(theta, upper, floor),
    )


def _on_bound(theta: np.ndarray, upper: list[float], floor: bool) -> str | None:
    alpha = theta[1]
    if alpha <= 1e-6:
        return "α is 0: the metric does not fall as x grows"
    if alpha >= upper[1] * (1 - 1e-6):
        return f"α reached its bound {upper[1]:g}"
    if floor and theta[2] >= upper[2] * (1 - 1e-6):
        return "E reached the smallest metric: the floor is not determined by these points"
    return None
