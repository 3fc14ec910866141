"""The function Ray Train runs on every worker, and its hooks into Ray, MLflow and storage."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray.train

from paralab.platform.config.load import from_dict
from paralab.platform.data import load_prepared
from paralab.platform.storage.lease import check_held
from paralab.platform.tracking.mlflow import DIVERGED_TAG, Tracker
from paralab.platform.train import checkpoint as ckpt
from paralab.platform.train.loop import Trainer

FAULT_ENV = "PARALAB_FAULT_INJECT"
"""``STEP:RANK:MARKER``: that rank exits hard after logging STEP, once (MARKER records it).
Used by the fault-tolerance tests to kill a worker mid-run."""


class RayHooks:
    """Rank 0 logs to MLflow from a background thread, so a slow tracking store never stalls
    a step; pending metrics are flushed before every report, so whatever a checkpoint covers
    is logged, and a resumed run re-logs only the steps after its checkpoint."""

    def __init__(self, run: dict[str, Any]):
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.storage = context.get_storage()
        self.tracker = Tracker(run["tracking_uri"], run["mlflow_run_id"]) if self.rank == 0 else None
        self.lease_owner: str | None = run.get("lease_owner")
        self.pending: list[Future] = []
        self.logger = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paralab-mlflow")

    def check_lease(self) -> None:
        """Stop if the driver lost the run's lease: the process that holds it now trains this
        folder, and this one must not add checkpoints to it (nor, through Ray, delete any)."""
        if self.lease_owner:
            check_held(self.storage.storage_filesystem, self.storage.experiment_fs_path,
                       self.lease_owner)

    def report(self, metrics, folder, name):
        self.flush()
        if folder:
            self.check_lease()
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    def log(self, metrics, step):
        if self.tracker:
            self.pending.append(self.logger.submit(self.tracker.log_metrics, dict(metrics), step))
        _maybe_inject_fault(step, self.rank)

    def flush(self) -> None:
        """Wait for queued metrics; a failed write surfaces here rather than being dropped."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def diverged(self, step: int, why: str) -> None:
        """Tag the MLflow run, for the driver to fail it without Ray's restarts (which would
        diverge again from the same checkpoint)."""
        self.flush()
        if self.tracker:
            self.tracker.set_tags({DIVERGED_TAG: f"{step}: {why}"})

    def keep_best(self, step):
        # Every rank calls this (validation loss is all-reduced, so they agree on the best).
        # Ray's report synchronises ranks before they upload, not after: without this barrier
        # rank 0 could copy the checkpoint while other ranks' shards are still uploading.
        _barrier()
        if self.rank == 0:
            ckpt.keep_best(self.storage.storage_filesystem, self.storage.experiment_fs_path, step)

    def repair_best(self, step: int) -> None:
        """After a restore: redo the copy of best checkpoint ``step`` if a crash cut it short.
        Every rank calls it, as :meth:`keep_best`, and only rank 0 copies."""
        _barrier()
        if self.rank == 0:
            ckpt.repair_best(self.storage.storage_filesystem, self.storage.experiment_fs_path, step)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _maybe_inject_fault(step: int, rank: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at_step, at_rank, marker = spec.split(":", 2)
    if step == int(at_step) and rank == int(at_rank) and not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)


def train_fn(config: dict[str, Any]) -> None:
    cfg = from_dict(config["experiment"])
    run = config["run"]
    data = load_prepared(cfg.data, run["data_key"], endpoint_url=cfg.storage.endpoint_url,
                         region=cfg.storage.region)
    hooks = RayHooks(run)
    hooks.check_lease()  # also on Ray's restarts: a lost lease fails them at once
    trainer = Trainer(cfg, data, hooks)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.restore(Path(folder))
        if trainer.best_step is not None:  # from the one trainer.pt: the same on every rank
            trainer.hooks.repair_best(trainer.best_step)
    trainer.run()
    trainer.hooks.flush()
