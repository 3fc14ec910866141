"""Run as a script (``python triton_mode_check.py``): ``triton`` mode equals ``sequential``
on outputs and gradients for the fused cells (ParaGRU, ParaLSTM) and a generic one
(leaky_tanh, Triton scans), in fp32; and in fp64, where ParaGRU and ParaLSTM run the generic
Newton on Triton scans that must compute in fp64 (to 1e-12, which fp32 arithmetic misses by
five orders of magnitude).  A separate process because, without a GPU, Triton runs only
through its interpreter, which must be chosen before any kernel module is imported."""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from models_testing import CONVERGED_ITERS, assert_close, make_cell, random_state  # noqa: E402

# (output, gradient) relative tolerances per dtype.
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-12)}


def check(cell_name: str, device: str, seq_len: int, dtype: torch.dtype = torch.float32) -> None:
    torch.manual_seed(0)
    cell = make_cell(cell_name, 8, 16, 2, dtype, newton_iters=CONVERGED_ITERS[dtype]).to(device)
    x = torch.randn(2, seq_len, 8, device=device, dtype=dtype, requires_grad=True)
    h0 = random_state(cell, 2, dtype).to(device).requires_grad_()
    results = {}
    for mode in ("sequential", "triton"):
        y, final = cell(x, h0, mode=mode)
        ramp = torch.linspace(-1, 1, y.numel(), device=device, dtype=dtype).view_as(y)
        loss = (y * ramp).sum() + final.sum()
        results[mode] = (y.detach(), torch.autograd.grad(loss, [x, h0, *cell.parameters()]))
    assert cell.newton_fallbacks == 0
    out_tol, grad_tol = TOLERANCES[dtype]
    what = f"{cell_name} {dtype}"
    assert_close(results["triton"][0], results["sequential"][0], out_tol, f"{what} output")
    names = ["x", "h0", *(n for n, _ in cell.named_parameters())]
    for name, got, want in zip(names, results["triton"][1], results["sequential"][1]):
        assert_close(got, want, grad_tol, f"{what} grad of {name}")
    print(f"{what}: triton == sequential (residuals {cell.last_newton_stats.residuals.tolist()})")


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seq_len = int(sys.argv[1]) if len(sys.argv) > 1 else 37
    for name in ("paragru", "paralstm", "leaky_tanh"):
        check(name, device, seq_len)
    for name in ("paragru", "paralstm"):
        check(name, device, seq_len, torch.float64)
