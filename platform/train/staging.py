"""Local folders that hold one rank's checkpoint files until Ray Train persists them.

A worker killed while saving (preempted, OOM-killed, or lost with its node's agent) never
runs the folder's cleanup, and each such folder is as large as the model and optimizer
state. The folder's name carries the host, the pid namespace and the pid of the process that
made it, so the next worker on the same host removes the folders of processes that are gone.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from paralab.platform.services.process import pid_alive, pid_namespace

PREFIX = "paralab-ckpt-"
log = logging.getLogger(__name__)


@functools.cache
def _owner_tag() -> str:
    """Whose pids a name's pid refers to: this host, and this pid namespace on it."""
    namespace = re.sub(r"\D", "", pid_namespace()) or "0"
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
    return f"{host}-{namespace}"


def remove_stale(root: Path | None = None) -> list[Path]:
    """Remove the staging folders of dead processes of this host and pid namespace; return them.

    Folders of live processes, of other hosts (a shared temp dir) or without a pid are left.
    """
    root = Path(root or tempfile.gettempdir())
    pattern = re.compile(re.escape(f"{PREFIX}{_owner_tag()}-") + r"(\d+)-")
    removed = []
    for folder in root.glob(f"{PREFIX}*"):
        match = pattern.match(folder.name)
        if not match or not folder.is_dir() or pid_alive(int(match.group(1))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    if removed:
        log.info("removed %d checkpoint staging folder(s) left by killed workers", len(removed))
    return removed


@functools.cache
def _remove_stale_once(root: str) -> None:
    remove_stale(Path(root))


@contextlib.contextmanager
def staging_folder(root: Path | None = None) -> Iterator[Path]:
    """An empty folder for this rank's checkpoint files, removed on exit. The first call in
    a process first removes what killed workers on this host left."""
    root = Path(root or tempfile.gettempdir())
    _remove_stale_once(str(root))
    prefix = f"{PREFIX}{_owner_tag()}-{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=root) as tmp:
        yield Path(tmp)
