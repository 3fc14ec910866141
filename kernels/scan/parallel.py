"""Log-depth parallel linear scan in plain PyTorch (Hillis–Steele doubling).

Same recurrence and shapes as :mod:`paralab.kernels.scan.reference`.  Elements are pairs
(a_t, b_t) composed by the order-preserving operator

    (a_1, b_1) • (a_2, b_2) = (a_2 a_1, a_2 b_1 + b_2)        (earlier element first)

and ⌈log2 T⌉ doubling steps give every prefix.  Work is O(T log T), but each step is a
handful of large batched tensor ops, which is what a GPU without custom kernels wants.
The initial state is folded into the first element (b_0 += a_0 h0); ``reverse=True`` flips
time.  Autograd differentiates through the doubling steps.  The 2×2 products are written
elementwise, so autocast cannot demote them to bf16.
"""

from __future__ import annotations

import torch

from paralab.kernels.scan.utils import acc_dtype, block_matmul, block_matvec, check_scan_args


def linear_scan_parallel(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Hillis–Steele scan of h_t = a_t h_{t-1} + b_t; see the module docstring for shapes."""
    block = check_scan_args(a, b, h0)
    dtype = acc_dtype(b.dtype)
    acc_a, acc_b = a.to(dtype), b.to(dtype)
    if reverse:
        acc_a, acc_b = acc_a.flip(1), acc_b.flip(1)
    T = b.shape[1]
    if h0 is not None and T > 0:
        h0 = h0.to(dtype)
        first = acc_b[:, :1] + (
            block_matvec(acc_a[:, :1], h0.unsqueeze(1)) if block else acc_a[:, :1] * h0.unsqueeze(1)
        )
        acc_b = torch.cat([first, acc_b[:, 1:]], dim=1)
    offset = 1
    while offset < T:
        # Element t absorbs the prefix ending at t - offset (written before it in time).
        a_hi, b_hi = acc_a[:, offset:], acc_b[:, offset:]
        a_lo, b_lo = acc_a[:, :-offset], acc_b[:, :-offset]
        if block:
            new_b = block_matvec(a_hi, b_lo) + b_hi
            new_a = block_matmul(a_hi, a_lo)
        else:
            new_b = a_hi * b_lo + b_hi
            new_a = a_hi * a_lo
        acc_b = torch.cat([acc_b[:, :offset], new_b], dim=1)
        if offset * 2 < T:  # the last step's products are never read
            acc_a = torch.cat([acc_a[:, :offset], new_a], dim=1)
        offset *= 2
    if reverse:
        acc_b = acc_b.flip(1)
    return acc_b.to(b.dtype)
