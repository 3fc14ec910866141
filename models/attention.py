"""Causal multi-head self-attention for the Transformer baseline (PyTorch SDPA).

    [q | k | v] = W_qkv x,   out = W_o softmax(q kᵀ / √d_h + causal mask) v

Inference keeps a key/value cache, so a step costs O(t) in the tokens seen so far, which is
the cost the recurrent models avoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    """x ``[B, T, D]`` → ``[B, T, D]`` with ``heads`` heads of width D / heads."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def _split(self, x: torch.Tensor):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        shape = (*x.shape[:-1], self.heads, -1)
        return (t.reshape(shape).transpose(1, 2) for t in (q, k, v))  # [B, H, T, d_h]

    def forward(self, x: torch.Tensor, return_state: bool = False):
        """With ``return_state``, also the (keys, values) cache ``[B, H, T, d_h]`` each."""
        q, k, v = self._split(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = self.out_proj(y.transpose(1, 2).flatten(2))
        return (out, (k, v)) if return_state else out

    def init_state(self, batch: int, device=None, dtype=None):
        """An empty cache."""
        d_head = self.qkv.in_features // self.heads
        empty = torch.zeros(
            batch,
            self.heads,
            0,
            d_head,
            device=device or self.qkv.weight.device,
            dtype=dtype or self.qkv.weight.dtype,
        )
        return empty, empty.clone()

    def step(self, x_t: torch.Tensor, cache):
        """x_t ``[B, D]``: attend to the cache plus itself; returns (out ``[B, D]``, cache)."""
        q, k, v = self._split(x_t.unsqueeze(1))
        keys, values = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, keys, values)
        return self.out_proj(y.transpose(1, 2).flatten(2))[:, 0], (keys, values)
