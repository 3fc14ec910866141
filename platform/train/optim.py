"""AdamW with decoupled weight decay and a cosine schedule with linear warm-up, as in the paper."""

from __future__ import annotations

import math

import torch
from torch import nn

from paralab.platform.config.schema import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Decay matrices only: biases, norms, and the cells' diagonal recurrent weights are exempt."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        (decay if param.ndim >= 2 and leaf not in ("A", "C") else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), foreach=True)


def lr_factor(step: int, total: int, warmup_frac: float) -> float:
    """Linear warm-up to 1, then cosine decay to exactly 0 at ``total``."""
    warmup = int(total * warmup_frac)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.steps, cfg.warmup_frac)
    )
