"""`paralab scaling FILE`: from a sweep's runs in MLflow to fits, a report, a figure, and
artifacts on the sweep's parent run.

The first tests write sweep runs straight into a real MLflow store, with metrics that follow
a known law of each trial's exact parameter count, so the fit has a right answer. The last
runs a real (tiny) sweep on Ray and fits it.
"""

from __future__ import annotations

import json
import math
import time

import pytest
from paralab_testing import ROOT, mlflow_at, run_paralab

from paralab.models.flops import param_count
from paralab.platform.tune.sweep import plan_sweep
from paralab.platform.tune.trial import SWEEP_TAG, VALUES_TAG

STUDY = ROOT / "experiments" / "scaling" / "cells.yaml"
WIDTHS = [16, 24, 32, 48, 64]
OVERRIDES = [f"sweep.params[model.d_model].values={WIDTHS}".replace(" ", "")]
LAW = {"paragru": (1.5, 30.0, 0.25), "paralstm": (1.2, 20.0, 0.2)}  # E, A, alpha


def _record_sweep(home, overrides=OVERRIDES, killed=("paralstm", 64)):
    """A finished sweep as `paralab sweep` leaves it in MLflow: a parent run, a child per trial."""
    plan = plan_sweep(STUDY, overrides)
    client = mlflow_at(home)
    # As Tracker.open makes it: artifacts beside the database, not in the cwd's ./mlruns.
    artifacts = (home / ".paralab" / "mlartifacts").as_uri()
    exp_id = client.create_experiment(plan.experiment, artifact_location=artifacts)
    parent = client.create_run(exp_id, tags={SWEEP_TAG: plan.sweep_id, "paralab.kind": "sweep"})
    for values in plan.trials:
        cfg = plan.trial_cfg(values)
        E, A, alpha = LAW[cfg.model.cell]
        n = param_count(cfg.model, embeddings=False)
        child = client.create_run(exp_id, tags={
            "mlflow.parentRunId": parent.info.run_id, VALUES_TAG: json.dumps(values),
            "mlflow.runName": f"d_model={values['model.d_model']} cell={values['model.cell']}",
        })  # fmt: skip
        client.log_metric(child.info.run_id, "val_loss", E + A * n**-alpha, step=cfg.train.steps)
        if (values["model.cell"], values["model.d_model"]) == killed:
            client.set_tag(child.info.run_id, "paralab.sweep.stopped_at_step", "8")
            client.set_terminated(child.info.run_id, "KILLED")
        else:
            client.set_terminated(child.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    return client, parent.info.run_id


def test_fits_each_group_to_its_law_and_records_everything(tmp_path):
    home = tmp_path / "home"
    client, parent_id = _record_sweep(home)
    proc = run_paralab(home, "scaling", str(STUDY), *OVERRIDES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "left out" in proc.stdout and "stopped early at step 8" in proc.stdout

    out = home / ".paralab" / "scaling"
    (folder,) = out.iterdir()
    doc = json.loads((folder / "scaling.json").read_text())
    fits = {(f["group"], f["x"]): f for f in doc["fits"]}
    assert set(fits) == {(f"model.cell={c}", x) for c in LAW for x in ("params", "flops")}
    for cell, (E, A, alpha) in LAW.items():
        fit = fits[(f"model.cell={cell}", "params")]
        assert fit["n"] == (4 if cell == "paralstm" else 5)  # the stopped trial is left out
        assert fit["alpha"] == pytest.approx(alpha, rel=1e-3)
        assert fit["E"] == pytest.approx(E, rel=1e-3)
        assert fit["A"] == pytest.approx(A, rel=1e-2)
        assert fits[(f"model.cell={cell}", "flops")]["r2_log"] > 0.99
    assert len(doc["points"]) == 9 and doc["skipped"][0]["reason"] == "stopped early at step 8"
    # Every trial trains the same tokens: no joint fit of size and data, and no section for it.
    assert doc["joint"] == [] and doc["isoflop"] == []
    report = (folder / "scaling.md").read_text()
    assert "| model.cell=paragru | params | 0.250" in report
    assert (folder / "scaling.png").stat().st_size > 10_000

    (first,) = client.list_artifacts(parent_id, "scaling")
    artifacts = {a.path.removeprefix(first.path + "/") for a in client.list_artifacts(parent_id, first.path)}
    assert artifacts == {"scaling.json", "scaling.md", "scaling.png"}
    metrics = client.get_run(parent_id).data.metrics
    assert metrics["scaling.model.cell_paragru.params.alpha"] == pytest.approx(0.25, rel=1e-3)

    # A refit keeps the earlier report beside the new one: nothing is overwritten.
    time.sleep(1.1)
    assert run_paralab(home, "scaling", str(STUDY), *OVERRIDES).returncode == 0
    assert len(client.list_artifacts(parent_id, "scaling")) == 2


def test_a_sweep_never_run_is_one_line_and_exit_2(tmp_path):
    proc = run_paralab(tmp_path / "home", "scaling", str(STUDY))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no sweep of this file" in proc.stderr and "paralab sweep" in proc.stderr


def test_no_store_where_the_sweep_was_recorded_is_one_line_and_leaves_none(tmp_path):
    """A store that does not exist is not created (empty) to be searched."""
    store = tmp_path / "elsewhere" / "mlflow.db"
    proc = run_paralab(tmp_path / "home", "scaling", str(STUDY), f"tracking.uri=sqlite:///{store}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"no MLflow store at {store}" in proc.stderr and "paralab sweep" in proc.stderr
    assert not store.exists()


def test_a_bad_group_key_is_one_line_and_exit_2(tmp_path):
    proc = run_paralab(tmp_path / "home", "scaling", str(STUDY), "scaling.group_by=[model.celll]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "scaling.group_by: 'model.celll' is not an experiment key" in proc.stderr


def test_a_group_with_one_width_says_why_it_has_no_fit(tmp_path):
    home = tmp_path / "home"
    overrides = ["sweep.params[model.d_model].values=[16,32]"]
    _record_sweep(home, overrides, killed=("paralstm", 32))
    proc = run_paralab(home, "scaling", str(STUDY), *overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no fit" in proc.stdout and "two distinct x" in proc.stdout
    # Logged as NaN: a value from an earlier fit of this sweep must not stay the latest.
    parent = mlflow_at(home).search_runs([mlflow_at(home).get_experiment_by_name(
        plan_sweep(STUDY, overrides).experiment).experiment_id], "tags.`paralab.kind` = 'sweep'")[0]
    assert math.isnan(parent.data.metrics["scaling.model.cell_paralstm.params.alpha"])


@pytest.mark.slow
@pytest.mark.ray
def test_real_sweep_then_scaling(tmp_path):
    """The README's workflow on a tiny preset: sweep one width of one cell, extend the sweep
    by a second width (only that one trains), then fit both."""
    home = tmp_path / "home"
    tiny = [
        "sweep.params[model.cell].values=[paragru]",
        "model.n_layers=1", "model.mode=sequential", "data.seq_len=16", "data.max_tokens=20000",
        "train.steps=4", "train.batch_size=4", "train.workers=1", "train.cpus_per_worker=1",
        "train.eval_every=4", "train.checkpoint_every=4", "train.eval_batches=1",
        "tracking.log_model=false",
    ]  # fmt: skip
    first = ["sweep.params[model.d_model].values=[8]", *tiny]
    proc = run_paralab(home, "sweep", str(STUDY), *first, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow_at(home)
    experiment = client.get_experiment_by_name("scaling-cells").experiment_id
    (first_trial,) = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" in r.data.tags]
    extended = ["sweep.params[model.d_model].values=[8,16]", *tiny]
    proc = run_paralab(home, "sweep", str(STUDY), *extended, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 2
    # Width 8 was reused as it was, not trained again.
    assert client.get_run(first_trial.info.run_id).info.end_time == first_trial.info.end_time

    proc = run_paralab(home, "scaling", str(STUDY), *extended)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (folder,) = (home / ".paralab" / "scaling").iterdir()
    doc = json.loads((folder / "scaling.json").read_text())
    assert len(doc["points"]) == 2 and not doc["skipped"]
    assert [p["params"] for p in doc["points"]] == sorted(p["params"] for p in doc["points"])
    assert {f["x"] for f in doc["fits"] if "alpha" in f} == {"params", "flops"}


ISOFLOP = ROOT / "experiments" / "scaling" / "isoflop.yaml"
ISOFLOP_OVERRIDES = ["sweep.params[train.flops_budget].values=[3e10,1e11,3e11]",
                     "sweep.params[model.d_model].values=[16,24,32,48,64]", "data.seq_len=64"]


def test_isoflop_study_finds_each_budgets_optimum(tmp_path):
    """A budget × width sweep whose losses follow Chinchilla's law of each trial's exact size
    and tokens: the report has every budget's optimum and the exponents, in all its files."""
    from paralab.dashboards.isoflop import fit_isoflop

    home = tmp_path / "home"
    plan = plan_sweep(ISOFLOP, ISOFLOP_OVERRIDES)
    client = mlflow_at(home)
    exp_id = client.create_experiment(plan.experiment,
                                      artifact_location=(home / ".paralab" / "mlartifacts").as_uri())
    parent = client.create_run(exp_id, tags={SWEEP_TAG: plan.sweep_id, "paralab.kind": "sweep"})
    rows = []
    for values in plan.trials:
        cfg = plan.trial_cfg(values)
        n = param_count(cfg.model, embeddings=False)
        d = cfg.train.steps * cfg.train.batch_size * cfg.data.seq_len
        loss = 1.69 + 406.4 * n**-0.34 + 410.7 * d**-0.28
        rows.append((cfg.train.flops_budget, n, d, loss))
        child = client.create_run(exp_id, tags={"mlflow.parentRunId": parent.info.run_id,
                                                VALUES_TAG: json.dumps(values)})  # fmt: skip
        client.log_metric(child.info.run_id, "val_loss", loss, step=cfg.train.steps)
        client.set_terminated(child.info.run_id, "FINISHED")
    # Each trial trained as many steps as its budget buys: fewer for wider models.
    steps = {v["model.d_model"]: plan.trial_cfg(v).train.steps for v in plan.trials
             if v["train.flops_budget"] == 1e11}  # fmt: skip
    assert steps[16] > steps[32] > steps[64] > 1

    proc = run_paralab(home, "scaling", str(ISOFLOP), *ISOFLOP_OVERRIDES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IsoFLOP" in proc.stdout and "a = " in proc.stdout
    (folder,) = (home / ".paralab" / "scaling").iterdir()
    doc = json.loads((folder / "scaling.json").read_text())
    (iso,) = doc["isoflop"]
    expected = fit_isoflop(*zip(*rows))
    assert [s["budget"] for s in iso["slices"]] == [3e10, 1e11, 3e11]
    assert all(s["reason"] is None for s in iso["slices"]), iso["slices"]
    assert iso["params"]["exponent"] == pytest.approx(expected.params.exponent, rel=1e-9)
    assert iso["tokens"]["exponent"] == pytest.approx(expected.tokens.exponent, rel=1e-9)
    # The law's optimum moves to larger models as the budget grows, and their tokens grow too.
    assert 0.3 < iso["params"]["exponent"] < 0.7 and 0.3 < iso["tokens"]["exponent"] < 0.7
    assert all(p["flops_budget"] in (3e10, 1e11, 3e11) for p in doc["points"])
    report = (folder / "scaling.md").read_text()
    assert "## IsoFLOP" in report and "![IsoFLOP](isoflop.png)" in report
    # The per-axis laws are fitted to the best trial of each budget, and the report says so.
    for fit in doc["fits"]:
        assert fit["n"] == 3, fit
    best = {}
    for p in doc["points"]:
        if p["flops_budget"] not in best or p["val_loss"] < best[p["flops_budget"]]["val_loss"]:
            best[p["flops_budget"]] = p
    (flops_fit,) = [f for f in doc["fits"] if f["x"] == "flops"]
    assert flops_fit["x_min"] == min(p["flops"] for p in best.values())
    assert flops_fit["x_max"] == max(p["flops"] for p in best.values())
    assert "fitted to the best trial at each of its 3 budgets" in report
    assert (folder / "isoflop.png").stat().st_size > 10_000
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert metrics["scaling.all trials.isoflop.params_exponent"] == pytest.approx(
        expected.params.exponent, rel=1e-9)
    # The same trials vary in size and tokens: the joint fit gets the law's own exponents back.
    (joint,) = doc["joint"]
    assert joint["alpha"] == pytest.approx(0.34, rel=1e-3) and joint["beta"] == pytest.approx(0.28, rel=1e-3)
    assert "## Joint fit" in report and "| all trials | 0.340 | 0.280 |" in report
    assert metrics["scaling.all trials.joint.beta"] == pytest.approx(0.28, rel=1e-3)
    (artifacts,) = client.list_artifacts(parent.info.run_id, "scaling")
    names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(parent.info.run_id, artifacts.path)}
    assert names == {"scaling.json", "scaling.md", "scaling.png", "isoflop.png"}


def test_a_budget_too_small_for_one_step_is_one_line(tmp_path):
    proc = run_paralab(tmp_path / "home", "sweep", str(ISOFLOP), "--dry-run",
                       "sweep.params[train.flops_budget].values=[1e3]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.flops_budget=1e+03 is less than one optimizer step" in proc.stderr


def test_diverged_and_repeated_trials(tmp_path):
    """A trial that diverged (val_loss NaN) is left out and named, not a group's every fit
    lost; a trial trained again (a sweep re-run after a code change) counts once, by its
    newest run; the JSON stays strict."""
    home = tmp_path / "home"
    client, parent_id = _record_sweep(home, killed=(None, None))
    exp_id = client.get_run(parent_id).info.experiment_id
    plan = plan_sweep(STUDY, OVERRIDES)

    def child(values, loss, name):
        run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent_id,
                                              VALUES_TAG: json.dumps(values), "mlflow.runName": name})
        client.log_metric(run.info.run_id, "val_loss", loss, step=1)
        client.set_terminated(run.info.run_id, "FINISHED")

    first, second = plan.trials[0], plan.trials[1]
    time.sleep(0.01)
    child(first, 9.0, "retrained")  # newer than the first run of these values: it counts
    child(second, float("nan"), "diverged")  # newer, but diverged: the older run counts
    proc = run_paralab(home, "scaling", str(STUDY), *OVERRIDES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (folder,) = (home / ".paralab" / "scaling").iterdir()
    doc = json.loads((folder / "scaling.json").read_text(),
                     parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))
    assert len(doc["points"]) == 10  # 2 cells × 5 widths, each once
    by_trial = {p["trial"]: p for p in doc["points"]}
    assert by_trial["retrained"]["val_loss"] == 9.0
    reasons = {s["trial"]: s["reason"] for s in doc["skipped"]}
    assert reasons["diverged"] == "val_loss is nan (the run diverged)"
    superseded = [why for why in reasons.values() if why.startswith("superseded")]
    assert superseded == ["superseded by a newer run of the same trial (retrained)"]
    assert all(isinstance(f.get("alpha"), float) for f in doc["fits"]), "every group still fits"


def test_groups_sort_with_null_values():
    from paralab.dashboards.points import _sortable

    groups = [(("model.d_hidden", 32),), (("model.d_hidden", None),), (("model.d_hidden", 8),)]
    assert sorted(groups, key=_sortable) == [groups[1], groups[2], groups[0]]
