"""The sweep driver: a Ray Tune experiment whose trials are paralab runs (Ray Train jobs).

    plan = plan_sweep("experiments/sweeps/lr.yaml", ["train.steps=200"])  # no side effects
    outcome = run_sweep(plan)                     # or run_sweep(plan, resume=True)

Where things go, for a sweep ``<name>-<sweep id>`` (the id hashes the resolved experiment,
``sweep:`` included, but not the code, so ``--resume`` finds the sweep after a code edit):

- Tune's state: ``<storage>/sweeps/<name>-<id>/`` (local or S3); ``--resume`` restores it.
- Each trial: an ordinary run folder ``<storage>/<name>-<run identity>/``, found again by
  identity, so an unfinished trial continues from its latest checkpoint (unless the code
  that computes runs changed since: then the trial's identity differs and it starts over).
- MLflow: one parent run (tag ``paralab.sweep``), one child per distinct trial config.
- ``best.yaml``, ``summary.csv`` and ``summary.png``: in the sweep folder (on S3 storage,
  also in ``.paralab/sweeps/<name>-<id>/`` so that ``paralab run`` can read ``best.yaml``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from paralab.platform.config.load import ConfigError, from_dict, load_experiment, to_dict, to_yaml
from paralab.platform.config.schema import ExperimentConfig, SweepConfig, project_dir
from paralab.platform.identity import NON_SEMANTIC, code_version, drop_key, git_commit
from paralab.platform.train.launch import LaunchError, check_data, init_ray
from paralab.platform.tune import space as spaces
from paralab.platform.tune.progress import Board, BoardCallback, active, at_last_step
from paralab.platform.tune.trial import (
    SWEEP_TAG,
    TRIAL_TAG,
    Claims,
    TrialContext,
    run_trial,
    sweep_runs,
    trial_values,
)

SWEEPS_DIR = "sweeps"
DRIVER_RESOURCE = "TRAIN_DRIVER"
"""Custom resource of trial drivers. A trial's driver only waits on its Ray Train job; taking
a CPU for it starves the job's own workers on small machines (2 drivers on 2 CPUs)."""
DRIVER_SHARE = 0.01
RESOURCE_KEYS = ("train.workers", "train.cpus_per_worker", "train.use_gpu")
STOPPED_TAG = "paralab.sweep.stopped_at_step"


class _TuneInOneLine(logging.Filter):
    """Tune logs a failed trial with its whole traceback, and tells how to resume in Python;
    the sweep's summary names the error in one line (the traceback stays in the trial's
    ``error.txt``) and gives the ``paralab sweep --resume`` command instead."""

    DROPPED = ("Experiment has been interrupted", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Trial task failed"):
            record.exc_info, record.exc_text = None, None
        return not message.startswith(self.DROPPED)


class FinishingASHA(ASHAScheduler):
    """ASHA that never stops a trial at its last step.

    Such a trial is finishing anyway, and stopping it would kill its trial actor before its
    MLflow run is marked finished (ASHA stops every trial at ``max_t``, and its last rung may
    fall on the last step).
    """

    def __init__(self, *, final_step: int, **kwargs: Any):
        super().__init__(stop_last_trials=False, **kwargs)
        self.final_step = final_step
        """The base config's steps, for a result that does not carry its trial's own."""

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and at_last_step(result, self.final_step):
            return self.CONTINUE
        return action


@dataclass
class Resources:
    """What one trial's Ray Train job takes (the largest over the sweep's trials)."""

    workers: int
    cpus: float
    gpus: int

    def describe(self) -> str:
        gpu = f" + {self.gpus} GPU" if self.gpus else ""
        return f"{self.workers} worker(s), {self.cpus:g} CPU{gpu}"


@dataclass
class SweepPlan:
    """A resolved sweep: its config, id, trials as listed before it starts, and resources."""

    path: str
    overrides: list[str]
    cfg: ExperimentConfig
    sweep_id: str
    trials: list[dict[str, Any]]
    """The trials' values (exact for grid/random; optuna: its first suggestions)."""
    per_trial: Resources
    trial_cfgs: list[ExperimentConfig] = field(default_factory=list)
    """The experiment each listed trial runs, in ``trials`` order, built once by :func:`plan_sweep`."""

    @property
    def sweep(self) -> SweepConfig:
        assert self.cfg.sweep is not None
        return self.cfg.sweep

    @property
    def name(self) -> str:
        return f"{self.cfg.name}-{self.sweep_id}"

    @property
    def experiment(self) -> str:
        """The MLflow experiment that holds the parent and child runs."""
        return self.cfg.tracking.experiment or self.cfg.name

    @property
    def exact(self) -> bool:
        """The listed trials are exactly the ones that will run."""
        return self.sweep.search.type != "optuna"

    def trial_cfg(self, values: dict[str, Any]) -> ExperimentConfig:
        """The experiment one trial runs, as ``paralab run`` would load it."""
        tree = to_dict(self.cfg)
        tree["sweep"] = None
        return from_dict(spaces.apply(tree, values))

    def max_steps(self) -> int:
        """The most steps any listed trial trains (``train.steps`` or the FLOP budget may be
        swept); the base config's when no trial is listed."""
        return max([c.train.steps for c in self.trial_cfgs] or [self.cfg.train.steps])


def sweep_id(cfg: ExperimentConfig) -> str:
    """Hash of what the sweep computes (the resolved experiment with its ``sweep``), not the code."""
    tree = to_dict(cfg)
    for dotted in NON_SEMANTIC:
        if dotted != "sweep":
            drop_key(tree, dotted)
    return "sweep-" + hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:10]


def plan_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepPlan:
    """Load and check a sweep without touching Ray, storage or MLflow (``--dry-run`` prints it)."""
    cfg = load_experiment(path, overrides)
    if cfg.sweep is None:
        raise ConfigError(f"{path}: has no sweep: section; add one (see docs/sweeps.md) or use "
                          "`paralab run` for a single run")
    spaces.check_params(path, list(overrides), cfg.sweep)
    plan = SweepPlan(str(path), list(overrides), cfg, sweep_id(cfg), [], Resources(0, 0, 0))
    plan.trials = spaces.expand(cfg.sweep)
    plan.trial_cfgs = _listed_trials(plan)
    plan.per_trial = _largest_trial(plan)
    _refuse_pbt(plan)
    for values, trial in zip(plan.trials, plan.trial_cfgs) if plan.trials else [(None, cfg)]:
        _check_metric(path, cfg.sweep.metric, trial, values)
    _check_asha(plan)
    _check_scaling_keys(path, cfg)
    return plan


def _listed_trials(plan: SweepPlan) -> list[ExperimentConfig]:
    """Every listed trial's config, built as its run will be: values that pass alone but not
    together (``model.heads`` drawn not dividing ``model.d_model``) fail here, naming the trial."""
    built = []
    for index, values in enumerate(plan.trials):
        try:
            built.append(plan.trial_cfg(values))
        except ConfigError as err:
            raise ConfigError(f"{plan.path}: sweep trial #{index} ({spaces.trial_label(values)}): "
                              f"{spaces.reason(err)}") from None
    return built


def _check_asha(plan: SweepPlan) -> None:
    """ASHA with every rung past the trials' end stops nothing; say so rather than run a
    sweep that silently is not one."""
    scheduler = plan.sweep.scheduler
    if scheduler.type != "asha" or scheduler.max_t is not None:
        return  # an explicit max_t is checked against grace_period by the schema
    steps = plan.max_steps()
    if scheduler.grace_period >= steps:
        raise ConfigError(
            f"{plan.path}: sweep.scheduler.grace_period={scheduler.grace_period} is not below the "
            f"trials' {steps} steps, so ASHA would stop no trial; lower grace_period, train "
            "longer, or use scheduler.type=fifo"
        )


def _check_scaling_keys(path: str | Path, cfg: ExperimentConfig) -> None:
    """A typo in ``scaling.group_by`` or ``scaling.metric`` would otherwise surface in
    ``paralab scaling``, after every trial has trained."""
    from paralab.dashboards.points import lookup

    if cfg.scaling is None:
        return
    for key in cfg.scaling.group_by:
        try:
            lookup(cfg, key)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    metric = cfg.scaling.metric
    if metric not in EVAL_METRICS + STEP_METRICS and not NEWTON_METRIC.match(metric):
        raise ConfigError(f"{path}: scaling.metric={metric!r} is not a logged metric; use one of "
                          f"{', '.join(EVAL_METRICS + STEP_METRICS)} or newton/…")


EVAL_METRICS = ("val_loss", "val_ppl")
"""In every report to Tune: each report is an evaluation."""
STEP_METRICS = ("loss", "grad_norm", "lr", "tokens_per_s", "model_tflops_per_s", "tokens", "mfu")
"""In a report only when its step is also a logging step (``train.log_every``)."""


NEWTON_METRIC = re.compile(r"^newton/(?:residual_(\d+)|iterations|fallbacks)$")
"""Step metrics of a ParaRNN's Newton solves (``ParaRNNLM.newton_stats``)."""


def _check_metric(path: str | Path, metric: str, cfg: ExperimentConfig,
                  values: dict[str, Any] | None) -> None:
    """``sweep.metric`` must be in every report Tune ranks a trial by (Tune fails a trial at
    its first report without it, after it has started training): checked for the base config
    and for each listed trial, which may sweep the keys that decide it."""
    tc, model = cfg.train, cfg.model
    where = f"{path}: " + (f"in trial {spaces.trial_label(values)}, " if values else "")
    if metric in EVAL_METRICS:
        return
    newton = NEWTON_METRIC.match(metric)
    if metric not in STEP_METRICS and not newton:
        raise ConfigError(
            f"{where}sweep.metric={metric!r} is not a reported metric; use one of "
            f"{', '.join(EVAL_METRICS + STEP_METRICS)}, newton/residual_<k>, newton/iterations "
            "or newton/fallbacks"
        )
    if metric == "mfu" and not tc.use_gpu:
        raise ConfigError(f"{where}sweep.metric='mfu' is reported only on GPUs whose peak FLOPs "
                          "are known (train.use_gpu=true); rank by tokens_per_s instead")
    if newton and metric != "newton/fallbacks":
        if model.arch != "pararnn" or model.mode == "sequential":
            raise ConfigError(f"{where}sweep.metric={metric!r}: a model with model.arch="
                              f"{model.arch}, model.mode={model.mode} runs no Newton solve")
        if newton.group(1) is not None and int(newton.group(1)) > model.newton_iters:
            raise ConfigError(f"{where}sweep.metric={metric!r}: the residuals run from 0 to "
                              f"model.newton_iters={model.newton_iters}")
    if tc.eval_every % tc.log_every or tc.checkpoint_every % tc.log_every:
        raise ConfigError(
            f"{where}sweep.metric={metric!r} is logged every train.log_every={tc.log_every} "
            f"steps, which must divide train.eval_every={tc.eval_every} and "
            f"train.checkpoint_every={tc.checkpoint_every} for Tune to see it in every report"
        )


def _largest_trial(plan: SweepPlan) -> Resources:
    """The most any trial can take: every combination of the swept resource keys' extreme
    values (optuna may suggest later what the listed trials do not show)."""
    candidates = [plan.cfg]
    swept = [k for k in plan.sweep.params if k in RESOURCE_KEYS]
    if swept:
        probes = [spaces.probe_values(plan.sweep.params[k]) for k in swept]
        candidates += [plan.trial_cfg(dict(zip(swept, combo)))
                       for combo in itertools.product(*probes)]  # fmt: skip
        candidates += [plan.trial_cfg({k: t[k] for k in swept}) for t in plan.trials]
    workers = max(c.train.workers for c in candidates)
    cpus = max(c.train.workers * c.train.cpus_per_worker for c in candidates)
    gpus = max(c.train.workers if c.train.use_gpu else 0 for c in candidates)
    return Resources(workers, cpus, gpus)


def concurrency(plan: SweepPlan, cpus: float, gpus: float) -> int:
    """Trials that fit at once on a cluster of ``cpus``/``gpus``, capped by the sweep's setting."""
    need = plan.per_trial
    fit = math.floor(cpus / need.cpus + 1e-9)
    if need.gpus:
        fit = min(fit, math.floor(gpus / need.gpus + 1e-9))
    if fit < 1:
        gpu = f" and {gpus:g} GPUs" if need.gpus else ""
        advice = ("run it on a cluster with GPUs (`paralab submit --sweep`, or RAY_ADDRESS) or "
                  "set train.use_gpu=false") if need.gpus > gpus else (
                  "lower train.workers or train.cpus_per_worker")  # fmt: skip
        raise LaunchError(
            f"one trial needs {need.describe()} but this Ray cluster has {cpus:g} CPUs{gpu}; "
            f"{advice}"
        )
    wanted = plan.sweep.max_concurrent_trials
    return min(wanted, fit) if wanted else fit


# -- running ---------------------------------------------------------------------------------


@dataclass
class TrialOutcome:
    """How one trial ended, as the summary table, CSV and plot show it."""

    trial_id: str
    values: dict[str, Any]
    status: str
    """FINISHED, STOPPED (early, by the scheduler or the time budget), ERROR, INTERRUPTED or PENDING."""
    step: int | None = None
    metric: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    identity: str | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return spaces.trial_label(self.values)


@dataclass
class SweepOutcome:
    plan: SweepPlan
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    best_yaml: Path | None
    output_dir: Path
    """Local folder holding best.yaml, summary.csv and summary.png."""
    state_path: str
    """Tune's experiment folder (local path or bucket/prefix), which ``--resume`` restores."""
    parent_run_id: str
    tracking_uri: str
    interrupted: bool
    wall_s: float

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)


def _driver_resources(cluster: dict[str, float]) -> dict[str, float]:
    if cluster.get(DRIVER_RESOURCE):
        return {"CPU": 0, DRIVER_RESOURCE: DRIVER_SHARE}
    # A cluster started without the resource (ray start --resources='{"TRAIN_DRIVER": 100}').
    return {"CPU": DRIVER_SHARE}


def _trial_name(trial) -> str:
    return spaces.trial_label(trial.config)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _scheduler(plan: SweepPlan):
    sc = plan.sweep.scheduler
    if sc.type == "asha":
        # Reports carry the optimizer step, so rungs are in steps whatever eval_every is.
        return FinishingASHA(final_step=plan.cfg.train.steps, time_attr="step",
                             max_t=sc.max_t or plan.max_steps(), grace_period=sc.grace_period,
                             reduction_factor=sc.reduction_factor, brackets=sc.brackets)
    return None


def _refuse_pbt(plan: SweepPlan) -> None:
    if plan.sweep.scheduler.type == "pbt":
        raise LaunchError(
            "sweep.scheduler.type=pbt cannot run yet: on Ray 2.60 a Ray Train (V2) job reports "
            "metrics to Tune but not checkpoints, and PBT needs them to copy weights between "
            "trials; use asha (or fifo)"
        )


def _search(plan: SweepPlan, at_once: int | None):
    """The search algorithm, and the concurrency to give TuneConfig (which it only applies to
    Searchers such as Optuna's; the basic generator takes its own)."""
    if plan.sweep.search.type == "optuna":
        return spaces.optuna_search(plan.sweep), at_once
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=plan.sweep.search.seed, max_concurrent=at_once or 0), None


def _storage(plan: SweepPlan, create_bucket: bool = False):
    from paralab.platform.storage import Storage

    storage = Storage.from_config(plan.cfg.storage)
    storage.preflight(create_bucket=create_bucket)
    root, fs = storage.ray_storage()
    return storage, root.rstrip("/"), fs


def _parent_tracker(plan: SweepPlan, state_uri: str):
    from paralab.platform.tracking.mlflow import Tracker, flatten

    tags = {SWEEP_TAG: plan.sweep_id, "paralab.kind": "sweep", "paralab.code_version": code_version(),
            "paralab.storage": state_uri, "paralab.sweep.search": plan.sweep.search.type,
            "paralab.sweep.scheduler": plan.sweep.scheduler.type}
    if git_commit():
        tags["mlflow.source.git.commit"] = git_commit()
    tracker, reopened = Tracker.open(plan.cfg.tracking, plan.experiment, plan.sweep_id, 0,
                                     run_name=f"{plan.cfg.name} sweep", tags=tags)
    tracker.log_params(flatten({"sweep": to_dict(plan.sweep)}))
    tracker.log_params({"sweep.keys": ",".join(plan.sweep.params)})
    tracker.log_text(to_yaml(plan.cfg), "sweep.yaml")
    return tracker, reopened


def run_sweep(
    plan: SweepPlan,
    *,
    resume: bool = False,
    retry_errored: bool = False,
    create_bucket: bool = False,
    board: Board | None = None,
    on_event: Callable[[str], None] = lambda message: None,
) -> SweepOutcome:
    """Run (or resume) the sweep to the end, or until interrupted; then summarise it."""
    import pyarrow.fs as pafs
    import ray
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own console output, at verbose=0: none

    from paralab.platform.data import prepare
    from paralab.platform.tracking.mlflow import tracking_uri

    started = time.monotonic()
    resume = resume or retry_errored
    storage, root, fs = _storage(plan, create_bucket)
    sweeps_root = f"{root}/{SWEEPS_DIR}"
    state_path = f"{sweeps_root}/{plan.name}"
    state_uri = storage.uri_of(SWEEPS_DIR, plan.name)
    exists = tune.Tuner.can_restore(state_path, storage_filesystem=fs)
    if resume and not exists:
        raise LaunchError(f"nothing to resume: no sweep state at {state_uri}; run the same "
                          "command without --resume to start the sweep")
    if exists and not resume:
        raise LaunchError(f"this sweep already ran at {state_uri}; pass --resume to continue it "
                          "(finished trials are kept), or change the sweep to start another")

    # Everything that can fail on bad input fails here, before anything is recorded.
    on_event("preparing data")
    data = prepare(plan.cfg.data, endpoint_url=plan.cfg.storage.endpoint_url,
                   region=plan.cfg.storage.region)
    data_swept = any(k.startswith("data.") for k in plan.sweep.params)
    for trial in plan.trial_cfgs if plan.exact and not data_swept else []:
        check_data(trial, data)  # e.g. a swept batch size the data can't fill
    data_key = data.key
    on_event("starting Ray" if not os.environ.get("RAY_ADDRESS") else "joining the Ray cluster")
    if dashboard := init_ray(resources={DRIVER_RESOURCE: 1}):
        on_event(f"Ray dashboard {dashboard}")
    cluster = ray.cluster_resources()
    if os.environ.get("RAY_ADDRESS"):
        at_once = plan.sweep.max_concurrent_trials or None  # an autoscaler may add nodes
    else:
        at_once = concurrency(plan, cluster.get("CPU", 0), cluster.get("GPU", 0))
    scheduler = _scheduler(plan)

    parent, _ = _parent_tracker(plan, state_uri)
    base = to_dict(plan.cfg)
    base["sweep"] = None
    base["tracking"]["uri"] = tracking_uri(plan.cfg.tracking)
    base["storage"]["uri"] = storage.uri
    from paralab.platform.data import resolved_cache_dir

    base["data"]["cache_dir"] = resolved_cache_dir(plan.cfg.data)  # actors run elsewhere
    context = TrialContext(
        base=base, sweep_id=plan.sweep_id, parent_run_id=parent.run_id, data_key=data_key,
        data_swept=data_swept,
        claims=f"paralab-claims-{plan.sweep_id}",
    )
    claims = Claims.options(name=context.claims, get_if_exists=True).remote()
    board = board or Board(plan.sweep.metric, len(plan.trials), plan.cfg.train.steps)

    def on_trial_end(trial_id: str, errored: bool) -> None:
        claims.release.remote(trial_id)
        row = board.rows.get(trial_id)
        if row is not None and not errored:
            _settle_child(parent, plan.sweep_id, trial_id, row.values, row.step)

    board.on_trial_end = on_trial_end
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                    _driver_resources(cluster))
    search, searcher_at_once = _search(plan, at_once)
    if resume:
        on_event(f"resuming sweep {plan.name} from {state_uri}")
        tuner = tune.Tuner.restore(state_path, trainable, resume_unfinished=True,
                                   resume_errored=retry_errored, storage_filesystem=fs)
    else:
        on_event(f"sweep {plan.name}: {len(plan.trials)} trial(s), up to "
                 f"{at_once or 'as many as fit'} at a time, each {plan.per_trial.describe()}")
        tuner = tune.Tuner(
            trainable,
            param_space=spaces.param_space(plan.sweep),
            tune_config=tune.TuneConfig(
                metric=plan.sweep.metric, mode=plan.sweep.mode, search_alg=search,
                scheduler=scheduler, num_samples=plan.sweep.num_samples,
                max_concurrent_trials=searcher_at_once, time_budget_s=plan.sweep.time_budget_s,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=plan.name, storage_path=sweeps_root, storage_filesystem=fs,
                callbacks=[BoardCallback()], verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    active(board)
    quiet = _TuneInOneLine()
    tune_logs = [logging.getLogger(n) for n in ("ray.tune.execution.tune_controller", "ray.tune.tune")]
    for log in tune_logs:
        log.addFilter(quiet)
    fit_started = time.monotonic()
    try:
        grid = tuner.fit()
    except BaseException:
        _close_children(parent, plan.sweep_id, {})
        parent.finish("KILLED")
        raise
    finally:
        active(None)
        for log in tune_logs:
            log.removeFilter(quiet)
    fit_s = time.monotonic() - fit_started

    # Tune's ResultGrid does not expose trial status; its analysis holds the Trial objects.
    tune_trials = grid._experiment_analysis.trials
    budget_spent = bool(plan.sweep.time_budget_s and fit_s >= plan.sweep.time_budget_s)
    expected = len(plan.trials) if plan.exact else plan.sweep.num_samples
    unfinished = any(t.status not in ("TERMINATED", "ERROR") for t in tune_trials)
    interrupted = not budget_spent and (unfinished or len(tune_trials) < expected)
    # On Ctrl-C Tune saves running trials as running (they resume), then stops them: those
    # are interrupted, not stopped by the scheduler, though Tune now calls them TERMINATED.
    cut = {t.trial_id for t in tune_trials if t.status == "TERMINATED"
           and t.trial_id not in board.completed} if interrupted else set()
    trials = [_outcome(plan, t, t.trial_id in cut) for t in tune_trials]
    _link_runs(parent, plan.sweep_id, trials)
    _close_children(parent, plan.sweep_id, {t.run_id: t for t in trials if t.run_id})
    best = _best(plan, trials)

    from paralab.platform.tune import summary

    output_dir = Path(state_path) if fs is None else project_dir() / ".paralab" / SWEEPS_DIR / plan.name
    output_dir.mkdir(parents=True, exist_ok=True)
    files = summary.write(plan, trials, best, output_dir)
    best_yaml = files.get("best.yaml")
    if fs is not None and not isinstance(fs, pafs.LocalFileSystem):
        for name, path in files.items():
            storage.write_bytes(f"{SWEEPS_DIR}/{plan.name}/{name}", path.read_bytes())
    for path in files.values():
        parent.log_artifact(path)
    _record_parent(parent, plan, trials, best)
    if interrupted:
        parent.finish("KILLED")
    elif trials and all(t.status == "ERROR" for t in trials):
        parent.finish("FAILED")
    else:
        parent.finish()
    return SweepOutcome(plan, trials, best, best_yaml, output_dir, state_uri, parent.run_id,
                        parent.uri, interrupted, time.monotonic() - started)


def _outcome(plan: SweepPlan, trial, cut: bool = False) -> TrialOutcome:
    values = {k: spaces.plain(v) for k, v in trial.config.items()}
    result = trial.last_result or {}
    step = int(result["step"]) if "step" in result else None
    metric = result.get(plan.sweep.metric)
    finished = at_last_step(result, plan.cfg.train.steps)
    if trial.status == "TERMINATED" and (finished or not cut):
        status = "FINISHED" if finished else "STOPPED"
    elif trial.status == "ERROR":
        status = "ERROR"
    elif trial.status == "PENDING" and step is None:
        status = "PENDING"
    else:
        status = "INTERRUPTED"
    metrics = {k: float(v) for k, v in result.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    error = _trial_error(trial) if trial.status == "ERROR" else None
    return TrialOutcome(trial.trial_id, values, status, step,
                        float(metric) if isinstance(metric, (int, float)) else None,
                        metrics, None, None, error)


def _trial_error(trial) -> str:
    """The last line of a failed trial's error (Tune keeps it in the trial's folder)."""
    text = ""
    try:
        text = str(trial.get_pickled_error() or "")
        if not text and trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text()
    except Exception:  # noqa: BLE001 - an unreadable error still counts as a failure
        pass
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "failed (see error.txt in the trial's folder)"


def _children(parent, sweep_id: str) -> list[Any]:
    exp_id = parent.client.get_run(parent.run_id).info.experiment_id
    return sweep_runs(parent.client, exp_id, parent.run_id, sweep_id)


def _child_of(runs: list[Any], trial_id: str, values: dict[str, Any], sweep_id: str) -> Any | None:
    """The child run a trial wrote to: tagged with its id, else (a trial whose config equals an
    earlier one's, so the same run) with its values. Never by recomputing the identity: the
    driver may hash other code than the trial did."""
    for run in runs:
        if run.data.tags.get(TRIAL_TAG) == trial_id:
            return run
    for run in runs:
        if trial_values(run, sweep_id) == values:
            return run
    return None


def _link_runs(parent, sweep_id: str, trials: list[TrialOutcome]) -> None:
    from paralab.platform.tracking.mlflow import IDENTITY_TAG

    runs = _children(parent, sweep_id)
    for trial in trials:
        run = _child_of(runs, trial.trial_id, trial.values, sweep_id)
        if run is not None:
            trial.run_id, trial.identity = run.info.run_id, run.data.tags.get(IDENTITY_TAG)


def _settle_child(parent, sweep_id: str, trial_id: str, values: dict[str, Any],
                  step: int | None) -> None:
    """Mark the child run of a trial that Tune stopped, and the step it stopped at.

    Called when Tune reports the trial complete: a run that finished on its own is already
    FINISHED; any other was stopped, whether its dying actor marked it KILLED first, never got
    to mark it (RUNNING), or could not see the stop and marked it FAILED."""
    run = _child_of(_children(parent, sweep_id), trial_id, values, sweep_id)
    if run is not None and run.info.status in ("RUNNING", "FAILED", "KILLED"):
        if step is not None:
            parent.client.set_tag(run.info.run_id, STOPPED_TAG, str(step))
        if run.info.status != "KILLED":  # keep the end time its actor wrote
            parent.client.set_terminated(run.info.run_id, status="KILLED")


def _close_children(parent, sweep_id: str, trials: dict[str, TrialOutcome]) -> None:
    """Child runs left RUNNING by trials that Tune stopped or that the interrupt killed, and
    every run of a trial the scheduler stopped (tagged with its step, however it ended)."""
    for run in _children(parent, sweep_id):
        trial = trials.get(run.info.run_id)
        stopped = trial is not None and trial.status == "STOPPED"
        if run.info.status != "RUNNING" and not (stopped and run.info.status in ("FAILED", "KILLED")):
            continue
        if stopped and trial.step is not None:
            parent.client.set_tag(run.info.run_id, STOPPED_TAG, str(trial.step))
        if run.info.status != "KILLED":
            parent.client.set_terminated(run.info.run_id, status="KILLED")


def _best(plan: SweepPlan, trials: list[TrialOutcome]) -> TrialOutcome | None:
    scored = [t for t in trials if t.metric is not None and math.isfinite(t.metric)]
    finished = [t for t in scored if t.status == "FINISHED"]
    pool = finished or scored
    if not pool:
        return None
    sign = 1 if plan.sweep.mode == "min" else -1
    return min(pool, key=lambda t: sign * t.metric)


def _record_parent(parent, plan: SweepPlan, trials: list[TrialOutcome], best: TrialOutcome | None) -> None:
    counts = {s: sum(t.status == s for t in trials)
              for s in ("FINISHED", "STOPPED", "ERROR", "INTERRUPTED", "PENDING")}
    metrics = {f"trials_{s.lower()}": float(n) for s, n in counts.items()}
    tags: dict[str, Any] = {}
    if best is not None:
        metrics[f"best_{plan.sweep.metric}"] = best.metric
        tags.update({"paralab.sweep.best_trial": best.label,
                     "paralab.sweep.best_values": json.dumps(best.values)})
        if best.run_id:
            tags["paralab.sweep.best_run_id"] = best.run_id
    parent.log_metrics(metrics, step=len(trials))
    if tags:
        parent.set_tags(tags)
