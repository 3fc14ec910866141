"""The sweep's outputs without Ray: summary CSV, plot, best.yaml, the live board and tables."""

from __future__ import annotations

import csv
from types import SimpleNamespace

from paralab_testing import ROOT
from rich.console import Console

from paralab.platform.config.load import load_experiment
from paralab.platform.tune import display, plan_sweep, summary
from paralab.platform.tune.progress import Board, BoardCallback, active
from paralab.platform.tune.sweep import SweepOutcome, TrialOutcome, _best

NEWTON = ROOT / "experiments" / "sweeps" / "newton_iters.yaml"


def outcomes(plan) -> list[TrialOutcome]:
    made = []
    for index, values in enumerate(plan.trials):
        status = ["FINISHED", "STOPPED", "ERROR", "FINISHED"][index % 4]
        metric = None if status == "ERROR" else 3.0 - 0.1 * index
        made.append(TrialOutcome(f"t{index}", values, status, 300 if status == "FINISHED" else 50,
                                 metric, {"val_loss": metric} if metric else {}, f"run{index}",
                                 f"id{index}", "boom" if status == "ERROR" else None))
    return made


def test_files_rank_trials_and_best_yaml_runs(tmp_path):
    plan = plan_sweep(NEWTON)
    trials = outcomes(plan)
    best = _best(plan, trials)
    assert best.trial_id == "t7" and best.values == {"model.newton_iters": 4, "model.cell": "paralstm"}
    files = summary.write(plan, trials, best, tmp_path)
    assert set(files) == {"summary.csv", "summary.png", "best.yaml"}
    rows = list(csv.DictReader(files["summary.csv"].open()))
    assert [r["trial_id"] for r in rows[:3]] == ["t7", "t5", "t4"] and rows[-1]["status"] == "ERROR"
    assert rows[0]["model.cell"] == "paralstm" and rows[0]["mlflow_run_id"] == "run7"
    assert files["summary.png"].read_bytes()[:4] == b"\x89PNG"
    cfg = load_experiment(files["best.yaml"])
    assert cfg.sweep is None and cfg.model.newton_iters == 4 and cfg.name == "newton_iters"
    assert "val_loss=2.3" in files["best.yaml"].read_text().splitlines()[0]


def test_best_prefers_finished_trials():
    """A trial ASHA stopped early may score lower at its rung; the best is a finished one."""
    plan = plan_sweep(NEWTON)
    trials = outcomes(plan)[:6]  # t5 (stopped, 2.5) beats t4 (finished, 2.6)
    assert _best(plan, trials).trial_id == "t4"


def test_board_follows_tune_events_and_renders():
    plan = plan_sweep(NEWTON)
    ended, events = [], []
    board = Board("val_loss", total=len(plan.trials), steps=300, on_event=events.append,
                  on_trial_end=lambda trial_id, errored: ended.append((trial_id, errored)))
    trials = [SimpleNamespace(trial_id=f"t{i}", config=v, status="RUNNING",
                              last_result={"step": 50, "val_loss": 3.0})
              for i, v in enumerate(plan.trials[:3])]
    active(board)
    try:
        callback = BoardCallback()
        callback.on_step_end(iteration=1, trials=trials)
        trials[0].status, trials[0].last_result = "TERMINATED", {"step": 100, "val_loss": 2.5}
        callback.on_trial_complete(iteration=2, trials=trials, trial=trials[0])
        trials[1].status = "ERROR"
        callback.on_trial_error(iteration=3, trials=trials, trial=trials[1])
        # A trial shorter than the base config (train.steps or a FLOP budget swept) is done at its
        # own last step.
        trials[2].status, trials[2].last_result = "TERMINATED", {"step": 100, "steps": 100, "val_loss": 2.4}
        callback.on_trial_complete(iteration=4, trials=trials, trial=trials[2])
    finally:
        active(None)
    assert ended == [("t0", False), ("t1", True), ("t2", False)]
    assert events == ["trial newton_iters=1,cell=paragru stopped early at step 100  val_loss 2.5",
                      "trial newton_iters=1,cell=paralstm failed  val_loss 3",
                      "trial newton_iters=2,cell=paragru finished  val_loss 2.4"]
    assert board.finished() == 3
    console = Console(width=150, record=True)
    console.print(display.board_table(board, list(plan.sweep.params)))
    text = console.export_text()
    assert "100/300" in text and "100/100" in text and "terminated" in text and "paralstm" in text


def test_summary_table_marks_the_best(tmp_path):
    plan = plan_sweep(NEWTON)
    trials = outcomes(plan)
    best = _best(plan, trials)
    outcome = SweepOutcome(plan, trials, best, None, tmp_path, "x", "parent", "sqlite://", False, 12.0)
    console = Console(width=150, record=True)
    console.print(display.summary_table(outcome))
    text = console.export_text()
    assert "4 finished, 2 stopped, 2 error in 12 s" in text
    best_line = next(line for line in text.splitlines() if "*" in line)
    assert "t7" in best_line
