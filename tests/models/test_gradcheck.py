"""``torch.autograd.gradcheck`` of the adjoint backward on tiny fp64 cases.

Newton runs T iterations, so its forward is exact and finite differences see the same
function the adjoint differentiates.  ``fast_mode`` checks a random projection of the
Jacobian, which keeps the many forward evaluations affordable."""

from __future__ import annotations

import pytest
import torch
from models_testing import make_cell, random_state

from paralab.models.registry import registered_cells


@pytest.mark.parametrize("cell_name", registered_cells())
@pytest.mark.parametrize("heads", [1, 2])
def test_gradcheck_parallel(cell_name, heads):
    torch.manual_seed(heads)
    seq_len = 5
    cell = make_cell(cell_name, 4, 4, heads, torch.float64, newton_iters=seq_len)
    names = [name for name, _ in cell.named_parameters()]
    x = torch.randn(2, seq_len, 4, dtype=torch.float64, requires_grad=True)
    h0 = random_state(cell, 2, torch.float64).requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]

    def run(x, h0, *params):
        y, final = torch.func.functional_call(
            cell, dict(zip(names, params)), (x, h0), {"mode": "parallel"}
        )
        return y, final

    assert torch.autograd.gradcheck(run, (x, h0, *params), eps=1e-6, atol=1e-8, fast_mode=True)


@pytest.mark.parametrize("cell_name", ["paragru", "paralstm"])
def test_double_backward_raises(cell_name):
    """The adjoint backward is not itself differentiated: a second derivative must fail
    loudly instead of coming back silently wrong."""
    torch.manual_seed(0)
    cell = make_cell(cell_name, 4, 4, 1, torch.float64)
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    y, _ = cell(x, mode="parallel")
    (grad_x,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_x.sum().backward()
