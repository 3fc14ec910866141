"""FSDP2 sharded checkpoints round-trip through a real S3 server (SeaweedFS)."""

from __future__ import annotations

import boto3
import pytest
import torch
from paralab_testing import QUICKSTART, metric_by_step, mlflow_at, run_paralab, runs_of

from paralab.models.factory import build_model
from paralab.platform.config.load import load_experiment
from paralab.platform.train import checkpoint as ckpt

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]

TINY = [
    "name=s3fsdp", "model.d_model=32", "model.n_layers=2", "model.heads=2", "model.mode=sequential",
    "data.seq_len=32", "data.max_tokens=60000", "train.steps=8", "train.batch_size=8",
    "train.workers=2", "train.cpus_per_worker=0.5", "train.strategy=fsdp", "train.warmup_frac=0.0",
    "train.log_every=1", "train.eval_every=4", "train.checkpoint_every=4", "train.eval_batches=2",
    "train.max_failures=2",
]


def test_fsdp_checkpoints_round_trip_through_s3(tmp_path, seaweedfs):
    prefix = "runs-fsdp"
    overrides = [f"storage.uri=s3://{seaweedfs.bucket}/{prefix}",
                 f"storage.endpoint_url={seaweedfs.endpoint_url}"]
    marker = tmp_path / "killed"
    # Rank 1 dies after step 6: Ray restarts both workers, which load step 4 back from S3.
    proc = run_paralab(tmp_path / "home", "run", str(QUICKSTART), *TINY, *overrides,
                       env={"PARALAB_FAULT_INJECT": f"6:1:{marker}"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert marker.exists()

    s3 = boto3.client("s3", endpoint_url=seaweedfs.endpoint_url, region_name=seaweedfs.region)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=seaweedfs.bucket, Prefix=prefix)["Contents"]]
    (run,) = runs_of(mlflow_at(tmp_path / "home"), "s3fsdp")
    run_dir = run.data.tags["paralab.checkpoint"].rsplit("/", 1)[0].split(f"{seaweedfs.bucket}/", 1)[1]
    for step in (4, 8):
        base = f"{run_dir}/{ckpt.checkpoint_name(step)}"
        for name in ("dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "trainer.pt",
                     "rng-rank0.pt", "rng-rank1.pt"):
            assert f"{base}/{name}" in keys, f"{base}/{name} missing from {keys}"

    losses = metric_by_step(mlflow_at(tmp_path / "home"), run.info.run_id, "loss")
    assert sorted(losses) == list(range(1, 9))

    # The sharded checkpoint loads back into one process as a full model.
    local = tmp_path / "ckpt"
    base = f"{run_dir}/{ckpt.checkpoint_name(8)}/"
    for key in keys:
        if key.startswith(base) and not key.endswith("/"):
            target = local / key[len(base):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(seaweedfs.bucket, key, str(target))
    cfg = load_experiment(QUICKSTART, TINY)
    model = build_model(cfg.model)
    model.load_state_dict(ckpt.full_state_dict(local))
    tokens = torch.randint(0, 256, (1, 16))
    assert torch.isfinite(model(tokens)).all()
