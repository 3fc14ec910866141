"""Cells by name, so that ``model.cell: <name>`` in a YAML finds them.

Built-in cells register themselves when their module is imported; :func:`get_cell` imports
the one it is asked for, so that naming a cell (a config check, a CLI start) costs no import
and no Jacobian check of the others.  A custom cell registers with
``register_cell("name", MyCell)`` (see :mod:`paralab.models.leaky_tanh` for a worked example).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from paralab.models.cell import RecurrentCell

_CELLS: dict[str, type[RecurrentCell]] = {}
# Built-in cell name -> the module of ``paralab.models`` that registers it.
_BUILTINS = {"paragru": "paragru", "paralstm": "paralstm", "linear": "linear_cell",
             "leaky_tanh": "leaky_tanh"}


def register_cell(name: str, cls: type[RecurrentCell]) -> type[RecurrentCell]:
    """Make ``cls`` available as ``model.cell: name``; returns ``cls``.

    A small instance's Jacobian is checked against its declared ``jacobian_structure`` (and
    a hand-written ``transition_and_jacobian`` against autograd) first: either wrong would
    train on silently wrong gradients.
    """
    import torch

    from paralab.models.jacobian import check_jacobian

    existing = _CELLS.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"cell {name!r} is already registered to {existing.__qualname__}")
    if existing is None:
        # Registration happens at import, often inside build_model after the run seeded torch:
        # the check's random draws must leave the global RNG where they found it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            check_jacobian(cls(2, 4), name)
    _CELLS[name] = cls
    return cls


def get_cell(name: str) -> type[RecurrentCell]:
    """The cell class registered as ``name``."""
    if name not in _CELLS and name in _BUILTINS:
        importlib.import_module(f"paralab.models.{_BUILTINS[name]}")
    if name not in _CELLS:
        raise KeyError(f"unknown cell {name!r}; registered: {registered_cells()}")
    return _CELLS[name]


def registered_cells() -> list[str]:
    """Names of every registered cell, built-in ones included (not imported here)."""
    return sorted(_CELLS.keys() | _BUILTINS.keys())
