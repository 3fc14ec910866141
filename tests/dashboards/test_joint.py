"""The joint fit of size and data recovers a known L(N, D), shrugs off an outlier, and refuses
trials that cannot tell N from D."""

from __future__ import annotations

import numpy as np
import pytest

from paralab.dashboards.joint import fit_joint

# Hoffmann et al. (2022), approach 3's fitted law.
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28


def law_grid(sizes=6, tokens=6):
    n, d = np.meshgrid(np.geomspace(1e7, 1e10, sizes), np.geomspace(1e9, 1e12, tokens))
    n, d = n.ravel(), d.ravel()
    return n, d, E + A * n**-ALPHA + B * d**-BETA


def test_recovers_the_law():
    fit = fit_joint(*law_grid())
    for got, want in ((fit.E, E), (fit.A, A), (fit.alpha, ALPHA), (fit.B, B), (fit.beta, BETA)):
        assert got == pytest.approx(want, rel=1e-6)
    assert fit.params_exponent == pytest.approx(BETA / (ALPHA + BETA), rel=1e-6)
    assert fit.tokens_exponent == pytest.approx(ALPHA / (ALPHA + BETA), rel=1e-6)
    n, d, metric = law_grid(3, 3)
    assert fit.predict(n, d) == pytest.approx(metric, rel=1e-9)


def test_noise_and_an_outlier():
    n, d, metric = law_grid()
    noisy = metric * np.exp(np.random.default_rng(0).normal(0, 0.005, metric.shape))
    clean = fit_joint(n, d, noisy)
    assert clean.alpha == pytest.approx(ALPHA, abs=0.03) and clean.beta == pytest.approx(BETA, abs=0.03)
    spoiled = noisy.copy()
    spoiled[3] *= 1.5  # one diverged trial
    robust = fit_joint(n, d, spoiled)
    # The Huber loss leaves the outlier almost no pull on the exponents.
    assert robust.alpha == pytest.approx(clean.alpha, abs=1e-3)
    assert robust.beta == pytest.approx(clean.beta, abs=1e-3)


@pytest.mark.parametrize(
    ("n", "d", "message"),
    [
        ([1e6, 2e6, 4e6, 8e6, 1.6e7], [1e9, 2e9, 1e9, 2e9, 1e9], "5 trial(s); a joint fit of five parameters"),
        ([1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7], [1e9] * 6, "every trial has the same token count"),
        ([1e6] * 6, [1e9, 2e9, 4e9, 8e9, 1.6e10, 3.2e10], "every trial has the same model size"),
        ([1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7], [2e10, 1e10, 5e9, 2.5e9, 1.25e9, 6.25e8],
         "tokens are a fixed power of size"),
        # 2 sizes × 3 token counts of the exact law: fitted, it gave α = 0.22 (0.34) and
        # E = 0.38 (1.69) at R² = 1.
        ([1e7] * 3 + [1e8] * 3, [1e9, 1e10, 1e11] * 2, "only 2 distinct model sizes"),
        ([1e6, 2e6, 4e6] * 2, [1e9, 2e9, 4e9] * 2, "only 3 distinct (size, tokens) pairs"),
    ],
    ids=["too-few", "tokens-fixed", "size-fixed", "one-budget", "two-sizes", "repeats"],
)
def test_trials_that_cannot_separate_n_from_d(n, d, message):
    n, d = np.array(n), np.array(d)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit_joint(n, d, E + A * n**-ALPHA + B * d**-BETA)


def test_bad_values_are_refused():
    n, d, metric = law_grid()
    metric[0] = np.nan
    with pytest.raises(ValueError, match="positive, finite"):
        fit_joint(n, d, metric)
