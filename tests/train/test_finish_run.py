"""Finishing a run is repeatable: a run stopped between its last checkpoint and its end (killed,
or MLflow unreachable while the model was logged) is finished by the next `paralab run`, which
finds it complete: tags, the model once, and FINISHED. No Ray: the checkpoint is on disk."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pyarrow.fs as pafs
import torch
from paralab_testing import empty_mlflow_store

from paralab.platform import data as data_module
from paralab.platform.config.load import from_dict
from paralab.platform.config.schema import ExperimentConfig, TrackingConfig
from paralab.platform.storage.lease import RunLease
from paralab.platform.tracking.mlflow import Tracker
from paralab.platform.train import checkpoint as ckpt
from paralab.platform.train import launch


def _setup(tmp_path):
    store = tmp_path / "mlflow.db"
    shutil.copy(empty_mlflow_store(), store)
    tracker, _ = Tracker.open(TrackingConfig(uri=f"sqlite:///{store}"), "finish", "0123456789ab",
                              0, "finish-0123456789ab")  # fmt: skip
    root = tmp_path / "storage"
    plan = launch.RunPlan(identity="0123456789ab", generation=0, run_name="finish-0123456789ab",
                          storage=types.SimpleNamespace(uri=str(root)), root=str(root),
                          fs=pafs.LocalFileSystem(), resumed_from=8)  # fmt: skip
    folder = root / plan.run_name / ckpt.checkpoint_name(8)
    folder.mkdir(parents=True)
    torch.save({"step": 8, "best_step": 8}, folder / "trainer.pt")
    return tracker, plan


def test_a_run_stopped_before_its_model_was_logged_is_finished_from_storage(tmp_path, monkeypatch):
    tracker, plan = _setup(tmp_path)
    logged = []

    def log_model(tracker, cfg, checkpoint):
        logged.append(checkpoint.path)
        tracker.client.log_text(tracker.run_id, "name: finish\n", "model/paralab-config.yaml")

    monkeypatch.setattr(launch, "_log_model", log_model)
    cfg = ExperimentConfig(name="finish")
    uri = launch.finish_run(cfg, plan, tracker, None)
    assert uri == f"{plan.storage_uri}/{ckpt.checkpoint_name(8)}"
    assert logged == [f"{plan.run_path}/{ckpt.checkpoint_name(8)}"], "opened from storage"
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["paralab.checkpoint"] == uri and run.data.tags["paralab.final_step"] == "8"
    # Finishing again (a second `paralab run` of the complete run) does not log it twice.
    launch.finish_run(cfg, plan, tracker, None)
    assert len(logged) == 1


def test_a_failure_while_logging_does_not_mark_the_run_finished(tmp_path, monkeypatch):
    """FINISHED comes last: the next run then finds it unfinished and finishes it (above)."""
    tracker, plan = _setup(tmp_path)

    def unreachable(*args):
        raise ConnectionError("MLflow unreachable")

    monkeypatch.setattr(launch, "_log_model", unreachable)
    try:
        launch.finish_run(ExperimentConfig(name="finish"), plan, tracker, None)
    except ConnectionError:
        pass
    assert tracker.client.get_run(tracker.run_id).info.status != "FINISHED"


def test_settling_a_complete_run_repairs_its_best_copy_and_finishes_it(tmp_path, monkeypatch):
    """A crash during the last step's best copy: no restore follows, so the run found complete
    makes the copy (and finishes the MLflow run) itself."""
    tracker, plan = _setup(tmp_path)
    monkeypatch.setattr(launch, "_log_model", lambda *args: None)
    broken = Path(plan.run_path) / ckpt.best_name(8)
    broken.mkdir()
    (broken / "trainer.pt").write_bytes(b"half")
    assert ckpt.best_is_broken(plan.fs, plan.run_path, 8)
    events = []
    launch.settle_complete(ExperimentConfig(name="finish"), plan, tracker, events.append)
    assert not ckpt.best_is_broken(plan.fs, plan.run_path, 8)
    assert torch.load(broken / "trainer.pt")["best_step"] == 8
    assert "completed the copy of best checkpoint 8" in events
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"



def test_a_run_finished_while_this_one_waited_is_found_complete_under_the_lease(tmp_path, monkeypatch):
    """Planned while another process still trained it, the run is complete by the time this one
    holds the lease: it is reported complete (and its MLflow run finished), not trained again."""
    tracker, plan = _setup(tmp_path)
    cfg = from_dict({"name": "finish", "train": {"steps": 8}, "storage": {"uri": plan.root},
                     "tracking": {"uri": tracker.uri, "log_model": False}})
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": ckpt.checkpoint_name(8)}}
    (Path(plan.run_path) / ckpt.RAY_SNAPSHOT).write_text(json.dumps(snapshot))
    stale = launch.replace(plan, resumed_from=None)  # planned before the other process ended
    monkeypatch.setattr(launch, "plan_run", lambda *args, **kwargs: stale)
    monkeypatch.setattr(data_module, "prepare", lambda *args, **kwargs: types.SimpleNamespace(key="k"))
    monkeypatch.setattr(launch, "check_data", lambda *args: None)
    monkeypatch.setattr(launch, "check_resources", lambda *args: None)

    def train(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(launch, "init_ray", train)
    events = []
    summary = launch.launch(cfg, on_event=events.append)
    assert summary.status == "COMPLETE" and summary.resumed_from_step == 8
    assert any("already complete at step 8" in event for event in events)
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"
    assert RunLease(plan.fs, plan.run_path).holder() is None, "the lease is given back"


def test_passwords_in_uris_are_not_logged_as_params(tmp_path):
    """The job connects with them; the MLflow UI shows params to everyone who reads it."""
    tracker, plan = _setup(tmp_path)
    cfg = from_dict({"name": "finish", "tracking": {"uri": "https://alice:s3cr3t@mlflow.internal"},
                     "storage": {"endpoint_url": "http://key:secret@minio.internal:9000"}})
    launch.record_start(cfg, plan, tracker, "data-key")
    params = tracker.client.get_run(tracker.run_id).data.params
    assert params["tracking.uri"] == "https://alice:***@mlflow.internal"
    assert params["storage.endpoint_url"] == "http://key:***@minio.internal:9000"
    assert not any("s3cr3t" in value or "secret@" in value for value in params.values())
