"""Sweep specs without Ray: the schema, the loader-based key checks, trial listing and seeding.

A bad space fails before anything starts, as one line and exit status 2; ``--dry-run`` lists
the trials exactly; the same seed suggests the same trials.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from paralab_testing import ROOT, empty_mlflow_store, run_paralab

from paralab.platform.cli import main
from paralab.platform.config.load import ConfigError, load_experiment
from paralab.platform.config.schema import SearchConfig, SpaceConfig, SweepConfig
from paralab.platform.train.launch import LaunchError
from paralab.platform.tune import (
    concurrency,
    expand,
    optuna_suggestions,
    plan_sweep,
    sweep_id,
    trial_label,
)
from paralab.platform.tune.space import apply

SWEEPS = ROOT / "experiments" / "sweeps"
SCALING = ROOT / "experiments" / "scaling" / "cells.yaml"

BAD_SPACES = {
    "unknown-key": ("train.lrr: {type: grid, values: [0.1]}",
                    "sweep.params.train.lrr=0.1: train.lrr: Key 'lrr' not in 'TrainConfig'. Did you mean: 'lr'?"),
    "unknown-section": ("optim.lr: {type: grid, values: [0.1]}", "sweep.params.optim.lr=0.1"),
    "wrong-type-string": ("train.lr: {type: choice, values: [fast, slow]}",
                          "sweep.params.train.lr=\"fast\": train.lr: Value 'fast' of type 'str' could not be converted to Float"),
    "float-for-int": ("model.newton_iters: {type: uniform, low: 1, high: 4}",
                      "of type 'float' could not be converted to Integer"),
    "out-of-range": ("train.lr: {type: uniform, low: -0.1, high: 0.1}",
                     "sweep.params.train.lr=-0.1: train.lr must be > 0"),
    "unknown-cell": ("model.cell: {type: grid, values: [paragru, gru]}",
                     "model.cell='gru' is unknown"),
    "low-above-high": ("train.lr: {type: uniform, low: 0.1, high: 0.01}",
                       "sweep.params.train.lr: low must be < high, got low=0.1 high=0.01"),
    "loguniform-zero": ("train.lr: {type: loguniform, low: 0, high: 0.1}",
                        "sweep.params.train.lr: low must be > 0 for loguniform, got 0"),
    "empty-grid": ("model.cell: {type: grid, values: []}",
                   "sweep.params.model.cell: grid needs a non-empty values list"),
    "unknown-space-type": ("train.lr: {type: normal, low: 0.1, high: 0.2}",
                           "sweep.params.train.lr: type must be one of"),
    "space-typo": ("train.lr: {type: uniform, low: 0.1, hihg: 0.2}",
                   "sweep.params.train.lr.hihg: Key 'hihg' not in 'SpaceConfig'"),
    "randint-fraction": ("model.n_layers: {type: randint, low: 1.5, high: 4}",
                         "low and high must be integers for randint"),
    "qrandint-step": ("model.d_model: {type: qrandint, low: 32, high: 100, q: 32}",
                      "low and high must be multiples of q=32"),
    "sweeping-storage": ("storage.uri: {type: grid, values: [a, b]}",
                         "sweep.params.storage.uri: storage cannot be swept"),
    "clashing-combination": ("model.heads: {type: grid, values: [2, 3]}\n    model.d_model: {type: grid, values: [64, 96]}",
                             "sweep.params combination model.heads=3 model.d_model=64: model.heads=3 must divide d_model=64"),
}


def sweep_file(tmp_path: Path, params: str, extra: str = "") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: t\nmodel: {{d_model: 96, heads: 2}}\nsweep:\n  {extra}params:\n    {params}\n")
    return path


@pytest.mark.parametrize("case", list(BAD_SPACES), ids=list(BAD_SPACES))
def test_bad_space_is_one_line_and_exit_2(case, tmp_path, capsys):
    params, expected = BAD_SPACES[case]
    path = sweep_file(tmp_path, params)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {path}"), err
    assert expected in err


def test_bad_space_through_the_real_cli(tmp_path):
    """The installed entry point: exit 2, one line, no traceback, nothing started or written."""
    path = sweep_file(tmp_path, "train.lr: {type: loguniform, low: 0, high: 0.1}")
    proc = run_paralab(tmp_path / "home", "sweep", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "low must be > 0 for loguniform" in proc.stderr
    # The home holds only the empty MLflow store the helper put there, as it was.
    paralab_dir = tmp_path / "home" / ".paralab"
    assert [p.name for p in paralab_dir.iterdir()] == ["mlflow.db"]
    assert (paralab_dir / "mlflow.db").read_bytes() == empty_mlflow_store().read_bytes()


@pytest.mark.parametrize("extra,expected", [
    ("search: {type: grid}\n  ", "search.type grid needs grid or choice spaces"),
    ("search: {type: optuna}\n  ", "search.type optuna samples, it does not cross grids"),
    ("metric: ''\n  ", "sweep.metric must be a reported metric name"),
    ("mode: maximum\n  ", "sweep.mode must be min or max"),
    ("scheduler: {type: hyperband}\n  ", "sweep.scheduler.type must be one of ('fifo', 'asha', 'pbt')"),
    ("scheduler: {type: asha, grace_period: 0}\n  ", "sweep.scheduler.grace_period must be >= 1"),
    ("num_samples: 0\n  ", "sweep.num_samples must be >= 1"),
    ("metric: val_los\n  ", "sweep.metric='val_los' is not a reported metric; use one of val_loss"),
    ("metric: newton/bogus\n  ", "sweep.metric='newton/bogus' is not a reported metric"),
    ("metric: mfu\n  ", "sweep.metric='mfu' is reported only on GPUs"),
    ("metric: newton/residual_9\n  ", "the residuals run from 0 to model.newton_iters="),
    ("search: {seed: -1}\n  ", "sweep.search.seed must be in [0, 2**32 - 1], got -1"),
])
def test_bad_sweep_settings(extra, expected, tmp_path):
    path = sweep_file(tmp_path, "model.newton_iters: {type: randint, low: 1, high: 4}\n    "
                      "model.cell: {type: grid, values: [paragru]}", extra)
    with pytest.raises(ConfigError) as info:
        plan_sweep(path)
    assert expected in str(info.value)


def test_a_step_metric_must_be_logged_at_every_report(tmp_path):
    path = sweep_file(tmp_path, "model.cell: {type: grid, values: [paragru]}", "metric: tokens_per_s\n  ")
    plan_sweep(path, ["train.log_every=10", "train.eval_every=100", "train.checkpoint_every=200"])
    with pytest.raises(ConfigError, match=r"train.log_every=30 steps, which must divide train.eval_every=100"):
        plan_sweep(path, ["train.log_every=30", "train.eval_every=100"])


def test_the_metric_is_checked_for_every_listed_trial(tmp_path):
    """A trial may sweep what decides whether the metric is reported at all."""
    path = sweep_file(tmp_path, "model.mode: {type: grid, values: [parallel, sequential]}",
                      "metric: newton/iterations\n  ")
    with pytest.raises(ConfigError, match=r"in trial mode=sequential, sweep.metric='newton/iterations'"
                                          r": a model with model.arch=pararnn, model.mode=sequential runs no Newton"):
        plan_sweep(path)
    path = sweep_file(tmp_path, "train.log_every: {type: grid, values: [2, 3]}", "metric: loss\n  ")
    with pytest.raises(ConfigError, match=r"in trial log_every=3, .*train.log_every=3 steps, which must divide"):
        plan_sweep(path, ["train.eval_every=4", "train.checkpoint_every=8"])


def test_a_drawn_trial_that_does_not_build_is_named(tmp_path):
    """The ends of a range pass alone; a value drawn between them may not (3 heads of 96
    divide, 5 do not): every listed trial is built before the sweep starts."""
    path = sweep_file(tmp_path, "model.heads: {type: randint, low: 1, high: 6}", "num_samples: 12\n  ")
    with pytest.raises(ConfigError, match=r"sweep trial #\d+ \(heads=5\): model.heads=5 must divide"):
        plan_sweep(path)


def test_asha_that_can_stop_nothing_is_refused(tmp_path):
    path = sweep_file(tmp_path, "train.lr: {type: grid, values: [0.001, 0.01]}",
                      "scheduler: {type: asha, grace_period: 50}\n  ")
    with pytest.raises(ConfigError, match=r"grace_period=50 is not below the trials' 8 steps, so ASHA would stop no trial"):
        plan_sweep(path, ["train.steps=8"])
    plan_sweep(path, ["train.steps=200"])


def test_qrandint_with_step_one_draws_both_ends(tmp_path):
    path = sweep_file(tmp_path, "train.seed: {type: qrandint, low: 1, high: 2, q: 1}", "num_samples: 24\n  ")
    assert {t["train.seed"] for t in plan_sweep(path).trials} == {1, 2}


def test_a_swept_section_merges_like_an_override():
    """`model: {n_layers: 3}` as a swept value keeps the file's other model keys, as the same
    override does; it replaced the section (schema defaults for the rest) before."""
    base = {"model": {"d_model": 32, "heads": 2, "n_layers": 1}, "train": {"lr": 0.1}}
    assert apply(base, {"model": {"n_layers": 3}}) == {
        "model": {"d_model": 32, "heads": 2, "n_layers": 3}, "train": {"lr": 0.1}}


def test_resources_of_every_combination_are_planned(tmp_path):
    """Optuna may later suggest the largest workers with the largest CPUs per worker, which no
    listed trial shows; the plan reserves for it."""
    path = sweep_file(tmp_path, "train.workers: {type: randint, low: 1, high: 2}\n    "
                      "train.cpus_per_worker: {type: randint, low: 1, high: 2}",
                      "search: {type: optuna}\n  num_samples: 2\n  ")
    assert plan_sweep(path, ["train.batch_size=8"]).per_trial.cpus == 4


def test_pbt_is_refused_before_anything_starts(tmp_path, capsys):
    path = sweep_file(tmp_path, "train.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}",
                      "scheduler: {type: pbt}\n  ")
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "sweep.scheduler.type=pbt cannot run yet" in capsys.readouterr().err


def test_validate_checks_sweep_params(tmp_path, capsys):
    path = sweep_file(tmp_path, "train.lrr: {type: grid, values: [0.1]}")
    assert main(["validate", str(path)]) == 2
    assert "Did you mean: 'lr'?" in capsys.readouterr().err


def test_a_file_without_a_sweep_section(capsys):
    assert main(["sweep", str(ROOT / "experiments" / "quickstart.yaml"), "--dry-run"]) == 2
    assert "has no sweep: section" in capsys.readouterr().err


def test_dry_run_lists_the_grid_exactly(capsys):
    assert main(["sweep", str(SWEEPS / "newton_iters.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("│")[1:4] for line in out.splitlines() if line.startswith("│")]
    listed = [(int(n.strip()), int(iters.strip()), cell.strip()) for n, iters, cell in rows]
    grid = list(itertools.product([1, 2, 3, 4], ["paragru", "paralstm"]))
    assert listed == [(i, iters, cell) for i, (iters, cell) in enumerate(grid, 1)]
    assert "8 trial(s), search grid" in out and "2 worker(s), 2 CPU" in out


def test_dry_run_of_overridden_grid_and_resources(capsys):
    overrides = ["sweep.params[model.d_model].values=[16,32]", "train.workers=1",
                 "train.cpus_per_worker=0.5", "sweep.max_concurrent_trials=3"]
    assert main(["sweep", str(SWEEPS / "scale.yaml"), *overrides, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 trial(s)" in out and "1 x 0.5 CPU" in out
    assert "up to 3 trial(s) at a time" in out


def test_a_trial_too_big_for_the_machine(capsys):
    """The sweep refuses to start; its dry run still lists the plan, which is for a cluster."""
    overrides = ["train.workers=64", "train.batch_size=64"]
    plan = plan_sweep(SWEEPS / "scale.yaml", overrides)
    with pytest.raises(LaunchError, match="one trial needs 64 worker.*lower train.workers"):
        concurrency(plan, cpus=2, gpus=0)
    assert main(["sweep", str(SWEEPS / "scale.yaml"), *overrides, "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "not on this machine: one trial needs 64 worker(s), 64 CPU" in out


def test_a_gpu_sweep_dry_runs_on_a_laptop_and_says_where_it_fits(capsys):
    overrides = ["train.use_gpu=true", "train.workers=4", "model.mode=triton"]
    plan = plan_sweep(SWEEPS / "newton_iters.yaml", overrides)
    with pytest.raises(LaunchError, match=r"4 GPU .* 0 GPUs; run it on a cluster with GPUs"):
        concurrency(plan, cpus=16, gpus=0)
    assert concurrency(plan, cpus=16, gpus=8) == 2
    assert main(["sweep", str(SWEEPS / "newton_iters.yaml"), *overrides, "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "8 trial(s)" in out and "not on this machine" in out and "paralab submit --sweep" in out


@pytest.mark.parametrize("path, override, message", [
    (SWEEPS / "lr.yaml", "sweep.metric=val_los", "sweep.metric='val_los' is not a reported metric"),
    (SWEEPS / "lr.yaml", "sweep.scheduler.type=pbt", "sweep.scheduler.type=pbt cannot run yet"),
    (SCALING, "scaling.group_by=[model.cel]", "scaling.group_by: 'model.cel' is not an experiment key"),
    (SCALING, "scaling.metric=val_los", "scaling.metric='val_los' is not a logged metric"),
], ids=["metric", "pbt", "group-by", "scaling-metric"])  # fmt: skip
def test_validate_checks_all_that_sweep_checks(path, override, message, capsys):
    """`paralab validate` saying "valid" means `paralab sweep` and `paralab scaling` will not
    refuse the file later, after trials have trained."""
    assert main(["validate", str(path), override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1


def test_random_search_is_seeded():
    sweep = SweepConfig(params={"train.lr": SpaceConfig("loguniform", low=1e-4, high=1e-1),
                                "model.cell": SpaceConfig("grid", ["paragru", "paralstm"])},
                        num_samples=3)
    first, again = expand(sweep), expand(sweep)
    assert first == again and len(first) == 6
    assert [t["model.cell"] for t in first] == ["paragru", "paralstm"] * 3
    assert all(1e-4 <= t["train.lr"] <= 1e-1 for t in first)
    sweep.search.seed = 1
    assert expand(sweep) != first


def test_optuna_suggestions_are_seeded():
    params = {"train.lr": SpaceConfig("loguniform", low=1e-4, high=1e-1),
              "model.cell": SpaceConfig("choice", ["paragru", "paralstm"]),
              "model.newton_iters": SpaceConfig("randint", low=1, high=4),
              "model.d_model": SpaceConfig("qrandint", low=32, high=128, q=32)}
    sweep = SweepConfig(params=params, search=SearchConfig("optuna", seed=7), num_samples=6)
    first, again = optuna_suggestions(sweep, 6), optuna_suggestions(sweep, 6)
    assert first == again
    assert {t["model.newton_iters"] for t in first} <= {1, 2, 3, 4}  # inclusive ends
    assert {t["model.d_model"] for t in first} <= {32, 64, 96, 128}
    sweep.search.seed = 8
    assert optuna_suggestions(sweep, 6) != first


def test_optuna_dry_run_is_reproducible(capsys):
    args = ["sweep", str(SWEEPS / "lr.yaml"), "sweep.search.type=optuna", "sweep.search.seed=3",
            "sweep.num_samples=5", "--dry-run"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert "optuna: the first 5 suggestions before any result" in first


def test_sweep_id_ignores_where_results_go_but_not_the_sweep():
    path = SWEEPS / "lr.yaml"
    base = load_experiment(path)
    assert sweep_id(load_experiment(path, ["storage.uri=/elsewhere", "train.log_every=5"])) == sweep_id(base)
    assert sweep_id(load_experiment(path, ["sweep.num_samples=3"])) != sweep_id(base)
    assert sweep_id(load_experiment(path, ["train.steps=10"])) != sweep_id(base)


def test_trial_configs_match_paralab_run():
    """A trial is the file without `sweep:` plus its values: the identity `paralab run` gives it."""
    from paralab.platform.identity import run_identity

    plan = plan_sweep(SWEEPS / "newton_iters.yaml")
    values = plan.trials[3]
    assert trial_label(values) == "newton_iters=2,cell=paralstm"
    cfg = plan.trial_cfg(values)
    assert cfg.sweep is None and cfg.model.newton_iters == 2 and cfg.model.cell == "paralstm"
    as_run = load_experiment(SWEEPS / "newton_iters.yaml",
                             ["model.newton_iters=2", "model.cell=paralstm"])
    assert run_identity(cfg) == run_identity(as_run)  # `sweep:` is not part of a run's identity


def test_apply_sets_nested_keys_without_touching_the_base():
    base = {"train": {"lr": 1.0, "betas": [0.9, 0.95]}, "model": {"cell": "paragru"}}
    out = apply(base, {"train.lr": 0.5, "train.betas": [0.8, 0.9]})
    assert out["train"] == {"lr": 0.5, "betas": [0.8, 0.9]} and base["train"]["lr"] == 1.0


class _Trial:
    """What the sweep reads of a Tune trial once it has ended."""

    def __init__(self, trial_id: str, config: dict, status: str, last_result: dict):
        self.trial_id, self.config, self.status, self.last_result = trial_id, config, status, last_result


def test_trials_of_different_lengths_each_finish_at_their_own_end():
    """With train.steps (or a FLOP budget) swept, a trial is finished at its own last step, not
    the base config's, and ASHA never stops a trial at that step; the plan knows the longest."""
    from ray.tune.schedulers import TrialScheduler

    from paralab.platform.tune.sweep import FinishingASHA, _outcome

    plan = plan_sweep(SWEEPS / "lr.yaml", ["train.steps=300", "sweep.params[train.steps]={type: grid, values: [100, 300]}"])
    assert plan.max_steps() == 300
    short = _Trial("a", plan.trials[0], "TERMINATED", {"step": 100, "steps": 100, "val_loss": 2.0})
    stopped = _Trial("b", plan.trials[1], "TERMINATED", {"step": 100, "steps": 300, "val_loss": 2.5})
    assert _outcome(plan, short).status == "FINISHED"
    assert _outcome(plan, stopped).status == "STOPPED"

    asha = FinishingASHA(final_step=300, time_attr="step", metric="val_loss", mode="min",
                         max_t=300, grace_period=50, reduction_factor=2)  # fmt: skip
    best, worse, ending = (_Trial(t, {}, "RUNNING", {}) for t in "xyz")
    for trial in (best, worse, ending):
        asha.on_trial_add(None, trial)
    at_rung = {"step": 50, "steps": 300}
    assert asha.on_trial_result(None, best, {**at_rung, "val_loss": 1.0}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, worse, {**at_rung, "val_loss": 9.0}) == TrialScheduler.STOP
    # Just as bad, but step 50 is its last: stopping it would only lose its final report.
    last = {"step": 50, "steps": 50, "val_loss": 9.0}
    assert asha.on_trial_result(None, ending, last) == TrialScheduler.CONTINUE
