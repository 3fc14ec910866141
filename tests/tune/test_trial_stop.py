"""A trial that Tune stops ends KILLED, with the step it stopped at, however late its actor dies.

Tune stops a trial by setting its session's stop event and dropping the session at once; the
trial's thread sees the stop later, as an error out of ``trainer.fit()``. On a loaded machine
that is after the session is gone, and a check that looked it up then called the trial FAILED.
These tests replay that order without a cluster, on a real SQLite MLflow store.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from mlflow.tracking import MlflowClient
from ray.train._internal import session as train_session

from paralab.platform.tracking.mlflow import Tracker
from paralab.platform.tune.sweep import STOPPED_TAG, TrialOutcome, _close_children, _settle_child
from paralab.platform.tune.trial import MEMBER_TAG, SWEEP_TAG, TRIAL_TAG, VALUES_TAG, stop_signal

SWEEP = "sweep0"


class _Session:
    """What ``stop_signal`` reads of Ray's session: its stop event."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()


@pytest.fixture
def tune_session(monkeypatch):
    session = _Session()
    monkeypatch.setattr(train_session, "_session", session)
    return session


def test_stop_is_seen_after_tune_drops_the_session(tune_session):
    stopping = stop_signal()  # as the trial starts
    assert not stopping()
    # FunctionTrainable.cleanup: session.finish() sets the event, then shutdown_session().
    tune_session.stop_event.set()
    train_session.shutdown_session()
    assert train_session.get_session() is None
    assert stopping(), "a stopped trial would be recorded as FAILED"


def test_without_a_session_every_error_is_a_failure(monkeypatch):
    monkeypatch.setattr(train_session, "_session", None)
    assert stop_signal()() is False


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("lr", artifact_location=(tmp_path / "artifacts").as_uri())
    parent_id = client.create_run(exp_id, tags={SWEEP_TAG: SWEEP}).info.run_id
    return Tracker(uri, parent_id), exp_id


def _child(parent: Tracker, exp_id: str, trial_id: str, lr: float, status: str) -> str:
    values = json.dumps({"train.lr": lr})
    run = parent.client.create_run(exp_id, tags={
        "mlflow.parentRunId": parent.run_id, SWEEP_TAG: SWEEP, TRIAL_TAG: trial_id,
        VALUES_TAG: values, MEMBER_TAG.format(sweep_id=SWEEP): values,
    })
    if status != "RUNNING":
        parent.client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.mark.parametrize("actor_wrote", ["RUNNING", "FAILED", "KILLED"])
def test_settling_a_stopped_trial(store, actor_wrote):
    """Whatever the stopped trial's actor managed to write, the run ends KILLED at its step."""
    parent, exp_id = store
    run_id = _child(parent, exp_id, "t1", 0.1, actor_wrote)
    end_before = parent.client.get_run(run_id).info.end_time
    time.sleep(0.01)
    _settle_child(parent, SWEEP, "t1", {"train.lr": 0.1}, step=4)
    run = parent.client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[STOPPED_TAG] == "4"
    if actor_wrote == "KILLED":
        assert run.info.end_time == end_before, "the actor's own end time was overwritten"


def test_settling_leaves_a_finished_trial_alone(store):
    parent, exp_id = store
    run_id = _child(parent, exp_id, "t1", 0.1, "FINISHED")
    _settle_child(parent, SWEEP, "t1", {"train.lr": 0.1}, step=8)
    run = parent.client.get_run(run_id)
    assert run.info.status == "FINISHED" and STOPPED_TAG not in run.data.tags


def test_closing_the_sweep_tags_every_stopped_run(store):
    """At the end of the sweep: a stopped trial's run is KILLED and tagged whatever its actor
    wrote; a running one (interrupted) is KILLED; a failed or finished one is left as it is."""
    parent, exp_id = store
    ids = {
        "stopped-late": _child(parent, exp_id, "a", 0.1, "KILLED"),
        "stopped-failed": _child(parent, exp_id, "b", 0.2, "FAILED"),
        "interrupted": _child(parent, exp_id, "c", 0.3, "RUNNING"),
        "failed": _child(parent, exp_id, "d", 0.4, "FAILED"),
        "finished": _child(parent, exp_id, "e", 0.5, "FINISHED"),
    }
    trials = {
        ids["stopped-late"]: TrialOutcome("a", {"train.lr": 0.1}, "STOPPED", step=4),
        ids["stopped-failed"]: TrialOutcome("b", {"train.lr": 0.2}, "STOPPED", step=4),
        ids["interrupted"]: TrialOutcome("c", {"train.lr": 0.3}, "INTERRUPTED", step=6),
        ids["failed"]: TrialOutcome("d", {"train.lr": 0.4}, "ERROR", step=2),
        ids["finished"]: TrialOutcome("e", {"train.lr": 0.5}, "FINISHED", step=8),
    }
    _close_children(parent, SWEEP, trials)
    runs = {name: parent.client.get_run(run_id) for name, run_id in ids.items()}
    status = {name: run.info.status for name, run in runs.items()}
    assert status == {"stopped-late": "KILLED", "stopped-failed": "KILLED", "interrupted": "KILLED",
                      "failed": "FAILED", "finished": "FINISHED"}
    tagged = {name for name, run in runs.items() if STOPPED_TAG in run.data.tags}
    assert tagged == {"stopped-late", "stopped-failed"}
