"""Linear recurrences h_t = a_t h_{t-1} + b_t, diagonal or 2×2-block, on three backends.

``linear_scan`` is the public entry point; ``backend`` picks the implementation:

- ``"sequential"``: the plain loop over time (:mod:`.reference`), the specification;
- ``"torch"``: a log-depth Hillis–Steele scan in plain PyTorch (:mod:`.parallel`);
- ``"triton"``: chunked, work-efficient Triton kernels (:mod:`.triton`).
"""

from __future__ import annotations

import torch

from paralab.kernels.scan.parallel import linear_scan_parallel
from paralab.kernels.scan.reference import linear_scan_sequential

BACKENDS = ("sequential", "torch", "triton")

__all__ = ["BACKENDS", "linear_scan", "linear_scan_parallel", "linear_scan_sequential"]


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    reverse: bool = False,
    backend: str = "torch",
) -> torch.Tensor:
    """Solve h_t = a_t h_{t-1} + b_t for all t.

    Args:
        a: coefficients, ``[B, T, N]`` (diagonal) or ``[B, T, N, 2, 2]`` (2×2 block,
            h_t = a_t @ h_{t-1} + b_t per unit).  fp32, bf16, fp16 or fp64.
        b: inputs, ``[B, T, N]`` or ``[B, T, N, 2]``, same dtype as ``a``.
        h0: initial state ``[B, N]`` or ``[B, N, 2]``; zeros when None.  With ``reverse``
            it is the state after the end, h_T.
        reverse: run time backwards, h_t = a_t h_{t+1} + b_t.
        backend: ``"sequential"``, ``"torch"`` or ``"triton"``.

    Returns:
        h with the shape and dtype of ``b``.  Every backend accumulates in fp32, or in fp64
        for fp64 input, also under autocast (the 2×2 products are elementwise, not
        matmuls).  Differentiable with respect to ``a``, ``b`` and ``h0`` on every backend
        (the Triton backend once: its double backward raises).  T = 0 gives an empty h and
        zero gradients.
    """
    if backend == "sequential":
        return linear_scan_sequential(a, b, h0, reverse)
    if backend == "torch":
        return linear_scan_parallel(a, b, h0, reverse)
    if backend == "triton":
        from paralab.kernels.scan.triton import linear_scan_triton

        return linear_scan_triton(a, b, h0, reverse)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
