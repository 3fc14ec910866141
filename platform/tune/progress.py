"""The sweep's live state on the driver: a board of trials that Tune's callback keeps current.

Tune pickles its ``RunConfig`` (callbacks included) into the sweep folder and uses that copy
when the sweep is restored, so :class:`BoardCallback` holds no state: it forwards Tune's
events to whatever :class:`Board` this process has made :func:`active`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

# Tune's trial statuses, and how the board shows them.
DONE = ("TERMINATED", "ERROR")


def at_last_step(result: dict[str, Any], base_steps: int) -> bool:
    """Whether a trial's report is at its last step: its own ``steps`` (trials may train
    different counts), else the base config's for a report that does not carry them."""
    return "step" in result and int(result["step"]) >= int(result.get("steps", base_steps))


@dataclass
class TrialRow:
    trial_id: str
    values: dict[str, Any]
    status: str = "PENDING"
    step: int | None = None
    steps: int | None = None
    """The trial's own step count, once it has reported (trials may differ)."""
    metric: float | None = None
    error: str | None = None


@dataclass
class Board:
    """What the live table shows; updated from Tune's loop, read from the display thread."""

    metric: str
    total: int
    steps: int
    rows: dict[str, TrialRow] = field(default_factory=dict)
    completed: set[str] = field(default_factory=set)
    """Trials Tune reported complete in this session (finished, or stopped by the scheduler)."""
    started: float = field(default_factory=time.monotonic)
    on_event: Callable[[str], None] = lambda message: None
    on_trial_end: Callable[[str, bool], None] = lambda trial_id, errored: None
    """Called with (trial id, errored) when Tune says a trial ended."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, trials: list[Any]) -> None:
        from paralab.platform.tune.space import plain

        with self.lock:
            for trial in trials:
                row = self.rows.get(trial.trial_id)
                if row is None:
                    row = self.rows[trial.trial_id] = TrialRow(
                        trial.trial_id, {k: plain(v) for k, v in trial.config.items()})
                row.status = trial.status
                result = trial.last_result or {}
                if "step" in result:
                    row.step = int(result["step"])
                if "steps" in result:
                    row.steps = int(result["steps"])
                if self.metric in result:
                    row.metric = float(result[self.metric])

    def finished(self) -> int:
        with self.lock:
            return sum(row.status in DONE for row in self.rows.values())

    def snapshot(self) -> list[TrialRow]:
        with self.lock:
            return [TrialRow(**vars(row)) for row in self.rows.values()]


_ACTIVE: Board | None = None


def active(board: Board | None) -> None:
    """Route Tune's events in this process to ``board`` (None stops routing)."""
    global _ACTIVE
    _ACTIVE = board


class BoardCallback(Callback):
    """Forwards Tune's trial events to the active :class:`Board`."""

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if _ACTIVE is not None:
            _ACTIVE.update(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended(trials, trial, "finished")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended(trials, trial, "failed")

    def _ended(self, trials: list[Any], trial: Any, how: str) -> None:
        board = _ACTIVE
        if board is None:
            return
        board.update(trials)
        if how == "finished":
            board.completed.add(trial.trial_id)
        board.on_trial_end(trial.trial_id, how == "failed")
        row = board.rows.get(trial.trial_id)
        from paralab.platform.tune.space import trial_label

        label = trial_label(row.values) if row else trial.trial_id
        result = trial.last_result or {}
        metric = result.get(board.metric)
        shown = f"{board.metric} {metric:.4g}" if isinstance(metric, (int, float)) else ""
        step = result.get("step")
        stopped = how == "finished" and step is not None and not at_last_step(result, board.steps)
        what = f"stopped early at step {step}" if stopped else how
        board.on_event(f"trial {label} {what}" + (f"  {shown}" if shown else ""))
