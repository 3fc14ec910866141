"""A diagonal gated *linear* cell, the Mamba/HGRN-style baseline, in the same framework.

With p = Bx + b split into gates (a, v):

    a  = σ(p_a)                      (input-dependent decay in (0, 1))
    h' = a ⊙ h + (1 − a) ⊙ p_v

f is affine in h with Jacobian ∂h'/∂h = a, independent of h, so Newton's linearisation is
the recurrence itself and one iteration is exact (``exact_newton_iters = 1``): the
``parallel`` mode is then a single scan, as in Mamba.
"""

from __future__ import annotations

import torch

from paralab.models.cell import RecurrentCell
from paralab.models.registry import register_cell


class LinearCell(RecurrentCell):
    """Gated diagonal linear recurrence.  Parameters: B, b [2, N] (gates a, v); no A."""

    num_gates = 2
    jacobian_structure = "diagonal"
    recurrent_rows = {}
    exact_newton_iters = 1

    def transition(self, p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(p[..., 0, :])
        return a * h + (1 - a) * p[..., 1, :]

    def transition_and_jacobian(self, p: torch.Tensor, h: torch.Tensor):
        a = torch.sigmoid(p[..., 0, :])
        return a * h + (1 - a) * p[..., 1, :], a.expand_as(h)


register_cell("linear", LinearCell)
