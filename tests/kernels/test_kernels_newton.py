"""Newton kernels: cells against autograd, the PyTorch reference and the fused Triton kernels
against the sequential loop and against each other, on outputs and on all gradients."""

from __future__ import annotations

import pytest
import torch
from kernels_tolerance import assert_close

from paralab.kernels.newton import (
    gru_cell,
    gru_cell_jacobian,
    gru_cell_vjp,
    gru_sequential,
    lstm_cell,
    lstm_cell_jacobian,
    lstm_cell_vjp,
    lstm_sequential,
    newton_gru_reference,
    newton_lstm_reference,
)

# |A|, |C| <= 0.5, as the paper clips them: Newton then converges to fp32 precision in
# about 5 iterations at these lengths (3 is the paper's default for training).
A_BOUND = 0.5
CONVERGED_ITERS = 6


def make_cell_inputs(cell, B, T, N, dtype, with_state, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(B, T, 3, N, generator=gen)
    A = (torch.rand(3, N, generator=gen) * 2 - 1) * A_BOUND
    C = (torch.rand(2, N, generator=gen) * 2 - 1) * A_BOUND if cell == "lstm" else None
    h0 = torch.randn(B, N, generator=gen) if with_state else None
    c0 = torch.randn(B, N, generator=gen) if (with_state and cell == "lstm") else None
    cast = lambda x: None if x is None else x.to(device=device, dtype=dtype).requires_grad_()
    return {"p": cast(p), "A": cast(A), "C": cast(C), "h0": cast(h0), "c0": cast(c0)}


def leaves_of(inputs):
    return {k: v for k, v in inputs.items() if v is not None}


def run(cell, impl, inputs, newton_iters=3, **kw):
    """Outputs (h, and c for the LSTM) of one implementation; impl is 'sequential',
    'reference' or 'fused'."""
    p, A, C, h0, c0 = (inputs[k] for k in ("p", "A", "C", "h0", "c0"))
    if impl == "sequential":
        return (gru_sequential(p, A, h0),) if cell == "gru" else lstm_sequential(p, A, C, h0, c0)
    if impl == "reference":
        if cell == "gru":
            return (newton_gru_reference(p, A, h0, newton_iters),)
        return newton_lstm_reference(p, A, C, h0, c0, newton_iters, return_cell=True)
    from paralab.kernels.newton import newton_gru_fused, newton_lstm_fused

    if cell == "gru":
        return (newton_gru_fused(p, A, h0, newton_iters, **kw),)
    return newton_lstm_fused(p, A, C, h0, c0, newton_iters, return_cell=True, **kw)


def outputs_and_grads(cell, impl, inputs, newton_iters=3, **kw):
    outs = run(cell, impl, inputs, newton_iters, **kw)
    gen = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(o.shape, generator=gen).to(o) for o in outs]
    leaves = leaves_of(inputs)
    grads = torch.autograd.grad(outs, list(leaves.values()), cotangents)
    return dict(zip(("h", "c"), outs)), dict(zip((f"grad_{k}" for k in leaves), grads))


def as_fp64(inputs):
    return {
        k: None if v is None else v.detach().double().cpu().requires_grad_()
        for k, v in inputs.items()
    }


# ---------------------------------------------------------------------------------------------
# Cells: explicit Jacobians and VJPs (what the kernels compute) against autograd.
# ---------------------------------------------------------------------------------------------


def test_gru_jacobian_and_vjp_match_autograd():
    x = make_cell_inputs("gru", 2, 5, 6, torch.float64, True)
    p, A, h = x["p"], x["A"], torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    f, J = gru_cell_jacobian(p, A, h)
    torch.testing.assert_close(f, gru_cell(p, A, h))
    # The Jacobian is diagonal, so one JVP with ones recovers it.
    _, jvp = torch.func.jvp(lambda hh: gru_cell(p, A, hh), (h,), (torch.ones_like(h),))
    torch.testing.assert_close(J, jvp)
    lam = torch.randn_like(h)
    grad_p, grad_A, grad_h = gru_cell_vjp(p, A, h, lam)
    want = torch.autograd.grad(gru_cell(p, A, h), (p, A, h), lam)
    torch.testing.assert_close(grad_p, want[0])
    torch.testing.assert_close(grad_A.sum(dim=(0, 1)), want[1])
    torch.testing.assert_close(grad_h, want[2])


def test_lstm_jacobian_and_vjp_match_autograd():
    x = make_cell_inputs("lstm", 2, 5, 6, torch.float64, True)
    p, A, C = x["p"], x["A"], x["C"]
    s = torch.randn(2, 5, 6, 2, dtype=torch.float64, requires_grad=True)
    f, J = lstm_cell_jacobian(p, A, C, s)
    torch.testing.assert_close(f, lstm_cell(p, A, C, s))
    for col in range(2):  # column j of each 2×2 block is the JVP along state component j
        e = torch.zeros_like(s)
        e[..., col] = 1
        _, jvp = torch.func.jvp(lambda ss: lstm_cell(p, A, C, ss), (s,), (e,))
        torch.testing.assert_close(J[..., col], jvp)
    lam = torch.randn_like(s)
    grad_p, grad_A, grad_C, grad_s = lstm_cell_vjp(p, A, C, s, lam)
    want = torch.autograd.grad(lstm_cell(p, A, C, s), (p, A, C, s), lam)
    torch.testing.assert_close(grad_p, want[0])
    torch.testing.assert_close(grad_A.sum(dim=(0, 1)), want[1])
    torch.testing.assert_close(grad_C.sum(dim=(0, 1)), want[2])
    torch.testing.assert_close(grad_s, want[3])


# ---------------------------------------------------------------------------------------------
# The PyTorch reference against the sequential loop.
# ---------------------------------------------------------------------------------------------

REFERENCE_SHAPES = {"B1-T1-N4": (1, 1, 4), "B2-T63-N33": (2, 63, 33), "B3-T130-N5": (3, 130, 5)}


@pytest.mark.parametrize("with_state", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["fp64", "fp32", "bf16"]
)
@pytest.mark.parametrize("shape", REFERENCE_SHAPES.values(), ids=REFERENCE_SHAPES.keys())
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reference_matches_sequential(cell, shape, dtype, with_state):
    inputs = make_cell_inputs(cell, *shape, dtype, with_state)
    outs, grads = outputs_and_grads(cell, "reference", inputs, CONVERGED_ITERS)
    # Ground truth: the loop in fp64 on the same (possibly bf16-rounded) inputs.
    want_outs, want_grads = outputs_and_grads(cell, "sequential", as_fp64(inputs))
    T = shape[1]
    for name in want_outs:
        assert outs[name].dtype == dtype
        assert_close(name, outs[name], want_outs[name], dtype, T)
    for name in want_grads:
        assert grads[name].dtype == dtype
        assert_close(name, grads[name], want_grads[name], dtype, T)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_newton_with_T_iterations_is_exact(cell):
    """After T iterations Newton has propagated the exact state through every step."""
    inputs = make_cell_inputs(cell, 2, 12, 5, torch.float64, True)
    inputs["A"] = (inputs["A"].detach() * 4).requires_grad_()  # far outside fast convergence
    newton = run(cell, "reference", inputs, newton_iters=12)
    exact = run(cell, "sequential", inputs)
    for got, want in zip(newton, exact):
        torch.testing.assert_close(got, want, atol=1e-13, rtol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reference_residuals_fall(cell):
    inputs = make_cell_inputs(cell, 2, 200, 16, torch.float64, False)
    p, A, C = inputs["p"], inputs["A"], inputs["C"]
    if cell == "gru":
        _, res = newton_gru_reference(p, A, newton_iters=6, return_residuals=True)
    else:
        _, res = newton_lstm_reference(p, A, C, newton_iters=6, return_residuals=True)
    assert res.shape == (6,)
    assert res[-1] < 1e-9 * res[0], f"residuals did not fall to machine precision: {res.tolist()}"


# ---------------------------------------------------------------------------------------------
# Fused Triton kernels against the reference (same computation, 3 iterations) and against
# the sequential loop (converged), on outputs and all gradients.
# ---------------------------------------------------------------------------------------------


def _fused_case(shape, dtype, with_state, chunk_size=None, assoc=None):
    return (shape, dtype, with_state, chunk_size, assoc)


FUSED_CASES = {
    "B1-T1-N4-fp32-h0": _fused_case((1, 1, 4), torch.float32, True),
    "B2-T63-N33-fp32-no_h0": _fused_case((2, 63, 33), torch.float32, False),
    "B2-T63-N33-fp32-h0": _fused_case((2, 63, 33), torch.float32, True),
    "B2-T63-N33-bf16-h0": _fused_case((2, 63, 33), torch.bfloat16, True),
    "B1-T130-N5-fp32-h0-chunk64": _fused_case((1, 130, 5), torch.float32, True, chunk_size=64),
    "B1-T19-N3-fp32-h0-assoc-chunk8": _fused_case((1, 19, 3), torch.float32, True, 8, True),
    # Two unit blocks (the interpreter's BN is 64), and fp16, a promised input dtype.
    "B1-T5-N70-fp32-h0": _fused_case((1, 5, 70), torch.float32, True),
    "B2-T20-N33-fp16-h0": _fused_case((2, 20, 33), torch.float16, True),
}
# Converged against the loop: fewer cases, since each runs the kernels twice as long.
SEQUENTIAL_CASES = {
    k: FUSED_CASES[k] for k in ("B1-T1-N4-fp32-h0", "B2-T63-N33-fp32-h0", "B2-T63-N33-bf16-h0")
}


@pytest.mark.parametrize(
    "shape, dtype, with_state, chunk_size, assoc", FUSED_CASES.values(), ids=FUSED_CASES.keys()
)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_matches_reference(cell, shape, dtype, with_state, chunk_size, assoc, device):
    """Same computation as the PyTorch reference, iteration for iteration."""
    inputs = make_cell_inputs(cell, *shape, dtype, with_state, device)
    kw = dict(chunk_size=chunk_size, use_associative_scan=assoc)
    outs, grads = outputs_and_grads(cell, "fused", inputs, 3, **kw)
    want_outs, want_grads = outputs_and_grads(cell, "reference", inputs, 3)
    for name in want_outs:
        assert outs[name].dtype == dtype
        assert_close(name, outs[name], want_outs[name], dtype, shape[1])
    for name in want_grads:
        assert grads[name].dtype == dtype
        assert_close(name, grads[name], want_grads[name], dtype, shape[1])


@pytest.mark.parametrize(
    "shape, dtype, with_state, chunk_size, assoc",
    SEQUENTIAL_CASES.values(),
    ids=SEQUENTIAL_CASES.keys(),
)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_matches_sequential(cell, shape, dtype, with_state, chunk_size, assoc, device):
    """Converged, the fused solve is the sequential cell (fp64 loop on the same inputs)."""
    inputs = make_cell_inputs(cell, *shape, dtype, with_state, device)
    kw = dict(chunk_size=chunk_size, use_associative_scan=assoc)
    outs, grads = outputs_and_grads(cell, "fused", inputs, CONVERGED_ITERS, **kw)
    want_outs, want_grads = outputs_and_grads(cell, "sequential", as_fp64(inputs))
    for name in want_outs:
        assert_close(name, outs[name], want_outs[name], dtype, shape[1])
    for name in want_grads:
        assert_close(name, grads[name], want_grads[name], dtype, shape[1])


@pytest.mark.parametrize("chunk_size", [None, 64], ids=["one_launch", "chunked"])
@pytest.mark.parametrize("newton_iters", [1, 2, 5])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_iteration_count(cell, newton_iters, chunk_size, device):
    """Any iteration count, odd or even (the iterate alternates between two buffers), both in
    the single-launch solve and in the per-iteration chunked path."""
    from paralab.kernels.newton.common import newton_launch_config

    inputs = make_cell_inputs(cell, 2, 150, 6, torch.float32, True, device)
    cfg = newton_launch_config(inputs["p"], chunk_size, None)
    assert (cfg["G"] == 1) == (chunk_size is None)
    got = run(cell, "fused", inputs, newton_iters, chunk_size=chunk_size)
    want = run(cell, "reference", inputs, newton_iters)
    for name, a, b in zip(("h", "c"), got, want):
        assert_close(name, a, b, torch.float32, 150)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_residuals_match_reference(cell, device):
    from paralab.kernels.newton import newton_gru_fused, newton_lstm_fused

    x = make_cell_inputs(cell, 2, 40, 6, torch.float32, True, device)
    p, A, C, h0, c0 = (x[k] for k in ("p", "A", "C", "h0", "c0"))
    if cell == "gru":
        _, res = newton_gru_fused(p, A, h0, newton_iters=4, return_residuals=True)
        _, want = newton_gru_reference(p, A, h0, newton_iters=4, return_residuals=True)
    else:
        _, res = newton_lstm_fused(p, A, C, h0, c0, newton_iters=4, return_residuals=True)
        _, want = newton_lstm_reference(p, A, C, h0, c0, newton_iters=4, return_residuals=True)
    assert res.shape == (4,) and res.dtype == torch.float32
    torch.testing.assert_close(res, want, atol=1e-6, rtol=1e-4)
    assert res[-1] < 1e-3 * res[0]


def test_fused_lstm_gradient_through_h_only(device):
    """Only h is used downstream: the cell-state cotangent is absent, not zero-filled."""
    from paralab.kernels.newton import newton_lstm_fused

    x = make_cell_inputs("lstm", 2, 30, 5, torch.float32, True, device)
    leaves = leaves_of(x)
    h = newton_lstm_fused(x["p"], x["A"], x["C"], x["h0"], x["c0"])
    g = torch.randn_like(h)
    grads = torch.autograd.grad(h, list(leaves.values()), g)
    h_ref = newton_lstm_reference(x["p"], x["A"], x["C"], x["h0"], x["c0"])
    want = torch.autograd.grad(h_ref, list(leaves.values()), g)
    for name, got, ref in zip(leaves, grads, want):
        assert_close(f"grad_{name}", got, ref, torch.float32, 30)


@pytest.mark.parametrize("B, T, N", [(2, 0, 70), (0, 5, 7), (2, 5, 0)], ids=["T=0", "B=0", "N=0"])
@pytest.mark.parametrize("impl", ["sequential", "reference", "fused"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_empty_input(cell, impl, B, T, N, device):
    """An empty T, B or N: empty outputs, and zero (not uninitialised) gradients for every
    input."""
    inputs = make_cell_inputs(cell, B, T, N, torch.float32, True, device)
    outs = run(cell, impl, inputs)
    assert [o.shape for o in outs] == [(B, T, N)] * len(outs)
    leaves = leaves_of(inputs)
    if not any(o.requires_grad for o in outs):  # the loop's empty output is a constant
        return
    grads = torch.autograd.grad(
        outs, list(leaves.values()), [torch.ones_like(o) for o in outs],
        allow_unused=True, materialize_grads=True,
    )  # fmt: skip
    for (name, leaf), grad in zip(leaves.items(), grads):
        assert torch.equal(grad, torch.zeros_like(leaf)), f"grad_{name} is not zero"


@pytest.mark.parametrize("shape", [(2, 0, 5), (0, 5, 5), (2, 5, 0)], ids=["T=0", "B=0", "N=0"])
@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_empty_input_residuals(cell, impl, shape, device):
    """An empty input has a zero residual at every one of the ``newton_iters`` iterates."""
    import paralab.kernels.newton as newton

    x = make_cell_inputs(cell, *shape, torch.float32, False, device)
    args = (x["p"], x["A"]) if cell == "gru" else (x["p"], x["A"], x["C"])
    _, res = getattr(newton, f"newton_{cell}_{impl}")(*args, newton_iters=3, return_residuals=True)
    assert torch.equal(res.cpu(), torch.zeros(3))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_is_differentiable_once(cell, device):
    """The backward is a kernel: double backward must raise, not give a wrong answer."""
    inputs = make_cell_inputs(cell, 1, 6, 4, torch.float32, True, device)
    (h, *_), p = run(cell, "fused", inputs), inputs["p"]
    (grad_p,) = torch.autograd.grad(h.square().sum(), p, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_p.sum().backward()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_rejects_fp64(cell):
    """The kernels compute in fp32: fp64 input is refused, not silently demoted."""
    inputs = make_cell_inputs(cell, 1, 4, 4, torch.float64, True)
    with pytest.raises(ValueError, match="fp64"):
        run(cell, "fused", inputs)


def test_fused_rejects_bad_shapes():
    from paralab.kernels.newton import newton_gru_fused, newton_lstm_fused

    with pytest.raises(ValueError, match="expected p"):
        newton_gru_fused(torch.zeros(1, 2, 4, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="h0 must have shape"):
        newton_gru_fused(torch.zeros(1, 2, 3, 4), torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="C"):
        newton_lstm_fused(torch.zeros(1, 2, 3, 4), torch.zeros(3, 4), torch.zeros(3, 4))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reference_on_triton_scans_matches_torch_scans(cell, device):
    """PyTorch Jacobians with Triton scans (the paper's 'CUDA reduction' variant)."""
    x = make_cell_inputs(cell, 2, 30, 5, torch.float32, True, device)
    p, A, C, h0, c0 = (x[k] for k in ("p", "A", "C", "h0", "c0"))
    leaves = list(leaves_of(x).values())
    if cell == "gru":
        run_with = lambda backend: newton_gru_reference(p, A, h0, scan_backend=backend)
    else:
        run_with = lambda backend: newton_lstm_reference(p, A, C, h0, c0, scan_backend=backend)
    got, want = run_with("triton"), run_with("torch")
    assert_close("h", got, want, torch.float32, 30)
    g = torch.randn_like(got)
    for name, a, b in zip(
        leaves_of(x), torch.autograd.grad(got, leaves, g), torch.autograd.grad(want, leaves, g)
    ):
        assert_close(f"grad_{name}", a, b, torch.float32, 30)
