"""The ParaGRU and ParaLSTM cells: step, Jacobian and explicit VJP, in plain PyTorch.

Inputs are pre-projected, gate-major: p = Bx + b of shape [..., 3, N]; recurrent weights
are diagonal, A of shape [3, N] (and peepholes C of shape [2, N] for the LSTM).

ParaGRU, rows (z, r, c), state h [..., N]:

    z  = σ(A_z ⊙ h + p_z)
    r  = σ(A_r ⊙ h + p_r)
    ĉ  = tanh(A_c ⊙ (h ⊙ r) + p_c)
    h' = z ⊙ ĉ + (1 − z) ⊙ h                 ∂h'/∂h is diagonal, J [..., N]

ParaLSTM, rows of A and p (f, o, c̃), rows of C (f, o), state s = (c, h) stacked as [..., N, 2]:

    f  = σ(A_f ⊙ h + p_f + C_f ⊙ c)
    c̃  = tanh(A_c ⊙ h + p_c)
    c' = f ⊙ c + (1 − f) ⊙ c̃
    o  = σ(A_o ⊙ h + p_o + C_o ⊙ c')
    h' = o ⊙ tanh(c')                        ∂(c', h')/∂(c, h) is a 2×2 block per unit,
                                              J [..., N, 2, 2], rows (c', h'), columns (c, h)

The explicit Jacobians and VJPs here are what the fused Triton kernels compute in registers;
tests hold them to autograd.  The sequential loops are the ground truth for every mode.
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------
# ParaGRU
# ---------------------------------------------------------------------------------------------


def gru_cell(p_t: torch.Tensor, A: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One ParaGRU step: p_t [..., 3, N], A [3, N], h [..., N] -> h' [..., N]."""
    z = torch.sigmoid(A[0] * h + p_t[..., 0, :])
    r = torch.sigmoid(A[1] * h + p_t[..., 1, :])
    c = torch.tanh(A[2] * (h * r) + p_t[..., 2, :])
    return z * c + (1 - z) * h


def gru_cell_jacobian(
    p_t: torch.Tensor, A: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h', ∂h'/∂h), both [..., N]: the step and its diagonal Jacobian."""
    z = torch.sigmoid(A[0] * h + p_t[..., 0, :])
    r = torch.sigmoid(A[1] * h + p_t[..., 1, :])
    c = torch.tanh(A[2] * (h * r) + p_t[..., 2, :])
    dz = z * (1 - z) * A[0]
    dr = r * (1 - r) * A[1]
    dc = (1 - c * c) * A[2] * (r + h * dr)
    return z * c + (1 - z) * h, dz * (c - h) + z * dc + (1 - z)


def gru_cell_vjp(
    p_t: torch.Tensor, A: torch.Tensor, h: torch.Tensor, lam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cotangent λ of h' pulled back: (grad_p [..., 3, N], grad_A per step [..., 3, N],
    grad_h [..., N]).  Sum grad_A over the leading dims for the weight gradient."""
    z = torch.sigmoid(A[0] * h + p_t[..., 0, :])
    r = torch.sigmoid(A[1] * h + p_t[..., 1, :])
    c = torch.tanh(A[2] * (h * r) + p_t[..., 2, :])
    g_z = lam * (c - h) * z * (1 - z)
    g_c = lam * z * (1 - c * c)
    g_r = g_c * A[2] * h * r * (1 - r)
    grad_p = torch.stack([g_z, g_r, g_c], dim=-2)
    grad_A = torch.stack([g_z * h, g_r * h, g_c * h * r], dim=-2)
    grad_h = lam * (1 - z) + g_z * A[0] + g_r * A[1] + g_c * A[2] * r
    return grad_p, grad_A, grad_h


def gru_sequential(
    p: torch.Tensor, A: torch.Tensor, h0: torch.Tensor | None = None
) -> torch.Tensor:
    """Ground truth: the cell applied step by step. p [B, T, 3, N], h0 [B, N] -> h [B, T, N].
    Computes in p's dtype; autograd differentiates through the loop."""
    h = p.new_zeros(p.shape[0], p.shape[-1]) if h0 is None else h0.to(p.dtype)
    out = []
    for t in range(p.shape[1]):
        h = gru_cell(p[:, t], A.to(p.dtype), h)
        out.append(h)
    if not out:
        return p.new_zeros(p.shape[0], 0, p.shape[-1])
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------------------------------
# ParaLSTM
# ---------------------------------------------------------------------------------------------


def _lstm_gates(p_t, A, C, c, h):
    f = torch.sigmoid(A[0] * h + p_t[..., 0, :] + C[0] * c)
    ct = torch.tanh(A[2] * h + p_t[..., 2, :])
    c_new = f * c + (1 - f) * ct
    o = torch.sigmoid(A[1] * h + p_t[..., 1, :] + C[1] * c_new)
    tc = torch.tanh(c_new)
    return f, ct, c_new, o, tc


def lstm_cell(p_t: torch.Tensor, A: torch.Tensor, C: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One ParaLSTM step: p_t [..., 3, N], A [3, N], C [2, N], s = (c, h) [..., N, 2] -> s'."""
    _, _, c_new, o, tc = _lstm_gates(p_t, A, C, s[..., 0], s[..., 1])
    return torch.stack([c_new, o * tc], dim=-1)


def lstm_cell_jacobian(
    p_t: torch.Tensor, A: torch.Tensor, C: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s' [..., N, 2], ∂s'/∂s [..., N, 2, 2]); rows (c', h'), columns (c, h)."""
    c, h = s[..., 0], s[..., 1]
    f, ct, c_new, o, tc = _lstm_gates(p_t, A, C, c, h)
    sf, so = f * (1 - f), o * (1 - o)
    dcc = f + (c - ct) * sf * C[0]
    dch = (c - ct) * sf * A[0] + (1 - f) * (1 - ct * ct) * A[2]
    dtc = o * (1 - tc * tc)
    dhc = so * C[1] * dcc * tc + dtc * dcc
    dhh = so * (A[1] + C[1] * dch) * tc + dtc * dch
    J = torch.stack([torch.stack([dcc, dch], -1), torch.stack([dhc, dhh], -1)], -2)
    return torch.stack([c_new, o * tc], dim=-1), J


def lstm_cell_vjp(
    p_t: torch.Tensor, A: torch.Tensor, C: torch.Tensor, s: torch.Tensor, lam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cotangent λ = (λ_c, λ_h) [..., N, 2] of s' pulled back: (grad_p [..., 3, N], grad_A
    per step [..., 3, N], grad_C per step [..., 2, N], grad_s [..., N, 2])."""
    c, h = s[..., 0], s[..., 1]
    lam_c, lam_h = lam[..., 0], lam[..., 1]
    f, ct, c_new, o, tc = _lstm_gates(p_t, A, C, c, h)
    g_o = lam_h * tc * o * (1 - o)
    mu = lam_c + lam_h * o * (1 - tc * tc) + g_o * C[1]  # total cotangent of c'
    g_f = mu * (c - ct) * f * (1 - f)
    g_c = mu * (1 - f) * (1 - ct * ct)
    grad_p = torch.stack([g_f, g_o, g_c], dim=-2)
    grad_A = torch.stack([g_f * h, g_o * h, g_c * h], dim=-2)
    grad_C = torch.stack([g_f * c, g_o * c_new], dim=-2)
    grad_s = torch.stack([mu * f + g_f * C[0], g_f * A[0] + g_o * A[1] + g_c * A[2]], dim=-1)
    return grad_p, grad_A, grad_C, grad_s


def lstm_sequential(
    p: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth: the cell applied step by step. p [B, T, 3, N], h0, c0 [B, N] ->
    (h, c), each [B, T, N].  Computes in p's dtype; autograd goes through the loop."""
    zeros = p.new_zeros(p.shape[0], p.shape[-1])
    s = torch.stack(
        [zeros if c0 is None else c0.to(p.dtype), zeros if h0 is None else h0.to(p.dtype)], -1
    )
    out = []
    for t in range(p.shape[1]):
        s = lstm_cell(p[:, t], A.to(p.dtype), C.to(p.dtype), s)
        out.append(s)
    if not out:
        empty = p.new_zeros(p.shape[0], 0, p.shape[-1])
        return empty, empty.clone()
    states = torch.stack(out, dim=1)
    return states[..., 1], states[..., 0]
