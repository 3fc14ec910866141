"""Deterministic per-rank batches of token windows, with a resumable position.

A token array of ``n`` tokens is cut into ``n_windows = (n - 1) // seq_len`` windows; window
``w`` gives ``inputs = tokens[w*seq_len : (w+1)*seq_len]`` and targets shifted by one.

Training order. Epoch ``e`` visits the windows in the order of a permutation seeded by
``(seed, e)``. With ``W`` ranks of ``b`` sequences each, the *global* batch is ``B = W*b``:
global step ``s`` of an epoch takes ``order[s*B : (s+1)*B]`` and rank ``r`` reads the
contiguous block ``order[s*B + r*b : s*B + (r+1)*b]``. Hence

* ranks read disjoint windows, and no window repeats within an epoch
  (``steps_per_epoch = n_windows // B``; the last ``n_windows % B`` windows of the
  permutation are left out of that epoch);
* concatenating the ranks' batches of step ``s`` in rank order gives exactly the batch that
  ``world_size=1`` with ``batch_size=W*b`` yields at step ``s``, so a DDP run sees the same
  data as a single process with the same global batch;
* the position is the pair ``(epoch, step)``, identical on every rank, and depends only on
  ``B``: a run may resume with another ``W`` as long as ``W*b`` is unchanged.

Validation (:func:`val_batches`) reads windows in order, unshuffled, with the same rank
layout, and yields the same batches on every call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]
"""(inputs, targets), both int64 of shape [batch_size, seq_len]; targets are inputs shifted by one."""


class TokenBatches:
    """Infinite iterator over this rank's training batches (see the module docstring).

    Args:
        tokens: 1-D integer array (usually the read-only `train.bin` memmap).
        seq_len: tokens per sequence.
        batch_size: sequences per batch on *this rank* (the per-rank micro-batch).
        rank, world_size: this rank and the number of ranks.
        seed: seeds the per-epoch permutations; the same on every rank.

    Yields:
        ``(inputs, targets)``: int64 CPU tensors of shape ``[batch_size, seq_len]``.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0) -> None:
        _check_layout(seq_len, batch_size, rank, world_size)
        self.tokens = tokens
        self.seq_len, self.batch_size = seq_len, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.global_batch_size = batch_size * world_size
        self.n_windows = max(len(tokens) - 1, 0) // seq_len
        self.steps_per_epoch = self.n_windows // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the training split has {len(tokens)} tokens = {self.n_windows} sequences of "
                f"data.seq_len={seq_len}, fewer than one global batch of {self.global_batch_size} "
                f"({world_size} rank(s) x {batch_size}); lower train.batch_size or data.seq_len, "
                "or use more data (data.max_tokens)"
            )
        self.epoch = 0
        self.step = 0
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    def __iter__(self) -> TokenBatches:
        return self

    def __next__(self) -> Batch:
        order = self._epoch_order(self.epoch)
        first = self.step * self.global_batch_size + self.rank * self.batch_size
        windows = order[first:first + self.batch_size]
        self.step += 1
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return _gather(self.tokens, windows, self.seq_len)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            # Masked to 64 bits: SeedSequence takes non-negative integers only.
            rng = np.random.default_rng([self.seed & (2**64 - 1), epoch])
            self._order, self._order_epoch = rng.permutation(self.n_windows), epoch
        return self._order

    @property
    def tokens_seen(self) -> int:
        """Tokens consumed by all ranks together so far (inputs only)."""
        steps = self.epoch * self.steps_per_epoch + self.step
        return steps * self.global_batch_size * self.seq_len

    def state_dict(self) -> dict[str, Any]:
        """The position of the next batch (JSON-able, identical on every rank)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "n_windows": self.n_windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`; the layout that defines the order must match."""
        for key in ("seed", "seq_len", "global_batch_size", "n_windows"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"cannot resume the data position: the checkpoint has {key}={state[key]} but "
                    f"this run has {getattr(self, key)}; keep data, seq_len, seed and the global "
                    "batch size (workers x per-rank batch) of the checkpointed run"
                )
        if not (0 <= state["step"] < self.steps_per_epoch and state["epoch"] >= 0):
            raise DataError(f"cannot resume the data position: invalid state {state}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


def val_batches(tokens: np.ndarray, seq_len: int, batch_size: int, n: int, *, rank: int = 0,
                world_size: int = 1) -> Iterator[Batch]:
    """`n` validation batches for this rank, the same on every call.

    Windows are taken in order from the start of `tokens`, with the rank layout of
    :class:`TokenBatches` (rank ``r`` of step ``s`` reads windows ``s*B + r*b ...``), and wrap
    around to the start when ``n * B`` exceeds the windows there are.
    """
    _check_layout(seq_len, batch_size, rank, world_size)
    n_windows = max(len(tokens) - 1, 0) // seq_len
    if n_windows == 0:
        raise DataError(
            f"the validation split has {len(tokens)} tokens, fewer than one sequence of "
            f"data.seq_len={seq_len} plus one; raise data.val_fraction or lower data.seq_len"
        )
    global_batch = batch_size * world_size
    for step in range(n):
        first = step * global_batch + rank * batch_size
        yield _gather(tokens, (first + np.arange(batch_size)) % n_windows, seq_len)


def _gather(tokens: np.ndarray, windows: np.ndarray, seq_len: int) -> Batch:
    offsets = windows[:, None] * seq_len + np.arange(seq_len + 1)
    chunk = np.asarray(tokens[offsets], dtype=np.int64)
    inputs = torch.from_numpy(np.ascontiguousarray(chunk[:, :-1]))
    targets = torch.from_numpy(np.ascontiguousarray(chunk[:, 1:]))
    return inputs, targets


def _check_layout(seq_len: int, batch_size: int, rank: int, world_size: int) -> None:
    if seq_len < 1 or batch_size < 1:
        raise DataError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
