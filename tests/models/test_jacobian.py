"""The autograd-derived Jacobian of the custom-cell API equals the hand-written ones, and
custom cells register by name."""

from __future__ import annotations

import pytest
import torch

from paralab.models import registry
from paralab.models.cell import RecurrentCell
from paralab.models.config import ModelConfig
from paralab.models.jacobian import derive_transition_and_jacobian
from paralab.models.lm import build_model
from paralab.models.registry import get_cell, register_cell, registered_cells


@pytest.mark.parametrize("cell_name", ["paragru", "paralstm", "linear"])
@pytest.mark.parametrize("weight_scale", [0.5, 3.0])
def test_derived_jacobian_equals_hand_written(cell_name, weight_scale):
    torch.manual_seed(0)
    cls = get_cell(cell_name)
    cell = cls(6, 10, 2).double()
    with torch.no_grad():
        for name in cell.recurrent_parameter_names():
            getattr(cell, name).uniform_(-weight_scale, weight_scale)
    p = 2 * torch.randn(3, 7, cls.num_gates, 10, dtype=torch.float64)
    h = torch.randn(cell.init_state(3 * 7).shape, dtype=torch.float64).reshape(
        3, 7, *cell.init_state(1).shape[1:]
    )
    want_f, want_jac = cell.transition_and_jacobian(p, h)  # hand-written
    got_f, got_jac = derive_transition_and_jacobian(cell.transition, p, h, cls.jacobian_structure)
    torch.testing.assert_close(got_f, want_f, rtol=0, atol=1e-14)
    torch.testing.assert_close(got_jac, want_jac, rtol=0, atol=1e-13)


def test_block_jacobian_matches_dense_autograd():
    """The 2×2 layout is [.., unit, output component, input component]."""
    torch.manual_seed(1)
    cell = get_cell("paralstm")(2, 3, 1).double()
    p = torch.randn(3, 3, dtype=torch.float64)  # one token: [G, N]
    state = torch.randn(3, 2, dtype=torch.float64)
    dense = torch.autograd.functional.jacobian(lambda s: cell.transition(p, s), state)
    _, blocks = cell.transition_and_jacobian(p, state)
    for unit in range(3):
        torch.testing.assert_close(blocks[unit], dense[unit, :, unit, :])


def test_custom_cell_registers_and_builds_from_config():
    assert {"paragru", "paralstm", "linear", "leaky_tanh"} <= set(registered_cells())
    model = build_model(ModelConfig(cell="leaky_tanh", d_model=8, n_layers=1, heads=2))
    assert type(model.cells()[0]).__name__ == "LeakyTanhCell"


def test_register_cell_refuses_a_second_class_under_one_name(monkeypatch):
    monkeypatch.setattr(registry, "_CELLS", dict(registry._CELLS))  # leave no trace

    class Other(RecurrentCell):
        num_gates = 1
        recurrent_rows = {}

        def transition(self, p, h):
            return torch.tanh(p[..., 0, :] + h)

    with pytest.raises(ValueError, match="already registered"):
        register_cell("paragru", Other)
    register_cell("test_only_tanh", Other)
    assert get_cell("test_only_tanh") is Other
    with pytest.raises(KeyError, match="unknown cell"):
        get_cell("no_such_cell")
