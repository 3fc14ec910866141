"""Turn a resolved experiment into a Ray Train job, tracked in MLflow, checkpointed to storage.

A run lives at ``<storage>/<name>-<identity>[.gN]``. Running the same experiment again
reopens that folder: Ray finds the latest complete checkpoint in it and the same MLflow
run continues. ``restart=True`` starts generation N+1 beside it, so nothing of the first
is overwritten. A run whose last checkpoint is at ``train.steps`` is complete and is not
run again.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from paralab.platform.config.load import to_dict, to_yaml
from paralab.platform.config.schema import ExperimentConfig
from paralab.platform.identity import code_version, git_commit, package_version, run_identity
from paralab.platform.services.process import ephemeral_port, port_is_free
from paralab.platform.storage.lease import LeaseHeld, RunLease, conditional_object
from paralab.platform.tracking.mlflow import DIVERGED_TAG, Tracker, flatten
from paralab.platform.tracking.uris import without_password
from paralab.platform.train import checkpoint as ckpt


class LaunchError(RuntimeError):
    """A run that cannot start as configured; the message names what to change."""


class TrainingFailed(RuntimeError):
    """Training started but failed past ``train.max_failures`` restarts (it can be resumed), or
    diverged (the message says what to change)."""


@dataclass
class RunSummary:
    name: str
    identity: str
    generation: int
    storage_path: str
    mlflow_run_id: str
    tracking_uri: str
    status: str
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    resumed_from_step: int | None = None


def _summary(cfg: ExperimentConfig, plan: RunPlan, tracker: Tracker) -> RunSummary:
    return RunSummary(
        name=cfg.name, identity=plan.identity, generation=plan.generation,
        storage_path=plan.storage_uri, mlflow_run_id=tracker.run_id, tracking_uri=tracker.uri,
        status="RUNNING", steps=cfg.train.steps, resumed_from_step=plan.resumed_from,
    )


def run_dir_name(name: str, identity: str, generation: int) -> str:
    return f"{name}-{identity}" + (f".g{generation}" if generation else "")


def _run_folders(fs, root: str, name: str) -> list[tuple[str, int, str]]:
    """(identity, generation, folder name) of every run folder of experiment ``name``."""
    import pyarrow.fs as pafs

    pattern = re.compile(rf"^{re.escape(name)}-([0-9a-f]{{12}})(?:\.g(\d+))?$")
    infos = ckpt.list_folder(fs, root)
    return [
        (match.group(1), int(match.group(2) or 0), info.base_name)
        for info in infos
        if info.type == pafs.FileType.Directory and (match := pattern.match(info.base_name))
    ]


def existing_generations(fs, root: str, name: str, identity: str) -> list[int]:
    return sorted(gen for ident, gen, _ in _run_folders(fs, root, name) if ident == identity)


def other_identities(fs, root: str, name: str, identity: str) -> list[str]:
    """Run folders of experiment ``name`` under another identity (other config or code)."""
    return sorted(folder for ident, _, folder in _run_folders(fs, root, name) if ident != identity)


def _tags(cfg: ExperimentConfig, identity: str) -> dict[str, str]:
    tags = {
        "paralab.code_version": code_version(),
        "arch": cfg.model.arch,
        "cell": cfg.model.cell if cfg.model.arch == "pararnn" else "attention",
        "newton_iters": str(cfg.model.newton_iters),
        "scale": f"d{cfg.model.d_model}-l{cfg.model.n_layers}",
        "strategy": cfg.train.strategy,
        "workers": str(cfg.train.workers),
    }
    if git_commit():
        tags["mlflow.source.git.commit"] = git_commit()
    return tags


PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
API_SERVER_ADDRESS = "RAY_API_SERVER_ADDRESS"
DASHBOARD_PORT = 8265
# Ray Train gives a worker group RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) to be placed,
# then tries again, forever by default: right for a cluster that autoscales, but on one
# machine, whose size is checked before the run, a group that cannot be placed means
# something else holds the CPUs, and waiting would never end.
LOCAL_PLACEMENT_TRIES = 3
START_TIMEOUT = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def init_ray(resources: dict[str, float] | None = None) -> str | None:
    """Join ``RAY_ADDRESS`` when set, else start a private local cluster sized to this machine;
    returns the local cluster's dashboard URL (``None`` when joining, or already connected).

    The local cluster binds 127.0.0.1 only when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was
    set before Ray was imported, as the CLI does. ``resources`` adds custom resources to it (a
    sweep's trial drivers reserve one, so that they take no CPU from their workers).
    """
    import ray

    if ray.is_initialized():
        return None
    address = os.environ.get("RAY_ADDRESS")
    env = {k: os.environ[k] for k in ("TRITON_INTERPRET", "PARALAB_HOME", "PARALAB_FAULT_INJECT") if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return None
    # Ray turns token authentication on for local clusters and says so on every start;
    # the CLI keeps that default and drops the notice.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # One machine is never preempted: no watcher actor per worker group (its process
    # costs seconds of CPU on a small machine). Set before Ray starts, which passes its
    # environment down to the controller that reads it.
    os.environ.setdefault(PREEMPTION_WATCHER, "0")
    # The dashboard stays on (bound to 127.0.0.1): Ray Train's placement-group cleaner
    # asks its state API whether a trial's controller is alive, and without it the CPUs
    # of a trial that ASHA stopped are never given back. That API, called inside the
    # cluster, asks the newest Ray cluster on the machine unless told which; told
    # nothing, with another cluster started meanwhile it finds no controller, and frees
    # a live trial's CPUs or never a stopped one's. So the port is chosen here (Ray's
    # usual 8265 when free) and every process of this cluster (they inherit this
    # environment) is told it.
    dashboard_port = DASHBOARD_PORT if port_is_free(DASHBOARD_PORT) else ephemeral_port()
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    os.environ[API_SERVER_ADDRESS] = dashboard
    ray.init(address="local", num_cpus=os.cpu_count(), resources=resources,
             runtime_env=runtime_env, log_to_driver=False, configure_logging=False,
             include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=dashboard_port)
    return dashboard


def local_resources() -> tuple[float, float]:
    """CPUs and GPUs of the private cluster :func:`init_ray` starts here."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPUs
        gpus = 0
    return float(os.cpu_count() or 1), float(gpus)


def check_resources(cfg: ExperimentConfig) -> None:
    """Refuse a run the private local cluster cannot place, before starting it. A cluster at
    ``RAY_ADDRESS`` may autoscale to fit; Ray reports what it cannot place."""
    if os.environ.get("RAY_ADDRESS"):
        return
    tc = cfg.train
    cpus, gpus = local_resources()
    need_cpu = tc.workers * tc.cpus_per_worker
    if need_cpu > cpus:
        raise LaunchError(
            f"train.workers={tc.workers} x train.cpus_per_worker={tc.cpus_per_worker} needs "
            f"{need_cpu:g} CPUs but this machine's Ray cluster has {cpus:g}; "
            "lower train.workers or train.cpus_per_worker"
        )
    if tc.use_gpu and tc.workers > gpus:
        raise LaunchError(
            f"train.use_gpu=true with train.workers={tc.workers} needs {tc.workers} GPUs "
            f"but the cluster has {gpus:g}; set train.use_gpu=false or fewer workers"
        )


def check_data(cfg: ExperimentConfig, data: Any) -> None:
    """Fail on the driver, in one line, where the workers would fail after every restart: a
    tokenizer vocabulary larger than the model's, or less data than one global batch."""
    if data.vocab_size > cfg.model.vocab_size:
        raise LaunchError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({data.vocab_size}); set model.vocab_size to at least {data.vocab_size}"
        )
    tc = cfg.train
    micro_batch = tc.batch_size // (tc.workers * tc.grad_accum)
    data.train_batches(cfg.data.seq_len, micro_batch, world_size=tc.workers)  # DataError if short


def _watch(tracker: Tracker, tokens_per_step: int,
           on_progress: Callable[[int, dict[str, float]], None], stop: threading.Event) -> None:
    """Poll the MLflow run's latest metrics to drive the CLI's progress bar. The step comes
    from the latest ``tokens`` (step × tokens per step): one small request per poll, however
    long the run's history grows."""
    while not stop.wait(2.0):
        try:
            metrics = dict(tracker.client.get_run(tracker.run_id).data.metrics)
        except Exception:  # noqa: BLE001 - a missed poll only delays the bar
            continue
        if "tokens" in metrics:
            on_progress(round(metrics["tokens"] / tokens_per_step), metrics)


@dataclass
class RunPlan:
    """Where a run lives and how far it got: computed before anything is written."""

    identity: str
    generation: int
    run_name: str
    storage: Any
    root: str
    """Ray's ``storage_path`` (a local path, or ``bucket/prefix`` on S3)."""
    fs: Any
    """The ``pyarrow`` filesystem of ``root``."""
    resumed_from: int | None
    """Step Ray Train restores from (its snapshot's latest checkpoint), None for a fresh run."""

    @property
    def run_path(self) -> str:
        return f"{self.root.rstrip('/')}/{self.run_name}"

    @property
    def storage_uri(self) -> str:
        return f"{self.storage.uri.rstrip('/')}/{self.run_name}"


def plan_run(cfg: ExperimentConfig, *, restart: bool = False, create_bucket: bool = False) -> RunPlan:
    """Check storage and find this experiment's run folder and latest checkpoint."""
    from paralab.platform.storage import Storage

    identity = run_identity(cfg)
    storage = Storage.from_config(cfg.storage)
    storage.preflight(create_bucket=create_bucket)
    root, fs = storage.ray_storage()
    if fs is None:
        import pyarrow.fs as pafs

        fs = pafs.LocalFileSystem()
        Path(root).mkdir(parents=True, exist_ok=True)
    gens = existing_generations(fs, root, cfg.name, identity)
    generation = (gens[-1] + 1 if gens else 0) if restart else (gens[-1] if gens else 0)
    run_name = run_dir_name(cfg.name, identity, generation)
    resumed_from = ckpt.resume_step(fs, f"{root.rstrip('/')}/{run_name}")
    return RunPlan(identity, generation, run_name, storage, root, fs, resumed_from)


def open_tracker(cfg: ExperimentConfig, plan: RunPlan, parent_run_id: str | None = None,
                 mark_running: bool = True) -> tuple[Tracker, bool]:
    """The MLflow run of this plan's identity and generation, reopened or created."""
    return Tracker.open(
        cfg.tracking, cfg.tracking.experiment or cfg.name, plan.identity, plan.generation,
        run_name=plan.run_name, tags=_tags(cfg, plan.identity), parent_run_id=parent_run_id,
        mark_running=mark_running,
    )


def check_same_data(plan: RunPlan, data_key: str) -> None:
    """Refuse to continue a run on other data than its checkpoints were trained on: the config
    (and so the identity) can stay the same while a corpus file changes."""
    recorded = ckpt.recorded_data_key(plan.fs, plan.run_path)
    if recorded is not None and recorded != data_key:
        raise LaunchError(
            f"the data changed since run {plan.run_name} started (prepared data {recorded}, "
            f"now {data_key}); its checkpoints stay as they are. Pass --restart to train a new "
            "generation on the new data, or restore the old corpus to continue the run"
        )


def record_start(cfg: ExperimentConfig, plan: RunPlan, tracker: Tracker, data_key: str) -> str:
    """Record the config in MLflow and the data key beside the checkpoints.

    A resume may change keys that are not part of the identity (``train.log_every``, where
    results go, ...). The run's params keep their first values, and ``config.yaml`` the
    config it started with; the new config goes to ``config-from-step-<N>.yaml`` and the
    changes to the tag ``paralab.changed_at_step_<N>``. Returns those changes as
    ``key: was -> now, ...``, empty when there are none.
    """
    if DIVERGED_TAG in tracker.client.get_run(tracker.run_id).data.tags:
        tracker.client.delete_tag(tracker.run_id, DIVERGED_TAG)  # this attempt starts afresh
    params = flatten(to_dict(cfg))
    for key in ("tracking.uri", "storage.uri", "storage.endpoint_url", "data.cache_dir"):
        if isinstance(params.get(key), str):  # the UI shows params to everyone who reads it
            params[key] = without_password(params[key])
    changed = tracker.log_params(params)
    changes = ", ".join(f"{key}: {was} -> {now}" for key, (was, now) in sorted(changed.items()))
    tracker.set_tags({"paralab.storage": plan.storage_uri, "paralab.data_key": data_key})
    if changes:
        step = plan.resumed_from or 0
        tracker.set_tags({f"paralab.changed_at_step_{step}": changes})
        tracker.log_text(to_yaml(cfg), f"config-from-step-{step}.yaml")
    elif plan.resumed_from is None:
        tracker.log_text(to_yaml(cfg), "config.yaml")
    ckpt.record_data_key(plan.fs, plan.run_path, data_key)
    return changes


def build_trainer(cfg: ExperimentConfig, plan: RunPlan, tracker: Tracker, data_key: str,
                  callbacks: list[Any] | None = None, lease_owner: str | None = None):
    """The Ray Train ``TorchTrainer`` for a planned run; with ``lease_owner``, its workers
    stop before a checkpoint once that lease on the run folder is lost."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from paralab.platform.data import resolved_cache_dir

    tc = cfg.train
    experiment = to_dict(cfg)
    # Workers may run in other folders, without PARALAB_HOME: give them the driver's cache.
    experiment["data"]["cache_dir"] = resolved_cache_dir(cfg.data)
    return TorchTrainer(
        _train_fn(),
        train_loop_config={
            "experiment": experiment,
            "run": {
                "identity": plan.identity,
                "tracking_uri": tracker.uri,
                "mlflow_run_id": tracker.run_id,
                "data_key": data_key,
                "lease_owner": lease_owner,
            },
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=tc.workers, use_gpu=tc.use_gpu,
            resources_per_worker={"CPU": tc.cpus_per_worker, **({"GPU": 1} if tc.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=plan.run_name, storage_path=plan.root, storage_filesystem=plan.fs,
            failure_config=ray.train.FailureConfig(
                max_failures=tc.max_failures,
                controller_failure_limit=(
                    -1 if os.environ.get("RAY_ADDRESS") else LOCAL_PLACEMENT_TRIES - 1
                ),
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=tc.keep_checkpoints),
            callbacks=callbacks,
        ),
    )


def launch(
    cfg: ExperimentConfig,
    *,
    restart: bool = False,
    create_bucket: bool = False,
    on_event: Callable[[str], None] = lambda message: None,
    on_progress: Callable[[int, dict[str, float]], None] | None = None,
    on_data: Callable[[Any], None] | None = None,
) -> RunSummary:
    """Run ``cfg`` to completion (or resume it) and return where everything went."""
    from paralab.platform.data import prepare

    plan = plan_run(cfg, restart=restart, create_bucket=create_bucket)
    # Everything that can fail on bad input fails here, before a run is recorded anywhere.
    on_event("preparing data")
    data = prepare(cfg.data, endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region,
                   progress=on_data)
    check_data(cfg, data)
    check_same_data(plan, data.key)
    if plan.resumed_from == cfg.train.steps:
        return _complete(cfg, plan, on_event, held=False)

    check_resources(cfg)
    with hold(plan) as lease:
        # Again, now that no one else can: the process that held the lease until now may have
        # trained this run further, or to its end, since it was planned.
        plan = replace(plan, resumed_from=ckpt.resume_step(plan.fs, plan.run_path))
        check_same_data(plan, data.key)
        if plan.resumed_from == cfg.train.steps:
            return _complete(cfg, plan, on_event, held=True)
        if dashboard := init_ray():
            on_event(f"Ray dashboard {dashboard}")
        return _train(cfg, plan, data.key, restart, on_event, on_progress, lease.owner)


def _complete(cfg: ExperimentConfig, plan: RunPlan, on_event: Callable[[str], None], *,
              held: bool) -> RunSummary:
    """The summary of a run found complete, after finishing what a stop after its last
    checkpoint left undone (under the lease: ``held`` says whether the caller has it)."""
    tracker, _ = open_tracker(cfg, plan, mark_running=False)
    on_event(f"run {plan.run_name} is already complete at step {plan.resumed_from}; nothing "
             "to do (pass --restart to train it again)")
    summary = _summary(cfg, plan, tracker)
    summary.status = "COMPLETE"
    summary.checkpoint = f"{plan.storage_uri}/{ckpt.checkpoint_name(plan.resumed_from)}"
    run = tracker.client.get_run(tracker.run_id)
    best = ckpt.best_step_at(plan.fs, plan.run_path, plan.resumed_from)
    if run.info.status != "FINISHED" or ckpt.best_is_broken(plan.fs, plan.run_path, best):
        with nullcontext() if held else hold(plan):  # stopped between its last checkpoint and its end
            settle_complete(cfg, plan, tracker, on_event)
    summary.metrics = dict(tracker.client.get_run(tracker.run_id).data.metrics)
    return summary


def hold(plan: RunPlan, *, wait: bool = False) -> RunLease:
    """The run folder's lease, taken: no second process trains this run while it is held.
    Its owner id goes to the workers, which stop before a checkpoint once it is lost."""
    try:
        conditional = conditional_object(plan.storage, plan.run_path)
        return RunLease(plan.fs, plan.run_path, conditional=conditional).acquire(wait=wait)
    except LeaseHeld as err:
        raise LaunchError(str(err)) from None


def _train(cfg: ExperimentConfig, plan: RunPlan, data_key: str, restart: bool,
           on_event: Callable[[str], None],
           on_progress: Callable[[int, dict[str, float]], None] | None,
           lease_owner: str | None = None) -> RunSummary:
    import ray.train

    tracker, _ = open_tracker(cfg, plan)
    summary = _summary(cfg, plan, tracker)
    stop = threading.Event()
    watcher = None
    # From here to the end, whatever fails marks the MLflow run (never left RUNNING).
    try:
        if plan.resumed_from is not None:
            on_event(f"resuming {plan.run_name} from step {plan.resumed_from}")
        elif not restart:
            others = other_identities(plan.fs, plan.root, cfg.name, plan.identity)
            if others:
                # Say so: a user who edited code or config may have expected a resume.
                on_event(
                    f"starting {plan.run_name} at step 0: its config or code differs from the "
                    f"{len(others)} earlier run(s) of {cfg.name!r} in storage "
                    f"({', '.join(others[-3:])}), and paralab resumes only the exact same run"
                )
        changes = record_start(cfg, plan, tracker, data_key)
        if changes:
            on_event("continuing with other values than the run started with (kept in MLflow "
                     f"as config-from-step-{plan.resumed_from or 0}.yaml): {changes}")
        trainer = build_trainer(cfg, plan, tracker, data_key, lease_owner=lease_owner)
        tc = cfg.train
        if on_progress:
            tokens_per_step = tc.batch_size * cfg.data.seq_len
            watcher = threading.Thread(target=_watch, daemon=True,
                                       args=(tracker, tokens_per_step, on_progress, stop))
            watcher.start()
        on_event(f"training on {tc.workers} worker(s), strategy {tc.strategy}")
        result = trainer.fit()
        raise_if_diverged(tracker, plan)
        summary.metrics = {k: float(v) for k, v in (result.metrics or {}).items()
                           if isinstance(v, (int, float))}  # fmt: skip
        summary.checkpoint = finish_run(cfg, plan, tracker, result.checkpoint, on_event)
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except ray.train.TrainingFailedError as err:
        tracker.finish("FAILED")
        if unplaced(err):
            raise TrainingFailed(unplaced_message(cfg, summary.storage_path)) from err
        cause = str(err).strip().splitlines()
        raise TrainingFailed(
            f"training failed ({cause[-1] if cause else type(err).__name__}); its checkpoints "
            f"are kept under {summary.storage_path}, and running the same command again resumes "
            "from the latest"
        ) from err
    except Exception:
        tracker.finish("FAILED")
        raise
    finally:
        stop.set()
        if watcher:
            watcher.join(timeout=5)
    summary.status = "FINISHED"
    return summary


def unplaced(err: BaseException) -> bool:
    """Whether Ray Train gave up on placing the worker group (its tries all timed out)."""
    cause = getattr(err, "controller_failure", None)
    return type(cause).__name__ == "WorkerGroupStartupTimeoutError"


def unplaced_message(cfg: ExperimentConfig, storage_path: str) -> str:
    tc = cfg.train
    each = f"{tc.cpus_per_worker:g} CPU" + (" and 1 GPU" if tc.use_gpu else "")
    waited = LOCAL_PLACEMENT_TRIES * float(os.environ.get(START_TIMEOUT, 60))
    dashboard = os.environ.get(API_SERVER_ADDRESS)
    return (
        f"Ray could not place the {tc.workers} training worker(s) ({each} each) on this "
        f"machine's cluster in {waited:g} s: something else holds its resources"
        + (f" (see the Ray dashboard at {dashboard})" if dashboard else "")
        + "; stop it, or lower train.workers, then run the same command again (checkpoints "
        f"so far are kept under {storage_path})"
    )


def raise_if_diverged(tracker: Tracker, plan: RunPlan) -> None:
    """Fail a run whose workers stopped on a loss that is not finite (they tag it and return,
    so that Ray does not restart them into the same divergence)."""
    tag = tracker.client.get_run(tracker.run_id).data.tags.get(DIVERGED_TAG)
    if tag:
        step, _, why = tag.partition(": ")
        raise TrainingFailed(
            f"training diverged at step {step} ({why}) and stopped; the checkpoints before it "
            f"are kept under {plan.storage_uri}. Lower train.lr, or raise train.warmup_frac or "
            "lower train.grad_clip, and run again"
        )


def finish_run(cfg: ExperimentConfig, plan: RunPlan, tracker: Tracker, final: Any | None,
               on_event: Callable[[str], None] = lambda message: None) -> str | None:
    """Tag the final checkpoint, log the model, and mark the MLflow run finished.

    ``final`` is the last checkpoint as Ray Train returned it, or None to open it from
    storage. Repeatable: a run stopped between its last checkpoint and its end (killed, or
    MLflow unreachable) is found complete by the next ``paralab run`` of it, which finishes
    it here, logging the model only if it is not logged yet.
    """
    done = ckpt.list_checkpoints(plan.fs, plan.run_path)
    checkpoint = None
    if done:
        last = max(done)
        checkpoint = f"{plan.storage_uri}/{ckpt.checkpoint_name(last)}"
        tracker.set_tags({"paralab.checkpoint": checkpoint, "paralab.final_step": last})
        if cfg.tracking.log_model and not _model_logged(tracker):
            if final is None:
                import ray.train

                final = ray.train.Checkpoint(f"{plan.run_path}/{ckpt.checkpoint_name(last)}",
                                             filesystem=plan.fs)  # fmt: skip
            on_event("logging the final model to MLflow")
            _log_model(tracker, cfg, final)
    tracker.finish()
    return checkpoint


def settle_complete(cfg: ExperimentConfig, plan: RunPlan, tracker: Tracker,
                    on_event: Callable[[str], None] = lambda message: None) -> None:
    """For a run found complete, finish what a stop after its last checkpoint left undone: the
    best copy (a crash during the last step's copy; no restore will repair it), and the MLflow
    end (tags, model, FINISHED). The caller holds the run's lease."""
    best = ckpt.best_step_at(plan.fs, plan.run_path, plan.resumed_from)
    if best is not None and ckpt.repair_best(plan.fs, plan.run_path, best):
        on_event(f"completed the copy of best checkpoint {best}")
    if tracker.client.get_run(tracker.run_id).info.status != "FINISHED":
        finish_run(cfg, plan, tracker, None, on_event)


def _model_logged(tracker: Tracker) -> bool:
    """Whether :func:`_log_model` completed for this run: the config it writes last is there."""
    return any(item.path == "model/paralab-config.yaml"
               for item in tracker.client.list_artifacts(tracker.run_id, "model"))


def _train_fn():
    from paralab.platform.train.worker import train_fn

    return train_fn


def _log_model(tracker: Tracker, cfg: ExperimentConfig, checkpoint: Any) -> None:
    """Log the final weights as an MLflow PyTorch model, with the config to rebuild it."""
    import mlflow

    from paralab.models.factory import build_model

    with checkpoint.as_directory() as folder:
        state = ckpt.full_state_dict(Path(folder))
    model = build_model(cfg.model)
    model.load_state_dict(state)
    mlflow.set_tracking_uri(tracker.uri)
    with mlflow.start_run(run_id=tracker.run_id):
        mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle",
            pip_requirements=[f"paralab=={package_version()}"],
        )
        mlflow.log_text(to_yaml(cfg), "model/paralab-config.yaml")
    # start_run(run_id=...) ends the run on exit; the caller marks it finished.
    tracker.client.update_run(tracker.run_id, status="RUNNING")
