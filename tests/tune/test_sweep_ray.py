"""Sweeps on a local Ray cluster: an ASHA sweep end to end, and a killed sweep resumed.

Each Tune trial costs about 20 s of Ray overhead on 2 CPUs, so there are two tests, with
tiny models: one trial is one Ray Train worker on one CPU, two trials at a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paralab_testing import (
    ROOT,
    metric_by_step,
    mlflow_at,
    paralab_env,
    run_paralab,
    runs_of,
)

from paralab.platform.config.load import load_experiment
from paralab.platform.tune import plan_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SWEEPS = ROOT / "experiments" / "sweeps"
TINY = [
    "model.d_model=32", "model.n_layers=1", "model.heads=2", "data.seq_len=32",
    "data.max_tokens=60000", "train.steps=8", "train.batch_size=8", "train.workers=1",
    "train.cpus_per_worker=1", "train.eval_every=4", "train.checkpoint_every=4",
    "train.eval_batches=2", "train.log_every=1", "train.warmup_frac=0.0", "tracking.log_model=false",
]


def split(runs):
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) + 1 == len(runs), "a run outside the sweep"
    return parents[0], children


def test_asha_sweep_end_to_end(tmp_path):
    home = tmp_path / "asha"
    overrides = ["sweep.num_samples=4", "sweep.scheduler.grace_period=4",
                 "sweep.scheduler.reduction_factor=2", *TINY]
    started = time.monotonic()
    proc = run_paralab(home, "sweep", str(SWEEPS / "lr.yaml"), *overrides)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"4-trial ASHA sweep: {wall:.0f} s wall")  # shown with -s; see docs/sweeps.md

    plan = plan_sweep(SWEEPS / "lr.yaml", overrides)
    client = mlflow_at(home)
    parent, children = split(runs_of(client, "lr"))
    assert len(children) == 4
    assert parent.info.status == "FINISHED" and parent.data.tags["paralab.sweep"] == plan.sweep_id
    assert parent.data.params["sweep.scheduler.type"] == "asha"

    # The seeded random search ran exactly the trials that --dry-run lists.
    planned = sorted(t["train.lr"] for t in plan.trials)
    assert sorted(float(c.data.params["train.lr"]) for c in children) == pytest.approx(planned)
    for child in children:
        tags = child.data.tags
        assert tags["paralab.sweep"] == plan.sweep_id
        assert (tags["cell"], tags["newton_iters"], tags["scale"]) == ("paragru", "3", "d32-l1")
        assert len(tags["paralab.identity"]) == 12 and tags["paralab.code_version"]
        assert child.info.run_name == f"lr={float(child.data.params['train.lr']):.3g}"
        assert "val_loss" in child.data.metrics
        if child.info.status == "KILLED":  # stopped by ASHA at its first rung
            assert tags["paralab.sweep.stopped_at_step"] == "4"
        else:
            assert child.info.status == "FINISHED"
            assert max(metric_by_step(client, child.info.run_id, "loss")) == 8
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert finished, "ASHA stopped every trial"

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.png", "best.yaml", "sweep.yaml"} <= artifacts
    best_run = min(finished, key=lambda c: c.data.metrics["val_loss"])
    assert parent.data.tags["paralab.sweep.best_run_id"] == best_run.info.run_id

    best_yaml = home / ".paralab" / "storage" / "sweeps" / plan.name / "best.yaml"
    assert f"best config: {best_yaml}" in proc.stdout
    best = load_experiment(best_yaml)
    assert best.sweep is None
    assert best.train.lr == pytest.approx(float(best_run.data.params["train.lr"]))
    csv_rows = (best_yaml.parent / "summary.csv").read_text().splitlines()
    assert len(csv_rows) == 5 and csv_rows[1].split(",")[1] == best_run.info.run_name

    # best.yaml is the best trial's run: `paralab run` finds it complete, without Ray.
    again = run_paralab(home, "run", str(best_yaml))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already complete" in again.stdout
    assert len(runs_of(client, "lr")) == 5


def _popen_sweep(home: Path, *args: str) -> subprocess.Popen:
    env = paralab_env(home)
    log = open(home / "first.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "paralab.platform.cli", "sweep", *args],
                            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _snapshot_checkpoints(run) -> list[str]:
    """Checkpoints Ray Train has recorded for a run: what it resumes from (a checkpoint folder
    appears a little before Ray Train's snapshot lists it)."""
    snapshot = Path(run.data.tags.get("paralab.storage", "/nonexistent")) / "checkpoint_manager_snapshot.json"
    try:
        return [c["checkpoint_dir_name"] for c in json.loads(snapshot.read_text())["checkpoint_results"]]
    except (OSError, ValueError, KeyError):
        return []


def test_killed_sweep_resumes_without_duplicates(tmp_path):
    """SIGKILL the driver (and its local Ray cluster) once the first trial has finished and the
    second has a checkpoint; `--resume` then finishes every trial exactly once."""
    home = tmp_path / "resume"
    # Long enough (a few seconds of training per trial) to be killed between checkpoints.
    steps = 48
    args = [str(SWEEPS / "newton_iters.yaml"), "sweep.params[model.newton_iters].values=[1,2]",
            "sweep.params[model.cell].values=[paragru]", "sweep.max_concurrent_trials=1", *TINY,
            f"train.steps={steps}", "train.eval_every=8", "train.checkpoint_every=8",
            "train.keep_checkpoints=20"]
    proc = _popen_sweep(home, *args)
    client = None
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None, (home / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first trial never finished"
            # Open the store only once the driver has created it (both would migrate it).
            if "trial(s), up to" in (home / "first.log").read_text():
                client = client or mlflow_at(home)
                children = [r for r in runs_of(client, "newton_iters")
                            if "mlflow.parentRunId" in r.data.tags]
                done = [c for c in children if c.info.status == "FINISHED"]
                running = [c for c in children if c.info.status == "RUNNING"]
                if done and running and _snapshot_checkpoints(running[0]):
                    break
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first_done, interrupted = done[0].info.run_id, running[0].info.run_id
    run_dir = Path(client.get_run(interrupted).data.tags["paralab.storage"])
    saved = sorted(int(p.name.split("_")[1]) for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert saved and saved[-1] < steps, f"killed too late to test a resume: {saved}"

    proc = run_paralab(home, "sweep", *args, "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming sweep" in proc.stdout

    parent, children = split(runs_of(client, "newton_iters"))
    assert len(children) == 2, "a trial's MLflow run was duplicated or lost"
    assert all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["paralab.identity"] for c in children}) == 2
    assert sorted(c.data.params["model.newton_iters"] for c in children) == ["1", "2"]
    for child in children:
        assert sorted(metric_by_step(client, child.info.run_id, "loss")) == list(range(1, steps + 1))
    # The trial that had finished was not trained again: each step logged once.
    assert len(client.get_metric_history(first_done, "loss")) == steps
    # The interrupted one (incomplete when killed) continued from its checkpoint: its first
    # steps were logged once, and the steps after the checkpoint at most twice.
    history = [m.step for m in client.get_metric_history(interrupted, "loss")]
    assert history.count(1) == 1 and max(history.count(s) for s in history) <= 2

    runs_dir = home / ".paralab" / "storage"
    assert len([p for p in runs_dir.glob("newton_iters-*") if p.is_dir()]) == 2
    summary = (runs_dir / "sweeps" / plan_sweep(*args[:1], args[1:]).name / "summary.csv").read_text()
    assert summary.count(",FINISHED,") == 2


def test_errored_trial_is_retried_on_request(tmp_path):
    """A trial whose training fails ends the sweep with exit 1 and a hint; `--retry-errored`
    resumes that trial's run from its checkpoint, in the same MLflow child run."""
    home = tmp_path / "retry"
    marker = tmp_path / "crashed"
    args = [str(SWEEPS / "newton_iters.yaml"), "sweep.params[model.newton_iters].values=[2]",
            "sweep.params[model.cell].values=[paragru]", *TINY, "train.max_failures=0"]
    proc = run_paralab(home, "sweep", *args, env={"PARALAB_FAULT_INJECT": f"6:0:{marker}"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert marker.exists(), "the fault was never injected"
    assert "1 trial(s) failed" in proc.stderr and "--retry-errored" in proc.stderr
    assert "Traceback" not in proc.stderr
    client = mlflow_at(home)
    parent, failed = split(runs_of(client, "newton_iters"))
    assert [c.info.status for c in failed] == ["FAILED"] and parent.info.status == "FAILED"

    proc = run_paralab(home, "sweep", *args, "--resume")  # errored trials stay errored
    assert proc.returncode == 1 and "--retry-errored" in proc.stderr
    proc = run_paralab(home, "sweep", *args, "--retry-errored")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parent, children = split(runs_of(client, "newton_iters"))
    assert [c.info.run_id for c in children] == [failed[0].info.run_id]
    assert children[0].info.status == "FINISHED" and parent.info.status == "FINISHED"
    # Whether it resumed from step 4 is the run's own business (Ray Train's snapshot may not
    # list a checkpoint reported just before the crash); it is the same run, now complete.
    assert sorted(metric_by_step(client, failed[0].info.run_id, "loss")) == list(range(1, 9))
