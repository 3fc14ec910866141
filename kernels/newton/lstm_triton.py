"""Fused Newton kernels for ParaLSTM (2×2-block Jacobian), forward and adjoint backward.

Cell (rows of A and p: f, o, c̃; rows of C: f, o), state s = (c, h):

    f = σ(A_f h + p_f + C_f c),  c̃ = tanh(A_c h + p_c),  c' = f c + (1 − f) c̃,
    o = σ(A_o h + p_o + C_o c'),  h' = o tanh(c')

As for ParaGRU (:mod:`.gru_triton`), each Newton iteration is one chunked scan whose
elements, the 2×2 Jacobian J_t = ∂(c', h')/∂(c, h) at (p_t, s_{t-1}) and the residual
r_t = f(p_t, s_{t-1}) − s_t, are computed in registers; the iterate is kept as two fp32
[B, T, N] planes, c and h.  The backward pass solves λ_t = g_t + J_{t+1}ᵀ λ_{t+1} and applies
the cell's VJP at (p_t, s_{t-1}) in the same pass: grad_p per step, grad_A and grad_C
accumulated per program, grad_c0 and grad_h0 from the t = 0 row.
:func:`paralab.kernels.newton.reference.newton_lstm_reference` is the same computation in
PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from paralab.kernels.newton.cells import lstm_cell
from paralab.kernels.newton.common import (
    launch_chunked,
    load_gates,
    newton_launch_config,
    reject_fp64,
    tanh,
)
from paralab.kernels.scan.triton import (
    block_tile_scan,
    compose_last_rows,
    last_row,
    load_row,
    load_row_pair,
    store_block_aggregate,
)


@triton.jit
def _lstm_cell_jac(b_pf, b_po, b_pc, b_af, b_ao, b_ac, b_cf, b_co, b_c, b_h):
    """(c', h', J00, J01, J10, J11) for tiles; mirrors cells.lstm_cell_jacobian."""
    b_f = tl.sigmoid(b_af * b_h + b_pf + b_cf * b_c)
    b_ct = tanh(b_ac * b_h + b_pc)
    b_cn = b_f * b_c + (1.0 - b_f) * b_ct
    b_o = tl.sigmoid(b_ao * b_h + b_po + b_co * b_cn)
    b_tc = tanh(b_cn)
    b_sf = b_f * (1.0 - b_f)
    b_so = b_o * (1.0 - b_o)
    b_dcc = b_f + (b_c - b_ct) * b_sf * b_cf
    b_dch = (b_c - b_ct) * b_sf * b_af + (1.0 - b_f) * (1.0 - b_ct * b_ct) * b_ac
    b_dtc = b_o * (1.0 - b_tc * b_tc)
    b_dhc = b_so * b_co * b_dcc * b_tc + b_dtc * b_dcc
    b_dhh = b_so * (b_ao + b_co * b_dch) * b_tc + b_dtc * b_dch
    return b_cn, b_o * b_tc, b_dcc, b_dch, b_dhc, b_dhh


@triton.jit
def _lstm_cell_vjp(b_pf, b_po, b_pc, b_af, b_ao, b_ac, b_cf, b_co, b_c, b_h, b_lc, b_lh):
    """Cotangent (λ_c, λ_h) pulled back to the gate pre-activations (f, o, c̃), the per-step
    C terms (f, o), and the previous state (c, h); mirrors cells.lstm_cell_vjp.  The per-step
    A terms are the gate cotangents times h."""
    b_f = tl.sigmoid(b_af * b_h + b_pf + b_cf * b_c)
    b_ct = tanh(b_ac * b_h + b_pc)
    b_cn = b_f * b_c + (1.0 - b_f) * b_ct
    b_o = tl.sigmoid(b_ao * b_h + b_po + b_co * b_cn)
    b_tc = tanh(b_cn)
    b_go = b_lh * b_tc * b_o * (1.0 - b_o)
    b_mu = b_lc + b_lh * b_o * (1.0 - b_tc * b_tc) + b_go * b_co
    b_gf = b_mu * (b_c - b_ct) * b_f * (1.0 - b_f)
    b_gc = b_mu * (1.0 - b_f) * (1.0 - b_ct * b_ct)
    b_gsc = b_mu * b_f + b_gf * b_cf
    b_gsh = b_gf * b_af + b_go * b_ao + b_gc * b_ac
    return b_gf, b_go, b_gc, b_gf * b_c, b_go * b_cn, b_gsc, b_gsh


@triton.jit
def _load_weights(A, C, o_n, m_n, N):
    """The recurrent weights and peepholes as [1, BN] rows."""
    b_af = tl.load(A + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    b_ao = tl.load(A + N + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    b_ac = tl.load(A + 2 * N + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    b_cf = tl.load(C + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    b_co = tl.load(C + N + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    return b_af, b_ao, b_ac, b_cf, b_co


@triton.jit
def _load_params(A, C, c0, h0, i_b, o_n, m_n, N, BN: tl.constexpr, HAS_S0: tl.constexpr):
    """:func:`_load_weights`, then batch row ``i_b``'s initial (c, h) as [BN] vectors."""
    b_af, b_ao, b_ac, b_cf, b_co = _load_weights(A, C, o_n, m_n, N)
    b_c0 = load_row(c0, i_b, o_n, m_n, N, BN, HAS_S0, tl.float32)
    b_h0 = load_row(h0, i_b, o_n, m_n, N, BN, HAS_S0, tl.float32)
    return b_af, b_ao, b_ac, b_cf, b_co, b_c0, b_h0


@triton.jit
def _lstm_fwd_pass(
    p, c_in, h_in, c_out, h_out, b_af, b_ao, b_ac, b_cf, b_co, b_c0, b_h0, b_d0, b_d1,
    s_begin, s_end, base, T, N, o_n, m_n,
    BT: tl.constexpr, BN: tl.constexpr, FIRST: tl.constexpr, STORE: tl.constexpr,
    USE_ASSOC: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    """One Newton iteration over time steps [s_begin, s_end) of one program's units.

    (b_d0, b_d1) is the correction (δc, δh) entering the range.  Returns the correction
    leaving it, the product of the range's 2×2 Jacobians, and max |residual|.  With
    ``STORE`` the new iterate s + δ goes to (``c_out``, ``h_out``); ``FIRST`` builds the
    iterate s⁰_t = f(p_t, 0) instead of reading (``c_in``, ``h_in``)."""
    base3 = base * 3
    b_p00 = tl.full([BN], 1.0, dtype=tl.float32)
    b_p01 = tl.zeros([BN], dtype=tl.float32)
    b_p10 = tl.zeros([BN], dtype=tl.float32)
    b_p11 = tl.full([BN], 1.0, dtype=tl.float32)
    b_res = tl.zeros([BN], dtype=tl.float32)
    for s0 in range(s_begin, s_end, BT):
        o_t = s0 + tl.arange(0, BT)
        if I64:  # o_t · 3N would overflow int32 (see needs_int64)
            o_t = o_t.to(tl.int64)
        m_t = o_t < T
        m = m_t[:, None] & m_n[None, :]
        m_prev = m & (o_t >= 1)[:, None]
        o_s = base + o_t[:, None] * N + o_n[None, :]
        b_pf, b_po, b_pc = load_gates(p, base3, o_t, o_n, m, N)
        # The current iterate at t and t - 1.
        if FIRST:
            b_zero = tl.zeros([BT, BN], dtype=tl.float32)
            b_c, b_h, _, _, _, _ = _lstm_cell_jac(
                b_pf, b_po, b_pc, b_af, b_ao, b_ac, b_cf, b_co, b_zero, b_zero
            )
            q_f, q_o, q_c = load_gates(p, base3, o_t - 1, o_n, m_prev, N)
            b_cp, b_hp, _, _, _, _ = _lstm_cell_jac(
                q_f, q_o, q_c, b_af, b_ao, b_ac, b_cf, b_co, b_zero, b_zero
            )
        else:
            b_c = tl.load(c_in + o_s, mask=m, other=0.0)
            b_h = tl.load(h_in + o_s, mask=m, other=0.0)
            b_cp = tl.load(c_in + o_s - N, mask=m_prev, other=0.0)
            b_hp = tl.load(h_in + o_s - N, mask=m_prev, other=0.0)
        m_0 = (o_t == 0)[:, None]
        b_cp = tl.where(m_0, b_c0[None, :], b_cp)
        b_hp = tl.where(m_0, b_h0[None, :], b_hp)
        b_fc, b_fh, b_j00, b_j01, b_j10, b_j11 = _lstm_cell_jac(
            b_pf, b_po, b_pc, b_af, b_ao, b_ac, b_cf, b_co, b_cp, b_hp
        )
        b_rc = tl.where(m, b_fc - b_c, 0.0)
        b_rh = tl.where(m, b_fh - b_h, 0.0)
        # Rows past the end: identity.
        m_tt = m_t[:, None]
        b_j00 = tl.where(m_tt, b_j00, 1.0)
        b_j01 = tl.where(m_tt, b_j01, 0.0)
        b_j10 = tl.where(m_tt, b_j10, 0.0)
        b_j11 = tl.where(m_tt, b_j11, 1.0)
        b_a00, b_a01, b_a10, b_a11, b_s0, b_s1 = block_tile_scan(
            b_j00, b_j01, b_j10, b_j11, b_rc, b_rh, BT, USE_ASSOC
        )
        b_ds0 = b_a00 * b_d0[None, :] + b_a01 * b_d1[None, :] + b_s0
        b_ds1 = b_a10 * b_d0[None, :] + b_a11 * b_d1[None, :] + b_s1
        if STORE:
            tl.store(c_out + o_s, b_c + b_ds0, mask=m)
            tl.store(h_out + o_s, b_h + b_ds1, mask=m)
            b_res = tl.maximum(b_res, tl.max(tl.maximum(tl.abs(b_rc), tl.abs(b_rh)), axis=0))
        b_d0 = last_row(b_ds0, BT)
        b_d1 = last_row(b_ds1, BT)
        b_p00, b_p01, b_p10, b_p11 = compose_last_rows(
            b_a00, b_a01, b_a10, b_a11, b_p00, b_p01, b_p10, b_p11, BT
        )
    return b_d0, b_d1, b_p00, b_p01, b_p10, b_p11, b_res


@triton.jit
def _lstm_newton_solve_kernel(
    p, A, C, c0, h0, c_even, h_even, c_odd, h_odd, res, T, N, ITERS,
    BT: tl.constexpr, BN: tl.constexpr, USE_ASSOC: tl.constexpr, HAS_S0: tl.constexpr,
    I64: tl.constexpr,
):  # fmt: skip
    """Every Newton iteration in one launch (see :func:`.gru_triton._gru_newton_solve_kernel`):
    iteration k reads the (c, h) planes of the even buffers (k even) or the odd ones and
    writes the other pair, with a block barrier between iterations.  ``res`` is
    [ITERS, B, n_blocks]."""
    i_n, i_b = tl.program_id(0), tl.program_id(1)
    NB, B = tl.num_programs(0), tl.num_programs(1)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    base = i_b.to(tl.int64) * T * N
    b_af, b_ao, b_ac, b_cf, b_co, b_c0, b_h0 = _load_params(
        A, C, c0, h0, i_b, o_n, m_n, N, BN, HAS_S0
    )
    b_zero = tl.zeros([BN], dtype=tl.float32)
    out = _lstm_fwd_pass(
        p, c_even, h_even, c_odd, h_odd, b_af, b_ao, b_ac, b_cf, b_co, b_c0, b_h0,
        b_zero, b_zero, 0, T, base, T, N, o_n, m_n, BT, BN, True, True, USE_ASSOC, I64,
    )  # fmt: skip
    tl.store(res + i_b * NB + i_n, tl.max(out[6], axis=0))
    for k in range(1, ITERS):
        tl.debug_barrier()
        if k % 2 == 0:
            c_in, h_in, c_out, h_out = c_even, h_even, c_odd, h_odd
        else:
            c_in, h_in, c_out, h_out = c_odd, h_odd, c_even, h_even
        out = _lstm_fwd_pass(
            p, c_in, h_in, c_out, h_out, b_af, b_ao, b_ac, b_cf, b_co, b_c0, b_h0,
            b_zero, b_zero, 0, T, base, T, N, o_n, m_n, BT, BN, False, True, USE_ASSOC, I64,
        )  # fmt: skip
        tl.store(res + (k * B + i_b) * NB + i_n, tl.max(out[6], axis=0))


@triton.jit
def _lstm_newton_fwd_kernel(
    p, A, C, c0, h0, c_in, h_in, c_out, h_out, res,
    chunk_a, chunk_b, carry, T, N, ROWS,
    BT: tl.constexpr, BN: tl.constexpr, STAGE: tl.constexpr, HAS_CARRY: tl.constexpr,
    USE_ASSOC: tl.constexpr, FIRST: tl.constexpr, HAS_S0: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    """One Newton iteration over time split into G groups (see :mod:`.common`)."""
    i_g, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G, NB = tl.num_programs(0), tl.num_programs(1)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    base = i_b.to(tl.int64) * T * N
    b_af, b_ao, b_ac, b_cf, b_co, b_c0, b_h0 = _load_params(
        A, C, c0, h0, i_b, o_n, m_n, N, BN, HAS_S0
    )
    o_c = (i_b.to(tl.int64) * G + i_g) * N + o_n
    b_d0, b_d1 = load_row_pair(carry, i_b * G + i_g, o_n, m_n, N, BN, HAS_CARRY, tl.float32)
    s_begin = i_g * ROWS
    b_d0, b_d1, b_p00, b_p01, b_p10, b_p11, b_res = _lstm_fwd_pass(
        p, c_in, h_in, c_out, h_out, b_af, b_ao, b_ac, b_cf, b_co, b_c0, b_h0, b_d0, b_d1,
        s_begin, tl.minimum(s_begin + ROWS, T), base, T, N, o_n, m_n,
        BT, BN, FIRST, STAGE == 1, USE_ASSOC, I64,
    )  # fmt: skip
    if STAGE == 0:
        store_block_aggregate(chunk_a, chunk_b, o_c, m_n, b_p00, b_p01, b_p10, b_p11, b_d0, b_d1)
    else:
        tl.store(res + (i_b * G + i_g) * NB + i_n, tl.max(b_res, axis=0))


@triton.jit
def _lstm_newton_bwd_kernel(
    p, A, C, c0, h0, c, h, g_c, g_h, grad_p, grad_w_part, grad_c0, grad_h0,
    chunk_a, chunk_b, carry, T, N, ROWS,
    BT: tl.constexpr, BN: tl.constexpr, STAGE: tl.constexpr, HAS_CARRY: tl.constexpr,
    USE_ASSOC: tl.constexpr, HAS_S0: tl.constexpr, HAS_GC: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    i_g, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G = tl.num_programs(0)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    base = i_b.to(tl.int64) * T * N
    base3 = base * 3
    b_af, b_ao, b_ac, b_cf, b_co, b_c0, b_h0 = _load_params(
        A, C, c0, h0, i_b, o_n, m_n, N, BN, HAS_S0
    )
    o_c = (i_b.to(tl.int64) * G + i_g) * N + o_n
    b_l0, b_l1 = load_row_pair(carry, i_b * G + i_g, o_n, m_n, N, BN, HAS_CARRY, tl.float32)
    b_p00 = tl.full([BN], 1.0, dtype=tl.float32)
    b_p01 = tl.zeros([BN], dtype=tl.float32)
    b_p10 = tl.zeros([BN], dtype=tl.float32)
    b_p11 = tl.full([BN], 1.0, dtype=tl.float32)
    b_waf = tl.zeros([BN], dtype=tl.float32)
    b_wao = tl.zeros([BN], dtype=tl.float32)
    b_wac = tl.zeros([BN], dtype=tl.float32)
    b_wcf = tl.zeros([BN], dtype=tl.float32)
    b_wco = tl.zeros([BN], dtype=tl.float32)
    s_begin = i_g * ROWS
    for s0 in range(s_begin, tl.minimum(s_begin + ROWS, T), BT):
        o_s = s0 + tl.arange(0, BT)
        o_t = T - 1 - o_s  # scan runs backwards in time
        if I64:
            o_t = o_t.to(tl.int64)
        m_t = o_s < T
        m = m_t[:, None] & m_n[None, :]
        m_next = m & (o_t + 1 < T)[:, None]
        o_x = base + o_t[:, None] * N + o_n[None, :]
        # Coefficient J_{t+1}ᵀ, at (p_{t+1}, s_t); zero past the end of the sequence.
        b_c = tl.load(c + o_x, mask=m, other=0.0)
        b_h = tl.load(h + o_x, mask=m, other=0.0)
        q_f, q_o, q_c = load_gates(p, base3, o_t + 1, o_n, m_next, N)
        _, _, b_j00, b_j01, b_j10, b_j11 = _lstm_cell_jac(
            q_f, q_o, q_c, b_af, b_ao, b_ac, b_cf, b_co, b_c, b_h
        )
        m_tt = m_t[:, None]
        b_j00 = tl.where(m_next, b_j00, tl.where(m_tt, 0.0, 1.0))
        b_j11 = tl.where(m_next, b_j11, tl.where(m_tt, 0.0, 1.0))
        b_j01 = tl.where(m_next, b_j01, 0.0)
        b_j10 = tl.where(m_next, b_j10, 0.0)
        b_gh = tl.load(g_h + o_x, mask=m, other=0.0).to(tl.float32)
        if HAS_GC:
            b_gc = tl.load(g_c + o_x, mask=m, other=0.0).to(tl.float32)
        else:
            b_gc = tl.zeros([BT, BN], dtype=tl.float32)
        # Transposed coefficient: (a01, a10) = (J10, J01).
        b_a00, b_a01, b_a10, b_a11, b_s0, b_s1 = block_tile_scan(
            b_j00, b_j10, b_j01, b_j11, b_gc, b_gh, BT, USE_ASSOC
        )
        b_ls0 = b_a00 * b_l0[None, :] + b_a01 * b_l1[None, :] + b_s0
        b_ls1 = b_a10 * b_l0[None, :] + b_a11 * b_l1[None, :] + b_s1
        if STAGE == 1:
            # VJP of the step at (p_t, s_{t-1}) with cotangent λ_t.
            b_pf, b_po, b_pc = load_gates(p, base3, o_t, o_n, m, N)
            m_prev = m & (o_t >= 1)[:, None]
            m_0 = (o_t == 0)[:, None]
            b_cp = tl.where(m_0, b_c0[None, :], tl.load(c + o_x - N, mask=m_prev, other=0.0))
            b_hp = tl.where(m_0, b_h0[None, :], tl.load(h + o_x - N, mask=m_prev, other=0.0))
            b_gf, b_go, b_gcc, b_tcf, b_tco, b_gsc, b_gsh = _lstm_cell_vjp(
                b_pf, b_po, b_pc, b_af, b_ao, b_ac, b_cf, b_co, b_cp, b_hp, b_ls0, b_ls1
            )
            p_gp = grad_p + base3 + o_t[:, None] * (3 * N) + o_n[None, :]
            tl.store(p_gp, b_gf.to(grad_p.dtype.element_ty), mask=m)
            tl.store(p_gp + N, b_go.to(grad_p.dtype.element_ty), mask=m)
            tl.store(p_gp + 2 * N, b_gcc.to(grad_p.dtype.element_ty), mask=m)
            b_waf += tl.sum(tl.where(m, b_gf * b_hp, 0.0), axis=0)
            b_wao += tl.sum(tl.where(m, b_go * b_hp, 0.0), axis=0)
            b_wac += tl.sum(tl.where(m, b_gcc * b_hp, 0.0), axis=0)
            b_wcf += tl.sum(tl.where(m, b_tcf, 0.0), axis=0)
            b_wco += tl.sum(tl.where(m, b_tco, 0.0), axis=0)
            if HAS_S0:
                m_first = m & m_0
                o_0 = i_b.to(tl.int64) * N + o_n[None, :] + 0 * o_t[:, None]
                tl.store(grad_c0 + o_0, b_gsc, mask=m_first)
                tl.store(grad_h0 + o_0, b_gsh, mask=m_first)
        b_l0 = last_row(b_ls0, BT)
        b_l1 = last_row(b_ls1, BT)
        b_p00, b_p01, b_p10, b_p11 = compose_last_rows(
            b_a00, b_a01, b_a10, b_a11, b_p00, b_p01, b_p10, b_p11, BT
        )
    if STAGE == 0:
        store_block_aggregate(chunk_a, chunk_b, o_c, m_n, b_p00, b_p01, b_p10, b_p11, b_l0, b_l1)
    else:
        o_w = (i_b.to(tl.int64) * G + i_g) * 5 * N + o_n
        tl.store(grad_w_part + o_w, b_waf, mask=m_n)
        tl.store(grad_w_part + o_w + N, b_wao, mask=m_n)
        tl.store(grad_w_part + o_w + 2 * N, b_wac, mask=m_n)
        tl.store(grad_w_part + o_w + 3 * N, b_wcf, mask=m_n)
        tl.store(grad_w_part + o_w + 4 * N, b_wco, mask=m_n)


class NewtonLSTMFn(torch.autograd.Function):
    """Fused ParaLSTM Newton solve returning (h, c, residuals); backward is the fused adjoint."""

    @staticmethod
    def forward(ctx, p, A, C, h0, c0, newton_iters, chunk_size, use_associative_scan):
        p = p.contiguous()
        B, T, _, N = p.shape
        A32, C32 = A.float().contiguous(), C.float().contiguous()
        has_s0 = h0 is not None or c0 is not None
        zeros = p.new_zeros((B, N), dtype=torch.float32)
        c0_32 = (zeros if c0 is None else c0.float()).contiguous() if has_s0 else None
        h0_32 = (zeros if h0 is None else h0.float()).contiguous() if has_s0 else None
        cfg = newton_launch_config(p, chunk_size, use_associative_scan)
        if newton_iters == 0 or p.numel() == 0:
            s = lstm_cell(p.float(), A32, C32, p.new_zeros((B, T, N, 2), dtype=torch.float32))
            c, h = s[..., 0].contiguous(), s[..., 1].contiguous()
            # No iteration ran (empty residuals), or they ran on no element (zeros): an
            # empty T, B or N launches nothing.
            res = p.new_zeros(newton_iters, dtype=torch.float32)
        else:
            # Iterates alternate between two (c, h) buffers; only the last one is kept.
            bufs = [
                torch.empty((2, B, T, N), device=p.device, dtype=torch.float32) for _ in range(2)
            ]
            s0_args = (c0_32, h0_32) if has_s0 else (p, p)
            res = torch.empty(
                (newton_iters, B, cfg["G"], cfg["n_blocks"]), device=p.device, dtype=torch.float32
            )
            if cfg["G"] == 1:
                _lstm_newton_solve_kernel[(cfg["n_blocks"], B)](
                    p, A32, C32, *s0_args, *bufs[0], *bufs[1], res, T, N, newton_iters,
                    BT=cfg["BT"], BN=cfg["BN"], USE_ASSOC=cfg["USE_ASSOC"], HAS_S0=has_s0,
                    I64=cfg["I64"], num_warps=cfg["num_warps"],
                )  # fmt: skip
            else:
                for k in range(newton_iters):
                    s_in, s_out = bufs[k % 2], bufs[(k + 1) % 2]
                    launch_chunked(
                        _lstm_newton_fwd_kernel,
                        (p, A32, C32, *s0_args, s_in[0], s_in[1], s_out[0], s_out[1], res[k]),
                        B, T, N, True, cfg, FIRST=k == 0, HAS_S0=has_s0,
                    )  # fmt: skip
            c, h = bufs[newton_iters % 2]
            res = res.flatten(1).amax(dim=1)
        ctx.save_for_backward(p, A32, C32, c0_32, h0_32, c, h)
        ctx.cfg, ctx.dtypes = cfg, (A.dtype, C.dtype)
        ctx.s0_dtypes = (None if h0 is None else h0.dtype, None if c0 is None else c0.dtype)
        ctx.mark_non_differentiable(res)
        return h.to(p.dtype), c.to(p.dtype), res

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c, _grad_res):
        p, A32, C32, c0_32, h0_32, c, h = ctx.saved_tensors
        B, T, _, N = p.shape
        cfg = ctx.cfg
        has_s0 = h0_32 is not None
        grad_h = torch.zeros_like(h) if grad_h is None else grad_h.contiguous()
        grad_p = torch.empty_like(p)
        # With an empty p no kernel runs: the per-program partial sums and grad_s0 must start at 0.
        alloc = torch.empty if p.numel() else torch.zeros
        grad_w_part = alloc((B, cfg["G"], 5, N), device=p.device, dtype=torch.float32)
        s0_shape = (B, N)
        grad_c0 = alloc(s0_shape, device=p.device, dtype=torch.float32) if has_s0 else None
        grad_h0 = alloc(s0_shape, device=p.device, dtype=torch.float32) if has_s0 else None
        if p.numel():
            launch_chunked(
                _lstm_newton_bwd_kernel,
                (p, A32, C32, *((c0_32, h0_32) if has_s0 else (p, p)), c, h,
                 p if grad_c is None else grad_c.contiguous(), grad_h, grad_p, grad_w_part,
                 *((grad_c0, grad_h0) if has_s0 else (p, p))),
                B, T, N, True, cfg, HAS_S0=has_s0, HAS_GC=grad_c is not None,
            )  # fmt: skip
        grad_w = grad_w_part.sum(dim=(0, 1))
        grad_A, grad_C = grad_w[:3].to(ctx.dtypes[0]), grad_w[3:].to(ctx.dtypes[1])
        h0_dtype, c0_dtype = ctx.s0_dtypes
        grad_h0 = None if h0_dtype is None else grad_h0.to(h0_dtype)
        grad_c0 = None if c0_dtype is None else grad_c0.to(c0_dtype)
        return grad_p, grad_A, grad_C, grad_h0, grad_c0, None, None, None


def newton_lstm_fused(
    p: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    newton_iters: int = 3,
    return_residuals: bool = False,
    return_cell: bool = False,
    chunk_size: int | None = None,
    use_associative_scan: bool | None = None,
):
    """ParaLSTM by Newton's method with fused Triton kernels.

    Args:
        p: pre-activations ``[B, T, 3, N]``, gate rows (f, o, c̃); fp32, bf16 or fp16 (fp64
            raises ValueError: the kernels compute in fp32, so use
            :func:`~paralab.kernels.newton.newton_lstm_reference` with ``scan_backend="triton"``).
        A: diagonal recurrent weights ``[3, N]``; C: peepholes ``[2, N]``, rows (f, o).
        h0, c0: initial hidden and cell states ``[B, N]``; zeros when None.
        newton_iters: fixed number of Newton iterations (each one fused scan).
        return_residuals: also return the fp32 ``[newton_iters]`` tensor of
            max |f(p_t, s^k_{t-1}) − s^k_t| (over c and h) for the iterate entering
            iteration k.
        return_cell: also return the cell states c ``[B, T, N]``.
        chunk_size: time steps per program group; None picks one from the device.
        use_associative_scan: in-tile scan algorithm; None means on GPU only.

    Returns:
        h ``[B, T, N]`` in p's dtype, then c if ``return_cell``, then the residuals if
        ``return_residuals``; a bare tensor when neither flag is set.  Gradients flow to p,
        A, C, h0 and c0 through the fused adjoint pass (once: double backward raises).
        An empty T, B or N gives empty outputs, zero residuals and zero gradients.
    """
    reject_fp64(p, A, C, h0, c0)
    B, N = p.shape[0], p.shape[-1]
    if p.dim() != 4 or p.shape[2] != 3 or A.shape != (3, N) or C.shape != (2, N):
        raise ValueError(
            f"expected p [B, T, 3, N], A [3, N], C [2, N]; got {tuple(p.shape)}, "
            f"{tuple(A.shape)}, {tuple(C.shape)}"
        )
    for name, x in (("h0", h0), ("c0", c0)):
        if x is not None and x.shape != (B, N):
            raise ValueError(f"{name} must have shape {(B, N)}, got {tuple(x.shape)}")
    h, c, res = NewtonLSTMFn.apply(p, A, C, h0, c0, newton_iters, chunk_size, use_associative_scan)
    out = (h,) + ((c,) if return_cell else ()) + ((res,) if return_residuals else ())
    return out[0] if len(out) == 1 else out
