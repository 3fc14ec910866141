"""Parameter counts and training FLOPs per token, exact under the conventions below.

Parameters
----------
:func:`param_count` is the closed form for a config, :func:`count_params` counts a module;
a test holds them equal for every cell and architecture.  ``embeddings=False`` leaves out
the token and position tables (an untied head stays in: it does a matmul per token).

FLOPs, per token, forward + backward (:func:`flops_breakdown`)
---------------------------------------------------------------
- ``matmul``: 6 × (weights multiplied per token): 2 in the forward, 4 in the backward
  (input and weight gradients).  Covers W_in, the cell's B, W_out, the MLP, attention's
  projections and the head.  The embedding lookup is free.
- ``conv``: 6·K·D per layer (depthwise), by the same rule.
- ``attention``: 12·T·D per layer, the full T×T score and value products in the forward
  (4·T·D) and twice that backward, as PyTorch's math kernel computes them.
- ``recurrence``: per layer, N units × per-unit FLOPs of the cell's own code, *measured*
  by counting 1 FLOP per output element of every arithmetic pointwise ATen op (and per
  input element of a reduction) while the cell runs (:func:`cell_unit_flops`), plus
  Newton's bookkeeping and the scans:

      Newton forward  = f + n·(f&J + 4s + scan) + f + 3s   (f + 3s: the final residual)
      Newton backward = f&J + scan + f + vjp(f)
      sequential      = f forward, vjp(f) backward

  with n = newton_iters (capped by the cell's ``exact_newton_iters``; early exit is not
  credited), s the state size per unit (1 or 2), and a scan counted as a work-efficient
  scan does it: two combines per element, a combine being 3 FLOPs (diagonal) or 20 (2×2).
  Mode ``sequential`` counts the loop; every other mode counts Newton, ``auto`` included (a
  count fixed by the config, whatever the CPU probe picks).

Not counted: norms, activations and gating outside the cell, residual adds, biases outside
the cell, softmax and the loss; all are O(D) per token.
The matmul/conv/attention part is checked against ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from paralab.models.blocks import mlp_hidden
from paralab.models.config import ModelConfig
from paralab.models.registry import get_cell

SCAN_COMBINE_FLOPS = {"diagonal": 3, "block2": 20}
"""FLOPs of one combine (a₁,b₁)•(a₂,b₂) = (a₂a₁, a₂b₁ + b₂) per unit."""
SCAN_COMBINES_PER_ELEMENT = 2
"""A work-efficient (Blelloch) scan combines each element about twice."""
_NOT_ARITHMETIC = {"clone", "where", "_to_copy", "copy", "alias", "lift_fresh"}


def count_params(model: nn.Module, embeddings: bool = True) -> int:
    """Parameters of ``model`` (shared tensors once); without token/position tables if
    ``embeddings=False``."""
    total = sum(p.numel() for p in model.parameters())
    if not embeddings:
        tables = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Embedding)}
        total -= sum(w.numel() for w in tables.values())
    return total


def param_count(cfg: ModelConfig, embeddings: bool = True) -> int:
    """Closed-form parameter count of ``build_model(cfg)``."""
    d, n, vocab, heads = cfg.d_model, cfg.hidden, cfg.vocab_size, cfg.heads
    hidden = mlp_hidden(cfg)
    mlp = (d + 3 * d * hidden) if hidden else 0  # norm + gate, up, down
    if cfg.arch == "pararnn":
        cell = get_cell(cfg.cell)
        gates, rows = cell.num_gates, sum(cell.recurrent_rows.values())
        conv = cfg.conv_kernel * d + d if cfg.conv_kernel else 0
        cell_params = d * gates * n // heads + gates * n + rows * n  # B, b, recurrent
        mixer = d * (d + n) + conv + cell_params + n + n * d  # W_in, conv, cell, norm, W_out
    else:
        mixer = 4 * d * d
    block = d + mixer + mlp
    tables = vocab * d + (cfg.max_seq_len * d if cfg.arch == "transformer" else 0)
    head = 0 if cfg.tie_embeddings else vocab * d
    return cfg.n_layers * block + d + head + (tables if embeddings else 0)


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token at sequence length ``seq_len`` (see module doc)."""
    return float(sum(flops_breakdown(cfg, seq_len).values()))


def flops_breakdown(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token by part: ``matmul``, ``conv``, ``attention``, ``recurrence``."""
    d, n, layers = cfg.d_model, cfg.hidden, cfg.n_layers
    hidden = mlp_hidden(cfg)
    per_layer = 3 * d * hidden
    out = {"matmul": 0.0, "conv": 0.0, "attention": 0.0, "recurrence": 0.0}
    if cfg.arch == "pararnn":
        cell = get_cell(cfg.cell)
        per_layer += d * (d + n) + d * cell.num_gates * n // cfg.heads + n * d
        out["conv"] = 6.0 * cfg.conv_kernel * d * layers
        out["recurrence"] = float(layers * n * recurrence_unit_flops(cfg))
    else:
        per_layer += 4 * d * d
        out["attention"] = 12.0 * seq_len * d * layers
    out["matmul"] = 6.0 * (layers * per_layer + cfg.vocab_size * d)
    return out


def recurrence_unit_flops(cfg: ModelConfig) -> int:
    """Forward + backward FLOPs per unit per token of one layer's recurrence."""
    cell = get_cell(cfg.cell)
    unit = cell_unit_flops(cfg.cell)
    if cfg.mode == "sequential":
        return unit["transition"] + unit["vjp"]
    state = 2 if cell.jacobian_structure == "block2" else 1
    scan = SCAN_COMBINES_PER_ELEMENT * SCAN_COMBINE_FLOPS[cell.jacobian_structure]
    iters = cfg.newton_iters
    if cell.exact_newton_iters is not None:
        iters = min(iters, cell.exact_newton_iters)
    f, fj = unit["transition"], unit["transition_and_jacobian"]
    # The final residual is computed on every call (the fallback check and the logged Newton
    # residuals read it), with or without newton_fallback_tol.
    forward = f + iters * (fj + 4 * state + scan) + f + 3 * state
    backward = fj + scan + f + unit["vjp"]
    return forward + backward


@functools.cache
def cell_unit_flops(cell_name: str) -> dict[str, int]:
    """Measured FLOPs per unit per token of a cell's ``transition``, its
    ``transition_and_jacobian`` and the backward of ``transition`` (the VJP, forward not
    included).  The per-token slope between 1 and 2 tokens, so per-call constants drop out."""
    cls = get_cell(cell_name)
    cell = cls(1, 1, 1).double()
    counts = {name: [] for name in ("transition", "transition_and_jacobian", "vjp")}
    for tokens in (1, 2):
        p = torch.randn(tokens, cls.num_gates, 1, dtype=torch.float64, requires_grad=True)
        h = cell.init_state(tokens, dtype=torch.float64).requires_grad_()
        with _PointwiseCounter() as counter:
            cell.transition(p, h)
        counts["transition"].append(counter.flops)
        with torch.no_grad(), _PointwiseCounter() as counter:
            cell.transition_and_jacobian(p, h)
        counts["transition_and_jacobian"].append(counter.flops)
        out = cell.transition(p, h)
        with _PointwiseCounter() as counter:
            recurrent = cell.recurrent_parameters()
            torch.autograd.grad(out, [p, h, *recurrent], torch.ones_like(out))
        counts["vjp"].append(counter.flops)
    return {name: second - first for name, (first, second) in counts.items()}


class _PointwiseCounter(TorchDispatchMode):
    """Counts 1 FLOP per output element of arithmetic pointwise ops, 1 per input element of
    sums."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if torch.Tag.pointwise in func.tags and name.rstrip("_") not in _NOT_ARITHMETIC:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                self.flops += out.numel()
        elif name in ("sum", "mean") and isinstance(args[0], torch.Tensor):
            self.flops += args[0].numel()
        return out
