"""ParaLSTM: an LSTM with coupled input/forget gate, peepholes and diagonal weights.

State (c, h), stored as ``[.., N, 2]`` with component 0 = c and 1 = h.  With p = Bx + b split
into gates (f, o, c̃), A: [3, N] with rows (f, o, c̃) and peepholes C: [2, N] with rows (f, o):

    f  = σ(A_f ⊙ h + p_f + C_f ⊙ c)
    c̃  = tanh(A_c ⊙ h + p_c)
    c' = f ⊙ c + (1 − f) ⊙ c̃
    o  = σ(A_o ⊙ h + p_o + C_o ⊙ c')
    h' = o ⊙ tanh(c')

Each unit's (c, h) depends only on its own (c, h), so the Jacobian is a 2×2 block per unit:

    ∂c'/∂c = f + f(1−f) C_f (c − c̃)            ∂c'/∂h = f(1−f) A_f (c − c̃) + (1−f)(1−c̃²) A_c
    ∂h'/∂x = o(1−o) (A_o [x=h] + C_o ∂c'/∂x) tanh(c') + o (1 − tanh²c') ∂c'/∂x
"""

from __future__ import annotations

import torch

from paralab.models.cell import RecurrentCell
from paralab.models.registry import register_cell


class ParaLSTM(RecurrentCell):
    """CIFG LSTM with peepholes (paper Sec. 3.2).  Parameters: A [3, N] (f, o, c̃),
    C [2, N] (f, o), B, b [3, N]; output y = h."""

    num_gates = 3
    jacobian_structure = "block2"
    recurrent_rows = {"A": 3, "C": 2}

    def transition(self, p: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        c, h = state[..., 0], state[..., 1]
        f = torch.sigmoid(self.A[0] * h + p[..., 0, :] + self.C[0] * c)
        c_tilde = torch.tanh(self.A[2] * h + p[..., 2, :])
        c_new = f * c + (1 - f) * c_tilde
        o = torch.sigmoid(self.A[1] * h + p[..., 1, :] + self.C[1] * c_new)
        return torch.stack([c_new, o * torch.tanh(c_new)], dim=-1)

    def transition_and_jacobian(self, p: torch.Tensor, state: torch.Tensor):
        (a_f, a_o, a_c), (c_f, c_o) = self.A, self.C
        c, h = state[..., 0], state[..., 1]
        f = torch.sigmoid(a_f * h + p[..., 0, :] + c_f * c)
        c_tilde = torch.tanh(a_c * h + p[..., 2, :])
        c_new = f * c + (1 - f) * c_tilde
        o = torch.sigmoid(a_o * h + p[..., 1, :] + c_o * c_new)
        tanh_c = torch.tanh(c_new)
        df = f * (1 - f)
        dcn_dc = f + df * c_f * (c - c_tilde)
        dcn_dh = df * a_f * (c - c_tilde) + (1 - f) * (1 - c_tilde * c_tilde) * a_c
        do = o * (1 - o)
        dtanh = o * (1 - tanh_c * tanh_c)
        dh_dc = do * c_o * dcn_dc * tanh_c + dtanh * dcn_dc
        dh_dh = do * (a_o + c_o * dcn_dh) * tanh_c + dtanh * dcn_dh
        jac = torch.stack(
            [torch.stack([dcn_dc, dcn_dh], dim=-1), torch.stack([dh_dc, dh_dh], dim=-1)], dim=-2
        )
        return torch.stack([c_new, o * tanh_c], dim=-1), jac

    def fused_newton(self, p: torch.Tensor, state0: torch.Tensor, newton_iters: int):
        from paralab.kernels.newton import newton_lstm_fused  # imports Triton: only when asked

        h, c, residuals = newton_lstm_fused(
            p, self.A, self.C, state0[..., 1], state0[..., 0], newton_iters,
            return_residuals=True, return_cell=True,
        )  # fmt: skip
        return torch.stack([c, h], dim=-1), residuals

    def output(self, states: torch.Tensor) -> torch.Tensor:
        return states[..., 1]


register_cell("paralstm", ParaLSTM)
