"""Jacobians ∂f/∂h of a transition f(p, h), derived by forward-mode autograd.

Newton needs J_t = ∂f(p_t, h_{t-1})/∂h_{t-1} at every step.  The cells we support have a
structured Jacobian, so a few Jacobian-vector products recover it exactly:

- ``diagonal`` (state ``[..., N]``): unit k depends only on unit k of h, so J·1 is the
  diagonal.  One JVP.
- ``block2`` (state ``[..., N, 2]``): unit k's two components depend only on unit k's two
  components, so J·e_j, with e_j the j-th component set to 1 in every unit, is column j
  of every 2×2 block.  Two JVPs.

The JVP also returns f itself, so Newton gets the transition for free.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

STRUCTURES = ("diagonal", "block2")


def derive_transition_and_jacobian(
    transition: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    p: torch.Tensor,
    h: torch.Tensor,
    structure: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(p, h) and its Jacobian in h, assuming ``structure``.

    p: ``[..., G, N]``.  h: ``[..., N]`` (diagonal) or ``[..., N, 2]`` (block2).
    Returns f with the shape of h, and J ``[..., N]`` or ``[..., N, 2, 2]`` with
    ``J[..., k, i, j] = ∂f[..., k, i] / ∂h[..., k, j]``.
    """
    step = lambda state: transition(p, state)
    if structure == "diagonal":
        return torch.func.jvp(step, (h,), (torch.ones_like(h),))
    if structure == "block2":
        columns = []
        for j in range(2):
            tangent = torch.zeros_like(h)
            tangent[..., j] = 1
            out, column = torch.func.jvp(step, (h,), (tangent,))
            columns.append(column)
        return out, torch.stack(columns, dim=-1)
    raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
