"""Which mode applies a cell over the sequence, and how ``auto`` chooses.

- ``sequential``: the plain loop over time; the ground truth every other mode is held to.
- ``parallel``: Newton with the log-depth PyTorch scan.
- ``triton``: Newton with the Triton scan (or a fused Newton kernel where one exists).
- ``auto``: on CUDA, ``triton`` if Triton is importable, else ``parallel``.  Elsewhere it
  measures: the first call in a shape bucket times ``sequential`` and ``parallel`` once on
  a synthetic input of the call's shape (forward, plus backward when grad is enabled) and
  caches the faster one for the bucket.  On our CPUs the sequential loop usually wins
  (``docs/models.md`` has the table), but that depends on shape and machine, so we measure.

A bucket is (device, cell class, dtype, grad enabled, B, T and N rounded up to powers of 2).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch

from paralab.kernels.scan.utils import interpreting

if TYPE_CHECKING:
    from paralab.models.cell import RecurrentCell

MODES = ("sequential", "parallel", "triton", "auto")
PROBED_MODES = ("sequential", "parallel")

_auto_choices: dict[tuple, str] = {}


def triton_available() -> bool:
    """True when Triton kernels can run natively (a CUDA device and the package)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def auto_choices() -> dict[tuple, str]:
    """The probe's decisions so far, bucket → mode (a copy, for logging and tests)."""
    return dict(_auto_choices)


def clear_auto_choices() -> None:
    """Forget every probe decision, e.g. after changing thread counts."""
    _auto_choices.clear()


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _bucket(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def resolve_mode(mode: str, cell: RecurrentCell, p: torch.Tensor) -> str:
    """Turn ``auto`` into a concrete mode for a call with projected input p ``[B, T, G, N]``."""
    check_mode(mode)
    if mode == "triton" and p.device.type != "cuda" and not interpreting():
        # Else Triton fails deep inside its launcher with "0 active drivers".
        raise ValueError(
            f"mode='triton' runs Triton kernels, which need a CUDA tensor (this one is on "
            f"{p.device.type}) or TRITON_INTERPRET=1 set before paralab is imported (the CPU "
            "interpreter, for tests); use mode='parallel' or 'auto' here"
        )
    if mode != "auto":
        return mode
    if p.device.type == "cuda":
        return "triton" if triton_available() else "parallel"
    batch, seq_len, _, hidden = p.shape
    grad = torch.is_grad_enabled()
    key = (
        str(p.device),
        type(cell).__name__,
        cell.newton_settings().newton_iters,  # Newton's cost grows with it, the loop's does not
        cell.heads,
        p.dtype,
        grad,
        _bucket(batch),
        _bucket(seq_len),
        _bucket(hidden),
    )
    if key not in _auto_choices:
        timings = {
            m: _time_mode(cell, m, tuple(p.shape), p.dtype, p.device, grad) for m in PROBED_MODES
        }
        _auto_choices[key] = min(timings, key=timings.get)
    return _auto_choices[key]


def _time_mode(
    cell: RecurrentCell,
    mode: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    grad: bool,
) -> float:
    """Seconds for one application of ``cell`` in ``mode`` on random p: best of two, or
    the first alone when it took over a second (the probe's cost stays bounded)."""
    # Its own generator: a probe at the first forward must not move the global RNG, or the
    # run's randomness would depend on whether (and where) `auto` measured.
    generator = torch.Generator(device=device).manual_seed(0)
    p = torch.randn(shape, dtype=dtype, device=device, generator=generator).requires_grad_(grad)
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            states = cell.apply_recurrence(p, None, mode, record=False)
            if grad:
                # Only p's gradient: the probe must not touch the parameters' .grad.
                torch.autograd.grad(states.sum(), p)
        best = min(best, time.perf_counter() - start)
        if best > 1.0:
            break
    return best
