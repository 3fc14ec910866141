"""Chunked, work-efficient linear scans in Triton.

    h_t = a_t ⊙ h_{t-1} + b_t          (diagonal:   a, b  [B, T, N])
    h_t = a_t @ h_{t-1} + b_t          (2×2 block:  a [B, T, N, 2, 2], b [B, T, N, 2])

Each program owns one batch row, one block of BN units and one *group* of consecutive time
steps.  It walks its group tile by tile (BT rows per tile), carrying the state in registers:

1. ``_*_chunk_reduce_kernel``: each group's aggregate (A, b) = composition of its steps, with
   a zero state (skipped when there is one group);
2. ``_*_chunk_carry_kernel``: a short sequential pass over the G group aggregates per unit
   gives the state entering every group;
3. ``_*_chunk_scan_kernel``: every group re-scans its steps from its entering state and
   writes h.

Memory traffic is one read of (a, b) per pass plus one write of h; with one group (many
batch rows × unit blocks already fill the GPU) it is the ideal read-once, write-once.

Inside a tile the recurrence is an inclusive scan over the [BT, BN] tile, loaded with one wide
load.  On GPU it is ``tl.associative_scan`` (log depth, in registers).  The CPU interpreter
runs a custom-combine associative scan at ~45 µs per element, so there the same scan is done
by Hillis–Steele doubling whose row shifts are one-hot contractions (``where`` + ``sum``),
which the interpreter evaluates as whole numpy arrays.  Both compose the same operator,
earlier element x then later y:

    (A_x, b_x) • (A_y, b_y) = (A_y A_x, A_y b_x + b_y)

Time order is reversed by mapping the scan position s to t = T - 1 - s; the adjoint pass reads
the coefficient at t + A_SHIFT (transposed for blocks), so the same kernels solve
λ_t = g_t + a_{t+1}ᵀ λ_{t+1}.  Arithmetic is in the accumulation dtype ``ACC``, a constexpr
of every kernel: fp64 for fp64 input, fp32 for everything else (``utils.acc_dtype``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from paralab.kernels.scan.utils import acc_dtype, block_matvec, check_scan_args, interpreting

# Accumulation dtype (see ``acc_dtype``) → the Triton dtype the kernels compute in.
TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}

# ---------------------------------------------------------------------------------------------
# Combine functions (x is the earlier element, y the later one).
# ---------------------------------------------------------------------------------------------


@triton.jit
def _combine_diag(a_x, b_x, a_y, b_y):
    return a_y * a_x, a_y * b_x + b_y


@triton.jit
def _combine_block(x00, x01, x10, x11, x0, x1, y00, y01, y10, y11, y0, y1):
    return (
        y00 * x00 + y01 * x10,
        y00 * x01 + y01 * x11,
        y10 * x00 + y11 * x10,
        y10 * x01 + y11 * x11,
        y00 * x0 + y01 * x1 + y0,
        y10 * x0 + y11 * x1 + y1,
    )


LOG2_BT_MAX = tl.constexpr(7)  # tiles hold at most 128 rows

# ---------------------------------------------------------------------------------------------
# Tile helpers: advance a carried state over BT consecutive scan positions s0 .. s0 + BT - 1.
# Rows past the end are the identity element, so the tile's last row is the whole tile.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _shift_rows(x, m_sel):
    """Row i of the result is row i - 2^k of the [BT, BN] tile x (zero above), where m_sel is
    the [BT, BT, 1] one-hot selector of that shift."""
    return tl.sum(tl.where(m_sel, x[None, :, :], 0.0), axis=1)


@triton.jit
def diag_tile_scan(b_a, b_b, BT: tl.constexpr, USE_ASSOC: tl.constexpr):
    """Inclusive scan down the rows of a [BT, BN] tile of diagonal elements (a, b): row i
    becomes the composite of rows 0..i."""
    if USE_ASSOC:
        b_a, b_b = tl.associative_scan((b_a, b_b), 0, _combine_diag)
    else:
        # Hillis–Steele doubling, rows shifted by a one-hot contraction: only elementwise
        # ops and sums, which the interpreter runs as whole numpy arrays.
        o_i = tl.arange(0, BT)
        for k in tl.static_range(LOG2_BT_MAX):
            if (1 << k) < BT:
                m_sel = ((o_i[:, None] - (1 << k)) == o_i[None, :])[:, :, None]
                b_a_prev = _shift_rows(b_a, m_sel)
                b_b_prev = _shift_rows(b_b, m_sel)
                m_has = (o_i >= (1 << k))[:, None]
                b_b = tl.where(m_has, b_a * b_b_prev + b_b, b_b)
                b_a = tl.where(m_has, b_a * b_a_prev, b_a)
    return b_a, b_b


@triton.jit
def block_tile_scan(
    b_a00, b_a01, b_a10, b_a11, b_b0, b_b1, BT: tl.constexpr, USE_ASSOC: tl.constexpr
):
    """Inclusive scan down the rows of [BT, BN] tiles of 2×2-block elements (a, b)."""
    if USE_ASSOC:
        b_a00, b_a01, b_a10, b_a11, b_b0, b_b1 = tl.associative_scan(
            (b_a00, b_a01, b_a10, b_a11, b_b0, b_b1), 0, _combine_block
        )
    else:
        o_i = tl.arange(0, BT)
        for k in tl.static_range(LOG2_BT_MAX):
            if (1 << k) < BT:
                m_sel = ((o_i[:, None] - (1 << k)) == o_i[None, :])[:, :, None]
                x00 = _shift_rows(b_a00, m_sel)
                x01 = _shift_rows(b_a01, m_sel)
                x10 = _shift_rows(b_a10, m_sel)
                x11 = _shift_rows(b_a11, m_sel)
                x0 = _shift_rows(b_b0, m_sel)
                x1 = _shift_rows(b_b1, m_sel)
                m_has = (o_i >= (1 << k))[:, None]
                c00, c01, c10, c11, c0, c1 = _combine_block(
                    x00, x01, x10, x11, x0, x1, b_a00, b_a01, b_a10, b_a11, b_b0, b_b1
                )
                b_a00 = tl.where(m_has, c00, b_a00)
                b_a01 = tl.where(m_has, c01, b_a01)
                b_a10 = tl.where(m_has, c10, b_a10)
                b_a11 = tl.where(m_has, c11, b_a11)
                b_b0 = tl.where(m_has, c0, b_b0)
                b_b1 = tl.where(m_has, c1, b_b1)
    return b_a00, b_a01, b_a10, b_a11, b_b0, b_b1


@triton.jit
def last_row(x, BT: tl.constexpr):
    """Row BT - 1 of a [BT, BN] tile, as a [BN] vector."""
    return tl.sum(tl.where((tl.arange(0, BT) == BT - 1)[:, None], x, 0.0), axis=0)


@triton.jit
def load_row(x, row, o_n, m_n, N, BN: tl.constexpr, PRESENT: tl.constexpr, ACC: tl.constexpr):
    """Row ``row`` of a [rows, N] tensor (an initial state, a group's carry) as a [BN]
    vector of the accumulation dtype ``ACC``; zeros when not ``PRESENT``."""
    if PRESENT:
        b_x = tl.load(x + row.to(tl.int64) * N + o_n, mask=m_n, other=0.0).to(ACC)
    else:
        b_x = tl.zeros([BN], dtype=ACC)
    return b_x


@triton.jit
def load_row_pair(x, row, o_n, m_n, N, BN: tl.constexpr, PRESENT: tl.constexpr, ACC: tl.constexpr):
    """Row ``row`` of a [rows, N, 2] tensor (a 2×2-block state) as two [BN] vectors of
    dtype ``ACC``; zeros when not ``PRESENT``."""
    if PRESENT:
        o_x = (row.to(tl.int64) * N + o_n) * 2
        b_x0 = tl.load(x + o_x + 0, mask=m_n, other=0.0).to(ACC)
        b_x1 = tl.load(x + o_x + 1, mask=m_n, other=0.0).to(ACC)
    else:
        b_x0 = tl.zeros([BN], dtype=ACC)
        b_x1 = tl.zeros([BN], dtype=ACC)
    return b_x0, b_x1


@triton.jit
def compose_last_rows(b_a00, b_a01, b_a10, b_a11, b_p00, b_p01, b_p10, b_p11, BT: tl.constexpr):
    """(last row of the scanned 2×2 tile) @ (product so far): the running product of a
    group's coefficients, as four [BN] vectors."""
    l00 = last_row(b_a00, BT)
    l01 = last_row(b_a01, BT)
    l10 = last_row(b_a10, BT)
    l11 = last_row(b_a11, BT)
    return (
        l00 * b_p00 + l01 * b_p10,
        l00 * b_p01 + l01 * b_p11,
        l10 * b_p00 + l11 * b_p10,
        l10 * b_p01 + l11 * b_p11,
    )


@triton.jit
def store_block_aggregate(chunk_a, chunk_b, o_c, m_n, b_p00, b_p01, b_p10, b_p11, b_b0, b_b1):
    """Write a group's 2×2 aggregate: chunk_a [B, G, N, 2, 2], chunk_b [B, G, N, 2] at the
    flat (b, g, n) offsets ``o_c``."""
    tl.store(chunk_a + o_c * 4 + 0, b_p00, mask=m_n)
    tl.store(chunk_a + o_c * 4 + 1, b_p01, mask=m_n)
    tl.store(chunk_a + o_c * 4 + 2, b_p10, mask=m_n)
    tl.store(chunk_a + o_c * 4 + 3, b_p11, mask=m_n)
    tl.store(chunk_b + o_c * 2 + 0, b_b0, mask=m_n)
    tl.store(chunk_b + o_c * 2 + 1, b_b1, mask=m_n)


@triton.jit
def _prev_time(o_t, m_s, T, A_SHIFT: tl.constexpr):
    """For the adjoint pass: time of the forward recurrence's previous state at ``o_t``
    (t − A_SHIFT), whether it lies inside the sequence, and whether it is the initial state."""
    o_tp = o_t - A_SHIFT
    m_in = m_s & (o_tp >= 0) & (o_tp < T)
    m_edge = m_s & ((o_tp < 0) | (o_tp >= T))
    return o_tp, m_in, m_edge


@triton.jit
def _diag_tile(
    a, b, h, h_fwd, grad_a, b_h, b_prod, b_hinit, s0, base, T, N, o_n, m_n,
    BT: tl.constexpr, REVERSE: tl.constexpr, A_SHIFT: tl.constexpr,
    STORE_H: tl.constexpr, GRAD_A: tl.constexpr, USE_ASSOC: tl.constexpr, ACC: tl.constexpr,
    I64: tl.constexpr,
):  # fmt: skip
    """Advance (b_h, b_prod) over one tile.  With ``GRAD_A`` (the adjoint pass, where the
    scanned state is λ) also write grad_a_t = λ_t ⊙ h_prev from the forward states ``h_fwd``
    and the forward's initial state ``b_hinit``."""
    o_i = tl.arange(0, BT)
    o_s = s0 + o_i
    if REVERSE:
        o_t = T - 1 - o_s
    else:
        o_t = o_s
    if I64:  # o_t · N would overflow int32 (see needs_int64)
        o_t = o_t.to(tl.int64)
    o_ta = o_t + A_SHIFT
    m_s = o_s < T
    m_a = m_s & (o_ta >= 0) & (o_ta < T)
    p_a = a + base + o_ta[:, None] * N + o_n[None, :]
    b_a = tl.load(p_a, mask=m_a[:, None] & m_n[None, :], other=0.0).to(ACC)
    b_a = tl.where(m_s[:, None], b_a, 1.0)
    p_b = b + base + o_t[:, None] * N + o_n[None, :]
    b_b = tl.load(p_b, mask=m_s[:, None] & m_n[None, :], other=0.0).to(ACC)
    b_a, b_b = diag_tile_scan(b_a, b_b, BT, USE_ASSOC)
    b_hs = b_a * b_h[None, :] + b_b
    if STORE_H:
        p_h = h + base + o_t[:, None] * N + o_n[None, :]
        tl.store(p_h, b_hs.to(h.dtype.element_ty), mask=m_s[:, None] & m_n[None, :])
    if GRAD_A:
        o_tp, m_in, m_edge = _prev_time(o_t, m_s, T, A_SHIFT)
        p_hp = h_fwd + base + o_tp[:, None] * N + o_n[None, :]
        b_hp = tl.load(p_hp, mask=m_in[:, None] & m_n[None, :], other=0.0).to(ACC)
        b_hp = tl.where(m_edge[:, None], b_hinit[None, :], b_hp)
        p_ga = grad_a + base + o_t[:, None] * N + o_n[None, :]
        tl.store(p_ga, (b_hs * b_hp).to(grad_a.dtype.element_ty), mask=m_s[:, None] & m_n[None, :])
    b_h = last_row(b_hs, BT)
    b_prod = last_row(b_a, BT) * b_prod
    return b_h, b_prod


@triton.jit
def _block_tile(
    a, b, h, h_fwd, grad_a, b_h0, b_h1, b_p00, b_p01, b_p10, b_p11, b_hi0, b_hi1,
    s0, base, T, N, o_n, m_n,
    BT: tl.constexpr, REVERSE: tl.constexpr, A_SHIFT: tl.constexpr, TRANSPOSE: tl.constexpr,
    STORE_H: tl.constexpr, GRAD_A: tl.constexpr, USE_ASSOC: tl.constexpr, ACC: tl.constexpr,
    I64: tl.constexpr,
):  # fmt: skip
    """2×2-block version of :func:`_diag_tile`; the adjoint's grad_a_t = λ_t h_prevᵀ."""
    o_i = tl.arange(0, BT)
    o_s = s0 + o_i
    if REVERSE:
        o_t = T - 1 - o_s
    else:
        o_t = o_s
    if I64:  # o_t · N would overflow int32 (see needs_int64)
        o_t = o_t.to(tl.int64)
    o_ta = o_t + A_SHIFT
    m_s = (o_s < T)[:, None]
    m_a = m_s & ((o_ta >= 0) & (o_ta < T))[:, None] & m_n[None, :]
    o_a = (base + o_ta[:, None] * N + o_n[None, :]) * 4
    b_a00 = tl.where(m_s, tl.load(a + o_a + 0, mask=m_a, other=0.0).to(ACC), 1.0)
    b_a11 = tl.where(m_s, tl.load(a + o_a + 3, mask=m_a, other=0.0).to(ACC), 1.0)
    if TRANSPOSE:
        b_a01 = tl.load(a + o_a + 2, mask=m_a, other=0.0).to(ACC)
        b_a10 = tl.load(a + o_a + 1, mask=m_a, other=0.0).to(ACC)
    else:
        b_a01 = tl.load(a + o_a + 1, mask=m_a, other=0.0).to(ACC)
        b_a10 = tl.load(a + o_a + 2, mask=m_a, other=0.0).to(ACC)
    o_b = (base + o_t[:, None] * N + o_n[None, :]) * 2
    m_b = m_s & m_n[None, :]
    b_b0 = tl.load(b + o_b + 0, mask=m_b, other=0.0).to(ACC)
    b_b1 = tl.load(b + o_b + 1, mask=m_b, other=0.0).to(ACC)
    b_a00, b_a01, b_a10, b_a11, b_b0, b_b1 = block_tile_scan(
        b_a00, b_a01, b_a10, b_a11, b_b0, b_b1, BT, USE_ASSOC
    )
    b_hs0 = b_a00 * b_h0[None, :] + b_a01 * b_h1[None, :] + b_b0
    b_hs1 = b_a10 * b_h0[None, :] + b_a11 * b_h1[None, :] + b_b1
    if STORE_H:
        o_h = (base + o_t[:, None] * N + o_n[None, :]) * 2
        tl.store(h + o_h + 0, b_hs0.to(h.dtype.element_ty), mask=m_b)
        tl.store(h + o_h + 1, b_hs1.to(h.dtype.element_ty), mask=m_b)
    if GRAD_A:
        o_tp, m_in, m_edge = _prev_time(o_t, o_s < T, T, A_SHIFT)
        o_hp = (base + o_tp[:, None] * N + o_n[None, :]) * 2
        m_hp = m_in[:, None] & m_n[None, :]
        b_hp0 = tl.load(h_fwd + o_hp + 0, mask=m_hp, other=0.0).to(ACC)
        b_hp1 = tl.load(h_fwd + o_hp + 1, mask=m_hp, other=0.0).to(ACC)
        b_hp0 = tl.where(m_edge[:, None], b_hi0[None, :], b_hp0)
        b_hp1 = tl.where(m_edge[:, None], b_hi1[None, :], b_hp1)
        o_ga = (base + o_t[:, None] * N + o_n[None, :]) * 4
        ga_ty = grad_a.dtype.element_ty
        tl.store(grad_a + o_ga + 0, (b_hs0 * b_hp0).to(ga_ty), mask=m_b)
        tl.store(grad_a + o_ga + 1, (b_hs0 * b_hp1).to(ga_ty), mask=m_b)
        tl.store(grad_a + o_ga + 2, (b_hs1 * b_hp0).to(ga_ty), mask=m_b)
        tl.store(grad_a + o_ga + 3, (b_hs1 * b_hp1).to(ga_ty), mask=m_b)
    b_h0 = last_row(b_hs0, BT)
    b_h1 = last_row(b_hs1, BT)
    b_p00, b_p01, b_p10, b_p11 = compose_last_rows(
        b_a00, b_a01, b_a10, b_a11, b_p00, b_p01, b_p10, b_p11, BT
    )
    return b_h0, b_h1, b_p00, b_p01, b_p10, b_p11


# ---------------------------------------------------------------------------------------------
# Diagonal kernels.  Grid (G groups, N blocks, B) for reduce and scan, (N blocks, B) for carry.
# chunk_a, chunk_b, carry are [B, G, N] in the accumulation dtype ACC.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _diag_chunk_reduce_kernel(
    a, b, chunk_a, chunk_b, T, N, ROWS,
    BT: tl.constexpr, BN: tl.constexpr, REVERSE: tl.constexpr, A_SHIFT: tl.constexpr,
    USE_ASSOC: tl.constexpr, ACC: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    i_g, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G = tl.num_programs(0)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    base = i_b.to(tl.int64) * T * N
    b_h = tl.zeros([BN], dtype=ACC)
    b_prod = tl.full([BN], 1.0, dtype=ACC)
    s_begin = i_g * ROWS
    for s0 in range(s_begin, tl.minimum(s_begin + ROWS, T), BT):
        b_h, b_prod = _diag_tile(
            a, b, a, a, a, b_h, b_prod, b_h, s0, base, T, N, o_n, m_n,
            BT, REVERSE, A_SHIFT, False, False, USE_ASSOC, ACC, I64,
        )  # fmt: skip
    o_c = (i_b.to(tl.int64) * G + i_g) * N + o_n
    tl.store(chunk_a + o_c, b_prod, mask=m_n)
    tl.store(chunk_b + o_c, b_h, mask=m_n)


@triton.jit
def _diag_chunk_carry_kernel(
    chunk_a, chunk_b, h0, carry, N, G, BN: tl.constexpr, HAS_H0: tl.constexpr, ACC: tl.constexpr
):
    i_n, i_b = tl.program_id(0), tl.program_id(1)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    b_h = load_row(h0, i_b, o_n, m_n, N, BN, HAS_H0, ACC)
    for i_g in range(G):
        o_c = (i_b.to(tl.int64) * G + i_g) * N + o_n
        tl.store(carry + o_c, b_h, mask=m_n)
        b_a = tl.load(chunk_a + o_c, mask=m_n, other=0.0)
        b_b = tl.load(chunk_b + o_c, mask=m_n, other=0.0)
        b_h = b_a * b_h + b_b


@triton.jit
def _diag_chunk_scan_kernel(
    a, b, h0, carry, h, h_fwd, h_init, grad_a, T, N, ROWS,
    BT: tl.constexpr, BN: tl.constexpr, REVERSE: tl.constexpr, A_SHIFT: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_CARRY: tl.constexpr, GRAD_A: tl.constexpr,
    HAS_HINIT: tl.constexpr, USE_ASSOC: tl.constexpr, ACC: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    i_g, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G = tl.num_programs(0)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    base = i_b.to(tl.int64) * T * N
    if HAS_CARRY:
        b_h = load_row(carry, i_b * G + i_g, o_n, m_n, N, BN, True, ACC)
    else:
        b_h = load_row(h0, i_b, o_n, m_n, N, BN, HAS_H0, ACC)
    b_prod = tl.full([BN], 1.0, dtype=ACC)
    b_hinit = load_row(h_init, i_b, o_n, m_n, N, BN, HAS_HINIT, ACC)
    s_begin = i_g * ROWS
    for s0 in range(s_begin, tl.minimum(s_begin + ROWS, T), BT):
        b_h, b_prod = _diag_tile(
            a, b, h, h_fwd, grad_a, b_h, b_prod, b_hinit, s0, base, T, N, o_n, m_n,
            BT, REVERSE, A_SHIFT, True, GRAD_A, USE_ASSOC, ACC, I64,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 2×2-block kernels.  chunk_a is [B, G, N, 2, 2]; chunk_b and carry are [B, G, N, 2]; all ACC.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _block_chunk_reduce_kernel(
    a, b, chunk_a, chunk_b, T, N, ROWS,
    BT: tl.constexpr, BN: tl.constexpr, REVERSE: tl.constexpr, A_SHIFT: tl.constexpr,
    TRANSPOSE: tl.constexpr, USE_ASSOC: tl.constexpr, ACC: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    i_g, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G = tl.num_programs(0)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    base = i_b.to(tl.int64) * T * N
    b_h0 = tl.zeros([BN], dtype=ACC)
    b_h1 = tl.zeros([BN], dtype=ACC)
    b_p00 = tl.full([BN], 1.0, dtype=ACC)
    b_p01 = tl.zeros([BN], dtype=ACC)
    b_p10 = tl.zeros([BN], dtype=ACC)
    b_p11 = tl.full([BN], 1.0, dtype=ACC)
    s_begin = i_g * ROWS
    for s0 in range(s_begin, tl.minimum(s_begin + ROWS, T), BT):
        b_h0, b_h1, b_p00, b_p01, b_p10, b_p11 = _block_tile(
            a, b, a, a, a, b_h0, b_h1, b_p00, b_p01, b_p10, b_p11, b_h0, b_h1,
            s0, base, T, N, o_n, m_n, BT, REVERSE, A_SHIFT, TRANSPOSE, False, False, USE_ASSOC,
            ACC, I64,
        )  # fmt: skip
    o_c = (i_b.to(tl.int64) * G + i_g) * N + o_n
    store_block_aggregate(chunk_a, chunk_b, o_c, m_n, b_p00, b_p01, b_p10, b_p11, b_h0, b_h1)


@triton.jit
def _block_chunk_carry_kernel(
    chunk_a, chunk_b, h0, carry, N, G, BN: tl.constexpr, HAS_H0: tl.constexpr, ACC: tl.constexpr
):
    i_n, i_b = tl.program_id(0), tl.program_id(1)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    b_h0, b_h1 = load_row_pair(h0, i_b, o_n, m_n, N, BN, HAS_H0, ACC)
    for i_g in range(G):
        o_c = (i_b.to(tl.int64) * G + i_g) * N + o_n
        tl.store(carry + o_c * 2 + 0, b_h0, mask=m_n)
        tl.store(carry + o_c * 2 + 1, b_h1, mask=m_n)
        b_a00 = tl.load(chunk_a + o_c * 4 + 0, mask=m_n, other=0.0)
        b_a01 = tl.load(chunk_a + o_c * 4 + 1, mask=m_n, other=0.0)
        b_a10 = tl.load(chunk_a + o_c * 4 + 2, mask=m_n, other=0.0)
        b_a11 = tl.load(chunk_a + o_c * 4 + 3, mask=m_n, other=0.0)
        b_b0 = tl.load(chunk_b + o_c * 2 + 0, mask=m_n, other=0.0)
        b_b1 = tl.load(chunk_b + o_c * 2 + 1, mask=m_n, other=0.0)
        b_h0, b_h1 = b_a00 * b_h0 + b_a01 * b_h1 + b_b0, b_a10 * b_h0 + b_a11 * b_h1 + b_b1


@triton.jit
def _block_chunk_scan_kernel(
    a, b, h0, carry, h, h_fwd, h_init, grad_a, T, N, ROWS,
    BT: tl.constexpr, BN: tl.constexpr, REVERSE: tl.constexpr, A_SHIFT: tl.constexpr,
    TRANSPOSE: tl.constexpr, HAS_H0: tl.constexpr, HAS_CARRY: tl.constexpr,
    GRAD_A: tl.constexpr, HAS_HINIT: tl.constexpr, USE_ASSOC: tl.constexpr,
    ACC: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    i_g, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G = tl.num_programs(0)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    base = i_b.to(tl.int64) * T * N
    if HAS_CARRY:
        b_h0, b_h1 = load_row_pair(carry, i_b * G + i_g, o_n, m_n, N, BN, True, ACC)
    else:
        b_h0, b_h1 = load_row_pair(h0, i_b, o_n, m_n, N, BN, HAS_H0, ACC)
    b_p00 = tl.full([BN], 1.0, dtype=ACC)
    b_p01 = tl.zeros([BN], dtype=ACC)
    b_p10 = tl.zeros([BN], dtype=ACC)
    b_p11 = tl.full([BN], 1.0, dtype=ACC)
    b_hi0, b_hi1 = load_row_pair(h_init, i_b, o_n, m_n, N, BN, HAS_HINIT, ACC)
    s_begin = i_g * ROWS
    for s0 in range(s_begin, tl.minimum(s_begin + ROWS, T), BT):
        b_h0, b_h1, b_p00, b_p01, b_p10, b_p11 = _block_tile(
            a, b, h, h_fwd, grad_a, b_h0, b_h1, b_p00, b_p01, b_p10, b_p11, b_hi0, b_hi1,
            s0, base, T, N, o_n, m_n, BT, REVERSE, A_SHIFT, TRANSPOSE, True, GRAD_A, USE_ASSOC,
            ACC, I64,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Launch configuration and the forward/adjoint driver.
# ---------------------------------------------------------------------------------------------


MAX_GRID_YZ = 65535
"""CUDA's limit on a grid's y and z extents; the batch is one of them in every launch."""

INT32_OFFSETS = 2**31
"""Element offsets within one sequence at or above this overflow the kernels' int32 index."""


def needs_int64(T: int, N: int) -> bool:
    """Whether a sequence's element offsets (up to t · 3N in the fused Newton kernels, t · N
    in the scans) reach int32's limit.  Only then do the kernels index time in int64: on GPU
    it doubles the registers of the offset tiles (128 to 254 for the diagonal scan)."""
    return 3 * T * N >= INT32_OFFSETS


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors on a CUDA device (1 elsewhere): the unit of parallelism the
    launch heuristics fill."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


# How many programs the time split aims for, per SM.  On an H200 (2026-11-29,
# benchmarks/launch_configs.py) 16 per SM ran the scans 14-16 % faster than 4 at T = 2^17.
SCAN_PROGRAMS_PER_SM = 16


def split_time(
    B: int, T: int, N: int, BT: int, BN: int, device: torch.device, chunk_size: int | None,
    programs_per_sm: int,
) -> dict:  # fmt: skip
    """Rows per time group and the grid for tiles of BT rows × BN units.

    ``chunk_size`` forces the rows per group (rounded up to BT).  Otherwise time is split
    only as far as needed for ``programs_per_sm`` programs per SM: the reduce pass reads
    (a, b) once whatever the number of groups, but a single group needs no reduce pass at all.
    Under the interpreter there is one group (its cost is per op, not per element).
    """
    n_tiles = triton.cdiv(max(T, 1), BT)
    n_blocks = triton.cdiv(N, BN)
    if chunk_size is not None:
        rows = triton.cdiv(chunk_size, BT) * BT
    elif interpreting() or device.type != "cuda":
        rows = n_tiles * BT
    else:
        target = programs_per_sm * num_sms(device)
        groups = max(1, min(n_tiles, triton.cdiv(target, B * n_blocks)))
        rows = triton.cdiv(n_tiles, groups) * BT
    return dict(ROWS=rows, G=triton.cdiv(max(T, 1), rows), n_blocks=n_blocks)


def scan_launch_config(
    B: int, T: int, N: int, block: bool, device: torch.device,
    chunk_size: int | None = None, use_associative_scan: bool | None = None,
) -> dict:  # fmt: skip
    """Tile sizes, group length and grid for a scan; exposed for tests and benchmarks.

    ``chunk_size`` forces the number of time steps per group (rounded up to the tile BT);
    ``use_associative_scan`` picks the in-tile algorithm (default: on GPU only).
    """
    if B > MAX_GRID_YZ:
        raise ValueError(
            f"batch {B} is more sequences than one launch can hold ({MAX_GRID_YZ}, CUDA's grid "
            "limit on the axis that carries the batch); split the batch"
        )
    interp = interpreting() or device.type != "cuda"
    use_assoc = (not interp) if use_associative_scan is None else use_associative_scan
    if interp:
        # Few, wide programs: the interpreter's cost is per op, not per element.
        BN = min(64, triton.next_power_of_2(max(N, 1)))
        BT, num_warps = (8 if use_assoc else 64), 1
    elif use_assoc:
        # Measured on an H200 (benchmarks/launch_configs.py, 2026-11-29, T = 2^17): 2×2
        # blocks in 16-row tiles on two warps ran 2.1x faster than 32-row tiles on four.
        BN, BT, num_warps = (32, 16, 2) if block else (64, 64, 4)
    else:
        # The doubling path materialises [BT, BT, BN] tiles: keep them small on GPU.
        BN, BT, num_warps = 32, 16, 1
    BT = min(BT, max(triton.next_power_of_2(max(T, 1)), 1 if not use_assoc else 2))
    split = split_time(B, T, N, BT, BN, device, chunk_size, SCAN_PROGRAMS_PER_SM)
    return dict(BT=BT, BN=BN, USE_ASSOC=use_assoc, num_warps=num_warps, **split)


def scan_triton_raw(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None,
    out: torch.Tensor,
    reverse: bool,
    a_shift: int = 0,
    transpose: bool = False,
    chunk_size: int | None = None,
    use_associative_scan: bool | None = None,
    grad_a: torch.Tensor | None = None,
    h_fwd: torch.Tensor | None = None,
    h_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the chunked scan kernels, writing h into ``out`` (any float dtype, b's shape).

    ``a_shift`` reads the coefficient of step t at t + a_shift (zero outside [0, T));
    ``transpose`` transposes 2×2 blocks.  No autograd; inputs must be contiguous.

    For the adjoint pass (the scanned state is λ), ``grad_a`` (a's shape) also receives
    λ_t ⊙ h_prev (λ_t h_prevᵀ for blocks) in the same pass, where h_prev is the forward
    state before step t: ``h_fwd`` at t − a_shift, or ``h_init`` (zeros when None) at the
    sequence's edge.
    """
    block = a.dim() == 5
    B, T, N = b.shape[:3]
    if T == 0 or B == 0 or N == 0:
        return out
    cfg = scan_launch_config(B, T, N, block, b.device, chunk_size, use_associative_scan)
    G, BT, BN, rows = cfg["G"], cfg["BT"], cfg["BN"], cfg["ROWS"]
    use_assoc, num_warps = cfg["USE_ASSOC"], cfg["num_warps"]
    acc = acc_dtype(torch.promote_types(a.dtype, b.dtype))
    ACC = TL_DTYPES[acc]
    i64 = needs_int64(T, N)
    grid = (G, cfg["n_blocks"], B)
    h0_arg = h0 if h0 is not None else b
    carry = b  # placeholder pointer when there is a single group
    if G > 1:
        width = (2,) if block else ()
        chunk_a = torch.empty((B, G, N) + ((2, 2) if block else ()), device=b.device, dtype=acc)
        chunk_b = torch.empty((B, G, N) + width, device=b.device, dtype=acc)
        carry = torch.empty((B, G, N) + width, device=b.device, dtype=acc)
        if block:
            _block_chunk_reduce_kernel[grid](
                a, b, chunk_a, chunk_b, T, N, rows, BT=BT, BN=BN, REVERSE=reverse,
                A_SHIFT=a_shift, TRANSPOSE=transpose, USE_ASSOC=use_assoc, ACC=ACC, I64=i64,
                num_warps=num_warps,
            )  # fmt: skip
            _block_chunk_carry_kernel[(cfg["n_blocks"], B)](
                chunk_a, chunk_b, h0_arg, carry, N, G, BN=BN, HAS_H0=h0 is not None, ACC=ACC
            )
        else:
            _diag_chunk_reduce_kernel[grid](
                a, b, chunk_a, chunk_b, T, N, rows, BT=BT, BN=BN, REVERSE=reverse,
                A_SHIFT=a_shift, USE_ASSOC=use_assoc, ACC=ACC, I64=i64, num_warps=num_warps,
            )  # fmt: skip
            _diag_chunk_carry_kernel[(cfg["n_blocks"], B)](
                chunk_a, chunk_b, h0_arg, carry, N, G, BN=BN, HAS_H0=h0 is not None, ACC=ACC
            )
    if grad_a is not None and h_fwd is None:
        raise ValueError("grad_a needs the forward states h_fwd")
    adjoint = (
        h_fwd if h_fwd is not None else b,
        h_init if h_init is not None else b,
        grad_a if grad_a is not None else b,
    )
    flags = dict(
        HAS_H0=h0 is not None, HAS_CARRY=G > 1, GRAD_A=grad_a is not None,
        HAS_HINIT=h_init is not None, USE_ASSOC=use_assoc, ACC=ACC, I64=i64,
        num_warps=num_warps,
    )  # fmt: skip
    if block:
        _block_chunk_scan_kernel[grid](
            a, b, h0_arg, carry, out, *adjoint, T, N, rows, BT=BT, BN=BN, REVERSE=reverse,
            A_SHIFT=a_shift, TRANSPOSE=transpose, **flags,
        )  # fmt: skip
    else:
        _diag_chunk_scan_kernel[grid](
            a, b, h0_arg, carry, out, *adjoint, T, N, rows, BT=BT, BN=BN, REVERSE=reverse,
            A_SHIFT=a_shift, **flags,
        )  # fmt: skip
    return out


class LinearScanFn(torch.autograd.Function):
    """Autograd wrapper: the backward pass is the adjoint scan in the opposite direction,
    λ_t = g_t + a_{t+1}ᵀ λ_{t+1} (mirrored for ``reverse``), grad_b = λ,
    grad_a_t = λ_t h_{t-1}ᵀ (written by the same pass), grad_h0 = a_0ᵀ λ_0."""

    @staticmethod
    def forward(ctx, a, b, h0, reverse, chunk_size, use_associative_scan):
        a, b = a.contiguous(), b.contiguous()
        h0c = h0.contiguous() if h0 is not None else None
        h = torch.empty_like(b)
        scan_triton_raw(a, b, h0c, h, reverse, 0, False, chunk_size, use_associative_scan)
        ctx.save_for_backward(a, h0c, h)
        ctx.reverse, ctx.chunk_size, ctx.use_assoc = reverse, chunk_size, use_associative_scan
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        a, h0, h = ctx.saved_tensors
        reverse = ctx.reverse
        block = a.dim() == 5
        grad_h = grad_h.contiguous()
        acc = acc_dtype(torch.promote_types(a.dtype, grad_h.dtype))
        lam = torch.empty(grad_h.shape, device=grad_h.device, dtype=acc)
        # One adjoint pass writes λ (= grad_b) and, from the saved states, grad_a.
        grad_a = torch.empty_like(a) if ctx.needs_input_grad[0] else None
        scan_triton_raw(
            a, grad_h, None, lam, not reverse, -1 if reverse else 1, True,
            ctx.chunk_size, ctx.use_assoc, grad_a=grad_a, h_fwd=h, h_init=h0,
        )  # fmt: skip
        grad_h0 = None
        if h0 is not None and ctx.needs_input_grad[2]:
            if a.shape[1] == 0:  # no step reads h0
                grad_h0 = torch.zeros_like(h0)
            else:
                edge = -1 if reverse else 0
                a_edge, lam_edge = a[:, edge].to(acc), lam[:, edge]
                grad_h0 = (
                    block_matvec(a_edge.transpose(-1, -2), lam_edge) if block else a_edge * lam_edge
                )
            grad_h0 = grad_h0.to(ctx.h0_dtype)
        return grad_a, lam.to(grad_h.dtype), grad_h0, None, None, None


def linear_scan_triton(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    reverse: bool = False,
    chunk_size: int | None = None,
    use_associative_scan: bool | None = None,
) -> torch.Tensor:
    """Chunked Triton scan of h_t = a_t h_{t-1} + b_t (h_t = a_t h_{t+1} + b_t if ``reverse``).

    Args:
        a: ``[B, T, N]`` (diagonal) or ``[B, T, N, 2, 2]`` (2×2 block); fp64, fp32, bf16
            or fp16.
        b: ``[B, T, N]`` or ``[B, T, N, 2]``, same dtype as ``a``.
        h0: ``[B, N]`` or ``[B, N, 2]`` initial state (the state after the end if
            ``reverse``); zeros when None.
        reverse: scan from t = T - 1 down to 0.
        chunk_size: time steps per program group; None picks one from the device.
        use_associative_scan: in-tile algorithm; None means on GPU only.

    Returns:
        h, shape and dtype of ``b``, accumulated in fp32 (in fp64 for fp64 input).
        Differentiable in a, b and h0 (once: double backward raises).
    """
    check_scan_args(a, b, h0)
    return LinearScanFn.apply(a, b, h0, reverse, chunk_size, use_associative_scan)
