"""The joint law of size and data, L(N, D) = E + A/N^α + B/D^β, fitted to every trial at once.

This is the third method of Hoffmann et al. (2022, "Chinchilla"). Where the per-axis power
laws see one axis at a time and the IsoFLOP analysis needs a grid of budgets, this fit uses
every finished trial whatever its size and token count, and says how the metric trades model
size against data. Under C ∝ N·D its minimum over N at fixed C gives N_opt ∝ C^(β/(α+β)) and
D_opt ∝ C^(α/(α+β)).

As in the paper, the fit minimises a Huber loss (δ = 1e-3) of log L̂ − log L, so a few
outlying trials (a diverged run, say) do not drag it, and starts from a grid of initial
values, keeping the best: the loss is not convex in (α, β).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

HUBER_DELTA = 1e-3
MIN_POINTS = 6
"""Five parameters; one distinct (N, D) point more to have a residual."""
MIN_DISTINCT = 3
"""Sizes (and token counts) at least: through two, the exponent and the floor trade freely."""


@dataclass(frozen=True)
class JointFit:
    """metric ≈ E + A/N^α + B/D^β over ``n`` trials."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    n: int
    r2_log: float
    """R² of log(metric)."""

    def predict(self, params, tokens) -> np.ndarray:
        n, d = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
        return self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)

    @property
    def params_exponent(self) -> float:
        """a in N_opt ∝ C^a, for C ∝ N·D."""
        return self.beta / (self.alpha + self.beta)

    @property
    def tokens_exponent(self) -> float:
        """b in D_opt ∝ C^b, for C ∝ N·D."""
        return self.alpha / (self.alpha + self.beta)

    def to_dict(self) -> dict:
        return {**asdict(self), "params_exponent": self.params_exponent,
                "tokens_exponent": self.tokens_exponent}  # fmt: skip


def fit_joint(params, tokens, metric) -> JointFit:
    """Fit ``metric ≈ E + A/N^α + B/D^β``.

    Raises ``ValueError`` when the trials cannot determine it: fewer than six distinct
    (N, D) pairs, fewer than three sizes or token counts, or tokens that are a fixed power of
    size (every trial on one line in log–log), and for non-positive or non-finite values.
    """
    from scipy.optimize import least_squares
    from scipy.special import logsumexp

    n, d, y = (np.asarray(v, dtype=float) for v in (params, tokens, metric))
    if not (n.shape == d.shape == y.shape) or n.ndim != 1:
        raise ValueError("params, tokens and metric must be 1-d and equally long")
    if not all(np.isfinite(v).all() and (v > 0).all() for v in (n, d, y)):
        raise ValueError("a joint fit needs positive, finite sizes, tokens and metrics")
    if len(y) < MIN_POINTS:
        raise ValueError(f"{len(y)} trial(s); a joint fit of five parameters needs at least {MIN_POINTS}")
    ln_n, ln_d, ln_y = np.log(n), np.log(d), np.log(y)
    for values, which in ((n, "model size"), (d, "token count")):
        distinct = len(np.unique(values))
        if distinct < 2:
            raise ValueError(f"every trial has the same {which}; a joint fit needs both to vary")
        if distinct < MIN_DISTINCT:
            # Two sizes fit any curvature exactly: the exponent trades against the floor.
            raise ValueError(f"only {distinct} distinct {which}s; a joint fit needs at least "
                             f"{MIN_DISTINCT} of each to tell its exponent from the floor")
    pairs = len(set(zip(n.tolist(), d.tolist())))
    if pairs < MIN_POINTS:
        raise ValueError(f"only {pairs} distinct (size, tokens) pairs (repeats add no "
                         f"information on the law's shape); a joint fit needs at least {MIN_POINTS}")
    if abs(np.corrcoef(ln_n, ln_d)[0, 1]) > 0.999:
        raise ValueError("tokens are a fixed power of size in every trial; sizes and token counts "
                         "must vary independently (e.g. an IsoFLOP grid)")  # fmt: skip

    def residual(theta):
        log_a, alpha, log_b, beta, log_e = theta
        terms = np.stack([log_a - alpha * ln_n, log_b - beta * ln_d, np.full_like(ln_n, log_e)])
        return logsumexp(terms, axis=0) - ln_y

    lower = [-np.inf, 0.0, -np.inf, 0.0, -np.inf]
    upper = [np.inf, 3.0, np.inf, 3.0, math.log(y.min())]
    best = None
    # The paper's grid of starts, thinned: the exponents matter most, then the floor.
    for alpha, beta, floor in itertools.product((0.1, 0.4, 1.0), (0.1, 0.4, 1.0), (0.3, 0.8)):
        log_e = math.log(floor * y.min())
        # Start A and B so that each term alone would explain half of what the floor leaves.
        rest = max(float(np.median(y)) - floor * y.min(), 1e-9) / 2
        theta0 = [math.log(rest) + alpha * float(np.median(ln_n)), alpha,
                  math.log(rest) + beta * float(np.median(ln_d)), beta, log_e]  # fmt: skip
        try:  # plain least squares from each start (fast) ...
            result = least_squares(residual, theta0, bounds=(lower, upper), method="trf")
        except ValueError:
            continue
        if best is None or result.cost < best.cost:
            best = result
    if best is None:
        raise ValueError("the joint fit did not converge from any start")
    # ... then the Huber loss from the best of them, so that outliers lose their pull.
    best = least_squares(residual, np.clip(best.x, lower, upper), bounds=(lower, upper),
                         loss="huber", f_scale=HUBER_DELTA, method="trf")  # fmt: skip
    log_a, alpha, log_b, beta, log_e = best.x
    r = residual(best.x)
    total = ((ln_y - ln_y.mean()) ** 2).sum()
    return JointFit(E=math.exp(log_e), A=math.exp(log_a), alpha=float(alpha), B=math.exp(log_b),
                    beta=float(beta), n=len(y),
                    r2_log=float(1 - (r**2).sum() / total) if total > 0 else 1.0)  # fmt: skip
