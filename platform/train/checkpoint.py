"""Checkpoint contents, and which checkpoints a run keeps.

A checkpoint folder holds:
- DDP: ``model.pt`` and ``optim.pt`` (full state dicts, written by rank 0);
- FSDP: ``dcp/`` (a sharded ``torch.distributed.checkpoint``, one ``.distcp`` per rank);
- both: ``trainer.pt`` (step, scheduler, data position, best validation loss, from rank 0)
  and ``rng-rank{R}.pt`` (each rank's RNG state), so a resumed run continues exactly.

Each rank writes its files into its own local folder and reports it; Ray merges the
folders into one checkpoint in storage and lists it in the run's snapshot only once the
upload is complete, so a half-written checkpoint is never taken as the latest. Ray also
deletes all but the last ``train.keep_checkpoints``; :func:`keep_best` keeps a copy of the
best one. Nothing else deletes checkpoints: Ray's snapshot must list only folders that exist.

The small JSON files paralab writes beside them go through :func:`write_json`, whole or not
at all, and :func:`read_json` tells a missing one from a damaged one.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import nn

from paralab.platform.errors import first_line
from paralab.platform.storage.errors import StorageError
from paralab.platform.storage.files import write_whole

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def _rng_state(device: torch.device) -> dict[str, Any]:
    """RNG states of this process, and of this worker's own GPU only: a list of every visible
    device's would be indexed by a numbering that can differ when the run resumes (Ray shares
    ``CUDA_VISIBLE_DEVICES`` among the workers of a node)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible device's state
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            log.warning("checkpoint has CUDA RNG states for %d devices, none for cuda:%d; "
                        "its RNG starts fresh", len(cuda), index)
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def save(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    *,
    sharded: bool,
    rank: int,
    device: torch.device,
) -> None:
    """Write this rank's part of a checkpoint into ``folder`` (a local, per-rank folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / "dcp"))
    elif rank == 0:
        bare = model.module if hasattr(model, "module") else model
        torch.save(bare.state_dict(), folder / "model.pt")
        torch.save(optimizer.state_dict(), folder / "optim.pt")
    if rank == 0:
        torch.save(trainer_state, folder / "trainer.pt")
    torch.save(_rng_state(device), folder / f"rng-rank{rank}.pt")


def load(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    sharded: bool,
    rank: int,
    device: torch.device,
) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG; return the trainer state."""
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(folder / "dcp"))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        bare = model.module if hasattr(model, "module") else model
        bare.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
        optimizer.load_state_dict(torch.load(folder / "optim.pt", map_location="cpu", weights_only=True))
    rng = folder / f"rng-rank{rank}.pt"
    if rng.exists():  # a run resumed on more workers than it saved with starts those ranks fresh
        _set_rng_state(torch.load(rng, weights_only=False), device)
    return torch.load(folder / "trainer.pt", weights_only=False)


def full_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The model's full state dict from either checkpoint format, in one process."""
    if (folder / "model.pt").exists():
        return torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    # Merge outside the checkpoint: a checkpoint folder is never written after it is saved.
    with tempfile.TemporaryDirectory(prefix="paralab-merge-") as tmp:
        merged = Path(tmp) / "merged.pt"
        dcp_to_torch_save(str(folder / "dcp"), str(merged))
        return torch.load(merged, map_location="cpu", weights_only=False)["model"]


def list_folder(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The entries of ``path``, none if it does not exist. A listing that fails is an error:
    taken as empty, it would make a run look fresh (a finished run retrained, a restart
    landing in an existing generation)."""
    try:
        return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise StorageError(f"cannot list {path} ({first_line(err)}); check the storage and retry") from None


def list_checkpoints(fs: pafs.FileSystem, run_path: str) -> dict[int, str]:
    """Step → path of the checkpoint folders under a run."""
    infos = list_folder(fs, run_path)
    found = {}
    for info in infos:
        match = CHECKPOINT_RE.match(info.base_name)
        if match and info.type == pafs.FileType.Directory:
            found[int(match.group(1))] = info.path
    return found


# Ray Train's record of a run's reported checkpoints (ray.train.v2 constants).
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def resume_step(fs: pafs.FileSystem, run_path: str) -> int | None:
    """The step Ray Train will restore a run from: the latest checkpoint in its snapshot.

    Folders on storage are not enough. A crash between a checkpoint's upload and Ray's
    snapshot update leaves a complete folder the snapshot does not list; Ray then restarts
    from the snapshot's latest (recomputing, and rewriting, the steps after it). None when
    Ray has no snapshot, which is a fresh start. A snapshot that cannot be read is an error:
    taken as a fresh start, a finished run would be trained again.
    """
    path = f"{run_path.rstrip('/')}/{RAY_SNAPSHOT}"
    try:
        with fs.open_input_stream(path) as stream:
            latest = json.loads(stream.read()).get("latest_checkpoint_result")
    except FileNotFoundError:
        return None
    except ValueError:  # not JSON: Ray cannot restore from it either
        return None
    except OSError as err:
        raise StorageError(f"cannot read {path} ({first_line(err)}); check the storage and retry") from None
    match = CHECKPOINT_RE.match((latest or {}).get("checkpoint_dir_name") or "")
    return int(match.group(1)) if match else None


def write_json(fs: pafs.FileSystem, path: str, record: dict[str, Any]) -> None:
    """Write a small JSON file whole: a kill mid-write never leaves half of it."""
    write_whole(fs, path, json.dumps(record).encode())


def read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    """A file :func:`write_json` wrote; None if there is none. One that exists but cannot be
    read is an error: taking it as absent would silently skip the check it records."""
    try:
        with fs.open_input_stream(path) as stream:
            record = json.loads(stream.read())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise StorageError(f"cannot read {path} ({first_line(err)}); restore or delete it") from None
    return record


DATA_RECORD = "paralab-data.json"
"""In a run folder: the key of the prepared data its checkpoints were trained on."""


def recorded_data_key(fs: pafs.FileSystem, run_path: str) -> str | None:
    """The data key a run was started on (:func:`record_data_key`), None if not recorded."""
    record = read_json(fs, f"{run_path.rstrip('/')}/{DATA_RECORD}")
    return None if record is None else record.get("data_key")


def record_data_key(fs: pafs.FileSystem, run_path: str, key: str) -> None:
    """Write the data key beside the checkpoints, so a resume can tell whether the corpus
    changed under the same config (a text file edited, a dataset revised upstream)."""
    fs.create_dir(run_path, recursive=True)
    write_json(fs, f"{run_path.rstrip('/')}/{DATA_RECORD}", {"data_key": key})


BEST_RE = re.compile(r"^best_checkpoint_(\d+)$")
BEST_MARKER = "paralab-complete.json"
"""Written last into a best copy: a folder without it is a copy a crash cut short."""


def best_name(step: int) -> str:
    return f"best_checkpoint_{step:08d}"


def is_complete_best(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(f"{path}/{BEST_MARKER}").type == pafs.FileType.File


def list_best(fs: pafs.FileSystem, run_path: str) -> dict[int, str]:
    """Step → path of the complete best copies under a run; incomplete ones are left out."""
    infos = list_folder(fs, run_path)
    found = {}
    for info in infos:
        match = BEST_RE.match(info.base_name)
        if match and info.type == pafs.FileType.Directory and is_complete_best(fs, info.path):
            found[int(match.group(1))] = info.path
    return found


SERVER_COPY_MAX = 5 * 1024**3
"""The largest object S3's CopyObject copies, which pyarrow issues for a copy within one S3
filesystem (one request, no multipart): a DDP ``optim.pt`` passes it near 670M parameters."""
STREAM_CHUNK = 64 * 1024**2


def copy_tree(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Copy folder ``source`` to ``target`` on ``fs``: server-side where the store allows, and
    streamed through this process (written back as a multipart upload) for larger files."""
    files = [info for info in fs.get_file_info(pafs.FileSelector(source, recursive=True))
             if info.type == pafs.FileType.File]  # fmt: skip
    if all(info.size <= SERVER_COPY_MAX for info in files):
        pafs.copy_files(source, target, source_filesystem=fs, destination_filesystem=fs)
        return
    for info in files:
        dest = f"{target}/{info.path[len(source):].lstrip('/')}"
        fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        if info.size <= SERVER_COPY_MAX:
            fs.copy_file(info.path, dest)
            continue
        with fs.open_input_stream(info.path) as reader, fs.open_output_stream(dest) as writer:
            while chunk := reader.read(STREAM_CHUNK):
                writer.write(chunk)


def keep_best(fs: pafs.FileSystem, run_path: str, step: int) -> str:
    """Copy checkpoint ``step`` to ``best_checkpoint_<step>`` beside it, then drop older bests.

    Ray keeps the last ``train.keep_checkpoints`` and deletes older ones; the best by
    validation loss survives as this copy, which Ray does not manage. The copy is marked
    complete (:data:`BEST_MARKER`) last, and only then do older ones go, so a crash in
    between leaves an incomplete copy beside the previous best, never none.
    """
    target = f"{run_path}/{best_name(step)}"
    # Emptied first: an earlier copy (cut short, or of a checkpoint since rewritten) must not
    # keep its marker while this one is in flight.
    fs.delete_dir_contents(target, missing_dir_ok=True)
    fs.create_dir(target, recursive=True)
    copy_tree(fs, f"{run_path}/{checkpoint_name(step)}", target)
    write_json(fs, f"{target}/{BEST_MARKER}", {"step": step})
    for info in fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True)):
        match = BEST_RE.match(info.base_name)
        if match and int(match.group(1)) != step:
            fs.delete_dir(info.path)
    return target


def best_step_at(fs: pafs.FileSystem, run_path: str, step: int) -> int | None:
    """The best step recorded in checkpoint ``step``'s trainer state (None if none yet)."""
    import io

    with fs.open_input_file(f"{run_path}/{checkpoint_name(step)}/trainer.pt") as stream:
        state = torch.load(io.BytesIO(stream.read()), weights_only=False)
    return state.get("best_step")


def best_is_broken(fs: pafs.FileSystem, run_path: str, step: int | None) -> bool:
    """Whether best ``step`` lacks a complete copy that :func:`repair_best` could still make."""
    if step is None or is_complete_best(fs, f"{run_path}/{best_name(step)}"):
        return False
    return fs.get_file_info(f"{run_path}/{checkpoint_name(step)}").type == pafs.FileType.Directory


def repair_best(fs: pafs.FileSystem, run_path: str, step: int) -> bool:
    """After a restore whose best is ``step``: redo its copy if a crash cut it short. True if
    it copied.

    :func:`keep_best` runs only when a new best appears, so without this a resumed run would
    keep the broken copy while Ray's retention deletes checkpoint ``step``. Nothing is done
    when the checkpoint is already gone: the previous best copy, if any, then stays.
    """
    if is_complete_best(fs, f"{run_path}/{best_name(step)}"):
        return False
    if fs.get_file_info(f"{run_path}/{checkpoint_name(step)}").type != pafs.FileType.Directory:
        log.warning("best checkpoint %d has no complete copy and is no longer stored", step)
        return False
    keep_best(fs, run_path, step)
    return True
