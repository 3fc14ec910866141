"""The autograd-derived Jacobian of the custom-cell API equals the hand-written ones, and
custom cells register by name."""

from __future__ import annotations

import subprocess
import sys

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


def _tanh_cell(**members):
    """A one-gate diagonal cell h' = tanh(p + A·h), with ``members`` overriding its methods."""
    attrs = {"num_gates": 1, "recurrent_rows": {"A": 1},
             "transition": lambda self, p, h: torch.tanh(p[..., 0, :] + self.A[0] * h)}
    return type("TanhCell", (RecurrentCell,), {**attrs, **members})


def test_a_cell_that_couples_units_across_its_declared_structure_is_refused(monkeypatch):
    """Newton uses only the declared diagonal: it still converges, on wrong gradients."""
    monkeypatch.setattr(registry, "_CELLS", dict(registry._CELLS))
    coupled = _tanh_cell(transition=lambda self, p, h: torch.tanh(p[..., 0, :] + h.roll(1, -1)))
    with pytest.raises(ValueError, match="'coupled' declares jacobian_structure='diagonal'.*another unit"):
        register_cell("coupled", coupled)
    assert "coupled" not in registry._CELLS


def test_a_wrong_hand_written_jacobian_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "_CELLS", dict(registry._CELLS))

    def transition_and_jacobian(self, p, h):
        out = torch.tanh(p[..., 0, :] + self.A[0] * h)
        return out, (1 - out) * self.A[0]  # should be 1 - out²

    with pytest.raises(ValueError, match="'wrong_jac': its transition_and_jacobian differs"):
        register_cell("wrong_jac", _tanh_cell(transition_and_jacobian=transition_and_jacobian))
    register_cell("right_jac", _tanh_cell())  # the same cell with its Jacobian derived


def test_a_parameter_outside_recurrent_rows_gets_its_gradient():
    """A transition may read parameters that are not bounded recurrent rows (a gain, a
    submodule); Newton's adjoint must route their gradients as the sequential loop does."""

    class GainCell(_tanh_cell()):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.gain = torch.nn.Parameter(torch.full((self.hidden,), 1.5))
            self.mix = torch.nn.Linear(self.hidden, self.hidden, bias=False)

        def transition(self, p, h):
            return torch.tanh(self.gain * p[..., 0, :] + self.A[0] * h) + 0.0 * self.mix.weight.sum()

    torch.manual_seed(0)
    cell = GainCell(4, 6).double()
    assert cell.recurrent_parameter_names() == ["A", "gain", "mix.weight"]
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    grads = {}
    for mode in ("sequential", "parallel"):
        cell.zero_grad()
        cell(x, mode=mode)[0].square().sum().backward()
        grads[mode] = {name: param.grad.clone() for name, param in cell.named_parameters()}
    for name, want in grads["sequential"].items():
        torch.testing.assert_close(grads["parallel"][name], want, msg=name)
    assert grads["parallel"]["gain"].abs().sum() > 0
    cell.constrain_()
    assert (cell.gain == 1.5).all(), "only recurrent_rows are bounded"


def test_naming_a_cell_imports_only_that_cell():
    """A config check lists cell names without importing (and Jacobian-checking) every built-in
    cell: `leaky_tanh`'s check alone pulls in torch._dynamo, ~2 s of every CLI start."""
    code = (
        "import sys; from paralab.models.registry import get_cell, registered_cells; "
        "assert 'leaky_tanh' in registered_cells(); "
        "assert not any(m in sys.modules for m in "
        "('paralab.models.leaky_tanh', 'paralab.models.paragru', 'torch._dynamo')); "
        "get_cell('paragru'); assert 'paralab.models.leaky_tanh' not in sys.modules; "
        "assert get_cell('linear').__name__ == 'LinearCell'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
