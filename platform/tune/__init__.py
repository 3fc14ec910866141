"""Hyperparameter sweeps: a YAML's ``sweep:`` section as a Ray Tune experiment of paralab runs.

    plan = plan_sweep("experiments/sweeps/lr.yaml", overrides)   # checks, lists trials
    outcome = run_sweep(plan, resume=False)                       # Tune + Ray Train + MLflow

See ``docs/sweeps.md``. ``space`` turns spaces into Tune domains and checks them through the
loader, ``trial`` is what each trial runs, ``sweep`` drives Tune, ``summary`` writes the
results and ``display`` renders them for the CLI.
"""

from paralab.platform.tune.space import check_params, expand, optuna_suggestions, trial_label
from paralab.platform.tune.sweep import (
    SweepOutcome,
    SweepPlan,
    TrialOutcome,
    concurrency,
    plan_sweep,
    run_sweep,
    sweep_id,
)

__all__ = [
    "SweepOutcome",
    "SweepPlan",
    "TrialOutcome",
    "check_params",
    "concurrency",
    "expand",
    "optuna_suggestions",
    "plan_sweep",
    "run_sweep",
    "sweep_id",
    "trial_label",
]
