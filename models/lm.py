"""Decoder-only language model: ParaRNN blocks, or the Transformer baseline.

    tokens → embedding (+ learned positions, Transformer only) → blocks → RMSNorm → head

``model.blocks`` is an ``nn.ModuleList`` so that the platform can FSDP-wrap each block from
outside; the model itself knows nothing of parallelism.  The training loop calls
``model.constrain_()`` after each ``optimizer.step()`` (recurrent weights back into
[-a_bound, a_bound]) and logs ``model.newton_stats()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from paralab.models.blocks import build_block
from paralab.models.cell import RecurrentCell
from paralab.models.config import ModelConfig


@dataclass
class LMState:
    """Inference state: tokens consumed so far and each block's state."""

    position: int
    """Tokens consumed so far (the next token's position)."""
    blocks: list
    """One state per block: (conv window, cell state) or an attention (keys, values) cache."""


class LanguageModel(nn.Module):
    """tokens ``[B, T]`` (int64) → logits ``[B, T, vocab_size]``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position_embedding = (
            nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.arch == "transformer" else None
        )
        self.blocks = nn.ModuleList(build_block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.head.weight = self.embedding.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Embeddings N(0, 1/D) so that tied logits start at unit scale; the rest keep their
        modules' own init (cells: the paper's recipe)."""
        std = 1.0 / math.sqrt(self.cfg.d_model)
        for embedding in (self.embedding, self.position_embedding, self.head):
            if embedding is not None:
                nn.init.normal_(embedding.weight, std=std)

    def _embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        x = self.embedding(tokens)
        if self.position_embedding is not None:
            end = start + tokens.shape[1]
            if end > self.cfg.max_seq_len:
                raise ValueError(f"sequence reaches {end} > max_seq_len={self.cfg.max_seq_len}")
            x = x + self.position_embedding(torch.arange(start, end, device=tokens.device))
        return x

    def forward(self, tokens: torch.Tensor, return_state: bool = False):
        """Logits ``[B, T, V]``; with ``return_state`` also the :class:`LMState` after them."""
        x = self._embed(tokens, 0)
        states = []
        for block in self.blocks:
            if return_state:
                x, state = block(x, return_state=True)
                states.append(state)
            else:
                x = block(x)
        logits = self.head(self.norm(x))
        return (logits, LMState(tokens.shape[1], states)) if return_state else logits

    # ---- inference --------------------------------------------------------------------
    def init_state(self, batch: int) -> LMState:
        """The state before any token."""
        return LMState(0, [block.init_state(batch) for block in self.blocks])

    def step(self, tokens_t: torch.Tensor, state: LMState) -> tuple[torch.Tensor, LMState]:
        """One token per sequence: tokens_t ``[B]`` → (logits ``[B, V]``, next state).

        O(1) in the sequence length for recurrent blocks (O(t) for attention's cache).
        """
        x = self._embed(tokens_t.unsqueeze(1), state.position)[:, 0]
        new_states = []
        for block, block_state in zip(self.blocks, state.blocks):
            x, block_state = block.step(x, block_state)
            new_states.append(block_state)
        return self.head(self.norm(x)), LMState(state.position + 1, new_states)

    @torch.no_grad()
    def generate(
        self,
        prompt_tokens: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample a continuation: prompt ``[B, T0]`` → ``[B, T0 + max_new_tokens]``.

        The prompt is read in parallel (one forward), then tokens are stepped one at a time.
        ``temperature=0`` is greedy; ``top_k`` keeps the k most likely tokens.
        """
        logits, state = self(prompt_tokens, return_state=True)
        logits, out = logits[:, -1], [prompt_tokens]
        for i in range(max_new_tokens):
            token = _sample(logits, temperature, top_k, generator)
            out.append(token.unsqueeze(1))
            if i + 1 < max_new_tokens:
                logits, state = self.step(token, state)
        return torch.cat(out, dim=1)

    # ---- training-loop hooks ----------------------------------------------------------
    def cells(self) -> list[RecurrentCell]:
        """Every recurrent cell, in block order."""
        return [m for m in self.modules() if isinstance(m, RecurrentCell)]

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clamp every cell's recurrent weights to ±a_bound; call after ``optimizer.step()``."""
        for cell in self.cells():
            cell.constrain_()

    def newton_stats(self) -> dict[str, float]:
        """Newton residuals of the last forward, max over layers, and cumulative fallbacks.

        Keys: ``newton/residual_0`` … ``newton/residual_k`` (iterate k's max-norm residual),
        ``newton/iterations`` (max over layers) and ``newton/fallbacks`` (calls redone
        sequentially since construction, all layers).  One host sync, here, not per layer.
        """
        cells = self.cells()
        stats = [c.last_newton_stats for c in cells if c.last_newton_stats is not None]
        out = {"newton/fallbacks": float(sum(c.newton_fallbacks for c in cells))}
        if not stats:
            return out
        depth = max(len(s.residuals) for s in stats)
        per_iterate = [
            torch.stack([s.residuals[k].float() for s in stats if len(s.residuals) > k]).amax()
            for k in range(depth)
        ]
        for k, value in enumerate(torch.stack(per_iterate).tolist()):
            out[f"newton/residual_{k}"] = value
        out["newton/iterations"] = float(max(s.iterations for s in stats))
        return out


def _sample(logits, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def build_model(cfg: ModelConfig) -> LanguageModel:
    """The model a ``model:`` config section describes."""
    return LanguageModel(cfg)
