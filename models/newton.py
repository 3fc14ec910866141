"""Newton's method for a nonlinear recurrence, one parallel scan per iteration.

A cell's transition h_t = f(p_t, h_{t-1}) over t = 0..T-1 is a system of T equations.
Newton linearises it around the current iterate h^k:

    h^0_t     = f(p_t, 0)                                   (initial guess)
    r_t       = f(p_t, h^k_{t-1}) - h^k_t                   (residual, h^k_{-1} = h0)
    J_t       = ∂f/∂h (p_t, h^k_{t-1})                      (diagonal [N] or 2×2 block [N, 2, 2])
    δ_t       = J_t δ_{t-1} + r_t,  δ_{-1} = 0               (a linear recurrence: one scan)
    h^{k+1}   = h^k + δ

Each iteration makes at least one more step exact, so T iterations give the sequential
answer; in practice 3 suffice (paper, Sec. 4).  The residual max-norm of every iterate is
kept as a device tensor so that logging it costs no host sync.

A solve is accepted when its final residual is finite, has not grown, and is below
``fallback_tol · max(1, max|h|)``; otherwise the caller redoes it sequentially.  That check
is one host sync per solve and is skipped when ``fallback_tol`` is None.  A solve's output
error is about its final residual (within 2× for ParaGRU and ParaLSTM, measured at T = 1024),
so the default 1e-4, a little under √eps of fp32 (3.5e-4), accepts only answers that close to
the sequential one.  In fp32, 3 iterations leave ~2e-7 at the init and ~2e-6 with |A| spread
to the 0.5 bound; 1 or 2 iterations there leave 1e-3 or more, and are redone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from paralab.kernels.scan import linear_scan

Transition = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TransitionAndJacobian = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class NewtonSettings:
    """How a cell runs Newton; built from :class:`~paralab.models.config.ModelConfig`."""

    newton_iters: int = 3
    """Maximum iterations per solve."""
    newton_tol: float | None = None
    """Stop once the max residual is below this (costs a host sync per iteration)."""
    fallback_tol: float | None = 1e-4
    """Accept a solve only if its final residual is below this times max(1, max|h|).  1e-4 is
    a little under √eps of fp32, the recurrence's compute dtype in fp32 and bf16 runs; fp64
    runs that need fp64 accuracy should lower it."""


@dataclass
class NewtonStats:
    """What one solve did: kept by the cell as ``last_newton_stats``."""

    residuals: torch.Tensor
    """Max-norm residual of iterate k, k = 0..iterations, on the solve's device."""
    iterations: int
    """Newton iterations actually run."""
    fell_back: bool
    """True if the solve was rejected and redone sequentially."""


def shift_states(states: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """[h0, h_0, ..., h_{T-2}]: the previous state of every step, ``[B, T, ...]``."""
    if states.shape[1] == 0:
        return states
    return torch.cat([h0.unsqueeze(1), states[:, :-1]], dim=1)


def max_abs(x: torch.Tensor) -> torch.Tensor:
    """max |x| as a 0-dim tensor (no host sync); 0 for an empty x, where ``amax`` raises."""
    return x.abs().amax() if x.numel() else x.new_zeros(())


def sequential_solve(transition: Transition, p: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Ground truth: apply ``transition`` step by step; differentiable by plain autograd.

    p: ``[B, T, G, N]``; h0: ``[B, N]`` or ``[B, N, 2]``.  Returns states ``[B, T, ...]``.
    """
    h, states = h0, []
    # unbind, not p[:, t]: each select's backward would materialise a full-size zero
    # gradient, making the backward O(T²); unbind's backward is one stack.
    for p_t in p.unbind(1):
        h = transition(p_t, h)
        states.append(h)
    if not states:
        return h0.new_zeros((h0.shape[0], 0, *h0.shape[1:]))
    return torch.stack(states, dim=1)


def scan(coeffs: torch.Tensor, inputs: torch.Tensor, backend: str, reverse: bool = False):
    """x_t = J_t x_{t∓1} + u_t with J diagonal ``[B,T,N]`` or 2×2 block ``[B,T,N,2,2]``."""
    return linear_scan(coeffs, inputs, reverse=reverse, backend=backend)


def newton_solve(
    transition: Transition,
    transition_and_jacobian: TransitionAndJacobian,
    p: torch.Tensor,
    h0: torch.Tensor,
    settings: NewtonSettings,
    backend: str = "torch",
) -> tuple[torch.Tensor, NewtonStats]:
    """Solve the recurrence by Newton (see module docstring); call under ``torch.no_grad``.

    p: ``[B, T, G, N]``; h0: ``[B, N]`` (diagonal) or ``[B, N, 2]`` (2×2 block).
    Returns the states ``[B, T, ...]`` and the solve's :class:`NewtonStats`.  Falls back to
    :func:`sequential_solve` when the check in the module docstring rejects the solve.
    T = 0 returns empty states with no iteration run and a zero residual.
    """
    if p.shape[1] == 0:
        return sequential_solve(transition, p, h0), NewtonStats(h0.new_zeros(1), 0, False)
    states = transition(p, torch.zeros_like(h0).unsqueeze(1).expand(-1, p.shape[1], *h0.shape[1:]))
    residuals = []
    iterations = 0
    converged_early = False
    for _ in range(settings.newton_iters):
        step, jac = transition_and_jacobian(p, shift_states(states, h0))
        residual = step - states
        residuals.append(max_abs(residual))
        if settings.newton_tol is not None and residuals[-1].item() <= settings.newton_tol:
            converged_early = True
            break
        states = states + scan(jac, residual, backend)
        iterations += 1
    if not converged_early:
        residuals.append(final_residual(transition, p, h0, states))
    residuals = torch.stack(residuals) if residuals else states.new_zeros(1)
    fell_back = False
    if settings.fallback_tol is not None and rejected(residuals, states, settings.fallback_tol):
        states = sequential_solve(transition, p, h0)
        fell_back = True
    return states, NewtonStats(residuals=residuals, iterations=iterations, fell_back=fell_back)


def final_residual(transition: Transition, p: torch.Tensor, h0: torch.Tensor, states: torch.Tensor):
    """max |f(p_t, h_{t-1}) − h_t| of a solution, a 0-dim tensor (no host sync)."""
    return max_abs(transition(p, shift_states(states, h0)) - states)


def rejected(residuals: torch.Tensor, states: torch.Tensor, fallback_tol: float) -> bool:
    """Whether a solve must be redone: its final residual is non-finite, grew from the
    first, or exceeds ``fallback_tol · max(1, max|h|)``.  One host sync."""
    final, first = residuals[-1], residuals[0]
    # A residual that "grows" within rounding of an already-exact guess is not divergence.
    floor = torch.finfo(states.dtype).eps ** 0.5
    scale = states.abs().amax().clamp(min=1.0) if states.numel() else states.new_ones(())
    bad = (
        ~torch.isfinite(final)
        | ((final > first) & (final > floor))
        | (final > fallback_tol * scale)
    )
    return bool(bad)
