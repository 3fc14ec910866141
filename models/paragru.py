"""ParaGRU: a GRU with diagonal recurrent weights, so its Jacobian is diagonal.

With p = Bx + b split into gates (z, r, c) and A: [3, N] with rows (z, r, c):

    z  = σ(A_z ⊙ h + p_z)
    r  = σ(A_r ⊙ h + p_r)
    ĉ  = tanh(A_c ⊙ (h ⊙ r) + p_c)
    h' = z ⊙ ĉ + (1 − z) ⊙ h

Jacobian (diagonal, per unit):

    ∂h'/∂h = (1 − z) + (ĉ − h) z(1 − z) A_z + z (1 − ĉ²) A_c (r + h r(1 − r) A_r)
"""

from __future__ import annotations

import torch

from paralab.models.cell import RecurrentCell
from paralab.models.registry import register_cell


class ParaGRU(RecurrentCell):
    """Diagonal GRU cell (paper Sec. 3.2).  Parameters: A [3, N] (z, r, c), B, b [3, N]."""

    num_gates = 3
    jacobian_structure = "diagonal"
    recurrent_rows = {"A": 3}

    def transition(self, p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.A[0] * h + p[..., 0, :])
        r = torch.sigmoid(self.A[1] * h + p[..., 1, :])
        c = torch.tanh(self.A[2] * (h * r) + p[..., 2, :])
        return z * c + (1 - z) * h

    def transition_and_jacobian(self, p: torch.Tensor, h: torch.Tensor):
        a_z, a_r, a_c = self.A
        z = torch.sigmoid(a_z * h + p[..., 0, :])
        r = torch.sigmoid(a_r * h + p[..., 1, :])
        c = torch.tanh(a_c * (h * r) + p[..., 2, :])
        dz = z * (1 - z) * a_z
        dr = r * (1 - r) * a_r
        dc = (1 - c * c) * a_c * (r + h * dr)
        return z * c + (1 - z) * h, (1 - z) + (c - h) * dz + z * dc

    def fused_newton(self, p: torch.Tensor, h0: torch.Tensor, newton_iters: int):
        from paralab.kernels.newton import newton_gru_fused  # imports Triton: only when asked

        return newton_gru_fused(p, self.A, h0, newton_iters, return_residuals=True)


register_cell("paragru", ParaGRU)
