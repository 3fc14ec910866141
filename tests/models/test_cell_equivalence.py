"""``parallel`` (Newton + PyTorch scan) equals ``sequential`` on outputs, final states and
every gradient (x, h0, A, B, b, C), over a grid of shapes, for every built-in cell."""

from __future__ import annotations

import pytest
import torch
from models_testing import CONVERGED_ITERS, assert_close, make_cell, random_state, tolerance

CELLS = ("paragru", "paralstm", "linear", "leaky_tanh")
DTYPES = {"fp64": torch.float64, "fp32": torch.float32}
BATCHES = (1, 3)
SEQ_LENS = (1, 2, 7, 64, 1000)
WIDTHS = ((1, 1), (8, 1), (8, 2), (33, 1))  # (N, H): H divides N, odd N, one and two heads


def _grid():
    for cell in CELLS:
        for dtype in DTYPES:
            for batch in BATCHES:
                for seq_len in SEQ_LENS:
                    for hidden, heads in WIDTHS:
                        case_id = f"{cell}-{dtype}-B{batch}-T{seq_len}-N{hidden}-H{heads}"
                        yield pytest.param(cell, dtype, batch, seq_len, hidden, heads, id=case_id)


def _run(cell, x, h0, mode, weights):
    """Outputs, final state and the gradients of a loss that reads both."""
    y, final = cell(x, h0, mode=mode)
    loss = (y * weights[0]).sum() + (final * weights[1]).sum()
    grads = torch.autograd.grad(loss, [x, h0, *cell.parameters()])
    return y.detach(), final.detach(), grads


def test_paralstm_parallel_ignores_bf16_autocast():
    """The training loop runs forward and backward inside bf16 autocast.  The recurrence gets
    fp32 p (the cell casts the projection up) and must stay fp32 throughout: autocast once
    demoted the 2×2 scan products, in the Newton solve and in the adjoint, to bf16 (grad of
    A off by 3e-4 at T=512).  p is fed directly, so the bf16 projection is out of the
    comparison."""
    torch.manual_seed(11)
    seq_len = 512
    cell = make_cell(
        "paralstm", 8, 16, 2, torch.float32, newton_iters=CONVERGED_ITERS[torch.float32]
    )
    p = torch.randn(2, seq_len, 3, 16, requires_grad=True)
    h0 = random_state(cell, 2, torch.float32).requires_grad_()
    weights = torch.randn(2, seq_len, 16, 2)

    def run(mode):
        states = cell.apply_recurrence(p, h0, mode)
        grads = torch.autograd.grad((states * weights).sum(), [p, h0, cell.A, cell.C])
        return states.detach(), grads

    want_states, want_grads = run("sequential")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_states, got_grads = run("parallel")
    assert got_states.dtype == torch.float32 and not cell.last_newton_stats.fell_back
    assert_close(got_states, want_states, tolerance(torch.float32, seq_len), "states")
    for name, got, want in zip(("p", "h0", "A", "C"), got_grads, want_grads):
        assert_close(got, want, tolerance(torch.float32, seq_len, "grad"), f"grad of {name}")


@pytest.mark.parametrize("cell_name, dtype_name, batch, seq_len, hidden, heads", list(_grid()))
def test_parallel_matches_sequential(cell_name, dtype_name, batch, seq_len, hidden, heads):
    torch.manual_seed(seq_len * 1000 + hidden * 10 + heads + batch)
    dtype = DTYPES[dtype_name]
    d_in = 6  # divisible by every H in the grid
    cell = make_cell(cell_name, d_in, hidden, heads, dtype, newton_iters=CONVERGED_ITERS[dtype])
    x = torch.randn(batch, seq_len, d_in, dtype=dtype, requires_grad=True)
    h0 = random_state(cell, batch, dtype).requires_grad_()
    y_shape = (batch, seq_len, hidden)
    weights = (torch.randn(y_shape, dtype=dtype), torch.randn(h0.shape, dtype=dtype))

    want_y, want_final, want_grads = _run(cell, x, h0, "sequential", weights)
    got_y, got_final, got_grads = _run(cell, x, h0, "parallel", weights)

    assert cell.newton_fallbacks == 0, "Newton fell back: the comparison would be vacuous"
    assert_close(got_y, want_y, tolerance(dtype, seq_len), "output y")
    assert_close(got_final, want_final, tolerance(dtype, seq_len), "final state")
    names = ["x", "h0", *(name for name, _ in cell.named_parameters())]
    for name, got, want in zip(names, got_grads, want_grads):
        assert_close(got, want, tolerance(dtype, seq_len, "grad"), f"grad of {name}")


def test_heads_that_do_not_divide_the_width_are_refused():
    with pytest.raises(ValueError, match="heads=2 must divide d_in=6 and hidden=33"):
        make_cell("paragru", 6, 33, 2, torch.float32, newton_iters=3)
