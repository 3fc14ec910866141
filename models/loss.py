"""Next-token cross-entropy with the optional z-loss of PaLM.

    loss = CE(logits, targets) + z_loss · mean(logsumexp(logits)²)

The z term keeps the softmax normaliser near 1 so that bf16 logits do not drift; the paper
uses 1e-4 (5e-6 at 7B).  Targets equal to ``ignore_index`` count in neither term; a batch
whose targets are all ignored has loss 0 (and zero gradients), not the NaN of 0/0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, z term) from logits ``[B, T, V]`` and targets ``[B, T]``.

    The z term, mean(logsumexp²) over counted tokens, is returned for logging whether or
    not it is in the loss (``z_loss=0``).  Computed in fp32.
    """
    logits = logits.float().flatten(0, -2)
    targets = targets.flatten()
    mask = targets != ignore_index
    count = mask.sum().clamp(min=1)
    cross_entropy = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    cross_entropy = cross_entropy / count
    z_term = (torch.logsumexp(logits, dim=-1)[mask] ** 2).sum() / count
    loss = cross_entropy + z_loss * z_term if z_loss else cross_entropy
    return loss, z_term
