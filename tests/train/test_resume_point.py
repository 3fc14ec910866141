"""Where a re-run resumes: the step Ray Train restores from, read from its snapshot.

A checkpoint folder written just before a crash, but not yet in Ray's snapshot, is not where
Ray resumes; `paralab run` must say the step Ray will actually use."""

from __future__ import annotations

import json
import uuid

import pyarrow.fs as pafs
import pytest

from paralab.platform.storage import Storage, StorageError
from paralab.platform.train import checkpoint as ckpt


def _run_folder(tmp_path, steps, latest):
    run = tmp_path / "run"
    for step in steps:
        (run / ckpt.checkpoint_name(step)).mkdir(parents=True)
    if latest is not None:
        snapshot = {
            "ray_version": "2.60.0",
            "latest_checkpoint_result": {"checkpoint_dir_name": ckpt.checkpoint_name(latest)},
        }
        (run / ckpt.RAY_SNAPSHOT).write_text(json.dumps(snapshot))
    return str(run)


def test_resume_step_is_the_snapshots_latest_not_the_newest_folder(tmp_path):
    # Step 6 finished uploading, then the run died before Ray recorded it.
    run = _run_folder(tmp_path, [2, 4, 6], latest=4)
    fs = pafs.LocalFileSystem()
    assert max(ckpt.list_checkpoints(fs, run)) == 6
    assert ckpt.resume_step(fs, run) == 4


def test_no_snapshot_is_a_fresh_start(tmp_path):
    fs = pafs.LocalFileSystem()
    assert ckpt.resume_step(fs, _run_folder(tmp_path, [2], latest=None)) is None
    assert ckpt.resume_step(fs, str(tmp_path / "missing")) is None


def test_snapshot_without_a_checkpoint_is_a_fresh_start(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ckpt.RAY_SNAPSHOT).write_text(json.dumps({"latest_checkpoint_result": None}))
    assert ckpt.resume_step(pafs.LocalFileSystem(), str(run)) is None


def test_a_fresh_start_names_the_other_runs_of_the_experiment(tmp_path):
    from paralab.platform.train.launch import existing_generations, other_identities

    for folder in ("quick-aaaaaaaaaaaa", "quick-bbbbbbbbbbbb.g1", "quick-cccccccccccc",
                   "quicker-dddddddddddd", "sweeps"):  # fmt: skip
        (tmp_path / folder).mkdir()
    fs = pafs.LocalFileSystem()
    assert other_identities(fs, str(tmp_path), "quick", "cccccccccccc") == [
        "quick-aaaaaaaaaaaa", "quick-bbbbbbbbbbbb.g1"]
    assert other_identities(fs, str(tmp_path / "missing"), "quick", "cccccccccccc") == []
    (tmp_path / "quick-cccccccccccc.g2").mkdir()
    assert existing_generations(fs, str(tmp_path), "quick", "cccccccccccc") == [0, 2]
    assert existing_generations(fs, str(tmp_path), "quick", "bbbbbbbbbbbb") == [1]


def test_the_data_key_is_recorded_beside_the_checkpoints(tmp_path):
    import pytest

    from paralab.platform.train.launch import LaunchError, RunPlan, check_same_data

    fs = pafs.LocalFileSystem()
    plan = RunPlan("cccccccccccc", 0, "quick-cccccccccccc", None, str(tmp_path), fs, None)
    check_same_data(plan, "text-1111")  # nothing recorded yet: a fresh run
    ckpt.record_data_key(fs, plan.run_path, "text-1111")
    assert ckpt.recorded_data_key(fs, plan.run_path) == "text-1111"
    check_same_data(plan, "text-1111")
    with pytest.raises(LaunchError, match=r"data changed .* text-1111, now text-2222.*--restart"):
        check_same_data(plan, "text-2222")


def test_a_snapshot_that_cannot_be_read_is_an_error_not_a_fresh_start(tmp_path):
    run = tmp_path / "run"
    (run / ckpt.RAY_SNAPSHOT).mkdir(parents=True)  # there, but unreadable
    with pytest.raises(StorageError, match=f"cannot read .*{ckpt.RAY_SNAPSHOT}"):
        ckpt.resume_step(pafs.LocalFileSystem(), str(run))


@pytest.mark.s3
def test_resume_step_on_s3(seaweedfs):
    """pyarrow's S3 filesystem reports a missing snapshot as not found (a fresh start), and
    reads a present one."""
    storage = Storage.from_config(seaweedfs.storage_config(f"t/{uuid.uuid4().hex[:8]}"))
    root, fs = storage.ray_storage()
    run = f"{root}/run"
    assert ckpt.resume_step(fs, run) is None
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": ckpt.checkpoint_name(4)}}
    storage.write_bytes(f"run/{ckpt.RAY_SNAPSHOT}", json.dumps(snapshot).encode())
    assert ckpt.resume_step(fs, run) == 4
