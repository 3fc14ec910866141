"""`paralab run` end to end on a private local Ray cluster: what MLflow and storage hold after it.

These run the CLI as users do, in a subprocess with its own `PARALAB_HOME`, so the embedded
SQLite store and checkpoint folder are the test's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "name=e2e",
    "model.d_model=32", "model.n_layers=1", "model.heads=2", "model.mode=sequential",
    "data.seq_len=32", "data.max_tokens=60000",
    "train.steps=16", "train.batch_size=8", "train.workers=2", "train.cpus_per_worker=0.5",
    "train.lr=3e-3", "train.warmup_frac=0.0",
    "train.log_every=2", "train.eval_every=8", "train.checkpoint_every=8", "train.eval_batches=2",
]


def paralab(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PARALAB_HOME": str(home), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    full_env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "paralab.platform.cli", *args], cwd=home,
                          env=full_env, capture_output=True, text=True, timeout=600)
    return proc


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    proc = paralab(home, "run", str(ROOT / "experiments" / "quickstart.yaml"), *TINY)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{home / '.paralab' / 'mlflow.db'}")
    return home, proc, client


def _runs(client: MlflowClient):
    exp = client.get_experiment_by_name("e2e")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_mlflow_holds_params_metrics_config_and_checkpoint(first_run):
    home, proc, client = first_run
    (run,) = _runs(client)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.cell"] == "paragru" and params["train.steps"] == "16"
    assert params["train.workers"] == "2"
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.5, losses  # byte-level loss starts near ln(256)=5.5
    assert "val_loss" in run.data.metrics and "tokens_per_s" in run.data.metrics
    assert any(k.startswith("newton/") for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts and "model" in artifacts
    config_text = Path(client.download_artifacts(run.info.run_id, "config.yaml")).read_text()
    assert "cell: paragru" in config_text
    ckpt = Path(run.data.tags["paralab.checkpoint"])
    assert ckpt.name == "checkpoint_00000016" and (ckpt / "model.pt").exists()
    # The key of the data it trained on, beside the checkpoints: a resume on other data stops.
    record = json.loads((ckpt.parent / "paralab-data.json").read_text())
    assert record == {"data_key": run.data.tags["paralab.data_key"]}
    assert (ckpt / "trainer.pt").exists() and (ckpt / "rng-rank1.pt").exists()
    assert "MLflow UI" in proc.stdout and " ui" in proc.stdout
    assert str(ckpt.parent) in proc.stdout.replace("\n", "")


def test_logged_model_loads_back_and_generates(first_run):
    import mlflow.pytorch
    import torch

    from paralab.platform.data import ByteTokenizer

    _, _, client = first_run
    (run,) = _runs(client)
    mlflow.set_tracking_uri(client._tracking_client.tracking_uri)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    tokenizer = ByteTokenizer()
    prompt = torch.as_tensor(tokenizer.encode("And God said"), dtype=torch.long)[None]
    out = model.generate(prompt, max_new_tokens=12, temperature=0)
    assert out.shape == (1, prompt.shape[1] + 12)
    assert torch.equal(out[:, : prompt.shape[1]], prompt)
    assert isinstance(tokenizer.decode(out[0]), str)


def test_second_run_overwrites_nothing_and_restart_adds_a_generation(first_run):
    home, _, client = first_run
    (run,) = _runs(client)
    run_dir = Path(run.data.tags["paralab.checkpoint"]).parent
    before = digest(run_dir)

    again = paralab(home, "run", str(ROOT / "experiments" / "quickstart.yaml"), *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete" in again.stdout
    assert digest(run_dir) == before
    assert [r.info.run_id for r in _runs(client)] == [run.info.run_id]
    reread = client.get_run(run.info.run_id).info
    assert (reread.status, reread.end_time) == ("FINISHED", run.info.end_time)  # not reopened

    restarted = paralab(home, "run", str(ROOT / "experiments" / "quickstart.yaml"), *TINY, "--restart")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    runs = _runs(client)
    assert len(runs) == 2 and runs[0].info.run_id == run.info.run_id
    assert runs[1].data.tags["paralab.generation"] == "1"
    assert Path(runs[1].data.tags["paralab.checkpoint"]).parent.name.endswith(".g1")
    assert digest(run_dir) == before  # the first generation is untouched


def test_a_diverging_run_fails_in_one_line_and_keeps_its_good_checkpoints(tmp_path):
    """A learning rate of 1e6 without clipping gives a NaN loss at step 4: the run stops there
    (no Ray restart into the same divergence, no checkpoint of NaN weights) and is FAILED."""
    home = tmp_path / "home"
    home.mkdir()
    proc = paralab(home, "run", str(ROOT / "experiments" / "quickstart.yaml"), *TINY,
                   "name=e2e-div", "train.workers=1", "train.cpus_per_worker=1", "train.lr=1e6",
                   "train.grad_clip=0", "train.log_every=1", "train.eval_every=2",
                   "train.checkpoint_every=2")  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    err = proc.stderr.strip()
    assert err.startswith("error: training diverged at step 4 (loss=nan") and err.count("\n") == 0, err
    client = MlflowClient(tracking_uri=f"sqlite:///{home / '.paralab' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("e2e-div").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["paralab.diverged"].startswith("4: ")
    (folder,) = (home / ".paralab" / "storage").glob("e2e-div-*")
    assert sorted(p.name for p in folder.glob("checkpoint_0*")) == ["checkpoint_00000002"]
