"""Ray Train runs on 2 CPU workers: DDP and FSDP2 match one process, resume is exact, and a
killed worker costs neither steps nor checkpoints, on local storage and on S3.

One tiny experiment serves every test. Each run gets its own project directory, so its
identity-addressed folders never collide with another test's.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from paralab_testing import QUICKSTART, metric_by_step, mlflow_at, run_paralab, runs_of

from paralab.models.factory import build_model
from paralab.platform.config.load import load_experiment
from paralab.platform.data import prepare
from paralab.platform.train import checkpoint as ckpt
from paralab.platform.train.loop import NoHooks, Trainer

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS = 8
TINY = [
    "name=dist",
    "model.d_model=32", "model.n_layers=2", "model.heads=2", "model.mode=sequential",
    "data.seq_len=32", "data.max_tokens=60000",
    f"train.steps={STEPS}", "train.batch_size=8", "train.workers=2", "train.cpus_per_worker=0.5",
    "train.lr=1e-2", "train.warmup_frac=0.0", "train.log_every=1", "train.eval_every=4",
    "train.checkpoint_every=4", "train.eval_batches=2", "train.keep_checkpoints=5",
]
# Two processes sum gradients in another order than one: the losses agree to float32 noise.
RTOL = 2e-5


class Recorder(NoHooks):
    def __init__(self):
        self.losses: dict[int, float] = {}

    def log(self, metrics, step):
        self.losses[step] = metrics["loss"]


@pytest.fixture(scope="module")
def single_process_losses(tmp_path_factory, monkeypatch_module) -> dict[int, float]:
    """The same experiment trained in this process, without Ray or torch.distributed."""
    monkeypatch_module.setenv("PARALAB_HOME", str(tmp_path_factory.mktemp("single")))
    cfg = load_experiment(QUICKSTART, TINY)
    recorder = Recorder()
    Trainer(cfg, prepare(cfg.data), recorder).run()
    assert len(recorder.losses) == STEPS
    return recorder.losses


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def train(home: Path, *overrides: str, env: dict[str, str] | None = None, expect_ok: bool = True):
    proc = run_paralab(home, "run", str(QUICKSTART), *TINY, *overrides, env=env)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow_at(home)
    runs = runs_of(client, "dist")
    return proc, client, runs


def assert_losses_match(got: dict[int, float], want: dict[int, float], steps) -> None:
    for step in steps:
        assert math.isclose(got[step], want[step], rel_tol=RTOL), (
            f"step {step}: {got[step]} vs {want[step]} (abs err {abs(got[step] - want[step]):.2e})"
        )


@pytest.mark.s3
def test_fsdp_matches_one_process_through_a_restart_from_s3(tmp_path, seaweedfs, single_process_losses):
    """FSDP2 on two workers with checkpoints on a real S3 server (SeaweedFS). Rank 1 dies after
    step 6; Ray restarts both workers, which load step 4's shards back from S3. Every step's
    loss still matches one process's, and the sharded checkpoint loads into one process."""
    prefix = "runs-fsdp"
    overrides = ["train.strategy=fsdp", "train.max_failures=2",
                 f"storage.uri=s3://{seaweedfs.bucket}/{prefix}",
                 f"storage.endpoint_url={seaweedfs.endpoint_url}"]
    marker = tmp_path / "killed"
    _, client, (run,) = train(tmp_path / "home", *overrides, env={"PARALAB_FAULT_INJECT": f"6:1:{marker}"})
    assert marker.exists(), "the fault was never injected"
    losses = metric_by_step(client, run.info.run_id, "loss")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert_losses_match(losses, single_process_losses, range(1, STEPS + 1))

    s3 = seaweedfs.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=seaweedfs.bucket, Prefix=prefix)["Contents"]]
    run_dir = run.data.tags["paralab.checkpoint"].rsplit("/", 1)[0].split(f"{seaweedfs.bucket}/", 1)[1]
    for step in (4, 8):
        base = f"{run_dir}/{ckpt.checkpoint_name(step)}"
        # Sharded: one .distcp per rank plus the metadata.
        for name in ("dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "trainer.pt",
                     "rng-rank0.pt", "rng-rank1.pt"):
            assert f"{base}/{name}" in keys, f"{base}/{name} missing from {keys}"

    # The sharded checkpoint loads back into one process as a full model.
    local = tmp_path / "ckpt"
    base = f"{run_dir}/{ckpt.checkpoint_name(STEPS)}/"
    for key in keys:
        if key.startswith(base) and not key.endswith("/"):
            target = local / key[len(base):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(seaweedfs.bucket, key, str(target))
    model = build_model(load_experiment(QUICKSTART, TINY).model)
    model.load_state_dict(ckpt.full_state_dict(local))
    assert torch.isfinite(model(torch.randint(0, 256, (1, 16)))).all()


def test_interrupted_run_resumes_exactly(tmp_path, single_process_losses):
    home = tmp_path / "resume"
    marker = tmp_path / "crashed"
    # Checkpoints at 2 and 4, only the last kept: resuming must not trip over the deleted 2.
    keep = ("train.max_failures=0", "train.checkpoint_every=2", "train.keep_checkpoints=1")
    proc, client, (run,) = train(
        home, *keep, env={"PARALAB_FAULT_INJECT": f"6:0:{marker}"}, expect_ok=False
    )
    assert proc.returncode == 1 and marker.exists()
    assert "running the same command again resumes" in proc.stderr and "Traceback" not in proc.stderr
    assert client.get_run(run.info.run_id).info.status == "FAILED"

    # The resume also raises max_failures, a key outside the identity: the run continues, and
    # MLflow keeps both configs.
    proc, client, runs = train(home, *keep[1:], "train.max_failures=1")
    # Ray resumes from the latest checkpoint its controller had registered when rank 0 died:
    # 4 usually, 2 if the crash came before it took in step 4's report. The message must name
    # the step Ray really resumed from, which the logged history shows: steps up to it were
    # logged once; steps after it up to 4 (flushed before step 4's report) twice. Steps 5-6
    # may or may not have been flushed before the hard exit.
    resumed = re.search(r"resuming \S+ from step (\d+)", proc.stdout)
    assert resumed, proc.stdout
    step = int(resumed.group(1))
    assert step in (2, 4), proc.stdout
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # the same MLflow run continues
    assert runs[0].info.status == "FINISHED"
    logged = Counter(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert all(logged[s] == 1 for s in range(1, step + 1)), logged
    assert all(logged[s] == 2 for s in range(step + 1, 5)), logged
    assert all(logged[s] >= 1 for s in range(1, STEPS + 1)), logged
    losses = metric_by_step(client, run.info.run_id, "loss")
    assert_losses_match(losses, single_process_losses, range(step + 1, STEPS + 1))

    assert "train.max_failures: 0 -> 1" in proc.stdout
    assert runs[0].data.params["train.max_failures"] == "0"
    assert runs[0].data.tags[f"paralab.changed_at_step_{step}"] == "train.max_failures: 0 -> 1"
    configs = {path: Path(client.download_artifacts(run.info.run_id, path)).read_text()
               for path in ("config.yaml", f"config-from-step-{step}.yaml")}
    assert "max_failures: 0" in configs["config.yaml"]
    assert "max_failures: 1" in configs[f"config-from-step-{step}.yaml"]


def test_killed_worker_restarts_and_loses_nothing(tmp_path, single_process_losses):
    """DDP on two workers, rank 1 killed after step 6: Ray Train restarts the group from its
    last checkpoint, and every step's loss still matches one process's."""
    home = tmp_path / "fault"
    marker = tmp_path / "killed"
    _, client, (run,) = train(home, "train.max_failures=2", env={"PARALAB_FAULT_INJECT": f"6:1:{marker}"})
    assert marker.exists(), "the fault was never injected"
    losses = metric_by_step(client, run.info.run_id, "loss")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert_losses_match(losses, single_process_losses, range(1, STEPS + 1))
    run_dir = Path(client.get_run(run.info.run_id).data.tags["paralab.checkpoint"]).parent
    kept = sorted(p.name for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert kept == ["checkpoint_00000004", "checkpoint_00000008"]  # keep_checkpoints=5: none lost
    assert all((run_dir / name / "model.pt").exists() for name in kept)  # DDP: one full copy
    (best,) = run_dir.glob("best_checkpoint_*")
    # The copy holds every rank's files (it waits for all ranks to persist theirs).
    source = run_dir / f"checkpoint_{best.name.rsplit('_', 1)[1]}"
    files = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())  # noqa: E731
    # ... and, written last, the marker that says the copy is complete.
    assert "rng-rank1.pt" in files(best), files(best)
    assert files(best) == sorted([*files(source), ckpt.BEST_MARKER]), (files(best), files(source))
