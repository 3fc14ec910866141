"""``paralab sweep FILE [KEY=VALUE ...] [--dry-run] [--resume] [--retry-errored]``.

The CLI's ``cmd_sweep`` calls :func:`sweep_command`; user errors are raised as the CLI's
one-line error types (``ConfigError``, ``LaunchError``, ...) and printed there.
"""

from __future__ import annotations

import argparse
import os
import shlex

from rich.console import Console
from rich.markup import escape

INTERRUPTED = 130


def sweep_command(args: argparse.Namespace, console: Console, err_console: Console) -> int:
    from paralab.platform.train.launch import LaunchError, local_resources
    from paralab.platform.tune import display
    from paralab.platform.tune.progress import Board
    from paralab.platform.tune.sweep import concurrency, plan_sweep, run_sweep

    plan = plan_sweep(args.file, args.overrides)
    if args.dry_run:
        cpus, gpus = local_resources()
        at_once, misfit = None, None
        if not os.environ.get("RAY_ADDRESS"):
            try:
                at_once = concurrency(plan, cpus, gpus)
            except LaunchError as err:  # still a plan worth seeing: it is for a cluster
                misfit = str(err)
        console.print(display.plan_table(plan, cpus, gpus, at_once, misfit))
        return 0

    board = Board(plan.sweep.metric, len(plan.trials), plan.cfg.train.steps)
    keys = list(plan.sweep.params)

    def on_event(message: str) -> None:
        console.print(f"[cyan]paralab[/] {escape(message)}", soft_wrap=True)

    resume = escape(shlex.join(["paralab", "sweep", args.file, *args.overrides]))
    try:
        with display.live(board, keys, console):
            outcome = run_sweep(plan, resume=args.resume, retry_errored=args.retry_errored,
                                create_bucket=args.create_bucket, board=board, on_event=on_event)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]: resume with `{resume} --resume`", soft_wrap=True)
        return INTERRUPTED

    console.print(display.summary_table(outcome))
    if outcome.best is not None:
        console.print(f"[bold]best[/]: {escape(outcome.best.label)}  {plan.sweep.metric} "
                      f"{outcome.best.metric:.4g}  (MLflow run {outcome.best.run_id or '-'})",
                      soft_wrap=True)
        console.print(f"[bold]best config[/]: {outcome.best_yaml}", soft_wrap=True)
        console.print(f"  train it, or find it complete:  paralab run {outcome.best_yaml}",
                      soft_wrap=True)
    console.print(f"summary: {outcome.output_dir / 'summary.csv'} (and summary.png)", soft_wrap=True)
    console.print(f"MLflow: parent run {outcome.parent_run_id} in experiment {plan.experiment} "
                  f"@ {outcome.tracking_uri}", soft_wrap=True)
    if outcome.interrupted:
        err_console.print(f"[yellow]interrupted[/]: resume with `{resume} --resume`", soft_wrap=True)
        return INTERRUPTED
    errors = outcome.count("ERROR")
    if errors:
        first = escape(next(t.error or "" for t in outcome.trials if t.status == "ERROR"))
        err_console.print(f"[bold red]error:[/] {errors} trial(s) failed (first: {first}); "
                          f"retry them with `{resume} --retry-errored`", soft_wrap=True)
        return 1
    return 0
