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
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import nn

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    *,
    sharded: bool,
    rank: int,
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
    torch.save(_rng_state(), folder / f"rng-rank{rank}.pt")


def load(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    sharded: bool,
    rank: int,
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
        _set_rng_state(torch.load(rng, weights_only=False))
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


def list_checkpoints(fs: pafs.FileSystem, run_path: str) -> dict[int, str]:
    """Step → path of the checkpoint folders under a run."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return {}
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
    Ray has no snapshot, which is a fresh start.
    """
    import json

    try:
        with fs.open_input_stream(f"{run_path.rstrip('/')}/{RAY_SNAPSHOT}") as stream:
            latest = json.loads(stream.read()).get("latest_checkpoint_result")
    except (FileNotFoundError, OSError, ValueError):
        return None
    match = CHECKPOINT_RE.match((latest or {}).get("checkpoint_dir_name") or "")
    return int(match.group(1)) if match else None


DATA_RECORD = "paralab-data.json"
"""In a run folder: the key of the prepared data its checkpoints were trained on."""


def recorded_data_key(fs: pafs.FileSystem, run_path: str) -> str | None:
    """The data key a run was started on (:func:`record_data_key`), None if not recorded."""
    import json

    try:
        with fs.open_input_stream(f"{run_path.rstrip('/')}/{DATA_RECORD}") as stream:
            return json.loads(stream.read()).get("data_key")
    except (FileNotFoundError, OSError, ValueError):
        return None


def record_data_key(fs: pafs.FileSystem, run_path: str, key: str) -> None:
    """Write the data key beside the checkpoints, so a resume can tell whether the corpus
    changed under the same config (a text file edited, a dataset revised upstream)."""
    import json

    fs.create_dir(run_path, recursive=True)
    with fs.open_output_stream(f"{run_path.rstrip('/')}/{DATA_RECORD}") as stream:
        stream.write(json.dumps({"data_key": key}).encode())


BEST_RE = re.compile(r"^best_checkpoint_(\d+)$")


def keep_best(fs: pafs.FileSystem, run_path: str, step: int) -> str:
    """Copy checkpoint ``step`` to ``best_checkpoint_<step>`` beside it, then drop older bests.

    Ray keeps the last ``train.keep_checkpoints`` and deletes older ones; the best by
    validation loss survives as this copy, which Ray does not manage. The new copy is
    complete before the old one goes, so a crash in between leaves two, never none.
    """
    target = f"{run_path}/best_checkpoint_{step:08d}"
    fs.create_dir(target, recursive=True)
    pafs.copy_files(f"{run_path}/{checkpoint_name(step)}", target,
                    source_filesystem=fs, destination_filesystem=fs)
    for info in fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True)):
        match = BEST_RE.match(info.base_name)
        if match and int(match.group(1)) != step:
            fs.delete_dir(info.path)
    return target
