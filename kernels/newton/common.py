"""Pieces shared by the fused Newton kernels: Triton helpers and the chunked launcher.

Every fused kernel has the same trailing signature,
``(..., chunk_a, chunk_b, carry, T, N, ROWS, BT, BN, STAGE, HAS_CARRY, USE_ASSOC, ...)``,
and follows the scan's three passes (see :mod:`paralab.kernels.scan.triton`): with several
time groups, STAGE 0 writes each group's aggregate, the scan's carry kernel links them, and
STAGE 1 re-scans every group from its entering state and writes the results.  With one group
the forward solve needs no cross-program carry at all, so ``_*_newton_solve_kernel`` runs
every Newton iteration in a single launch, and the backward runs STAGE 1 only.  The elements of the scan (Jacobians and residuals, or Jacobians and
cotangents) are recomputed from p and the current states inside each pass, never stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from paralab.kernels.scan.triton import (
    _block_chunk_carry_kernel,
    _diag_chunk_carry_kernel,
    needs_int64,
    num_sms,
    scan_launch_config,
    split_time,
)
from paralab.kernels.scan.utils import interpreting


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


# Tiles of the fused kernels on GPU (rows BT × units BN, warps), beside the bare scans' own:
# they hold many more tiles in registers.  The one-launch solve walks each program's whole
# sequence, so its cost is that serial walk; halving BN doubles its programs.  On an H200
# (benchmarks/launch_configs.py, 2026-11-29, L = 512, B = 8, N = 1024) BN = 16 ran 15-28 %
# faster than 32 for both cells, forward and forward+backward.
CHUNKED_TILE = {"BT": 32, "BN": 32, "num_warps": 4}
ONE_LAUNCH_TILE = {"BT": 32, "BN": 16, "num_warps": 4}
FUSED_PROGRAMS_PER_SM = 4
# Up to this many tiles per program the one-launch solve beats the chunked path even where
# the GPU is not full: on an H200 (2026-11-29) it was as fast or faster at T = 512 (16 tiles)
# and 1.5-2.2x slower at T = 2048 (64 tiles).
ONE_LAUNCH_MAX_TILES = 16


def newton_launch_config(p: torch.Tensor, chunk_size, use_associative_scan) -> dict:
    """Launch configuration for the fused Newton kernels.

    With one time group (G == 1) every Newton iteration runs inside a single launch
    (``_*_newton_solve_kernel``); with several, each iteration is a chunked scan of up to three
    launches.  On GPU, one group is chosen when the (batch × unit-block) programs already
    cover the SMs, or when the sequence is short; ``chunk_size`` overrides the choice.
    Elsewhere (the interpreter) the tiles are the 2×2-block scan's.
    """
    B, T, _, N = p.shape
    cfg = scan_launch_config(B, T, N, True, p.device, chunk_size, use_associative_scan)
    if interpreting() or p.device.type != "cuda" or not cfg["USE_ASSOC"]:
        return {**cfg, "I64": needs_int64(T, N)}

    def tiled(tile: dict, rows: int | None) -> dict:
        BT = min(tile["BT"], max(triton.next_power_of_2(max(T, 1)), 2))
        split = split_time(B, T, N, BT, tile["BN"], p.device, rows, FUSED_PROGRAMS_PER_SM)
        return {**cfg, **tile, "BT": BT, **split}

    cfg = tiled(CHUNKED_TILE, chunk_size)
    if chunk_size is None:
        covered = B * cfg["n_blocks"] >= num_sms(p.device)
        if covered or triton.cdiv(T, cfg["BT"]) <= ONE_LAUNCH_MAX_TILES:
            cfg = tiled(ONE_LAUNCH_TILE, T)
    return {**cfg, "I64": needs_int64(T, N)}


def reject_fp64(*tensors: torch.Tensor | None) -> None:
    """The fused kernels compute in fp32; silently demoting fp64 would lose what the caller
    asked fp64 for."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        raise ValueError(
            "the fused Newton kernels compute in fp32 and do not take fp64; use "
            "newton_gru_reference / newton_lstm_reference (scan_backend='triton' for Triton "
            "scans), which compute in fp64"
        )


def launch_chunked(kernel, args: tuple, B: int, T: int, N: int, block: bool, cfg: dict, **consts):
    """Run ``kernel`` over (groups, unit blocks, batch), with the reduce/carry passes when
    time is split into several groups."""
    G, BN = cfg["G"], cfg["BN"]
    grid = (G, cfg["n_blocks"], B)
    common = dict(
        BT=cfg["BT"], BN=BN, USE_ASSOC=cfg["USE_ASSOC"], I64=cfg["I64"],
        num_warps=cfg["num_warps"], **consts,
    )  # fmt: skip
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
            chunk_a, chunk_b, chunk_b, carry, N, G, BN=BN, HAS_H0=False, ACC=tl.float32
        )
        kernel[grid](
            *args, chunk_a, chunk_b, carry, T, N, cfg["ROWS"], STAGE=1, HAS_CARRY=True, **common
        )
    else:
        dummy = args[0]
        kernel[grid](
            *args, dummy, dummy, dummy, T, N, cfg["ROWS"], STAGE=1, HAS_CARRY=False, **common
        )
