"""Shape checks and dtype rules shared by the scan backends."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``).  Here, beside
    no Triton import, so that callers can ask without importing Triton."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp64 stays fp64, everything else accumulates in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def block_matvec(a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """a @ h for [..., 2, 2] blocks and [..., 2] vectors.

    Elementwise on purpose: autocast runs ``@``/``matmul`` in bf16 even on fp32 inputs,
    which would silently demote the scan (and the adjoint run inside autocast's backward).
    """
    return (a * h.unsqueeze(-2)).sum(-1)


def block_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y for [..., 2, 2] blocks; elementwise for the reason given in :func:`block_matvec`."""
    return (x.unsqueeze(-1) * y.unsqueeze(-3)).sum(-2)


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
