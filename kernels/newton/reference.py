"""Newton's method over the sequence, in plain PyTorch: the reference for the fused kernels.

For a cell s_t = f(p_t, s_{t-1}) (s_{-1} = s0), start from s⁰_t = f(p_t, 0) and iterate

    J_t = ∂f/∂s (p_t, s_{t-1}),   r_t = f(p_t, s_{t-1}) − s_t,
    δ_t = J_t δ_{t-1} + r_t       (δ_{-1} = 0; a linear scan),        s ← s + δ

a fixed number of times.  The backward pass is the adjoint at the solution, not a backprop
through the iterations:

    λ_t = g_t + J_{t+1}ᵀ λ_{t+1}                                       (reverse scan)
    grad_p_t, grad_A, grad_s0 = one vectorised VJP of f(p_t, s_{t-1}) with cotangent λ_t

Jacobians are recomputed in the backward pass rather than stored.  ParaGRU has a diagonal
Jacobian and a state [B, T, N]; ParaLSTM a 2×2 block per unit and a state (c, h) stored as
[B, T, N, 2].  Arithmetic is fp32 (fp64 for fp64 inputs); outputs have p's dtype.
"""

from __future__ import annotations

import torch

from paralab.kernels.newton.cells import (
    gru_cell,
    gru_cell_jacobian,
    lstm_cell,
    lstm_cell_jacobian,
)
from paralab.kernels.scan import linear_scan
from paralab.kernels.scan.utils import acc_dtype


def _cell(kind, p, A, C, s):
    return gru_cell(p, A, s) if kind == "gru" else lstm_cell(p, A, C, s)


def _cell_jacobian(kind, p, A, C, s):
    return gru_cell_jacobian(p, A, s) if kind == "gru" else lstm_cell_jacobian(p, A, C, s)


def shift_states(s: torch.Tensor, s0: torch.Tensor | None) -> torch.Tensor:
    """s_{t-1} for every t: [s0 (zeros if None), s_0, ..., s_{T-2}] along dim 1."""
    if s.shape[1] == 0:
        return s
    first = torch.zeros_like(s[:, :1]) if s0 is None else s0.to(s.dtype).unsqueeze(1)
    return torch.cat([first, s[:, :-1]], dim=1)


def _max_abs(x: torch.Tensor) -> torch.Tensor:
    """max |x|, 0 for an empty x (where ``amax`` raises)."""
    return x.abs().amax() if x.numel() else x.new_zeros(())


class _NewtonReferenceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, newton_iters, scan_backend, p, A, C, s0):
        dtype = acc_dtype(p.dtype)
        p_, A_ = p.to(dtype), A.to(dtype)
        C_ = None if C is None else C.to(dtype)
        s0_ = None if s0 is None else s0.to(dtype)
        state_shape = p.shape[:2] + p.shape[3:] + ((2,) if kind == "lstm" else ())
        s = _cell(kind, p_, A_, C_, p_.new_zeros(state_shape))
        residuals = []
        for _ in range(newton_iters):
            f, J = _cell_jacobian(kind, p_, A_, C_, shift_states(s, s0_))
            r = f - s
            residuals.append(_max_abs(r))
            s = s + linear_scan(J, r, backend=scan_backend)
        ctx.save_for_backward(p_, A_, C_, s0_, s)
        ctx.kind, ctx.scan_backend, ctx.dtypes = (
            kind,
            scan_backend,
            (p.dtype, A.dtype, None if C is None else C.dtype),
        )
        ctx.s0_dtype = None if s0 is None else s0.dtype
        res = torch.stack(residuals) if residuals else p_.new_zeros(0)
        ctx.mark_non_differentiable(res)
        return s.to(p.dtype), res

    @staticmethod
    def backward(ctx, grad_s, _grad_res):
        p_, A_, C_, s0_, s = ctx.saved_tensors
        kind = ctx.kind
        s_prev = shift_states(s, s0_)
        _, J = _cell_jacobian(kind, p_, A_, C_, s_prev)
        J_next = torch.cat([J[:, 1:], torch.zeros_like(J[:, :1])], dim=1)
        if kind == "lstm":
            J_next = J_next.transpose(-1, -2)
        lam = linear_scan(J_next, grad_s.to(s.dtype), reverse=True, backend=ctx.scan_backend)
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_() for x in (p_, A_, s_prev)]
            C_leaf = None if C_ is None else C_.detach().requires_grad_()
            out = _cell(kind, leaves[0], leaves[1], C_leaf, leaves[2])
            wrt = leaves + ([C_leaf] if C_leaf is not None else [])
            grads = torch.autograd.grad(out, wrt, lam)
        grad_p, grad_A, grad_s_prev = grads[:3]
        grad_C = grads[3].to(ctx.dtypes[2]) if C_leaf is not None else None
        if s0_ is None:
            grad_s0 = None
        elif s.shape[1] == 0:  # no step reads s0
            grad_s0 = torch.zeros_like(s0_).to(ctx.s0_dtype)
        else:
            grad_s0 = grad_s_prev[:, 0].to(ctx.s0_dtype)
        return None, None, None, grad_p.to(ctx.dtypes[0]), grad_A.to(ctx.dtypes[1]), grad_C, grad_s0


def newton_gru_reference(
    p: torch.Tensor,
    A: torch.Tensor,
    h0: torch.Tensor | None = None,
    newton_iters: int = 3,
    return_residuals: bool = False,
    scan_backend: str = "torch",
):
    """ParaGRU by Newton's method with PyTorch scans.

    Args:
        p: pre-activations ``[B, T, 3, N]``, gate rows (z, r, c); fp32, bf16 or fp64.
        A: diagonal recurrent weights ``[3, N]``.
        h0: initial state ``[B, N]``; zeros when None.
        newton_iters: fixed number of Newton iterations.
        return_residuals: also return the fp32 ``[newton_iters]`` tensor whose k-th entry
            is max |f(p_t, h^k_{t-1}) − h^k_t| over batch, time and units, for the iterate
            h^k entering iteration k.
        scan_backend: backend of the linear scans (see :func:`paralab.kernels.scan.linear_scan`);
            ``"triton"`` gives PyTorch Jacobians with Triton scans.

    Returns:
        h ``[B, T, N]`` in p's dtype (and the residuals).  Gradients flow to p, A and h0
        through the adjoint at the solution.
    """
    h, res = _NewtonReferenceFn.apply("gru", newton_iters, scan_backend, p, A, None, h0)
    return (h, res) if return_residuals else h


def newton_lstm_reference(
    p: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    newton_iters: int = 3,
    return_residuals: bool = False,
    return_cell: bool = False,
    scan_backend: str = "torch",
):
    """ParaLSTM by Newton's method with PyTorch scans.

    Args:
        p: pre-activations ``[B, T, 3, N]``, gate rows (f, o, c̃).
        A: diagonal recurrent weights ``[3, N]``; C: peepholes ``[2, N]``, rows (f, o).
        h0, c0: initial hidden and cell states ``[B, N]``; zeros when None.
        newton_iters, return_residuals: as for :func:`newton_gru_reference`; the residual
            is the max over both state components.
        return_cell: also return the cell states c ``[B, T, N]``.
        scan_backend: backend of the linear scans, as for :func:`newton_gru_reference`.

    Returns:
        h ``[B, T, N]``, then c if ``return_cell``, then the residuals if
        ``return_residuals``; a bare tensor when neither flag is set.
    """
    s0 = None
    if h0 is not None or c0 is not None:
        dtype = acc_dtype(p.dtype)
        zeros = p.new_zeros(p.shape[0], p.shape[-1], dtype=dtype)
        c0_, h0_ = (zeros if x is None else x.to(dtype) for x in (c0, h0))
        s0 = torch.stack([c0_, h0_], dim=-1)
    s, res = _NewtonReferenceFn.apply("lstm", newton_iters, scan_backend, p, A, C, s0)
    out = (
        (s[..., 1],) + ((s[..., 0],) if return_cell else ()) + ((res,) if return_residuals else ())
    )
    return out[0] if len(out) == 1 else out
