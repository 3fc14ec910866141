"""What a crash mid-write leaves in a run folder, and what the next run makes of it: best
copies cut short are ignored and redone, small JSON records are never half written, and a
worker's GPU RNG state restores whatever devices it sees."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from paralab.platform.storage.errors import StorageError
from paralab.platform.train import checkpoint as ckpt


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _checkpoint(run: Path, step: int) -> Path:
    folder = run / ckpt.checkpoint_name(step)
    (folder / "dcp").mkdir(parents=True)
    (folder / "trainer.pt").write_bytes(b"trainer %d" % step)
    (folder / "dcp" / "__0_0.distcp").write_bytes(os.urandom(4096))
    return folder


def _complete_best(run: Path, step: int) -> Path:
    folder = run / ckpt.best_name(step)
    folder.mkdir(parents=True)
    (folder / "trainer.pt").write_bytes(b"old best")
    (folder / ckpt.BEST_MARKER).write_text(json.dumps({"step": step}))
    return folder


def _cut_short(run: Path, step: int) -> Path:
    """A copy killed mid-way: one file, half written, and no marker."""
    folder = run / ckpt.best_name(step)
    (folder / "dcp").mkdir(parents=True)
    (folder / "dcp" / "__0_0.distcp").write_bytes(b"\0" * 100)
    return folder


def test_a_best_copy_cut_short_is_ignored_then_redone_from_its_checkpoint(tmp_path):
    fs, run = pafs.LocalFileSystem(), tmp_path / "run"
    source = _checkpoint(run, 8)
    _complete_best(run, 4)
    broken = _cut_short(run, 8)
    assert list(ckpt.list_best(fs, str(run))) == [4]  # the previous best is still the one kept

    assert ckpt.repair_best(fs, str(run), 8)
    assert _files(broken) == {**_files(source), ckpt.BEST_MARKER: json.dumps({"step": 8}).encode()}
    assert ckpt.list_best(fs, str(run)) == {8: str(broken)}
    assert not (run / ckpt.best_name(4)).exists()  # dropped once the new copy is complete
    assert not ckpt.repair_best(fs, str(run), 8)  # complete: nothing to redo


def test_a_best_copy_never_started_is_made(tmp_path):
    """Killed between the checkpoint's report and the copy: there is no folder at all."""
    fs, run = pafs.LocalFileSystem(), tmp_path / "run"
    source = _checkpoint(run, 8)
    assert ckpt.repair_best(fs, str(run), 8)
    best = run / ckpt.best_name(8)
    assert _files(best).keys() == {*_files(source), ckpt.BEST_MARKER}


def test_without_its_checkpoint_a_broken_copy_is_left_beside_the_previous_best(tmp_path):
    fs, run = pafs.LocalFileSystem(), tmp_path / "run"
    previous = _complete_best(run, 4)
    _cut_short(run, 8)  # and Ray's retention has since deleted checkpoint 8
    assert not ckpt.repair_best(fs, str(run), 8)
    assert ckpt.list_best(fs, str(run)) == {4: str(previous)}


def test_keep_best_over_an_earlier_copy_drops_its_marker_and_stale_files(tmp_path):
    """A step rewritten after a restart: its new copy must not inherit the old one's files."""
    fs, run = pafs.LocalFileSystem(), tmp_path / "run"
    source = _checkpoint(run, 8)
    old = _complete_best(run, 8)
    (old / "stale.pt").write_bytes(b"x")
    ckpt.keep_best(fs, str(run), 8)
    assert _files(old).keys() == {*_files(source), ckpt.BEST_MARKER}


class _DyingFileSystem:
    """A local filesystem whose writes stop halfway, as a process killed mid-write would."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def open_output_stream(self, path: str):
        real = self.fs.open_output_stream(path)

        class Half:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                real.close()

            def write(self, data: bytes) -> None:
                real.write(data[: len(data) // 2])
                raise KeyboardInterrupt

        return Half()

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)


def test_a_json_record_is_written_whole_or_not_at_all(tmp_path):
    fs, path = pafs.LocalFileSystem(), str(tmp_path / "record.json")
    ckpt.write_json(fs, path, {"data_key": "text-1111"})
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_json(_DyingFileSystem(), path, {"data_key": "text-2222"})
    assert ckpt.read_json(fs, path) == {"data_key": "text-1111"}  # the old record, whole
    leftovers = {p.name for p in tmp_path.iterdir()} - {"record.json"}
    assert leftovers and all(name.endswith(".tmp") for name in leftovers)  # the half is aside
    ckpt.write_json(fs, path, {"data_key": "text-3333"})
    assert ckpt.read_json(fs, path) == {"data_key": "text-3333"}


def test_a_damaged_record_is_an_error_naming_it_not_an_absent_one(tmp_path):
    fs, run = pafs.LocalFileSystem(), tmp_path / "run"
    assert ckpt.recorded_data_key(fs, str(run)) is None  # no run folder yet
    run.mkdir()
    assert ckpt.recorded_data_key(fs, str(run)) is None  # no record yet
    record = run / ckpt.DATA_RECORD
    for damaged in ('{"data_key": "te', "[1]", ""):
        record.write_text(damaged)
        with pytest.raises(StorageError) as err:
            ckpt.recorded_data_key(fs, str(run))
        assert str(record) in str(err.value) and len(str(err.value).splitlines()) == 1


# -- RNG ------------------------------------------------------------------------------------


@pytest.fixture
def fake_cuda(monkeypatch):
    """The per-device CUDA RNG calls, recorded: ``states`` per device index, ``set`` calls."""
    states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: calls.append((int(state[0]), torch.device(device).index)))
    for name in ("get_rng_state_all", "set_rng_state_all"):  # the old calls must not be made
        monkeypatch.setattr(torch.cuda, name, lambda *a, name=name: pytest.fail(f"torch.cuda.{name}"))
    return calls


def _saved(**cuda) -> dict:
    return {**ckpt._rng_state(torch.device("cpu")), **cuda}


def test_rng_saves_and_restores_only_the_workers_own_device(fake_cuda):
    gpu1 = torch.device("cuda", 1)
    state = ckpt._rng_state(gpu1)
    assert int(state["cuda"][0]) == 1
    ckpt._set_rng_state(state, gpu1)
    assert fake_cuda == [(1, 1)]


def test_rng_from_an_old_checkpoint_takes_this_devices_entry(fake_cuda, caplog):
    every = [torch.tensor([10], dtype=torch.uint8), torch.tensor([11], dtype=torch.uint8)]
    ckpt._set_rng_state(_saved(cuda=every), torch.device("cuda", 1))
    assert fake_cuda == [(11, 1)]
    with caplog.at_level(logging.WARNING):
        ckpt._set_rng_state(_saved(cuda=every[:1]), torch.device("cuda", 1))
    assert fake_cuda == [(11, 1)] and "cuda:1" in caplog.text  # skipped, with a warning


def test_a_cpu_worker_ignores_cuda_rng_state(fake_cuda):
    ckpt._set_rng_state(_saved(cuda=torch.tensor([5], dtype=torch.uint8)), torch.device("cpu"))
    assert fake_cuda == []


def test_rng_round_trips_through_a_checkpoint_on_cpu(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cpu = torch.device("cpu")
    ckpt.save(tmp_path, model, optimizer, {"step": 1}, sharded=False, rank=0, device=cpu)
    assert "cuda" not in torch.load(tmp_path / "rng-rank0.pt", weights_only=False)
    expected = torch.rand(3)
    torch.rand(5)  # move on, as training would
    assert ckpt.load(tmp_path, model, optimizer, sharded=False, rank=0, device=cpu) == {"step": 1}
    assert torch.equal(torch.rand(3), expected)


def test_a_listing_that_fails_is_an_error_not_an_empty_run(tmp_path):
    """Taken as empty, a failed listing would make a run look fresh: a finished run trained
    again, or a --restart landing in an existing generation."""
    from paralab.platform.train.launch import existing_generations

    class Unreachable:
        def get_file_info(self, selector):
            raise OSError("connection reset by peer")

    assert ckpt.list_checkpoints(pafs.LocalFileSystem(), str(tmp_path / "missing")) == {}
    for listing in (lambda fs: ckpt.list_checkpoints(fs, "run"),
                    lambda fs: existing_generations(fs, "root", "exp", "0123456789ab")):  # fmt: skip
        with pytest.raises(StorageError, match=r"cannot list \S+ \(connection reset by peer\)"):
            listing(Unreachable())


def test_files_past_s3s_server_side_copy_limit_are_streamed(tmp_path, monkeypatch):
    """S3 copies an object server-side only up to 5 GiB: a larger checkpoint file goes
    through this process instead, nested folders and all, byte for byte."""
    monkeypatch.setattr(ckpt, "SERVER_COPY_MAX", 10)
    monkeypatch.setattr(ckpt, "STREAM_CHUNK", 7)
    fs, source = pafs.LocalFileSystem(), tmp_path / "checkpoint"
    (source / "shards").mkdir(parents=True)
    (source / "small.json").write_bytes(b"{}")
    (source / "model.pt").write_bytes(os.urandom(100))
    (source / "shards" / "0.distcp").write_bytes(os.urandom(33))
    copied = []

    class Spy:  # the filesystem, noting which files it copies server-side
        def __getattr__(self, name):
            return getattr(fs, name)

        def copy_file(self, src, dest):
            copied.append(src)
            fs.copy_file(src, dest)

    ckpt.copy_tree(Spy(), str(source), str(tmp_path / "best"))
    for name in ("small.json", "model.pt", "shards/0.distcp"):
        assert (tmp_path / "best" / name).read_bytes() == (source / name).read_bytes(), name
    assert copied == [str(source / "small.json")], "only the small file is copied server-side"
