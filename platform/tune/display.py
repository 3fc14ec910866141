"""Rich renderings of a sweep: the planned trials, the live board, and the final summary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paralab.platform.tune.progress import Board
from paralab.platform.tune.space import format_value

if TYPE_CHECKING:
    from paralab.platform.tune.sweep import SweepOutcome, SweepPlan

STATUS_STYLE = {"RUNNING": "cyan", "TERMINATED": "green", "FINISHED": "green", "ERROR": "red",
                "STOPPED": "yellow", "INTERRUPTED": "magenta", "PENDING": "dim", "PAUSED": "yellow"}


def _styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status.lower()}[/]"


def plan_table(plan: SweepPlan, cpus: float, gpus: float, at_once: int | None,
               misfit: str | None = None) -> Group:  # fmt: skip
    """``--dry-run``: every trial with its values, and what the sweep needs to run."""
    sweep = plan.sweep
    title = (f"[bold]paralab sweep {plan.name}[/]: {len(plan.trials)} trial(s), search "
             f"{sweep.search.type} (seed {sweep.search.seed}), scheduler {sweep.scheduler.type}, "
             f"ranked by {sweep.metric} ({sweep.mode})")
    table = Table()
    table.add_column("#", justify="right")
    for key in sweep.params:
        table.add_column(key)
    cfgs = plan.trial_cfgs
    # Steps differ between trials when train.steps or train.flops_budget is swept: show them.
    steps = len({cfg.train.steps for cfg in cfgs}) > 1 or "train.flops_budget" in sweep.params
    if steps:
        table.add_column("steps", justify="right")
    table.add_column("resources")
    for index, (values, cfg) in enumerate(zip(plan.trials, cfgs), 1):
        gpu = f" + {cfg.train.workers} GPU" if cfg.train.use_gpu else ""
        resources = f"{cfg.train.workers} x {cfg.train.cpus_per_worker:g} CPU{gpu}"
        cells = [escape(format_value(values[k])) for k in sweep.params]
        table.add_row(str(index), *cells, *([str(cfg.train.steps)] if steps else []), resources)
    notes = []
    if not plan.exact:
        notes.append(f"optuna: the first {len(plan.trials)} suggestions before any result; TPE "
                     f"adapts after {sweep.search.startup_trials} trials, so later ones differ")
    notes.append(f"each trial: {plan.per_trial.describe()} for its Ray Train workers, plus a "
                 "trial driver that takes no CPU")
    where = f"this machine's {cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")
    if misfit:  # a plan for a cluster, dry-run on a laptop
        notes.append(f"[yellow]not on this machine[/]: {misfit}")
    else:
        capped = sweep.max_concurrent_trials
        notes.append(f"up to {at_once} trial(s) at a time on {where}" if at_once else
                     f"on $RAY_ADDRESS: up to {capped} at a time (sweep.max_concurrent_trials)"
                     if capped else "on $RAY_ADDRESS: as many at a time as the cluster fits")
    if sweep.time_budget_s:
        notes.append(f"time budget {sweep.time_budget_s:g} s")
    return Group(title, table, *notes)


def board_table(board: Board, keys: list[str]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("trial")
    table.add_column("status")
    table.add_column("step", justify="right")
    table.add_column(board.metric, justify="right")
    for key in keys:
        table.add_column(key)
    for row in board.snapshot():
        table.add_row(
            row.trial_id, _styled(row.status),
            "-" if row.step is None else f"{row.step}/{row.steps or board.steps}",
            "-" if row.metric is None else f"{row.metric:.4g}",
            *(escape(format_value(row.values.get(k, ""))) for k in keys),
        )
    return table


@contextmanager
def live(board: Board, keys: list[str], console: Console) -> Iterator[None]:
    """A live table of trials and a progress bar over trials, while the sweep runs."""
    progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    task = progress.add_task("trials", total=board.total or None)

    def render() -> Group:
        progress.update(task, completed=board.finished(),
                        total=max(board.total, len(board.rows)) or None)
        return Group(board_table(board, keys), progress)

    board.on_event = lambda message: console.print(f"[cyan]paralab[/] {escape(message)}",
                                                   soft_wrap=True)
    if not console.is_terminal:
        # No live redraws into a log: events only, and the summary at the end.
        yield
        return
    with Live(get_renderable=render, console=console, refresh_per_second=2, transient=True):
        yield
        time.sleep(0.1)


def summary_table(outcome: SweepOutcome) -> Group:
    plan = outcome.plan
    from paralab.platform.tune.summary import ranked

    counts = ", ".join(f"{outcome.count(s)} {s.lower()}" for s in
                       ("FINISHED", "STOPPED", "ERROR", "INTERRUPTED", "PENDING") if outcome.count(s))
    title = f"[bold]paralab sweep {plan.name}[/]: {counts} in {outcome.wall_s:.0f} s"
    table = Table()
    table.add_column("rank", justify="right")
    table.add_column("trial")
    table.add_column("status")
    table.add_column("step", justify="right")
    table.add_column(plan.sweep.metric, justify="right")
    for key in plan.sweep.params:
        table.add_column(key)
    for rank, trial in enumerate(ranked(plan, outcome.trials), 1):
        best = outcome.best is not None and trial.trial_id == outcome.best.trial_id
        table.add_row(
            f"[bold]{rank}*[/]" if best else str(rank), trial.trial_id, _styled(trial.status),
            "-" if trial.step is None else str(trial.step),
            "-" if trial.metric is None else f"{trial.metric:.4g}",
            *(escape(format_value(trial.values.get(k, ""))) for k in plan.sweep.params),
        )
    return Group(title, table)
