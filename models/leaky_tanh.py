"""Worked example of a custom cell: a leaky tanh RNN with an input-dependent leak.

Everything a new cell needs is below: the gate count, the Jacobian structure, the
recurrent weights and the transition.  No Jacobian is written: the framework derives it by
forward-mode autograd (one JVP, since it is diagonal), and ``register_cell`` makes it
available as ``model.cell: leaky_tanh``.

With p = Bx + b split into gates (λ, u) and A: [1, N]:

    λ  = σ(p_λ)
    h' = λ ⊙ h + (1 − λ) ⊙ tanh(A ⊙ h + p_u)
"""

from __future__ import annotations

import torch

from paralab.models.cell import RecurrentCell
from paralab.models.registry import register_cell


class LeakyTanhCell(RecurrentCell):
    """Leaky tanh RNN.  Parameters: A [1, N], B, b [2, N] (gates λ, u)."""

    num_gates = 2
    jacobian_structure = "diagonal"
    recurrent_rows = {"A": 1}

    def transition(self, p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        leak = torch.sigmoid(p[..., 0, :])
        return leak * h + (1 - leak) * torch.tanh(self.A[0] * h + p[..., 1, :])


register_cell("leaky_tanh", LeakyTanhCell)
