"""A run whose loss stops being finite stops there: no checkpoint of the diverged weights
replaces the last good one, and the run is failed in one line rather than retried by Ray
into the same divergence. (A learning rate of 1e6 without clipping diverges at step 4.)"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
from paralab_testing import QUICKSTART, empty_mlflow_store

from paralab.platform.config.load import load_experiment
from paralab.platform.config.schema import TrackingConfig
from paralab.platform.data import prepare
from paralab.platform.tracking.mlflow import DIVERGED_TAG, Tracker
from paralab.platform.train import launch
from paralab.platform.train.loop import NoHooks, Trainer

DIVERGING = [
    "name=div", "model.d_model=32", "model.n_layers=1", "model.heads=2", "model.mode=sequential",
    "data.seq_len=32", "data.max_tokens=60000", "train.steps=12", "train.batch_size=8",
    "train.workers=1", "train.lr=1e6", "train.warmup_frac=0.0", "train.grad_clip=0",
    "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2", "train.eval_batches=2",
]


class Recorder(NoHooks):
    def __init__(self):
        self.checkpoints, self.logged, self.stopped = [], [], []

    def report(self, metrics, folder, name):
        if folder:
            self.checkpoints.append(metrics["step"])

    def log(self, metrics, step):
        self.logged.append(step)

    def diverged(self, step, why):
        self.stopped.append((step, why))


def test_the_loop_stops_at_the_first_loss_that_is_not_finite():
    cfg = load_experiment(QUICKSTART, DIVERGING)
    hooks = Recorder()
    trainer = Trainer(cfg, prepare(cfg.data), hooks)
    trainer.run()
    assert trainer.diverged_at == 4 and hooks.stopped == [(4, "loss=nan, val_loss=nan")]
    assert hooks.checkpoints == [2], "no checkpoint of the diverged weights"
    assert hooks.logged == [1, 2, 3, 4], "the diverged step is logged, none after it"


def test_a_diverged_run_fails_in_one_line_and_a_new_attempt_clears_the_mark(tmp_path):
    store = tmp_path / "mlflow.db"
    shutil.copy(empty_mlflow_store(), store)
    tracker, _ = Tracker.open(TrackingConfig(uri=f"sqlite:///{store}"), "div", "0123456789ab", 0,
                              "div-0123456789ab")  # fmt: skip
    root = tmp_path / "s"
    plan = launch.RunPlan("0123456789ab", 0, "div-0123456789ab", SimpleNamespace(uri=str(root)),
                          str(root), pafs.LocalFileSystem(), resumed_from=2)  # fmt: skip
    launch.raise_if_diverged(tracker, plan)  # not diverged: nothing
    tracker.set_tags({DIVERGED_TAG: "4: loss=nan"})
    with pytest.raises(launch.TrainingFailed, match=r"^training diverged at step 4 \(loss=nan\) and "
                       r"stopped; the checkpoints before it are kept under .*/s/div-0123456789ab\. Lower train\.lr"):
        launch.raise_if_diverged(tracker, plan)
    cfg = load_experiment(QUICKSTART, DIVERGING)
    launch.record_start(cfg, plan, tracker, "data-key")
    assert DIVERGED_TAG not in tracker.client.get_run(tracker.run_id).data.tags

