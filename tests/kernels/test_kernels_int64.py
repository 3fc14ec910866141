"""Sequences long enough that t · N passes int32 index the kernels in int64.

Such tensors (3 · T · N ≥ 2^31 elements per sequence) are too large for the interpreter, so the
threshold is lowered to 1 here: every launch then takes the int64 path, which must give the
same answers as the int32 one, forward and backward. ``kernels_aot_compile.py`` compiles the
int64 variants for the GPU.
"""

from __future__ import annotations

import pytest
import torch
from kernels_tolerance import assert_close
from test_kernels_newton import make_cell_inputs, outputs_and_grads

import paralab.kernels.scan.triton as scan_triton
from paralab.kernels.scan import linear_scan
from paralab.kernels.scan.triton import linear_scan_triton


def test_the_threshold_is_int32s_limit_on_the_fused_kernels_offsets():
    assert not scan_triton.needs_int64(T=2**17, N=4096)  # 3 · 2^29 elements: fits
    assert scan_triton.needs_int64(T=2**20, N=1024)  # 3 · 2^30: t · 3N passes 2^31 - 1
    assert scan_triton.needs_int64(T=2**31 // 3 + 1, N=1)


@pytest.fixture
def int64_everywhere(monkeypatch):
    monkeypatch.setattr(scan_triton, "INT32_OFFSETS", 1)


@pytest.mark.parametrize("block", [False, True], ids=["diag", "block"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "reverse"])
@pytest.mark.parametrize("chunk_size, assoc", [(None, None), (8, True)], ids=["one_group", "groups"])
def test_scan_in_int64_matches_torch(block, reverse, chunk_size, assoc, int64_everywhere):
    gen = torch.Generator().manual_seed(0)
    B, T, N = 2, 19, 5
    a = (torch.rand((B, T, N, 2, 2) if block else (B, T, N), generator=gen) - 0.5)
    b = torch.randn((B, T, N, 2) if block else (B, T, N), generator=gen)
    h0 = torch.randn((B, N, 2) if block else (B, N), generator=gen)
    leaves = [x.requires_grad_() for x in (a, b, h0)]
    got = linear_scan_triton(*leaves, reverse=reverse, chunk_size=chunk_size,
                             use_associative_scan=assoc)  # fmt: skip
    want = linear_scan(*leaves, reverse=reverse, backend="torch")
    g = torch.randn(got.shape, generator=gen)
    assert_close("h", got, want, torch.float32, T)
    for name, x, y in zip(("a", "b", "h0"), torch.autograd.grad(got, leaves, g),
                          torch.autograd.grad(want, leaves, g)):  # fmt: skip
        assert_close(f"grad_{name}", x, y, torch.float32, T)


@pytest.mark.parametrize("chunk_size, assoc", [(None, None), (8, True)], ids=["one_launch", "chunked"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_newton_in_int64_matches_the_reference(cell, chunk_size, assoc, int64_everywhere):
    inputs = make_cell_inputs(cell, 2, 19, 5, torch.float32, True)
    outs, grads = outputs_and_grads(cell, "fused", inputs, 3, chunk_size=chunk_size,
                                    use_associative_scan=assoc)  # fmt: skip
    want_outs, want_grads = outputs_and_grads(cell, "reference", inputs, 3)
    for name in want_outs:
        assert_close(name, outs[name], want_outs[name], torch.float32, 19)
    for name in want_grads:
        assert_close(name, grads[name], want_grads[name], torch.float32, 19)
