"""IsoFLOP analysis: the compute-optimal model size and token count at each FLOP budget.

This is the second method of Hoffmann et al. (2022, "Chinchilla"). Train several model sizes
at each of a few fixed budgets C (``train.flops_budget``: smaller models see more tokens). At
each budget the metric against log N is close to a parabola near its minimum; the vertex
gives the optimal size N_opt(C), and the tokens that size sees at that budget give D_opt(C).
Across budgets, straight lines in log–log give N_opt ∝ C^a and D_opt ∝ C^b (the paper's
transformers had a ≈ b ≈ 0.5), and the optimal metric against C is the compute-efficient
frontier, fitted as a saturating power law.

A budget gives no optimum, and says why, when it has fewer than three sizes, when its best
size is its smallest or largest (the minimum is not in the sampled range: a parabola
extrapolated past its data is a guess), or when the sizes around its best do not bend into a
minimum.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from paralab.dashboards.powerlaw import PowerLawFit, fit_power_law

MIN_SIZES = 3
"""A parabola has three coefficients: fewer distinct sizes pin down nothing."""
NEIGHBOURS = 2
"""Sizes fitted on each side of the best one."""


@dataclass(frozen=True)
class BudgetSlice:
    """One FLOP budget's points and, when it has one, its optimum."""

    budget: float
    n: int
    params_opt: float | None = None
    """Compute-optimal non-embedding parameters: the parabola's vertex."""
    tokens_opt: float | None = None
    """Training tokens at that size and budget (interpolated in log–log between the points)."""
    metric_opt: float | None = None
    """The parabola's value at its vertex."""
    coefficients: tuple[float, float, float] | None = None
    """metric ≈ c2·u² + c1·u + c0 with u = ln(params), fitted to the sizes around the best."""
    fitted: tuple[float, float] | None = None
    """The smallest and largest size the parabola was fitted to."""
    reason: str | None = None
    """Why there is no optimum (None when there is)."""

    def parabola(self, params) -> np.ndarray:
        assert self.coefficients is not None
        return np.polyval(self.coefficients, np.log(np.asarray(params, dtype=float)))


@dataclass(frozen=True)
class LogLine:
    """y = k·C^exponent, a straight line fitted in log–log."""

    exponent: float
    k: float
    exponent_stderr: float | None
    """From the residuals; None with only two budgets (no residual degree of freedom)."""

    def predict(self, compute) -> np.ndarray:
        return self.k * np.asarray(compute, dtype=float) ** self.exponent


@dataclass
class IsoFlopFit:
    """The slices of every budget, and N_opt(C), D_opt(C) when two or more have an optimum."""

    slices: list[BudgetSlice]
    params: LogLine | None = None
    tokens: LogLine | None = None
    reason: str | None = None
    """Why there are no scaling exponents (None when there are)."""
    used: list[float] = field(default_factory=list)
    """The budgets with an optimum, which the lines were fitted to."""
    frontier: PowerLawFit | None = None
    """The metric at the optimum against C: metric_opt ≈ E + A·C^(−α), the compute-efficient
    frontier (E held at 0 below four budgets)."""

    def to_dict(self) -> dict:
        return asdict(self)


def fit_budget(budget: float, params, tokens, metric) -> BudgetSlice:
    """The optimum of one budget: a parabola of the metric in ln(params) around the best size,
    and its vertex.

    Only the best size and up to ``NEIGHBOURS`` sizes on each side of it are fitted: far from
    its minimum the curve is not a parabola (it flattens on one side and steepens on the
    other), and sizes there would pull the vertex away from the best trials.
    """
    params, tokens, metric = (np.asarray(v, dtype=float) for v in (params, tokens, metric))
    n = len(params)
    sizes = np.unique(params)
    if len(sizes) < MIN_SIZES:
        return BudgetSlice(budget, n, reason=f"{len(sizes)} model size(s); an optimum needs at least {MIN_SIZES}")
    best = int(np.argmin([metric[params == size].mean() for size in sizes]))
    if best in (0, len(sizes) - 1):
        which, more = ("smallest", "smaller") if best == 0 else ("largest", "larger")
        return BudgetSlice(budget, n, reason=f"the {which} size trained is best, so the optimum lies "
                                             f"outside the sizes trained; add {more} sizes")  # fmt: skip
    window = sizes[max(best - NEIGHBOURS, 0) : best + NEIGHBOURS + 1]
    near = np.isin(params, window)
    u = np.log(params)
    c2, c1, c0 = np.polyfit(u[near], metric[near], 2)
    coefficients = (float(c2), float(c1), float(c0))
    fitted = (float(window[0]), float(window[-1]))
    vertex = -c1 / (2 * c2)
    if not c2 > 0 or not u[near].min() <= vertex <= u[near].max():
        return BudgetSlice(budget, n, coefficients=coefficients, fitted=fitted,
                           reason="the sizes around the best one do not bend into a minimum "
                                  "(noisy metrics?); add sizes or seeds near it")  # fmt: skip
    # Tokens follow from the budget and the size (D ≈ C / flops-per-token(N)), close to a line
    # in log–log: interpolate it rather than assume 6·N FLOPs per token.
    slope, intercept = np.polyfit(u[near], np.log(tokens[near]), 1)
    return BudgetSlice(
        budget, n,
        params_opt=float(math.exp(vertex)),
        tokens_opt=float(math.exp(intercept + slope * vertex)),
        metric_opt=float(np.polyval(coefficients, vertex)),
        coefficients=coefficients, fitted=fitted,
    )  # fmt: skip


def _log_line(compute: np.ndarray, values: np.ndarray) -> LogLine:
    x, y = np.log(compute), np.log(values)
    (slope, intercept), residuals, *_ = np.polyfit(x, y, 1, full=True)
    dof = len(x) - 2
    stderr = None
    if dof > 0:
        sxx = ((x - x.mean()) ** 2).sum()
        rss = float(residuals[0]) if len(residuals) else 0.0
        stderr = float(math.sqrt(rss / dof / sxx))
    return LogLine(exponent=float(slope), k=float(math.exp(intercept)), exponent_stderr=stderr)


def fit_isoflop(budgets, params, tokens, metric) -> IsoFlopFit:
    """Fit each budget's optimum, then N_opt ∝ C^a and D_opt ∝ C^b over the budgets.

    The four inputs are equally long, one entry per trial; ``budgets`` are the trials'
    ``train.flops_budget``. Raises ``ValueError`` for non-positive or non-finite values.
    """
    arrays = [np.asarray(v, dtype=float) for v in (budgets, params, tokens, metric)]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise ValueError("budgets, params, tokens and metric must be 1-d and equally long")
    if not all(np.isfinite(a).all() and (a > 0).all() for a in arrays):
        raise ValueError("an IsoFLOP fit needs positive, finite budgets, sizes, tokens and metrics")
    budgets, params, tokens, metric = arrays
    slices = []
    for budget in np.unique(budgets):
        at = budgets == budget
        slices.append(fit_budget(float(budget), params[at], tokens[at], metric[at]))
    found = [s for s in slices if s.params_opt is not None]
    fit = IsoFlopFit(slices, used=[s.budget for s in found])
    if len(found) < 2:
        fit.reason = (f"{len(found)} budget(s) with an optimum (of {len(slices)}); the exponents "
                      "need at least two")  # fmt: skip
        return fit
    compute = np.array([s.budget for s in found])
    fit.params = _log_line(compute, np.array([s.params_opt for s in found]))
    fit.tokens = _log_line(compute, np.array([s.tokens_opt for s in found]))
    with contextlib.suppress(ValueError):  # e.g. a parabola's minimum below zero
        fit.frontier = fit_power_law(compute, [s.metric_opt for s in found])
    return fit
