"""What one Tune trial runs: a planned paralab run (its own identity, folder and MLflow child run).

The trial function runs in a Tune trial actor, which is the driver of one Ray Train job. It
builds the run's config from the sweep's base tree and the trial's values, then does what
``paralab run`` does with ``launch.plan_run`` … ``finish_run``, with two differences: the
MLflow run is a child of the sweep's parent run, and Ray Train's reports reach Tune through
``TuneReportCallback``. Because the run is addressed by its identity, a trial restarted after
an interruption reopens the same folder (Ray Train resumes from its latest checkpoint) and the
same MLflow child run, and a trial whose run is already complete reports its final metrics
without training again.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray

SWEEP_TAG = "paralab.sweep"
"""MLflow tag on the parent and every child run: the sweep's id."""
TRIAL_TAG = "paralab.trial"
"""MLflow tag on a child run: the Tune trial id that trained it."""
VALUES_TAG = "paralab.sweep.values"
"""MLflow tag on a child run: its swept values as JSON."""
MEMBER_TAG = "paralab.member.{sweep_id}"
"""MLflow tag on every run a sweep used, with its values in that sweep as JSON. A run is the
child of the sweep that created it; a later sweep with an equal trial config (an extended
grid) reuses the run, and finds it again by this tag."""


def sweep_runs(client, experiment_id: str, parent_run_id: str, sweep_id: str) -> list[Any]:
    """Every run of a sweep: the children of its parent run, and the runs it reused."""
    runs = {}
    for filter_string in (f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                          f"tags.`{MEMBER_TAG.format(sweep_id=sweep_id)}` LIKE '%'"):  # fmt: skip
        for run in client.search_runs([experiment_id], filter_string=filter_string,
                                      max_results=10000):  # fmt: skip
            runs[run.info.run_id] = run
    return list(runs.values())


def trial_values(run, sweep_id: str) -> dict[str, Any] | None:
    """The run's swept values in this sweep (its own tag first, else the latest sweep's)."""
    text = run.data.tags.get(MEMBER_TAG.format(sweep_id=sweep_id)) or run.data.tags.get(VALUES_TAG)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs from the sweep's driver; plain data, shipped to the trial actor."""

    base: dict[str, Any]
    """The resolved experiment tree without ``sweep``, storage and tracking URIs made absolute."""
    sweep_id: str
    parent_run_id: str
    data_key: str
    """Key of the shards the driver prepared for the base ``data`` section."""
    data_swept: bool
    """A ``data.*`` key is swept: each trial prepares (or finds) its own shards."""
    claims: str
    """Name of the :class:`Claims` actor that keeps two trials off one run folder."""


@ray.remote(num_cpus=0)
class Claims:
    """Which trial holds which run identity: two trials with equal configs are one run.

    The second waits until the first is done, then finds the run complete and reports it.
    The driver releases a trial's claims when Tune says the trial ended, however it ended.
    """

    def __init__(self) -> None:
        self.held: dict[str, str] = {}

    def claim(self, identity: str, trial_id: str) -> bool:
        holder = self.held.setdefault(identity, trial_id)
        return holder == trial_id

    def release(self, trial_id: str) -> None:
        self.held = {i: t for i, t in self.held.items() if t != trial_id}


@contextlib.contextmanager
def _claim(name: str, identity: str, trial_id: str) -> Iterator[None]:
    try:
        claims = ray.get_actor(name)
    except ValueError:  # no driver-side registry (e.g. a test calling the function bare)
        yield
        return
    while not ray.get(claims.claim.remote(identity, trial_id)):
        time.sleep(2.0)
    try:
        yield
    finally:
        claims.release.remote(trial_id)


def trial_config(context: TrialContext, values: dict[str, Any]):
    from paralab.platform.config.load import from_dict
    from paralab.platform.tune.space import apply

    return from_dict(apply(context.base, values))


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Tune's trainable: train one config as a paralab run under the sweep's parent MLflow run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from paralab.platform.train import launch
    from paralab.platform.tune.space import plain, trial_label

    values = {key: plain(value) for key, value in config.items()}
    cfg = trial_config(context, values)
    trial_id = tune.get_context().get_trial_id()
    stopping = stop_signal()
    first = launch.plan_run(cfg)
    # Within the sweep, a trial with an equal config; outside it, a `paralab run` of one.
    with _claim(context.claims, first.identity, trial_id), launch.hold(first, wait=True) as lease:
        plan = launch.plan_run(cfg)  # again: whoever trained it before us may have finished it
        data_key = context.data_key
        if context.data_swept:
            from paralab.platform.data import prepare

            data = prepare(cfg.data, endpoint_url=cfg.storage.endpoint_url,
                           region=cfg.storage.region)
            launch.check_data(cfg, data)  # else the workers fail, after every restart
            data_key = data.key
        launch.check_same_data(plan, data_key)
        complete = plan.resumed_from == cfg.train.steps
        tracker, _ = launch.open_tracker(cfg, plan, parent_run_id=context.parent_run_id,
                                         mark_running=not complete)
        tracker.set_tags({
            "mlflow.runName": trial_label(values), SWEEP_TAG: context.sweep_id,
            TRIAL_TAG: trial_id, VALUES_TAG: json.dumps(values),
            MEMBER_TAG.format(sweep_id=context.sweep_id): json.dumps(values),
        })
        if complete:
            # Complete already (an earlier attempt, an equal config, an earlier sweep): report,
            # do not retrain. A finished run keeps its status and end time.
            launch.settle_complete(cfg, plan, tracker)  # if stopped after its last checkpoint
            run = tracker.client.get_run(tracker.run_id)
            tune.report({**run.data.metrics, "step": cfg.train.steps, "steps": cfg.train.steps})
            return
        try:
            launch.record_start(cfg, plan, tracker, data_key)
            trainer = launch.build_trainer(cfg, plan, tracker, data_key, lease_owner=lease.owner,
                                           callbacks=[TuneReportCallback()])
            result = trainer.fit()
            launch.raise_if_diverged(tracker, plan)
            launch.finish_run(cfg, plan, tracker, result.checkpoint)
        except BaseException as err:
            # A trial that Tune stops (ASHA, time budget, Ctrl-C) dies here too; it did not fail.
            tracker.finish("KILLED" if stopping() else "FAILED")
            if launch.unplaced(err):  # the sweep's table shows this line for the trial
                raise launch.TrainingFailed(launch.unplaced_message(cfg, plan.storage_uri)) from err
            raise


def stop_signal() -> Callable[[], bool]:
    """A check of whether Tune has asked this trial to stop; call it when the trial starts.

    Tune stops a trial by setting its session's stop event and then, at once, dropping the
    session (``FunctionTrainable.cleanup``). The trial's thread meets the stop later, as an
    error out of ``trainer.fit()``, and by then ``get_session()`` is ``None``: a check that
    looked the session up only at that point called a stopped trial FAILED whenever the
    actor was slow to die (a loaded machine). So the session is held from the start.
    """
    try:
        from ray.train._internal.session import get_session

        session = get_session()
        event = session.stop_event if session is not None else None
    except Exception:  # noqa: BLE001 - an internal API: when in doubt, report a failure
        event = None
    return (lambda: False) if event is None else event.is_set
