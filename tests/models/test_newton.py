"""Newton's behaviour: exactness after T iterations, fast convergence at |A| <= 0.5, early
exit, visible residuals, the sequential fallback on divergence and on unconverged solves,
and empty sequences in every mode."""

from __future__ import annotations

import pytest
import torch
from models_testing import assert_close, make_cell, random_state

from paralab.models.config import ModelConfig
from paralab.models.newton import NewtonSettings
from paralab.models.registry import get_cell

NONLINEAR_CELLS = ("paragru", "paralstm", "leaky_tanh")


def _uniform_recurrent_weights(cell, bound: float) -> None:
    """Spread the recurrent weights over the whole [-bound, bound], the worst case the
    constraint allows, instead of the small init."""
    with torch.no_grad():
        for name in cell.recurrent_parameter_names():
            getattr(cell, name).uniform_(-bound, bound)


@pytest.mark.parametrize("cell_name", NONLINEAR_CELLS)
@pytest.mark.parametrize("seq_len", [1, 5, 16])
def test_newton_iters_equal_to_seq_len_is_exact(cell_name, seq_len):
    torch.manual_seed(seq_len)
    # Far outside the bound, so that only the "one more exact step per iteration" argument,
    # not fast convergence, can make the answer exact.  No fallback: we want Newton's answer.
    cell = make_cell(cell_name, 4, 8, 2, torch.float64, newton_iters=seq_len, fallback_tol=None)
    _uniform_recurrent_weights(cell, 3.0)
    x = torch.randn(2, seq_len, 4, dtype=torch.float64)
    h0 = random_state(cell, 2, torch.float64)
    with torch.no_grad():
        want, _ = cell(x, h0, mode="sequential")
        got, _ = cell(x, h0, mode="parallel")
    assert cell.last_newton_stats.iterations == seq_len
    assert_close(got, want, 1e-13, "Newton with T iterations")


@pytest.mark.parametrize("cell_name", NONLINEAR_CELLS)
def test_three_iterations_reach_1e5_at_bound_half_for_2048_steps(cell_name):
    torch.manual_seed(0)
    cell = make_cell(cell_name, 64, 64, 4, torch.float32, newton_iters=3)
    _uniform_recurrent_weights(cell, 0.5)
    x = torch.randn(2, 2048, 64)
    with torch.no_grad():
        want, _ = cell(x, mode="sequential")
        got, _ = cell(x, mode="parallel")
    stats = cell.last_newton_stats
    assert not stats.fell_back and stats.iterations == 3
    err = (got - want).abs().max().item()
    assert err < 1e-5, f"max error after 3 iterations {err:.2e} (residuals {stats.residuals})"


def test_residuals_are_reported_and_shrink():
    torch.manual_seed(1)
    cell = make_cell("paragru", 8, 16, 2, torch.float64, newton_iters=5)
    with torch.no_grad():
        cell(torch.randn(2, 300, 8, dtype=torch.float64), mode="parallel")
    residuals = cell.last_newton_stats.residuals
    assert residuals.shape == (6,)  # iterate 0 (initial guess) .. iterate 5
    assert residuals[-1] < 1e-12 < residuals[0]
    assert torch.all(residuals[1:4] < residuals[:3])


def test_tolerance_exits_early():
    torch.manual_seed(2)
    cell = make_cell("paragru", 8, 16, 2, torch.float64, newton_iters=20, newton_tol=1e-9)
    with torch.no_grad():
        cell(torch.randn(2, 100, 8, dtype=torch.float64), mode="parallel")
    stats = cell.last_newton_stats
    assert stats.iterations < 20
    assert stats.residuals[-1] <= 1e-9 < stats.residuals[-2]


def test_linear_cell_is_exact_in_one_iteration():
    torch.manual_seed(3)
    cell = make_cell("linear", 8, 16, 2, torch.float64, newton_iters=3)
    x = torch.randn(2, 500, 8, dtype=torch.float64)
    with torch.no_grad():
        want, _ = cell(x, mode="sequential")
        got, _ = cell(x, mode="parallel")
    assert cell.last_newton_stats.iterations == 1
    assert_close(got, want, 1e-12, "linear cell after one Newton step")


def _divergent_cell(cell_name, fallback_tol):
    cell = make_cell(cell_name, 4, 8, 1, torch.float64, newton_iters=3, fallback_tol=fallback_tol)
    cell.a_bound = 100.0  # lift the bound, then leave it far behind
    _uniform_recurrent_weights(cell, 60.0)
    return cell


@pytest.mark.parametrize("cell_name", NONLINEAR_CELLS)
def test_divergence_falls_back_to_sequential_and_is_counted(cell_name):
    torch.manual_seed(4)
    cell = _divergent_cell(cell_name, fallback_tol=1e-2)
    x = (3 * torch.randn(2, 200, 4, dtype=torch.float64)).requires_grad_()
    want, _ = cell(x, mode="sequential")
    want_grad = torch.autograd.grad(want.sum(), [x, *cell.parameters()])
    got, _ = cell(x, mode="parallel")
    got_grad = torch.autograd.grad(got.sum(), [x, *cell.parameters()])
    assert cell.last_newton_stats.fell_back
    assert cell.newton_fallbacks == 1
    assert_close(got, want, 1e-14, "fallback output")
    for g, w in zip(got_grad, want_grad):
        assert_close(g, w, 1e-9, "gradient after fallback")


def test_default_fallback_tol_is_shared_and_accepts_converged_fp32_solves():
    """The default threshold sits well above a converged fp32 solve's residual (~2e-7 at the
    init), so default training runs never fall back."""
    assert ModelConfig().newton_fallback_tol == NewtonSettings().fallback_tol == 1e-4
    torch.manual_seed(5)
    for name in ("paragru", "paralstm"):
        cell = get_cell(name).from_config(ModelConfig(d_model=32, heads=2), d_in=32)
        with torch.no_grad():
            cell(torch.randn(2, 512, 32), mode="parallel")
        stats = cell.last_newton_stats
        assert not stats.fell_back and stats.iterations == 3
        assert stats.residuals[-1] < 1e-6, f"{name}: residuals {stats.residuals.tolist()}"


@pytest.mark.parametrize("newton_iters", [1, 2])
@pytest.mark.parametrize("cell_name", ["paragru", "paralstm"])
def test_unconverged_solve_falls_back_at_the_default_tolerance(cell_name, newton_iters):
    """One or two iterations at |A| up to the bound leave a residual (and an output error) of
    1e-3 or more: the default check must redo the call, not return it."""
    torch.manual_seed(6)
    cell = make_cell(cell_name, 32, 32, 2, torch.float32, newton_iters=newton_iters)
    _uniform_recurrent_weights(cell, 0.5)
    x = torch.randn(2, 512, 32)
    with torch.no_grad():
        want, _ = cell(x, mode="sequential")
        got, _ = cell(x, mode="parallel")
    stats = cell.last_newton_stats
    assert stats.fell_back and cell.newton_fallbacks == 1, stats.residuals.tolist()
    assert stats.residuals[-1] > 1e-4
    assert_close(got, want, 1e-6, "output after the fallback")


@pytest.mark.parametrize("mode", ["sequential", "parallel", "triton"])
@pytest.mark.parametrize("cell_name", ["paragru", "paralstm", "linear", "leaky_tanh"])
def test_empty_sequence_in_every_mode(cell_name, mode):
    """T = 0 gives y [B, 0, N], the initial state as the final one, and zero gradients for
    everything but h0 (no Triton kernel is launched, so ``triton`` runs here on CPU too)."""
    torch.manual_seed(7)
    cell = make_cell(cell_name, 4, 6, 2, torch.float32)
    x = torch.randn(3, 0, 4, requires_grad=True)
    h0 = random_state(cell, 3, torch.float32).requires_grad_()
    y, final = cell(x, h0, mode=mode)
    assert y.shape == (3, 0, 6)
    assert torch.equal(final, h0)
    weight = torch.randn(h0.shape)
    grads = torch.autograd.grad(
        (final * weight).sum() + y.sum(), [x, h0, *cell.parameters()], materialize_grads=True
    )
    assert torch.equal(grads[1], weight)
    for (name, param), grad in zip(cell.named_parameters(), grads[2:]):
        assert torch.equal(grad, torch.zeros_like(param)), f"grad of {name}"
    if mode != "sequential":
        stats = cell.last_newton_stats
        assert not stats.fell_back and torch.all(stats.residuals == 0)


def test_without_fallback_check_nothing_is_redone():
    torch.manual_seed(4)
    cell = _divergent_cell("paragru", fallback_tol=None)
    with torch.no_grad():
        want, _ = cell(3 * torch.randn(2, 200, 4, dtype=torch.float64), mode="sequential")
        torch.manual_seed(4)
        got, _ = cell(3 * torch.randn(2, 200, 4, dtype=torch.float64), mode="parallel")
    assert cell.newton_fallbacks == 0 and not cell.last_newton_stats.fell_back
    assert (got - want).abs().max() > 1e-3  # what the check exists to catch


def test_settings_come_from_config():
    from paralab.models.config import ModelConfig
    from paralab.models.paragru import ParaGRU

    cfg = ModelConfig(newton_iters=5, newton_tol=1e-7, newton_fallback_tol=None, a_bound=0.7)
    cell = ParaGRU.from_config(cfg, d_in=cfg.d_model)
    assert cell.newton == NewtonSettings(5, 1e-7, None)
    assert cell.a_bound == 0.7
