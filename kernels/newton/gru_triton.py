"""Fused Newton kernels for ParaGRU (diagonal Jacobian), forward and adjoint backward.

Cell (rows of A and p: z, r, c):

    z = σ(A_z h + p_z),  r = σ(A_r h + p_r),  ĉ = tanh(A_c (h r) + p_c),  h' = z ĉ + (1 − z) h

One forward Newton iteration is one chunked scan whose elements are computed in registers
from p and the current iterate h:

    J_t = ∂h'/∂h (p_t, h_{t-1}),  r_t = f(p_t, h_{t-1}) − h_t,  δ_t = J_t δ_{t-1} + r_t,
    h_t ← h_t + δ_t

so an iteration reads p and h once and writes h once; the first iteration builds its
iterate h⁰_t = f(p_t, 0) on the fly.  When time is not split into groups (the usual case),
every iteration runs inside one launch, each program walking its units' whole sequence once
per iteration; otherwise each iteration is a chunked scan (:mod:`.common`).  The backward pass solves λ_t = g_t + J_{t+1} λ_{t+1}
with J_{t+1} recomputed at (p_{t+1}, h_t), and in the same pass applies the cell's VJP at
(p_t, h_{t-1}) to λ_t: grad_p is written per step, grad_A accumulated per program, and the
t = 0 row gives grad_h0.  :func:`paralab.kernels.newton.reference.newton_gru_reference` is
the same computation in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from paralab.kernels.newton.cells import gru_cell
from paralab.kernels.newton.common import (
    launch_chunked,
    load_gates,
    newton_launch_config,
    reject_fp64,
    tanh,
)
from paralab.kernels.scan.triton import diag_tile_scan, last_row, load_row


@triton.jit
def _gru_cell_jac(b_pz, b_pr, b_pc, b_az, b_ar, b_ac, b_h):
    """(h', ∂h'/∂h) for tiles; mirrors cells.gru_cell_jacobian."""
    b_z = tl.sigmoid(b_az * b_h + b_pz)
    b_r = tl.sigmoid(b_ar * b_h + b_pr)
    b_c = tanh(b_ac * (b_h * b_r) + b_pc)
    b_dz = b_z * (1.0 - b_z) * b_az
    b_dr = b_r * (1.0 - b_r) * b_ar
    b_dc = (1.0 - b_c * b_c) * b_ac * (b_r + b_h * b_dr)
    return b_z * b_c + (1.0 - b_z) * b_h, b_dz * (b_c - b_h) + b_z * b_dc + (1.0 - b_z)


@triton.jit
def _gru_cell_vjp(b_pz, b_pr, b_pc, b_az, b_ar, b_ac, b_h, b_lam):
    """Cotangent λ of h' pulled back to (p_z, p_r, p_c), the per-step A terms, and h;
    mirrors cells.gru_cell_vjp."""
    b_z = tl.sigmoid(b_az * b_h + b_pz)
    b_r = tl.sigmoid(b_ar * b_h + b_pr)
    b_c = tanh(b_ac * (b_h * b_r) + b_pc)
    b_gz = b_lam * (b_c - b_h) * b_z * (1.0 - b_z)
    b_gc = b_lam * b_z * (1.0 - b_c * b_c)
    b_gr = b_gc * b_ac * b_h * b_r * (1.0 - b_r)
    b_gh = b_lam * (1.0 - b_z) + b_gz * b_az + b_gr * b_ar + b_gc * b_ac * b_r
    return b_gz, b_gr, b_gc, b_gz * b_h, b_gr * b_h, b_gc * b_h * b_r, b_gh


@triton.jit
def _gru_fwd_pass(
    p, h_in, h_out, b_az, b_ar, b_ac, b_h0, b_d, s_begin, s_end, base, T, N, o_n, m_n,
    BT: tl.constexpr, BN: tl.constexpr, FIRST: tl.constexpr, STORE: tl.constexpr,
    USE_ASSOC: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    """One Newton iteration over time steps [s_begin, s_end) of one program's units.

    ``b_d`` is the correction δ entering the range.  Returns the correction leaving it, the
    product of the range's Jacobians, and max |residual|.  With ``STORE`` the new iterate
    h + δ goes to ``h_out``; ``FIRST`` builds the iterate h⁰_t = f(p_t, 0) instead of reading
    ``h_in``."""
    base3 = base * 3
    b_prod = tl.full([BN], 1.0, dtype=tl.float32)
    b_res = tl.zeros([BN], dtype=tl.float32)
    for s0 in range(s_begin, s_end, BT):
        o_t = s0 + tl.arange(0, BT)
        if I64:  # o_t · 3N would overflow int32 (see needs_int64)
            o_t = o_t.to(tl.int64)
        m_t = o_t < T
        m = m_t[:, None] & m_n[None, :]
        m_prev = m & (o_t >= 1)[:, None]
        b_pz, b_pr, b_pc = load_gates(p, base3, o_t, o_n, m, N)
        # The current iterate at t and t - 1.
        if FIRST:
            b_zero = tl.zeros([BT, BN], dtype=tl.float32)
            b_h, _ = _gru_cell_jac(b_pz, b_pr, b_pc, b_az, b_ar, b_ac, b_zero)
            q_z, q_r, q_c = load_gates(p, base3, o_t - 1, o_n, m_prev, N)
            b_hp, _ = _gru_cell_jac(q_z, q_r, q_c, b_az, b_ar, b_ac, b_zero)
        else:
            p_h = h_in + base + o_t[:, None] * N + o_n[None, :]
            b_h = tl.load(p_h, mask=m, other=0.0)
            b_hp = tl.load(p_h - N, mask=m_prev, other=0.0)
        b_hp = tl.where((o_t == 0)[:, None], b_h0[None, :], b_hp)
        b_f, b_j = _gru_cell_jac(b_pz, b_pr, b_pc, b_az, b_ar, b_ac, b_hp)
        b_r = tl.where(m, b_f - b_h, 0.0)
        b_j = tl.where(m_t[:, None], b_j, 1.0)  # rows past the end: identity
        b_ja, b_ds = diag_tile_scan(b_j, b_r, BT, USE_ASSOC)
        b_ds = b_ja * b_d[None, :] + b_ds
        if STORE:
            p_o = h_out + base + o_t[:, None] * N + o_n[None, :]
            tl.store(p_o, b_h + b_ds, mask=m)
            b_res = tl.maximum(b_res, tl.max(tl.abs(b_r), axis=0))
        b_d = last_row(b_ds, BT)
        b_prod = last_row(b_ja, BT) * b_prod
    return b_d, b_prod, b_res


@triton.jit
def _gru_load_weights(A, h0, i_b, o_n, m_n, N, BN: tl.constexpr, HAS_H0: tl.constexpr):
    """The recurrent weights as [1, BN] rows and the initial state as a [BN] vector."""
    b_az = tl.load(A + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    b_ar = tl.load(A + N + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    b_ac = tl.load(A + 2 * N + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    return b_az, b_ar, b_ac, load_row(h0, i_b, o_n, m_n, N, BN, HAS_H0, tl.float32)


@triton.jit
def _gru_newton_solve_kernel(
    p, A, h0, h_even, h_odd, res, T, N, ITERS,
    BT: tl.constexpr, BN: tl.constexpr, USE_ASSOC: tl.constexpr, HAS_H0: tl.constexpr,
    I64: tl.constexpr,
):  # fmt: skip
    """Every Newton iteration in one launch: each program owns one batch row and BN units for
    the whole sequence.  Iteration k reads the iterate from ``h_even`` (k even) or ``h_odd``
    and writes the other; a block barrier between iterations makes one iteration's stores
    visible to all of the program's threads before the next reads them.  ``res`` is
    [ITERS, B, n_blocks]."""
    i_n, i_b = tl.program_id(0), tl.program_id(1)
    NB, B = tl.num_programs(0), tl.num_programs(1)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    base = i_b.to(tl.int64) * T * N
    b_az, b_ar, b_ac, b_h0 = _gru_load_weights(A, h0, i_b, o_n, m_n, N, BN, HAS_H0)
    b_zero = tl.zeros([BN], dtype=tl.float32)
    _, _, b_res = _gru_fwd_pass(
        p, h_even, h_odd, b_az, b_ar, b_ac, b_h0, b_zero, 0, T, base, T, N, o_n, m_n,
        BT, BN, True, True, USE_ASSOC, I64,
    )  # fmt: skip
    tl.store(res + i_b * NB + i_n, tl.max(b_res, axis=0))
    for k in range(1, ITERS):
        tl.debug_barrier()
        if k % 2 == 0:
            h_in, h_out = h_even, h_odd
        else:
            h_in, h_out = h_odd, h_even
        _, _, b_res = _gru_fwd_pass(
            p, h_in, h_out, b_az, b_ar, b_ac, b_h0, b_zero, 0, T, base, T, N, o_n, m_n,
            BT, BN, False, True, USE_ASSOC, I64,
        )  # fmt: skip
        tl.store(res + (k * B + i_b) * NB + i_n, tl.max(b_res, axis=0))


@triton.jit
def _gru_newton_fwd_kernel(
    p, A, h0, h_in, h_out, res,
    chunk_a, chunk_b, carry, T, N, ROWS,
    BT: tl.constexpr, BN: tl.constexpr, STAGE: tl.constexpr, HAS_CARRY: tl.constexpr,
    USE_ASSOC: tl.constexpr, FIRST: tl.constexpr, HAS_H0: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    """One Newton iteration over time split into G groups (see :mod:`.common`)."""
    i_g, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G, NB = tl.num_programs(0), tl.num_programs(1)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    base = i_b.to(tl.int64) * T * N
    b_az, b_ar, b_ac, b_h0 = _gru_load_weights(A, h0, i_b, o_n, m_n, N, BN, HAS_H0)
    o_c = (i_b.to(tl.int64) * G + i_g) * N + o_n
    b_d = load_row(carry, i_b * G + i_g, o_n, m_n, N, BN, HAS_CARRY, tl.float32)
    s_begin = i_g * ROWS
    b_d, b_prod, b_res = _gru_fwd_pass(
        p, h_in, h_out, b_az, b_ar, b_ac, b_h0, b_d, s_begin, tl.minimum(s_begin + ROWS, T),
        base, T, N, o_n, m_n, BT, BN, FIRST, STAGE == 1, USE_ASSOC, I64,
    )  # fmt: skip
    if STAGE == 0:
        tl.store(chunk_a + o_c, b_prod, mask=m_n)
        tl.store(chunk_b + o_c, b_d, mask=m_n)
    else:
        tl.store(res + (i_b * G + i_g) * NB + i_n, tl.max(b_res, axis=0))


@triton.jit
def _gru_newton_bwd_kernel(
    p, A, h0, h, g, grad_p, grad_a_part, grad_h0,
    chunk_a, chunk_b, carry, T, N, ROWS,
    BT: tl.constexpr, BN: tl.constexpr, STAGE: tl.constexpr, HAS_CARRY: tl.constexpr,
    USE_ASSOC: tl.constexpr, HAS_H0: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    i_g, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G = tl.num_programs(0)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    base = i_b.to(tl.int64) * T * N
    base3 = base * 3
    b_az, b_ar, b_ac, b_h0 = _gru_load_weights(A, h0, i_b, o_n, m_n, N, BN, HAS_H0)
    o_c = (i_b.to(tl.int64) * G + i_g) * N + o_n
    b_lam = load_row(carry, i_b * G + i_g, o_n, m_n, N, BN, HAS_CARRY, tl.float32)
    b_prod = tl.full([BN], 1.0, dtype=tl.float32)
    b_gaz = tl.zeros([BN], dtype=tl.float32)
    b_gar = tl.zeros([BN], dtype=tl.float32)
    b_gac = tl.zeros([BN], dtype=tl.float32)
    s_begin = i_g * ROWS
    for s0 in range(s_begin, tl.minimum(s_begin + ROWS, T), BT):
        o_s = s0 + tl.arange(0, BT)
        o_t = T - 1 - o_s  # scan runs backwards in time
        if I64:
            o_t = o_t.to(tl.int64)
        m_t = o_s < T
        m = m_t[:, None] & m_n[None, :]
        m_next = m & (o_t + 1 < T)[:, None]
        # Coefficient J_{t+1}, at (p_{t+1}, h_t); zero past the end of the sequence.
        p_h = h + base + o_t[:, None] * N + o_n[None, :]
        b_h = tl.load(p_h, mask=m, other=0.0)
        q_z, q_r, q_c = load_gates(p, base3, o_t + 1, o_n, m_next, N)
        _, b_jn = _gru_cell_jac(q_z, q_r, q_c, b_az, b_ar, b_ac, b_h)
        b_jn = tl.where(m_next, b_jn, 0.0)
        b_jn = tl.where(m_t[:, None], b_jn, 1.0)
        b_g = tl.load(g + base + o_t[:, None] * N + o_n[None, :], mask=m, other=0.0).to(tl.float32)
        b_ja, b_ls = diag_tile_scan(b_jn, b_g, BT, USE_ASSOC)
        b_ls = b_ja * b_lam[None, :] + b_ls
        if STAGE == 1:
            # VJP of the step at (p_t, h_{t-1}) with cotangent λ_t.
            b_pz, b_pr, b_pc = load_gates(p, base3, o_t, o_n, m, N)
            b_hp = tl.load(p_h - N, mask=m & (o_t >= 1)[:, None], other=0.0)
            b_hp = tl.where((o_t == 0)[:, None], b_h0[None, :], b_hp)
            b_gz, b_gr, b_gc, b_tz, b_tr, b_tc, b_gh = _gru_cell_vjp(
                b_pz, b_pr, b_pc, b_az, b_ar, b_ac, b_hp, b_ls
            )
            p_gp = grad_p + base3 + o_t[:, None] * (3 * N) + o_n[None, :]
            tl.store(p_gp, b_gz.to(grad_p.dtype.element_ty), mask=m)
            tl.store(p_gp + N, b_gr.to(grad_p.dtype.element_ty), mask=m)
            tl.store(p_gp + 2 * N, b_gc.to(grad_p.dtype.element_ty), mask=m)
            b_gaz += tl.sum(tl.where(m, b_tz, 0.0), axis=0)
            b_gar += tl.sum(tl.where(m, b_tr, 0.0), axis=0)
            b_gac += tl.sum(tl.where(m, b_tc, 0.0), axis=0)
            if HAS_H0:
                m_0 = m & (o_t == 0)[:, None]
                p_g0 = grad_h0 + i_b.to(tl.int64) * N + o_n[None, :] + 0 * o_t[:, None]
                tl.store(p_g0, b_gh, mask=m_0)
        b_lam = last_row(b_ls, BT)
        b_prod = last_row(b_ja, BT) * b_prod
    if STAGE == 0:
        tl.store(chunk_a + o_c, b_prod, mask=m_n)
        tl.store(chunk_b + o_c, b_lam, mask=m_n)
    else:
        o_w = (i_b.to(tl.int64) * G + i_g) * 3 * N + o_n
        tl.store(grad_a_part + o_w, b_gaz, mask=m_n)
        tl.store(grad_a_part + o_w + N, b_gar, mask=m_n)
        tl.store(grad_a_part + o_w + 2 * N, b_gac, mask=m_n)


class NewtonGRUFn(torch.autograd.Function):
    """Fused ParaGRU Newton solve; backward is the fused adjoint pass."""

    @staticmethod
    def forward(ctx, p, A, h0, newton_iters, chunk_size, use_associative_scan):
        p = p.contiguous()
        B, T, _, N = p.shape
        A32 = A.float().contiguous()
        h0_32 = None if h0 is None else h0.float().contiguous()
        cfg = newton_launch_config(p, chunk_size, use_associative_scan)
        if newton_iters == 0 or p.numel() == 0:
            h = gru_cell(p.float(), A32, p.new_zeros((B, T, N), dtype=torch.float32))
            # No iteration ran (empty residuals), or they ran on no element (zeros): an
            # empty T, B or N launches nothing.
            res = p.new_zeros(newton_iters, dtype=torch.float32)
        else:
            # Iterates alternate between two buffers; only the last one is kept.
            h_buf = [torch.empty((B, T, N), device=p.device, dtype=torch.float32) for _ in range(2)]
            h0_arg = p if h0_32 is None else h0_32
            res = torch.empty(
                (newton_iters, B, cfg["G"], cfg["n_blocks"]), device=p.device, dtype=torch.float32
            )
            if cfg["G"] == 1:
                _gru_newton_solve_kernel[(cfg["n_blocks"], B)](
                    p, A32, h0_arg, *h_buf, res, T, N, newton_iters, BT=cfg["BT"], BN=cfg["BN"],
                    USE_ASSOC=cfg["USE_ASSOC"], HAS_H0=h0_32 is not None, I64=cfg["I64"],
                    num_warps=cfg["num_warps"],
                )  # fmt: skip
            else:
                for k in range(newton_iters):
                    launch_chunked(
                        _gru_newton_fwd_kernel,
                        (p, A32, h0_arg, h_buf[k % 2], h_buf[(k + 1) % 2], res[k]),
                        B, T, N, False, cfg, FIRST=k == 0, HAS_H0=h0_32 is not None,
                    )  # fmt: skip
            h = h_buf[newton_iters % 2]
            res = res.flatten(1).amax(dim=1)
        ctx.save_for_backward(p, A32, h0_32, h)
        ctx.cfg, ctx.A_dtype = cfg, A.dtype
        ctx.h0_dtype = None if h0 is None else h0.dtype
        ctx.mark_non_differentiable(res)
        return h.to(p.dtype), res

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, _grad_res):
        p, A32, h0_32, h = ctx.saved_tensors
        B, T, _, N = p.shape
        cfg = ctx.cfg
        grad_h = grad_h.contiguous()
        grad_p = torch.empty_like(p)
        # With an empty p no kernel runs: the per-program partial sums and grad_h0 must start at 0.
        alloc = torch.empty if p.numel() else torch.zeros
        grad_a_part = alloc((B, cfg["G"], 3, N), device=p.device, dtype=torch.float32)
        grad_h0 = (
            None if h0_32 is None else alloc(h0_32.shape, device=p.device, dtype=torch.float32)
        )
        if p.numel():
            launch_chunked(
                _gru_newton_bwd_kernel,
                (p, A32, p if h0_32 is None else h0_32, h, grad_h, grad_p, grad_a_part,
                 p if grad_h0 is None else grad_h0),
                B, T, N, False, cfg, HAS_H0=h0_32 is not None,
            )  # fmt: skip
        grad_A = grad_a_part.sum(dim=(0, 1)).to(ctx.A_dtype)
        if grad_h0 is not None:
            grad_h0 = grad_h0.to(ctx.h0_dtype)
        return grad_p, grad_A, grad_h0, None, None, None


def newton_gru_fused(
    p: torch.Tensor,
    A: torch.Tensor,
    h0: torch.Tensor | None = None,
    newton_iters: int = 3,
    return_residuals: bool = False,
    chunk_size: int | None = None,
    use_associative_scan: bool | None = None,
):
    """ParaGRU by Newton's method with fused Triton kernels.

    Args:
        p: pre-activations ``[B, T, 3, N]``, gate rows (z, r, c); fp32, bf16 or fp16 (fp64
            raises ValueError: the kernels compute in fp32, so use
            :func:`~paralab.kernels.newton.newton_gru_reference` with ``scan_backend="triton"``).
        A: diagonal recurrent weights ``[3, N]``.
        h0: initial state ``[B, N]``; zeros when None.
        newton_iters: fixed number of Newton iterations (each one fused scan).
        return_residuals: also return the fp32 ``[newton_iters]`` tensor of
            max |f(p_t, h^k_{t-1}) − h^k_t| for the iterate entering iteration k.
        chunk_size: time steps per program group; None picks one from the device.
        use_associative_scan: in-tile scan algorithm; None means on GPU only.

    Returns:
        h ``[B, T, N]`` in p's dtype (and the residuals); iterates and arithmetic are fp32.
        Gradients flow to p, A and h0 through the fused adjoint pass (once: double backward
        raises).  An empty T, B or N gives an empty h, zero residuals and zero gradients.
    """
    reject_fp64(p, A, h0)
    if p.dim() != 4 or p.shape[2] != 3 or A.shape != (3, p.shape[3]):
        raise ValueError(
            f"expected p [B, T, 3, N] and A [3, N]; got {tuple(p.shape)}, {tuple(A.shape)}"
        )
    if h0 is not None and h0.shape != (p.shape[0], p.shape[3]):
        raise ValueError(f"h0 must have shape {(p.shape[0], p.shape[3])}, got {tuple(h0.shape)}")
    h, res = NewtonGRUFn.apply(p, A, h0, newton_iters, chunk_size, use_associative_scan)
    return (h, res) if return_residuals else h
