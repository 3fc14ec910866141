"""Newton's method over the sequence for ParaGRU (diagonal Jacobian) and ParaLSTM (2×2 block).

- :mod:`.cells`: the cell equations, explicit Jacobians and VJPs, and the sequential loops
  (ground truth);
- :mod:`.reference`: Newton with PyTorch scans and an adjoint backward (the spec of the
  fused kernels);
- :mod:`.gru_triton`, :mod:`.lstm_triton`: fused Triton kernels that compute Jacobians and
  residuals inside the scan, forward and backward.
"""

from paralab.kernels.newton.cells import (
    gru_cell,
    gru_cell_jacobian,
    gru_cell_vjp,
    gru_sequential,
    lstm_cell,
    lstm_cell_jacobian,
    lstm_cell_vjp,
    lstm_sequential,
)
from paralab.kernels.newton.reference import newton_gru_reference, newton_lstm_reference

__all__ = [
    "gru_cell",
    "gru_cell_jacobian",
    "gru_cell_vjp",
    "gru_sequential",
    "lstm_cell",
    "lstm_cell_jacobian",
    "lstm_cell_vjp",
    "lstm_sequential",
    "newton_gru_fused",
    "newton_gru_reference",
    "newton_lstm_fused",
    "newton_lstm_reference",
]


def __getattr__(name):
    # The fused kernels import Triton, which must see TRITON_INTERPRET before it decorates;
    # load them on first use so importing the references never pulls Triton in.
    if name == "newton_gru_fused":
        from paralab.kernels.newton.gru_triton import newton_gru_fused

        return newton_gru_fused
    if name == "newton_lstm_fused":
        from paralab.kernels.newton.lstm_triton import newton_lstm_fused

        return newton_lstm_fused
    raise AttributeError(name)
