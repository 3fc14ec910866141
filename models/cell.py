"""The recurrent cell framework: input projection, transition, modes, inference.

A cell has state h (``[.., N]`` for a diagonal Jacobian, ``[.., N, 2]`` for 2×2 blocks) and
a transition h_t = f(p_t, h_{t-1}) whose input is a multi-head projection of x:

    p = B x + b,   B: [H, D_in/H, G, N/H],   b: [G, N],   p: [.., G, N]

Head k maps its slice of x (D_in/H inputs) to the k-th slice of N/H units of every gate g,
so ``p[.., g, k·N/H + j] = Σ_i x[.., k·D_in/H + i] · B[k, i, g, j] + b[g, k·N/H + j]``.

The recurrent weights are diagonal, rows of N (``recurrent_rows`` declares them, e.g.
``A: [3, N]``), initialised truncated-normal and kept in [-a_bound, a_bound]:
:meth:`RecurrentCell.constrain_` clamps them, and the training loop calls it (through the
model's ``constrain_``) after every ``optimizer.step()``.  Newton converges fast only while
the bound holds.

Writing a cell: subclass :class:`RecurrentCell`, set ``num_gates``, ``jacobian_structure``
and ``recurrent_rows``, implement :meth:`transition`.  :meth:`transition_and_jacobian` is
derived by autograd (:mod:`paralab.models.jacobian`) unless you write it by hand for speed.
Register the class with :func:`paralab.models.registry.register_cell` so that
``model.cell: <name>`` finds it.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from paralab.models.adjoint import NewtonRecurrence
from paralab.models.config import ModelConfig
from paralab.models.jacobian import STRUCTURES, derive_transition_and_jacobian
from paralab.models.modes import check_mode, resolve_mode
from paralab.models.newton import (
    NewtonSettings,
    NewtonStats,
    final_residual,
    rejected,
    sequential_solve,
)

_SCAN_BACKENDS = {"parallel": "torch", "triton": "triton"}


class RecurrentCell(nn.Module):
    """Base class of every cell; subclasses define the transition f(p, h)."""

    num_gates: ClassVar[int] = 3
    """G: gates (rows of p) per unit."""
    jacobian_structure: ClassVar[str] = "diagonal"
    """``diagonal`` (state [.., N]) or ``block2`` (state [.., N, 2], Jacobian [.., N, 2, 2])."""
    recurrent_rows: ClassVar[dict[str, int]] = {}
    """Name → rows of each recurrent weight, shape [rows, N], initialised here and bounded by
    a_bound. A parameter the transition reads without that init and bound, the subclass
    registers and initialises itself after ``super().__init__()``; it gets its gradient too."""
    exact_newton_iters: ClassVar[int | None] = None
    """Iterations after which Newton is exact (1 for a linear cell); caps ``newton_iters``."""

    def __init__(
        self,
        d_in: int,
        hidden: int,
        heads: int = 1,
        *,
        a_bound: float = 0.5,
        mode: str = "auto",
        newton: NewtonSettings | None = None,
    ) -> None:
        super().__init__()
        if self.jacobian_structure not in STRUCTURES:
            raise ValueError(f"jacobian_structure must be one of {STRUCTURES}")
        if d_in % heads or hidden % heads:
            raise ValueError(f"heads={heads} must divide d_in={d_in} and hidden={hidden}")
        check_mode(mode)  # a typo fails here, not at the first forward
        self.d_in, self.hidden, self.heads = d_in, hidden, heads
        self.a_bound, self.mode = a_bound, mode
        self.newton = newton or NewtonSettings()
        self.B = nn.Parameter(torch.empty(heads, d_in // heads, self.num_gates, hidden // heads))
        self.b = nn.Parameter(torch.empty(self.num_gates, hidden))
        for name, rows in self.recurrent_rows.items():
            self.register_parameter(name, nn.Parameter(torch.empty(rows, hidden)))
        self.last_newton_stats: NewtonStats | None = None
        self.newton_fallbacks = 0
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: ModelConfig, d_in: int) -> RecurrentCell:
        """The cell of a ``pararnn`` block: state ``cfg.hidden``, input ``d_in``."""
        settings = NewtonSettings(cfg.newton_iters, cfg.newton_tol, cfg.newton_fallback_tol)
        return cls(d_in, cfg.hidden, cfg.heads, a_bound=cfg.a_bound, mode=cfg.mode, newton=settings)

    # ---- parameters -------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """B ~ U(±√(3/fan_in)), fan-in D_in/H (variance 1/fan_in: LeCun's, half PyTorch's
        ``kaiming_uniform_`` default); b zero; recurrent weights N(0, 1/N) truncated at 2σ,
        then clamped to ±a_bound (the paper's LM recipe)."""
        bound = math.sqrt(3.0 / (self.d_in // self.heads))
        self.B.uniform_(-bound, bound)
        self.b.zero_()
        std = 1.0 / math.sqrt(self.hidden)
        for name in self.recurrent_rows:
            nn.init.trunc_normal_(getattr(self, name), std=std, a=-2 * std, b=2 * std)
        self.constrain_()

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clamp the recurrent weights to [-a_bound, a_bound]; call after optimizer.step()."""
        for name in self.recurrent_rows:
            getattr(self, name).clamp_(-self.a_bound, self.a_bound)

    def recurrent_parameter_names(self) -> list[str]:
        """Every parameter the transition may read, in the autograd Function's order: the
        ``recurrent_rows`` first, then any other a subclass registers (dotted for a submodule's),
        so each gets its gradient. Only B and b, which make p, are left out."""
        extra = [name for name, _ in self.named_parameters()
                 if name not in ("B", "b") and name not in self.recurrent_rows]
        return [*self.recurrent_rows, *extra]

    def recurrent_parameters(self) -> list[nn.Parameter]:
        """The parameters of :meth:`recurrent_parameter_names`, in that order."""
        named = dict(self.named_parameters())
        return [named[name] for name in self.recurrent_parameter_names()]

    # ---- the math a subclass defines -------------------------------------------------
    def transition(self, p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """f(p, h): p ``[.., G, N]``, h the state ``[.., N]`` or ``[.., N, 2]``."""
        raise NotImplementedError

    def transition_and_jacobian(self, p: torch.Tensor, h: torch.Tensor):
        """(f(p, h), ∂f/∂h) with J ``[.., N]`` or ``[.., N, 2, 2]``; derived by autograd here."""
        return derive_transition_and_jacobian(self.transition, p, h, self.jacobian_structure)

    def fused_newton(self, p: torch.Tensor, h0: torch.Tensor, newton_iters: int):
        """(states, residuals of iterates 0..n-1) from a fused Triton Newton kernel with its
        own backward, or None where the cell has none (then ``triton`` mode runs the
        generic Newton with Triton scans)."""
        return None

    def output(self, states: torch.Tensor) -> torch.Tensor:
        """The cell's output y from its states; the state itself for diagonal cells."""
        return states

    # ---- shapes ---------------------------------------------------------------------
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """p = Bx + b: x ``[.., D_in]`` → p ``[.., G, N]``."""
        heads = x.reshape(*x.shape[:-1], self.heads, self.d_in // self.heads)
        p = torch.einsum("...hi,higj->...ghj", heads, self.B)
        return p.reshape(*x.shape[:-1], self.num_gates, self.hidden) + self.b

    def init_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        """Zero state ``[batch, N]`` or ``[batch, N, 2]`` for inference."""
        shape = (batch, self.hidden) + ((2,) if self.jacobian_structure == "block2" else ())
        return torch.zeros(
            shape, device=device or self.b.device, dtype=dtype or _compute_dtype(self.b.dtype)
        )

    # ---- application ----------------------------------------------------------------
    def newton_settings(self) -> NewtonSettings:
        """This cell's Newton settings, with iterations capped where Newton is exact sooner."""
        if self.exact_newton_iters is None:
            return self.newton
        iters = min(self.newton.newton_iters, self.exact_newton_iters)
        return NewtonSettings(iters, self.newton.newton_tol, self.newton.fallback_tol)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, mode: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the cell over a sequence.

        x: ``[B, T, D_in]``; state: initial state or None for zeros.  Returns y ``[B, T, N]``
        (in x's dtype) and the final state.  The recurrence itself runs in at least fp32.
        """
        p = self.project(x)
        p = p.to(_compute_dtype(p.dtype))
        states = self.apply_recurrence(p, state, mode or self.mode)
        final = states[:, -1] if states.shape[1] else self._initial(p, state)
        return self.output(states).to(x.dtype), final

    def apply_recurrence(
        self, p: torch.Tensor, state: torch.Tensor | None, mode: str, record: bool = True
    ) -> torch.Tensor:
        """States ``[B, T, ...]`` from p ``[B, T, G, N]`` in ``mode``.

        With ``record``, ``last_newton_stats`` becomes this call's Newton statistics (None
        for a ``sequential`` call, which runs no Newton) and fallbacks are counted.
        """
        h0 = self._initial(p, state)
        mode = resolve_mode(mode, self, p)
        if mode == "sequential":
            if record:  # else model.newton_stats() would report an earlier call's residuals
                self.last_newton_stats = None
            return sequential_solve(self.transition, p, h0)
        if mode == "triton":
            states = self._apply_fused(p, h0, record)
            if states is not None:
                return states
        sink: list[NewtonStats] | None = [] if record else None
        params = self.recurrent_parameters()
        states = NewtonRecurrence.apply(self, _SCAN_BACKENDS[mode], sink, p, h0, *params)
        if sink:
            self.last_newton_stats = sink[0]
            self.newton_fallbacks += int(sink[0].fell_back)
        return states

    def _apply_fused(self, p: torch.Tensor, h0: torch.Tensor, record: bool):
        """The fused-kernel path of ``triton`` mode, with the same acceptance check and
        fallback as the generic Newton.  Used for fp32 without ``newton_tol`` (the kernels
        run a fixed iteration count in fp32); None otherwise, and fp64 then runs the generic
        Newton on Triton scans, which compute in fp64."""
        settings = self.newton_settings()
        if p.dtype != torch.float32 or settings.newton_tol is not None:
            return None
        fused = self.fused_newton(p, h0, settings.newton_iters)
        if fused is None:
            return None
        states, residuals = fused
        with torch.no_grad():
            final = final_residual(self.transition, p, h0, states.detach())
        residuals = torch.cat([residuals.to(final.dtype), final.unsqueeze(0)])
        fell_back = settings.fallback_tol is not None and rejected(
            residuals, states.detach(), settings.fallback_tol
        )
        if fell_back:  # drop the fused graph; autograd differentiates the loop instead
            states = sequential_solve(self.transition, p, h0)
        if record:
            self.last_newton_stats = NewtonStats(residuals, settings.newton_iters, fell_back)
            self.newton_fallbacks += int(fell_back)
        return states

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token: x_t ``[B, D_in]`` → (y_t ``[B, N]``, new state); O(1) in the sequence."""
        p = self.project(x_t)
        state = self.transition(p.to(_compute_dtype(p.dtype)), state)
        return self.output(state).to(x_t.dtype), state

    def _initial(self, p: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        if state is None:
            return self.init_state(p.shape[0], device=p.device, dtype=p.dtype)
        return state.to(p.dtype)

    def extra_repr(self) -> str:
        return (
            f"d_in={self.d_in}, hidden={self.hidden}, heads={self.heads}, mode={self.mode}, "
            f"a_bound={self.a_bound}, newton_iters={self.newton.newton_iters}"
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Recurrences run in fp32 at least: Newton and long scans are unsafe in 16-bit."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32
