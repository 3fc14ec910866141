"""Pieces shared by the fused Newton kernels: Triton helpers and the chunked launcher.

Every fused kernel has the same trailing signature,
``(..., chunk_a, chunk_b, carry, T, N, ROWS, BT, BN, STAGE, HAS_CARRY, USE_ASSOC, ...)``,
and follows the scan's three passes (see :mod:`paralab.kernels.scan.triton`): with several
time groups, STAGE 0 writes each group's aggregate, the scan's carry kernel links them, and
STAGE 1 re-scans every group from its entering state and writes the results.  With one group
only STAGE 1 runs.  The elements of the scan (Jacobians and residuals, or Jacobians and
cotangents) are recomputed from p and the current states inside each pass, never stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from paralab.kernels.scan.triton import (
    _block_chunk_carry_kernel,
    _diag_chunk_carry_kernel,
    scan_launch_config,
)


@triton.jit
def tanh(x):
    # tl has no tanh that also runs in the interpreter; this form is exact to fp32 rounding
    # in absolute terms and saturates cleanly (exp overflow gives σ = 0, never NaN).
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def load_gates(p, base3, o_t, o_n, m, N):
    """The three gate rows of p [B, T, 3, N] at times o_t [BT] as fp32 [BT, BN] tiles."""
    p_p = p + base3 + o_t[:, None] * (3 * N) + o_n[None, :]
    b_p0 = tl.load(p_p, mask=m, other=0.0).to(tl.float32)
    b_p1 = tl.load(p_p + N, mask=m, other=0.0).to(tl.float32)
    b_p2 = tl.load(p_p + 2 * N, mask=m, other=0.0).to(tl.float32)
    return b_p0, b_p1, b_p2


def newton_launch_config(p: torch.Tensor, chunk_size, use_associative_scan) -> dict:
    B, T, _, N = p.shape
    # The fused kernels hold many more tiles in registers than a bare scan: use the smaller
    # (2×2-block) tile shape for both cells.
    return scan_launch_config(B, T, N, True, p.device, chunk_size, use_associative_scan)


def launch_chunked(kernel, args: tuple, B: int, T: int, N: int, block: bool, cfg: dict, **consts):
    """Run ``kernel`` over (groups, unit blocks, batch), with the reduce/carry passes when
    time is split into several groups."""
    G, BN = cfg["G"], cfg["BN"]
    grid = (G, cfg["n_blocks"], B)
    common = dict(
        BT=cfg["BT"], BN=BN, USE_ASSOC=cfg["USE_ASSOC"], num_warps=cfg["num_warps"], **consts
    )
    device = args[0].device
    if G > 1:
        width = (2,) if block else ()
        chunk_a = torch.empty(
            (B, G, N) + ((2, 2) if block else ()), device=device, dtype=torch.float32
        )
        chunk_b = torch.empty((B, G, N) + width, device=device, dtype=torch.float32)
        carry = torch.empty((B, G, N) + width, device=device, dtype=torch.float32)
        kernel[grid](
            *args, chunk_a, chunk_b, carry, T, N, cfg["ROWS"], STAGE=0, HAS_CARRY=False, **common
        )
        carry_kernel = _block_chunk_carry_kernel if block else _diag_chunk_carry_kernel
        carry_kernel[(cfg["n_blocks"], B)](
            chunk_a, chunk_b, chunk_b, carry, N, G, BN=BN, HAS_H0=False
        )
        kernel[grid](
            *args, chunk_a, chunk_b, carry, T, N, cfg["ROWS"], STAGE=1, HAS_CARRY=True, **common
        )
    else:
        dummy = args[0]
        kernel[grid](
            *args, dummy, dummy, dummy, T, N, cfg["ROWS"], STAGE=1, HAS_CARRY=False, **common
        )
