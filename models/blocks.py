"""Residual blocks: pre-norm mixer then pre-norm MLP.

    x = x + Mixer(RMSNorm(x))          Mixer: ParaRNN (recurrent) or causal self-attention
    x = x + MLP(RMSNorm(x))            MLP: SwiGLU, W_down (SiLU(W_gate x) ⊙ W_up x)

Every block has ``forward(x, return_state=False)``, ``init_state(batch)`` and
``step(x_t, state)``, so the language model treats both kinds alike.  The model keeps them in
an ``nn.ModuleList`` so that the platform can wrap each one (FSDP) from outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from paralab.models.attention import CausalSelfAttention
from paralab.models.config import ModelConfig
from paralab.models.mixer import ParaRNNMixer


def mlp_hidden(cfg: ModelConfig) -> int:
    """Hidden width of the SwiGLU MLP: round(mlp_ratio · d_model)."""
    return int(round(cfg.mlp_ratio * cfg.d_model))


class SwiGLU(nn.Module):
    """x ``[.., D]`` → W_down (SiLU(W_gate x) ⊙ W_up x); three bias-free matrices."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """One residual block around ``mixer`` (any module with the block-state API)."""

    def __init__(self, cfg: ModelConfig, mixer: nn.Module) -> None:
        super().__init__()
        self.mixer_norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.mixer = mixer
        hidden = mlp_hidden(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=1e-6) if hidden else None
        self.mlp = SwiGLU(cfg.d_model, hidden) if hidden else None

    def forward(self, x: torch.Tensor, return_state: bool = False):
        """x ``[B, T, D]``; with ``return_state`` also the mixer's state after the last token."""
        mixed = self.mixer(self.mixer_norm(x), return_state=return_state)
        mixed, state = mixed if return_state else (mixed, None)
        x = self._mlp(x + mixed)
        return (x, state) if return_state else x

    def init_state(self, batch: int, device=None, dtype=None):
        return self.mixer.init_state(batch, device=device, dtype=dtype)

    def step(self, x_t: torch.Tensor, state):
        """x_t ``[B, D]`` → (``[B, D]``, state)."""
        mixed, state = self.mixer.step(self.mixer_norm(x_t), state)
        return self._mlp(x_t + mixed), state

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mlp is None else x + self.mlp(self.mlp_norm(x))


def build_block(cfg: ModelConfig) -> Block:
    """A ``pararnn`` block (recurrent mixer) or a ``transformer`` block (attention)."""
    if cfg.arch == "pararnn":
        return Block(cfg, ParaRNNMixer(cfg))
    return Block(cfg, CausalSelfAttention(cfg.d_model, cfg.heads))
