"""Sequential linear recurrence: the specification every scan backend is held to.

    h_t = a_t ⊙ h_{t-1} + b_t          (diagonal:   a, b  [B, T, N])
    h_t = a_t @ h_{t-1} + b_t          (2×2 block:  a [B, T, N, 2, 2], b [B, T, N, 2])

with h_{-1} = h0 (zeros when absent).  With ``reverse=True`` time runs backwards,
h_t = a_t h_{t+1} + b_t, and h0 is the state "after" the end (h_T).

Arithmetic is done in fp32 (fp64 stays fp64), also under autocast; the result has the input
dtype.
Autograd differentiates straight through the loop.
"""

from __future__ import annotations

import torch

from paralab.kernels.scan.utils import acc_dtype, block_matvec, check_scan_args


def linear_scan_sequential(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """The plain loop over time; see the module docstring for shapes."""
    block = check_scan_args(a, b, h0)
    dtype = acc_dtype(b.dtype)
    a32, b32 = a.to(dtype), b.to(dtype)
    B, T, N = b.shape[:3]
    h = (
        torch.zeros(b.shape[:1] + b.shape[2:], dtype=dtype, device=b.device)
        if h0 is None
        else h0.to(dtype)
    )
    out = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        if block:
            h = block_matvec(a32[:, t], h) + b32[:, t]
        else:
            h = a32[:, t] * h + b32[:, t]
        out[t] = h
    if T == 0:
        return b.clone()
    return torch.stack(out, dim=1).to(b.dtype)
