"""Cells by name, so that ``model.cell: <name>`` in a YAML finds them.

Built-in cells register themselves when their module is imported; :func:`get_cell` imports
them on first use.  A custom cell registers with ``register_cell("name", MyCell)`` (see
:mod:`paralab.models.leaky_tanh` for a worked example).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from paralab.models.cell import RecurrentCell

_CELLS: dict[str, type[RecurrentCell]] = {}
_BUILTIN_MODULES = ("paragru", "paralstm", "linear_cell", "leaky_tanh")


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
    _load_builtins()
    if name not in _CELLS:
        raise KeyError(f"unknown cell {name!r}; registered: {sorted(_CELLS)}")
    return _CELLS[name]


def registered_cells() -> list[str]:
    """Names of every registered cell."""
    _load_builtins()
    return sorted(_CELLS)


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"paralab.models.{module}")
