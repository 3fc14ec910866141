"""The ParaRNN sequence mixer: short causal conv, recurrent cell, gated output.

    [u | g] = W_in x                      u: [.., D],  g: [.., N]
    u       = SiLU(causal_depthwise_conv_K(u))
    y       = cell(u)                      [.., N]
    out     = W_out (RMSNorm(y) ⊙ SiLU(g))

The conv gives the cell a few tokens of local context, and the gate lets the block switch
the recurrent path off per unit (the paper's Fig. 9 block, after Mamba).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from paralab.models.config import ModelConfig
from paralab.models.registry import get_cell


class CausalDepthwiseConv(nn.Module):
    """Per-channel causal convolution of width K over time; x ``[B, T, D]``."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.transpose(1, 2), (self.kernel - 1, 0))
        return self.conv(x).transpose(1, 2)

    def step(self, x_t: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t ``[B, D]``; window: the last K-1 inputs ``[B, K-1, D]``.  Returns (y_t, window)."""
        full = torch.cat([window, x_t.unsqueeze(1)], dim=1)  # [B, K, D]
        y = torch.einsum("bkd,dk->bd", full, self.conv.weight[:, 0]) + self.conv.bias
        return y, full[:, 1:]


class ParaRNNMixer(nn.Module):
    """Sequence mixer of a ``pararnn`` block; x ``[B, T, D]`` → ``[B, T, D]``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.d_model, self.hidden = cfg.d_model, cfg.hidden
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_model + cfg.hidden, bias=False)
        self.conv = CausalDepthwiseConv(cfg.d_model, cfg.conv_kernel) if cfg.conv_kernel else None
        self.cell = get_cell(cfg.cell).from_config(cfg, d_in=cfg.d_model)
        self.norm = nn.RMSNorm(cfg.hidden, eps=1e-6)
        self.out_proj = nn.Linear(cfg.hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, return_state: bool = False):
        """With ``return_state``, also the inference state after the last token."""
        u, gate = self.in_proj(x).split([self.d_model, self.hidden], dim=-1)
        window = self._window(u) if return_state else None
        if self.conv is not None:
            u = self.conv(u)
        y, cell_state = self.cell(F.silu(u))
        out = self.out_proj(self.norm(y) * F.silu(gate))
        return (out, (window, cell_state)) if return_state else out

    def init_state(self, batch: int, device=None, dtype=None):
        """(conv window ``[B, K-1, D]`` or None, cell state)."""
        window = None
        if self.conv is not None:
            window = torch.zeros(
                batch,
                self.conv.kernel - 1,
                self.d_model,
                device=device or self.in_proj.weight.device,
                dtype=dtype or self.in_proj.weight.dtype,
            )
        return window, self.cell.init_state(batch, device=device)

    def step(self, x_t: torch.Tensor, state):
        """One token: x_t ``[B, D]`` → (out ``[B, D]``, state)."""
        window, cell_state = state
        u, gate = self.in_proj(x_t).split([self.d_model, self.hidden], dim=-1)
        if self.conv is not None:
            u, window = self.conv.step(u, window)
        y, cell_state = self.cell.step(F.silu(u), cell_state)
        return self.out_proj(self.norm(y) * F.silu(gate)), (window, cell_state)

    def _window(self, u: torch.Tensor) -> torch.Tensor | None:
        """The last K-1 conv inputs, zero-padded on the left for short sequences."""
        if self.conv is None:
            return None
        keep = self.conv.kernel - 1
        return F.pad(u, (0, 0, keep, 0))[:, u.shape[1] :]  # left-pad time by K-1, keep K-1
