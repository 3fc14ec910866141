"""Every scan backend against the sequential loop, on outputs and on all gradients."""

from __future__ import annotations

import pytest
import torch
from kernels_tolerance import assert_close

from paralab.kernels.scan import linear_scan, linear_scan_sequential

# (B, T, N): B=1, T=1, T not a multiple of any block (63, 130), odd N (33).
SHAPES = {
    "B1-T1-N4": (1, 1, 4),
    "B2-T63-N33": (2, 63, 33),
    "B1-T64-N16": (1, 64, 16),
    "B3-T130-N5": (3, 130, 5),
}


def make_inputs(shape, block, dtype, with_h0, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, T, N = shape
    if block:
        a = (torch.rand(B, T, N, 2, 2, generator=gen) - 0.5) * 1.0  # spectral norm < 1
        b = torch.randn(B, T, N, 2, generator=gen)
        h0 = torch.randn(B, N, 2, generator=gen) if with_h0 else None
    else:
        a = (torch.rand(B, T, N, generator=gen) * 2 - 1) * 0.95
        b = torch.randn(B, T, N, generator=gen)
        h0 = torch.randn(B, N, generator=gen) if with_h0 else None
    cast = lambda x: None if x is None else x.to(device=device, dtype=dtype).requires_grad_()
    return cast(a), cast(b), cast(h0)


def check_against_sequential(backend, shape, block, dtype, reverse, with_h0, device):
    a, b, h0 = make_inputs(shape, block, dtype, with_h0, device)
    out = linear_scan(a, b, h0, reverse=reverse, backend=backend)
    assert out.dtype == dtype and out.shape == b.shape
    # The spec runs in fp64 on the very same (possibly bf16-rounded) inputs.
    leaves = [x for x in (a, b, h0) if x is not None]
    ref_leaves = [x.detach().double().cpu().requires_grad_() for x in leaves]
    ref_a, ref_b = ref_leaves[0], ref_leaves[1]
    ref_h0 = ref_leaves[2] if with_h0 else None
    ref = linear_scan_sequential(ref_a, ref_b, ref_h0, reverse=reverse)
    T = shape[1]
    assert_close("h", out, ref, dtype, T)

    grad_out = torch.randn(b.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(
        out, leaves, grad_out.to(device=device, dtype=dtype), materialize_grads=True
    )
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.double(), materialize_grads=True)
    for name, g, rg in zip(("grad_a", "grad_b", "grad_h0"), grads, ref_grads):
        assert g.dtype == dtype
        assert_close(name, g, rg, dtype, T)


@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["fp64", "fp32", "bf16"]
)
@pytest.mark.parametrize("block", [False, True], ids=["diag", "block2x2"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_torch_scan_matches_sequential(shape, block, dtype, reverse, with_h0, device):
    check_against_sequential("torch", shape, block, dtype, reverse, with_h0, device)


@pytest.mark.parametrize("block", [False, True], ids=["diag", "block2x2"])
def test_sequential_matches_hand_unrolled(block):
    """The spec itself, checked against three hand-written steps."""
    a, b, h0 = make_inputs((2, 3, 4), block, torch.float64, True, "cpu")
    step = (
        (lambda a_t, h: (a_t @ h.unsqueeze(-1)).squeeze(-1)) if block else (lambda a_t, h: a_t * h)
    )
    h1 = step(a[:, 0], h0) + b[:, 0]
    h2 = step(a[:, 1], h1) + b[:, 1]
    h3 = step(a[:, 2], h2) + b[:, 2]
    torch.testing.assert_close(linear_scan_sequential(a, b, h0), torch.stack([h1, h2, h3], 1))
    g2 = step(a[:, 2], h0) + b[:, 2]
    g1 = step(a[:, 1], g2) + b[:, 1]
    g0 = step(a[:, 0], g1) + b[:, 0]
    torch.testing.assert_close(
        linear_scan_sequential(a, b, h0, reverse=True), torch.stack([g0, g1, g2], 1)
    )


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="2x2 block"):
        linear_scan(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="h0 must have shape"):
        linear_scan(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="backend"):
        linear_scan(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), backend="cuda")


# The Triton grid: every option at two shapes in fp32, bf16 at the odd shape, multi-group
# carries (chunk_size) at T=130, and the GPU's associative-scan tile path at a tiny shape
# (the interpreter runs its custom combine at ~45 µs per element).  fp64 runs the odd shape
# and two groups (T=70): the kernels, carries included, must accumulate in fp64, not fp32.  N=70 spans
# two unit blocks of the interpreter's BN=64; fp16 is a promised input dtype.
def _triton_case(shape, kind, dtype, direction, h0, chunk_size=None, assoc=None):
    return (shape, kind == "block2x2", dtype, direction == "rev", h0 == "h0", chunk_size, assoc)


KINDS, DIRECTIONS = ("diag", "block2x2"), ("fwd", "rev")
TRITON_CASES = {}
for kind in KINDS:
    for d in DIRECTIONS:
        for sid in ("B1-T1-N4", "B2-T63-N33"):
            for h in ("no_h0", "h0"):
                TRITON_CASES[f"{sid}-{kind}-{d}-{h}-fp32"] = _triton_case(
                    SHAPES[sid], kind, torch.float32, d, h
                )
        TRITON_CASES[f"B2-T63-N33-{kind}-{d}-h0-bf16"] = _triton_case(
            SHAPES["B2-T63-N33"], kind, torch.bfloat16, d, "h0"
        )
        TRITON_CASES[f"B3-T130-N5-{kind}-{d}-h0-chunk64"] = _triton_case(
            SHAPES["B3-T130-N5"], kind, torch.float32, d, "h0", chunk_size=64
        )
        TRITON_CASES[f"B1-T19-N3-{kind}-{d}-h0-assoc-chunk8"] = _triton_case(
            (1, 19, 3), kind, torch.float32, d, "h0", chunk_size=8, assoc=True
        )
        TRITON_CASES[f"B2-T63-N33-{kind}-{d}-h0-fp64"] = _triton_case(
            SHAPES["B2-T63-N33"], kind, torch.float64, d, "h0"
        )
        TRITON_CASES[f"B1-T70-N5-{kind}-{d}-h0-chunk64-fp64"] = _triton_case(
            (1, 70, 5), kind, torch.float64, d, "h0", chunk_size=64
        )
    TRITON_CASES[f"B1-T5-N70-{kind}-fwd-h0-fp32"] = _triton_case(
        (1, 5, 70), kind, torch.float32, "fwd", "h0"
    )
    TRITON_CASES[f"B2-T63-N33-{kind}-fwd-h0-fp16"] = _triton_case(
        SHAPES["B2-T63-N33"], kind, torch.float16, "fwd", "h0"
    )


@pytest.mark.parametrize(
    "shape, block, dtype, reverse, with_h0, chunk_size, assoc",
    TRITON_CASES.values(),
    ids=TRITON_CASES.keys(),
)
def test_triton_scan_matches_sequential(
    shape, block, dtype, reverse, with_h0, chunk_size, assoc, device
):
    from paralab.kernels.scan.triton import linear_scan_triton

    a, b, h0 = make_inputs(shape, block, dtype, with_h0, device)
    out = linear_scan_triton(a, b, h0, reverse, chunk_size=chunk_size, use_associative_scan=assoc)
    assert out.dtype == dtype and out.shape == b.shape
    leaves = [x for x in (a, b, h0) if x is not None]
    ref_leaves = [x.detach().double().cpu().requires_grad_() for x in leaves]
    ref = linear_scan_sequential(
        ref_leaves[0], ref_leaves[1], ref_leaves[2] if with_h0 else None, reverse
    )
    assert_close("h", out, ref, dtype, shape[1])
    grad_out = torch.randn(b.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(
        out, leaves, grad_out.to(device=device, dtype=dtype), materialize_grads=True
    )
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.double(), materialize_grads=True)
    for name, g, rg in zip(("grad_a", "grad_b", "grad_h0"), grads, ref_grads):
        assert g.dtype == dtype
        assert_close(name, g, rg, dtype, shape[1])


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("block", [False, True], ids=["diag", "block2x2"])
@pytest.mark.parametrize("backend", ["sequential", "torch", "triton"])
def test_empty_sequence(backend, block, reverse, device):
    """T = 0: an empty h, and zero (not uninitialised) gradients, h0's included."""
    a, b, h0 = make_inputs((2, 0, 3), block, torch.float32, True, device)
    out = linear_scan(a, b, h0, reverse=reverse, backend=backend)
    assert out.shape == b.shape and out.dtype == b.dtype
    grads = torch.autograd.grad(out, (a, b, h0), torch.ones_like(out), materialize_grads=True)
    for x, g in zip((a, b, h0), grads):
        assert g.shape == x.shape and torch.equal(g, torch.zeros_like(x))


@pytest.mark.parametrize("backend", ["sequential", "torch", "triton"])
def test_2x2_scan_ignores_bf16_autocast(backend, device):
    """Autocast runs matmuls in bf16, also on fp32 inputs; the 2×2 products must not be
    matmuls, or an fp32 scan (and its adjoint, run inside the training loop's autocast)
    silently loses 16 bits."""
    a, b, h0 = make_inputs((2, 37, 5), True, torch.float32, True, device)
    g = torch.randn(b.shape, generator=torch.Generator().manual_seed(1)).to(b)

    def run():
        out = linear_scan(a, b, h0, backend=backend)
        return (out, *torch.autograd.grad(out, (a, b, h0), g))

    want = run()
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        got = run()
    for name, x, y in zip(("h", "grad_a", "grad_b", "grad_h0"), got, want):
        assert x.dtype == torch.float32
        assert_close(name, x, y, torch.float32)


def test_triton_scan_is_differentiable_once(device):
    """The backward is a kernel, not a graph: double backward must raise, not return a
    silently wrong (or missing) second derivative."""
    from paralab.kernels.scan.triton import linear_scan_triton

    a, b, h0 = make_inputs((1, 9, 4), False, torch.float32, True, device)
    out = linear_scan_triton(a, b, h0)
    (grad_a,) = torch.autograd.grad(out.square().sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_a.sum().backward()


def test_triton_backend_through_linear_scan(device):
    a, b, h0 = make_inputs((2, 40, 6), False, torch.float32, True, device)
    torch.testing.assert_close(
        linear_scan(a, b, h0, backend="triton"), linear_scan(a, b, h0, backend="sequential")
    )


def test_fresh_allocations_are_nan():
    """The autouse fixture is active: an output a kernel forgets to write stays NaN."""
    assert torch.empty(3).isnan().all()
    assert torch.empty_like(torch.zeros(2, 2)).isnan().all()


def test_a_batch_past_the_grid_limit_says_to_split_it():
    from paralab.kernels.scan.triton import MAX_GRID_YZ, scan_launch_config

    scan_launch_config(MAX_GRID_YZ, 8, 4, False, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"batch 65536 is more sequences .* split the batch"):
        scan_launch_config(MAX_GRID_YZ + 1, 8, 4, False, torch.device("cpu"))
