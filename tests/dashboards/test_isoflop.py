"""The IsoFLOP fit recovers the compute-optimal allocation of a known loss law, and says why
when a budget's points do not pin an optimum down."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paralab.dashboards.isoflop import fit_budget, fit_isoflop

# Hoffmann et al. (2022), approach 3's fitted law: L(N, D) = E + A/N^α + B/D^β, with C = 6·N·D.
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))


def n_opt(compute: float) -> float:
    """The law's exact compute-optimal size: G·(C/6)^(β/(α+β))."""
    return G * (compute / 6) ** (BETA / (ALPHA + BETA))


def chinchilla_grid(budgets, spread=6.0, sizes=9, jitter=None):
    rows = []
    for c in budgets:
        factors = np.geomspace(1 / spread, spread, sizes)
        if jitter is not None:
            factors = factors * np.exp(jitter.uniform(-0.15, 0.15, sizes))
        for n in n_opt(c) * factors:
            d = c / (6 * n)
            rows.append((c, n, d, E + A * n**-ALPHA + B * d**-BETA))
    return [list(col) for col in zip(*rows)]


def test_recovers_the_laws_exponents():
    fit = fit_isoflop(*chinchilla_grid([1e18, 1e19, 1e20, 1e21]))
    assert fit.reason is None and fit.used == [1e18, 1e19, 1e20, 1e21]
    # Sampling each budget evenly in ln N keeps the parabola's bias the same at every budget.
    assert fit.params.exponent == pytest.approx(BETA / (ALPHA + BETA), abs=1e-6)
    assert fit.tokens.exponent == pytest.approx(ALPHA / (ALPHA + BETA), abs=1e-6)
    # The frontier: at the law's optimum, L*(C) = E + K·C^(−αβ/(α+β)).
    assert fit.frontier is not None and fit.frontier.floor_fitted
    assert fit.frontier.alpha == pytest.approx(ALPHA * BETA / (ALPHA + BETA), rel=1e-4)
    assert fit.frontier.E == pytest.approx(E, rel=1e-4)
    for s in fit.slices:
        assert s.params_opt == pytest.approx(n_opt(s.budget), rel=0.05)  # a parabola, not the law
        assert 6 * s.params_opt * s.tokens_opt == pytest.approx(s.budget, rel=1e-9)
        at_budget = chinchilla_grid([s.budget])[3]
        assert s.metric_opt == pytest.approx(min(at_budget), rel=1e-3)


def test_uneven_sizes_still_give_close_exponents():
    rng = np.random.default_rng(0)
    fit = fit_isoflop(*chinchilla_grid([1e18, 1e19, 1e20], sizes=7, jitter=rng))
    assert fit.params.exponent == pytest.approx(BETA / (ALPHA + BETA), abs=0.02)
    assert fit.tokens.exponent == pytest.approx(ALPHA / (ALPHA + BETA), abs=0.02)
    assert fit.params.exponent_stderr is not None and fit.params.exponent_stderr < 0.05


def test_an_exact_parabola_gives_its_vertex():
    sizes = np.array([1e5, 3e5, 1e6, 3e6, 1e7])
    metric = 0.3 * (np.log(sizes) - math.log(7e5)) ** 2 + 2.0
    s = fit_budget(1e15, sizes, 1e15 / (6 * sizes), metric)
    assert s.reason is None and s.fitted == (1e5, 1e7)
    assert s.params_opt == pytest.approx(7e5, rel=1e-9)
    assert s.metric_opt == pytest.approx(2.0, rel=1e-12)
    assert s.tokens_opt == pytest.approx(1e15 / (6 * 7e5), rel=1e-9)


@pytest.mark.parametrize(
    ("sizes", "metric", "reason"),
    [
        ([1e5, 1e6], [3.0, 2.9], "2 model size(s); an optimum needs at least 3"),
        ([1e5, 1e6, 1e7], [3.0, 2.7, 2.5], "the largest size trained is best, so the optimum lies "
                                           "outside the sizes trained; add larger sizes"),
        ([1e5, 1e6, 1e7], [2.5, 2.7, 3.0], "the smallest size trained is best, so the optimum lies "
                                           "outside the sizes trained; add smaller sizes"),
        ([1e5, 1e6, 1e7, 1e8, 1e9], [1.0, 2.0, 0.9, 2.0, 1.0], "do not bend into a minimum"),
    ],
    ids=["two-sizes", "largest-best", "smallest-best", "noisy"],
)
def test_a_budget_without_an_optimum_says_why(sizes, metric, reason):
    sizes = np.array(sizes)
    s = fit_budget(1e15, sizes, 1e15 / (6 * sizes), metric)
    assert s.params_opt is None and reason in s.reason


def test_exponents_need_two_budgets_with_an_optimum():
    budgets, params, tokens, metric = chinchilla_grid([1e18])
    fit = fit_isoflop(budgets, params, tokens, metric)
    assert fit.params is None and "1 budget(s) with an optimum (of 1)" in fit.reason
    # A second budget with only two sizes adds a slice, not an optimum.
    fit = fit_isoflop(budgets + [1e19, 1e19], params + [1e8, 1e9], tokens + [1e10, 1e9],
                      metric + [2.5, 2.4])  # fmt: skip
    assert len(fit.slices) == 2 and fit.params is None and fit.used == [1e18]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="positive, finite"):
        fit_isoflop([1e18, 1e18, 1e18], [1e6, 2e6, -1], [1, 2, 3], [3.0, 2.9, 3.1])
    with pytest.raises(ValueError, match="equally long"):
        fit_isoflop([1e18], [1e6, 2e6], [1, 2], [3.0, 2.9])


def test_only_the_sizes_around_the_best_are_fitted():
    """Far from its minimum a budget's curve is no parabola: a wide grid fitted whole would
    pull the vertex off the best trials. Here the far sizes follow a steep wall that a whole
    fit would bend towards; the window of two sizes each side of the best ignores it."""
    sizes = np.geomspace(1e4, 1e8, 9)
    u = np.log(sizes)
    metric = 0.2 * (u - math.log(3e5)) ** 2 + 2.0
    metric[-2:] += [3.0, 8.0]  # the two largest sizes blow up
    s = fit_budget(1e15, sizes, 1e15 / (6 * sizes), metric)
    assert s.fitted == pytest.approx((sizes[1], sizes[5]))  # the best is sizes[3]
    assert s.params_opt == pytest.approx(3e5, rel=1e-9)
    whole = np.polyfit(u, metric, 2)
    assert abs(math.exp(-whole[1] / (2 * whole[0])) / 3e5 - 1) > 0.1  # what a whole fit gives
