"""Power-law fits recover known laws, degrade honestly with few points, and refuse nonsense."""

from __future__ import annotations

import numpy as np
import pytest

from paralab.dashboards.powerlaw import fit_power_law


@pytest.mark.parametrize("E, A, alpha", [(1.7, 40.0, 0.3), (0.0, 12.0, 0.5), (3.2, 900.0, 0.08)])
def test_recovers_a_saturating_law_exactly(E, A, alpha):
    x = np.geomspace(1e4, 1e8, 7)
    fit = fit_power_law(x, E + A * x**-alpha)
    assert fit.floor_fitted and fit.n == 7
    assert fit.alpha == pytest.approx(alpha, rel=1e-3)
    assert fit.E == pytest.approx(E, abs=1e-3 * (E + 1))
    assert fit.A == pytest.approx(A, rel=1e-2)
    assert fit.r2_log > 0.999999
    np.testing.assert_allclose(fit.predict(x), E + A * x**-alpha, rtol=1e-5)


def test_noisy_points_give_a_close_exponent_and_an_error_bar():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e5, 1e9, 12)
    y = (2.0 + 300.0 * x**-0.35) * np.exp(rng.normal(0, 0.01, x.size))
    fit = fit_power_law(x, y)
    assert fit.alpha == pytest.approx(0.35, abs=0.1)
    assert fit.alpha_stderr is not None and 0 < fit.alpha_stderr < 0.2
    assert 0.9 < fit.r2_log <= 1.0


def test_few_points_hold_the_floor_at_zero():
    x = np.array([1e6, 4e6, 1.6e7])
    fit = fit_power_law(x, 5.0 * x**-0.2)
    assert not fit.floor_fitted and fit.E == 0.0
    assert fit.alpha == pytest.approx(0.2, rel=1e-6)
    two = fit_power_law(x[:2], 5.0 * x[:2] ** -0.2)
    assert two.alpha == pytest.approx(0.2, rel=1e-6) and two.alpha_stderr is None


def test_the_floor_needs_four_distinct_sizes_not_four_trials():
    """2 sizes × 2 seeds gave E = 1.24, α = 0.146 ± 29479 with the floor fitted."""
    x = np.array([1e6, 1e6, 4e6, 4e6])
    fit = fit_power_law(x, 2.0 + 30.0 * x**-0.3 * np.array([1.0, 1.002, 1.0, 0.998]))
    assert not fit.floor_fitted and fit.E == 0.0 and fit.dof == 2


@pytest.mark.parametrize(
    ("y", "note"),
    [([3.0, 3.1, 3.2, 3.3, 3.4], "α is 0: the metric does not fall"),
     ([10.0, 1.0, 1.0, 1.0, 1.0], "α reached its bound 10"),
     ([5.0, 1.2, 1.1, 1.05, 1.0], "E reached the smallest metric")],
    ids=["rising", "a-step", "floor-at-the-last-point"],
)
def test_a_fit_on_a_bound_says_so(y, note):
    fit = fit_power_law(np.geomspace(1e5, 1e7, 5), y)
    assert fit.note is not None and note in fit.note, fit


def test_a_clean_fit_has_no_note():
    x = np.geomspace(1e4, 1e8, 7)
    assert fit_power_law(x, 1.7 + 40.0 * x**-0.3).note is None


def test_formula_reads_like_the_law():
    fit = fit_power_law([1e3, 1e4, 1e5, 1e6], [3.0, 2.0, 1.5, 1.25])
    assert fit.formula("N").startswith(f"{fit.E:.4g} + ")
    assert "N^(−" in fit.formula("N")


@pytest.mark.parametrize(
    "x, y, message",
    [
        ([1e6], [2.0], "two distinct"),
        ([1e6, 1e6], [2.0, 2.1], "two distinct"),
        ([0.0, 1e6], [2.0, 1.0], "positive"),
        ([1e5, 1e6], [2.0, float("nan")], "positive"),
        ([1e5, 1e6], [2.0], "equally long"),
    ],
)
def test_refuses_what_has_no_power_law(x, y, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(x, y)
