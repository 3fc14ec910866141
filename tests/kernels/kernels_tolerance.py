"""One tolerance table per dtype, and the comparison every kernel test uses."""

from __future__ import annotations

import math

import torch

# (absolute, relative) error allowed for a result whose computation chain is short.
# Errors of a scan grow with the sequence length, so ``tolerance`` scales them by sqrt(T).
# fp64 is tight enough that an fp64 path which quietly computes in fp32 (errors ~1e-7) fails.
TOLERANCE = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tolerance(dtype: torch.dtype, T: int = 1) -> tuple[float, float]:
    atol, rtol = TOLERANCE[dtype]
    scale = math.sqrt(max(T, 1))
    return atol * scale, rtol * scale


def assert_close(
    name: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, T: int = 1
):
    """Fail with the max-abs and relative error when ``actual`` strays from ``expected``.

    The check is ``max|actual - expected| <= atol + rtol * max|expected|``; NaN always fails.
    """
    assert actual.shape == expected.shape, (
        f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    atol, rtol = tolerance(dtype, T)
    actual64, expected64 = actual.detach().double().cpu(), expected.detach().double().cpu()
    diff = (actual64 - expected64).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = expected64.abs().max().item() if expected64.numel() else 0.0
    rel = max_abs / max(scale, 1e-30)
    finite = bool(torch.isfinite(actual64).all())
    assert finite and max_abs <= atol + rtol * scale, (
        f"{name}: max-abs error {max_abs:.3e}, relative {rel:.3e} "
        f"(atol {atol:.1e}, rtol {rtol:.1e}, max|ref| {scale:.3e}, finite={finite})"
    )
    return rel
