"""The `paralab` command line: small, obvious, and it never prints a traceback for bad input.

    paralab validate FILE [KEY=VALUE ...]
    paralab run FILE [KEY=VALUE ...] [--restart] [--create-bucket]
    paralab submit FILE [KEY=VALUE ...] --address http://HEAD:8265 [--sweep] [--follow]
                   [--restart | --resume --retry-errored] [--create-bucket]
    paralab sweep FILE [KEY=VALUE ...] [--dry-run] [--resume] [--retry-errored] [--create-bucket]
    paralab scaling FILE [KEY=VALUE ...] [--out DIR]
    paralab ui [FILE [KEY=VALUE ...]] [--port 5000]
    paralab stack up|down|status
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from paralab.platform.errors import first_line

console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False)

USAGE_ERROR = 2


class _VersionAction(argparse.Action):
    """``--version``, computed only when asked: the code version hashes the sources, and
    every other command should not pay for it before it starts."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show paralab's version (package + source hash) and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from paralab.platform.identity import code_version

        print(f"paralab {code_version()}")  # to stdout, as argparse's own version action
        parser.exit()


USER_ERRORS = {
    "paralab.platform.config.load": "ConfigError",
    "paralab.platform.data.errors": "DataError",
    "paralab.platform.services.process": "ServiceError",
    "paralab.platform.storage.errors": "StorageError",
    "paralab.platform.train.launch": "LaunchError",
}
"""Exceptions whose message is written for the user; anything else is a bug."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes of the modules this command imported. A module never imported
    raised nothing, and importing it here (torch, MLflow) would cost every refusal seconds."""
    return tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS.items()
                 if module in sys.modules)


def _failures() -> tuple[type[BaseException], ...]:
    """Failures after a run started: reported in one line, exit status 1."""
    launch = sys.modules.get("paralab.platform.train.launch")
    return (launch.TrainingFailed,) if launch else ()


def cmd_validate(args: argparse.Namespace) -> int:
    from rich.syntax import Syntax

    from paralab.platform.config.load import load_experiment, to_yaml
    from paralab.platform.identity import run_identity

    cfg = load_experiment(args.file, args.overrides)
    if cfg.sweep is not None:
        from paralab.platform.tune import plan_sweep

        # Everything `paralab sweep` checks before it starts: the spaces, the metric, the
        # scheduler, and the scaling section's keys.
        plan_sweep(args.file, args.overrides)
    elif cfg.scaling is not None:
        console.print(f"[yellow]note[/]: {escape(args.file)} has a scaling: section but no sweep:, "
                      "and `paralab scaling` fits a sweep's trials; add a sweep: section",
                      soft_wrap=True)
    console.print(Syntax(to_yaml(cfg), "yaml", theme="ansi_dark", background_color="default"))
    console.print(f"[green]valid[/]: {args.file} (run identity {run_identity(cfg)})")
    return 0


def _summary_table(summary) -> Table:
    table = Table(title=f"paralab run: {summary.name}", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("status", summary.status)
    table.add_row("identity", f"{summary.identity} (generation {summary.generation})")
    for key in ("loss", "val_loss", "val_ppl", "tokens_per_s", "mfu"):
        if key in summary.metrics:
            table.add_row(key, f"{summary.metrics[key]:.4g}")
    table.add_row("checkpoint", summary.checkpoint or "-")
    table.add_row("mlflow run", f"{summary.mlflow_run_id} @ {summary.tracking_uri}")
    return table


def cmd_run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from paralab.platform.config.load import load_experiment
    from paralab.platform.train.launch import launch

    cfg = load_experiment(args.file, args.overrides)
    if cfg.sweep is not None:
        console.print(f"[yellow]note[/]: {escape(args.file)} has a sweep: section, which "
                      "paralab run ignores: this trains its base config; `paralab sweep "
                      f"{escape(args.file)}` runs the sweep", soft_wrap=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=console, transient=False,
    )
    task = progress.add_task("train", total=cfg.train.steps, info="")

    def show() -> None:
        # The bars appear with the first data or training progress: a refusal before it
        # (storage, data, Ray) is then the one line printed, not under an empty bar.
        if not progress.live.is_started:
            progress.start()

    def on_progress(step: int, metrics: dict[str, float]) -> None:
        show()
        info = "  ".join(f"{k} {metrics[k]:.3f}" for k in ("loss", "val_loss") if k in metrics)
        progress.update(task, completed=step, info=info)

    def on_event(message: str) -> None:
        progress.console.print(f"[cyan]paralab[/] {message}")

    data_task = None

    def on_data(update) -> None:  # tokenisation progress, in the corpus's own units
        nonlocal data_task
        show()
        if data_task is None:
            data_task = progress.add_task("data", total=update.total, info=update.stage)
        progress.update(data_task, completed=update.done, total=update.total,
                        info=f"{update.stage} ({update.unit})")

    try:
        summary = launch(cfg, restart=args.restart, create_bucket=args.create_bucket,
                         on_event=on_event, on_progress=on_progress, on_data=on_data)
        if progress.live.is_started:
            progress.update(task, completed=summary.steps if summary.status != "RUNNING" else 0)
    finally:
        if progress.live.is_started:
            progress.stop()
    console.print(_summary_table(summary))
    _next_steps(summary, args.file, args.overrides)
    return 0


def _program() -> str:
    """How to call paralab again from this shell: bare if on PATH, else by its path."""
    import shutil
    from pathlib import Path

    if shutil.which("paralab"):
        return "paralab"
    here = Path(sys.argv[0])
    if here.name == "paralab" and here.exists():
        return os.path.relpath(here.resolve()) if not here.is_absolute() else str(here)
    return f"{sys.executable} -m paralab.platform.cli"


def _next_steps(summary, file: str, overrides: list[str]) -> None:
    import shlex

    from paralab.platform.config.schema import TrackingConfig
    from paralab.platform.tracking.mlflow import tracking_uri

    paralab = _program()
    console.print("\n[bold]Next steps[/]")
    if summary.tracking_uri.startswith("sqlite:"):
        ui = f"{paralab} ui"
        if summary.tracking_uri != tracking_uri(TrackingConfig()):  # the YAML names its own store
            ui += " " + shlex.join([file, *overrides])
        console.print(f"  see the run in the MLflow UI:  [bold]{escape(ui)}[/]  (serves {summary.tracking_uri})")
    else:
        console.print(f"  see the run in the MLflow UI at {summary.tracking_uri}")
    console.print(f"  checkpoints are under:         {summary.storage_path}")
    console.print(f"  train longer or bigger:        {paralab} run {file} train.steps=2000 model.d_model=512")
    console.print(f"  try the other cell:            {paralab} run {file} model.cell=paralstm")


def cmd_submit(args: argparse.Namespace) -> int:
    from paralab.platform.jobs.submit import follow, plan_submission, submit
    from paralab.platform.tracking.uris import without_password

    flags = [f"--{name.replace('_', '-')}" for name in ("restart", "resume", "retry_errored",
                                                        "create_bucket") if getattr(args, name)]
    sub = plan_submission(args.file, args.overrides, args.address, sweep=args.sweep, flags=flags)
    cfg = sub.cfg
    what = "the sweep of " if args.sweep else ""
    console.print(f"[cyan]paralab[/] submitting {what}{escape(cfg.name)} to {escape(sub.address)} "
                  "with this checkout's code", soft_wrap=True)
    job_id = submit(sub)
    address = escape(sub.address)
    console.print(f"[bold]submitted[/] job {escape(job_id)}", soft_wrap=True)
    console.print(f"  MLflow:       experiment {escape(cfg.tracking.experiment or cfg.name)} "
                  f"@ {escape(without_password(cfg.tracking.uri or ''))}", soft_wrap=True)
    console.print(f"  checkpoints:  {escape(cfg.storage.uri)}", soft_wrap=True)
    console.print(f"  logs:         ray job logs --address {address} --follow {escape(job_id)}",
                  soft_wrap=True)
    console.print(f"  stop:         ray job stop --address {address} {escape(job_id)}",
                  soft_wrap=True)
    if not args.follow:
        return 0
    try:
        status = follow(sub.address, job_id, lambda text: console.out(text, end="", highlight=False))
    except KeyboardInterrupt:
        err_console.print(f"[yellow]stopped following[/]: job {escape(job_id)} keeps running on "
                          "the cluster (see the logs and stop commands above)", soft_wrap=True)
        return 130
    except Exception as err:  # the job API went away (the job itself may not have)
        network = isinstance(err, (OSError, RuntimeError)) or type(err).__module__.startswith("aiohttp")
        if not network:
            raise
        err_console.print(f"[yellow]stopped following[/]: lost the job API at {escape(sub.address)} "
                          f"({escape(first_line(err))}); job {escape(job_id)} may still be running (see the "
                          "logs and stop commands above)", soft_wrap=True)
        return 1
    ok = status == "SUCCEEDED"
    console.print(f"[{'green' if ok else 'red'}]job {escape(job_id)} {status}[/]")
    return 0 if ok else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from paralab.platform.tune.command import sweep_command

    return sweep_command(args, console, err_console)


def cmd_scaling(args: argparse.Namespace) -> int:
    from pathlib import Path

    from paralab.dashboards.powerlaw import PowerLawFit
    from paralab.dashboards.study import run_study

    study = run_study(args.file, args.overrides, Path(args.out) if args.out else None)
    table = Table(title=f"{study.metric} ≈ E + A·x^(−α)", title_justify="left")
    for column in ("group", "x", "α", "A", "E", "R² (log)", "points"):
        table.add_column(column, justify="left" if column in ("group", "x") else "right")
    for (label, axis), fit in study.fits.items():
        if isinstance(fit, PowerLawFit):
            se = f" ± {fit.alpha_stderr:.2g} ({fit.dof} dof)" if fit.alpha_stderr is not None else ""
            mark = " [yellow]⚠[/]" if fit.note else ""
            table.add_row(escape(label), axis, f"{fit.alpha:.3f}{se}{mark}", f"{fit.A:.4g}",
                          f"{fit.E:.4g}" if fit.floor_fitted else "0 (held)",
                          f"{fit.r2_log:.3f}", str(fit.n))  # fmt: skip
        else:
            table.add_row(escape(label), axis, "[yellow]no fit[/]", "", "", "", "")
    console.print(table)
    if study.isoflop:
        console.print(_isoflop_table(study))
    if study.joint:
        console.print(_joint_table(study))
    for (label, axis), fit in study.fits.items():
        if not isinstance(fit, PowerLawFit):
            console.print(f"[yellow]no fit[/] for {escape(label)} against {axis}: {escape(fit)}",
                          soft_wrap=True)
        elif fit.note:
            console.print(f"[yellow]⚠[/] {escape(label)} against {axis}: {escape(fit.note)}",
                          soft_wrap=True)
    for label, budgets in study.frontier.items():
        console.print(f"{escape(label)}: fitted to the best trial at each of its {budgets} budgets "
                      "(IsoFLOP trials)", soft_wrap=True)
    for label, why in study.skipped:
        console.print(f"[yellow]left out[/] {escape(label)}: {escape(why)}", soft_wrap=True)
    beside = ", ".join(name for name in study.files if name != "scaling.md")
    console.print(f"report: {escape(str(study.files['scaling.md']))} ({beside} beside it)",
                  soft_wrap=True)
    console.print(f"MLflow: artifacts {study.artifact_dir}/ of parent run {study.parent_run_id} in experiment "
                  f"{escape(study.experiment)} @ {escape(study.tracking_uri)}", soft_wrap=True)
    return 0


def _isoflop_table(study) -> Table:
    """Each budget's compute-optimal size and tokens, and the exponents of N_opt and D_opt."""
    from paralab.dashboards.isoflop import IsoFlopFit

    table = Table(title="IsoFLOP: compute-optimal size per budget (N_opt ∝ C^a, D_opt ∝ C^b)",
                  title_justify="left")  # fmt: skip
    for column in ("group", "budget C", "trials", "N_opt", "D_opt", study.metric):
        table.add_column(column, justify="left" if column == "group" else "right")
    for label, fit in study.isoflop.items():
        if not isinstance(fit, IsoFlopFit):
            table.add_row(escape(label), "", "", f"[yellow]no fit[/]: {escape(fit)}", "", "")
            continue
        for s in fit.slices:
            if s.params_opt is None:
                table.add_row(escape(label), f"{s.budget:.3g}", str(s.n),
                              f"[yellow]none[/]: {escape(s.reason or '')}", "", "")  # fmt: skip
            else:
                table.add_row(escape(label), f"{s.budget:.3g}", str(s.n), f"{s.params_opt:.3g}",
                              f"{s.tokens_opt:.3g}", f"{s.metric_opt:.4f}")  # fmt: skip
        if fit.params is not None and fit.tokens is not None:
            frontier = fit.frontier.formula("C") if fit.frontier is not None else ""
            table.add_row(escape(label), "[bold]all[/]", str(len(fit.used)),
                          f"a = {fit.params.exponent:.3f}", f"b = {fit.tokens.exponent:.3f}",
                          escape(frontier))  # fmt: skip
        else:
            table.add_row(escape(label), "[bold]all[/]", "", f"[yellow]no exponents[/]: {escape(fit.reason or '')}",
                          "", "")  # fmt: skip
    return table


def _joint_table(study) -> Table:
    """L(N, D) per group, and the compute-optimal exponents it implies."""
    from paralab.dashboards.joint import JointFit

    table = Table(title=f"{study.metric} ≈ E + A/N^α + B/D^β (all trials; N_opt ∝ C^a, D_opt ∝ C^b)",
                  title_justify="left")  # fmt: skip
    for column in ("group", "α", "β", "E", "a", "b", "R² (log)", "points"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for label, fit in study.joint.items():
        if isinstance(fit, JointFit):
            table.add_row(escape(label), f"{fit.alpha:.3f}", f"{fit.beta:.3f}", f"{fit.E:.4g}",
                          f"{fit.params_exponent:.3f}", f"{fit.tokens_exponent:.3f}",
                          f"{fit.r2_log:.3f}", str(fit.n))  # fmt: skip
        else:
            table.add_row(escape(label), f"[yellow]no fit[/]: {escape(fit)}", "", "", "", "", "", "")
    return table


def cmd_ui(args: argparse.Namespace) -> int:
    from paralab.platform.config.load import load_experiment
    from paralab.platform.config.schema import TrackingConfig
    from paralab.platform.services.process import ServiceError, port_is_free
    from paralab.platform.tracking.mlflow import tracking_uri
    from paralab.platform.tracking.uris import without_password

    # The experiment's own store when a file is given; else MLFLOW_TRACKING_URI or the default.
    tracking = load_experiment(args.file, args.overrides).tracking if args.file else TrackingConfig()
    uri = tracking_uri(tracking)
    if uri.startswith(("http://", "https://")):
        console.print(f"MLflow is served at {escape(without_password(uri))}", soft_wrap=True)
        return 0
    if not port_is_free(args.port, args.host):  # else MLflow says so seconds later, and exits 0
        raise ServiceError(f"port {args.port} on {args.host} is in use (another `paralab ui`?); "
                           "pass --port with a free one")
    console.print(f"serving {escape(without_password(uri))} at http://{args.host}:{args.port} "
                  "(Ctrl-C stops it)", soft_wrap=True)
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # ~1.8 GB of runners
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", args.host, "--port", str(args.port), "--workers", "1"])
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from paralab.platform.config.schema import project_dir
    from paralab.platform.services import stack_down, stack_status, stack_up

    if args.action == "up":
        with console.status("starting SeaweedFS (S3) and an MLflow server on 127.0.0.1"):
            status = stack_up(project_dir())
    elif args.action == "down":
        status = stack_down(project_dir())
    else:
        status = stack_status(project_dir())
    table = Table(title="paralab stack", title_justify="left")
    for column in ("service", "url", "pid", "healthy", "log"):
        table.add_column(column, overflow="fold")
    for service in (status.seaweedfs, status.mlflow):
        table.add_row(service.name, service.url or "-", str(service.pid or "-"),
                      "yes" if service.healthy else "no", str(service.log))
    console.print(table)
    if status.running:
        console.print("\nTo use it from this shell:")
        for key, value in status.env().items():
            console.print(f"export {key}={value}", soft_wrap=True, markup=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paralab",
        description="Train ParaRNN language models in parallel over the sequence, on Ray.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def experiment_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="experiment YAML, e.g. experiments/quickstart.yaml")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides applied after the file, e.g. train.lr=3e-4")

    p = sub.add_parser("validate", help="check an experiment and print its resolved config")
    experiment_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="train an experiment on Ray (local, or $RAY_ADDRESS)")
    experiment_args(p)
    p.add_argument("--restart", action="store_true",
                   help="start over in a new generation instead of resuming; nothing is overwritten")
    p.add_argument("--create-bucket", action="store_true",
                   help="create the storage.uri bucket if it does not exist")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="run an experiment as a Ray job on a cluster, with this checkout's code")
    experiment_args(p)
    p.add_argument("--address", metavar="URL",
                   help="the cluster's job API, e.g. http://127.0.0.1:8265 "
                        "(default: env RAY_API_SERVER_ADDRESS)")
    p.add_argument("--sweep", action="store_true",
                   help="run the YAML's sweep: section (paralab sweep) instead of one run")
    p.add_argument("--follow", action="store_true",
                   help="stream the job's logs until it ends; exit 0 only if it succeeded")
    p.add_argument("--restart", action="store_true",
                   help="passed to paralab run: start a new generation instead of resuming")
    p.add_argument("--resume", action="store_true",
                   help="with --sweep, passed to paralab sweep: continue an interrupted sweep")
    p.add_argument("--retry-errored", action="store_true",
                   help="with --sweep, passed to paralab sweep: rerun the trials that failed")
    p.add_argument("--create-bucket", action="store_true",
                   help="the job creates the storage.uri bucket if it does not exist")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("sweep", help="run the YAML's sweep: section as a Ray Tune sweep of runs")
    experiment_args(p)
    p.add_argument("--dry-run", action="store_true",
                   help="list the trials and the resources they need, and run nothing")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep; finished trials are kept")
    p.add_argument("--retry-errored", action="store_true",
                   help="with --resume (implied): run the trials that failed again")
    p.add_argument("--create-bucket", action="store_true",
                   help="create the storage.uri bucket if it does not exist")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("scaling", help="fit power laws to a finished sweep and write the report")
    experiment_args(p)
    p.add_argument("--out", metavar="DIR",
                   help="where scaling.md|png|json go (default .paralab/scaling/<sweep>/)")
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("stack", help="local S3 (SeaweedFS) and MLflow server for this project")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("ui", help="open the MLflow UI on the embedded tracking store, or FILE's")
    p.add_argument("file", nargs="?", help="experiment YAML whose tracking.uri to serve")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of FILE")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, letting KEY=VALUE overrides come after options too (`run FILE --restart k=v`),
    which argparse alone refuses once an option has ended the positionals."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


RAY_LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to 0, Ray takes 127.0.0.1 as the node address and binds every port of a local cluster
there, as it does on macOS; otherwise its GCS and raylets listen on all interfaces."""


def main(argv: Sequence[str] | None = None) -> int:
    if not os.environ.get("RAY_ADDRESS"):
        # The private local cluster binds loopback, like every service paralab starts. Set
        # before Ray is imported: Ray reads it once, at import.
        os.environ.setdefault(RAY_LOOPBACK, "0")
    args = parse(argv)
    # MLflow announces each schema migration of a new SQLite store at INFO, before anything
    # the command itself says.
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except _user_errors() as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return USAGE_ERROR
    except _failures() as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        again = _again(args)
        err_console.print("[yellow]interrupted[/]" + (f": to resume, run {escape(again)}" if again else ""),
                          soft_wrap=True)
        return 130


def _again(args: argparse.Namespace) -> str | None:
    """The command that resumes an interrupted run or sweep: the same file and overrides
    (both are part of the run's identity); None for commands that have nothing to resume."""
    import shlex

    if args.command not in ("run", "sweep"):
        return None
    words = ["paralab", args.command]
    if getattr(args, "file", None):
        words += [args.file, *args.overrides]
    if args.command == "sweep":
        words.append("--resume")
    return shlex.join(words)


if __name__ == "__main__":
    sys.exit(main())
