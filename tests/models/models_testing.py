"""Helpers shared by the model tests: tolerances per dtype, error reporting, cell factories.

Tolerances are relative: max|got − want| / max(max|want|, 1e-30).  fp32 error grows with
the sequence (rounding accumulates along the recurrence and through the scans), so the
fp32 row is a function of T; fp64 is flat.
"""

from __future__ import annotations

import torch

from paralab.models.newton import NewtonSettings
from paralab.models.registry import get_cell

# Newton iterations that converge below each dtype's rounding at |A| <= 0.5: at |A| uniform
# in [-0.5, 0.5] and T=1024, ParaGRU/ParaLSTM's fp64 output error is ~1e-3 after 2 iterations
# and 5e-7..2e-6 after 3 (test_newton.py holds the fp32 case at T=2048 below 1e-5).
CONVERGED_ITERS = {torch.float64: 8, torch.float32: 6}


def tolerance(dtype: torch.dtype, seq_len: int, kind: str = "output") -> float:
    """Relative tolerance for parallel vs sequential.

    | dtype | outputs              | gradients            |
    |-------|----------------------|----------------------|
    | fp64  | 1e-10                | 1e-10                |
    | fp32  | 1e-6 · max(1, √T/4)  | 5e-6 · max(1, √T/4)  |
    """
    if dtype == torch.float64:
        return 1e-10
    growth = max(1.0, seq_len**0.5 / 4)
    return (1e-6 if kind == "output" else 5e-6) * growth


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str) -> None:
    """Relative max error below ``rtol``; the message carries both errors."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    abs_err = (got - want).abs().max().item() if want.numel() else 0.0
    scale = max(want.abs().max().item() if want.numel() else 0.0, 1e-30)
    assert abs_err / scale <= rtol, (
        f"{what}: relative error {abs_err / scale:.3e} > {rtol:.1e} (max abs error {abs_err:.3e})"
    )


def make_cell(name: str, d_in: int, hidden: int, heads: int, dtype: torch.dtype, **newton):
    """A cell with bound-respecting random init and Newton settings ``newton``."""
    cell = get_cell(name)(d_in, hidden, heads, newton=NewtonSettings(**newton))
    return cell.to(dtype)


def random_state(cell, batch: int, dtype: torch.dtype, scale: float = 0.5) -> torch.Tensor:
    """A non-zero initial state, so h0's gradient and its use at t=0 are exercised."""
    return scale * torch.randn(cell.init_state(batch, dtype=dtype).shape, dtype=dtype)
