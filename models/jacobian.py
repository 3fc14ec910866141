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


def check_jacobian(cell: torch.nn.Module, name: str, tol: float = 1e-8) -> None:
    """Refuse a cell whose Jacobian is not what it declares, on one random fp64 token.

    Newton and the adjoint use only the declared structure: a transition that couples units
    across it, or a hand-written ``transition_and_jacobian`` that is wrong, still converges
    but trains on silently wrong gradients. ``cell`` is a small instance; its parameters are
    redrawn (it is a throwaway).
    """
    cell = cell.double()
    with torch.no_grad():
        for param in cell.parameters():
            param.normal_(0.0, 0.5)
    n = cell.hidden
    p = torch.randn(1, cell.num_gates, n, dtype=torch.float64)
    h = torch.randn_like(cell.init_state(1, dtype=torch.float64))
    with torch.no_grad():
        dense = torch.autograd.functional.jacobian(lambda s: cell.transition(p, s), h)
        _, declared = cell.transition_and_jacobian(p, h)
    s = 2 if cell.jacobian_structure == "block2" else 1
    dense = dense.reshape(n, s, n, s)
    blocks = declared.reshape(n, s, s)
    expected = torch.zeros_like(dense)
    for unit in range(n):
        expected[unit, :, unit, :] = blocks[unit]
    mask = torch.zeros_like(dense, dtype=torch.bool)
    for unit in range(n):
        mask[unit, :, unit, :] = True
    scale = max(1.0, dense.abs().max().item())
    across = (dense * ~mask).abs().max().item()
    if across > tol * scale:
        raise ValueError(
            f"cell {name!r} declares jacobian_structure={cell.jacobian_structure!r}, but its "
            f"transition makes a unit depend on another unit's state (|∂f/∂h| up to {across:.3g} "
            "across units); Newton would use a wrong Jacobian and give wrong gradients"
        )
    wrong = (dense - expected).abs().max().item()
    if wrong > tol * scale:
        raise ValueError(
            f"cell {name!r}: its transition_and_jacobian differs from autograd's Jacobian of its "
            f"transition by up to {wrong:.3g}; fix it, or delete it to have it derived"
        )
