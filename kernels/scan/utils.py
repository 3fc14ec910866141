"""Shape checks and dtype rules shared by the scan backends."""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp64 stays fp64, everything else accumulates in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_scan_args(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> bool:
    """Validate shapes; return True for the 2×2-block case, False for the diagonal one."""
    if b.dim() == 3 and a.shape == b.shape:
        block = False
    elif b.dim() == 4 and b.shape[-1] == 2 and a.shape == b.shape + (2,):
        block = True
    else:
        raise ValueError(
            "expected a, b of shape [B, T, N] (diagonal) or a [B, T, N, 2, 2], b [B, T, N, 2] "
            f"(2x2 block); got a {tuple(a.shape)}, b {tuple(b.shape)}"
        )
    if h0 is not None:
        want = b.shape[:1] + b.shape[2:]
        if h0.shape != want:
            raise ValueError(f"h0 must have shape {tuple(want)}, got {tuple(h0.shape)}")
    return block
