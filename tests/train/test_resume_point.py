"""Where a re-run resumes: the step Ray Train restores from, read from its snapshot.

A checkpoint folder written just before a crash, but not yet in Ray's snapshot, is not where
Ray resumes; `paralab run` must say the step Ray will actually use."""

from __future__ import annotations

import json

import pyarrow.fs as pafs

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
