"""One trainer per run folder at a time.

Two ``paralab run``s of the same experiment (or a run and a sweep trial with an equal config)
address the same run folder, and Ray Train would interleave their checkpoints and snapshots
in it. The process that trains a run holds a lease file in the run folder and renews it while
it trains; a second process that finds a live lease stops (or, in a sweep, waits) instead.

The lease needs nothing but the run's storage, so it works across machines and on any S3
endpoint. Plain object stores have no compare-and-set, so acquiring writes the lease, waits a
moment and reads it back: of two processes that start within that moment, the later writer
keeps it. A process killed without releasing its lease blocks the folder until the lease
expires (``TTL_S`` after its last renewal), or at once when it ran on this machine.

A holder that finds the lease taken, or cannot renew it for nearly ``TTL_S``, has lost it:
:attr:`RunLease.lost` says why, and the trainer's checkpoint path (:func:`check_held`) stops
before writing into a folder another process now trains.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from paralab.platform.services.process import pid_alive, pid_namespace
from paralab.platform.storage.files import write_whole

LEASE_FILE = "paralab-lease.json"
TTL_S = 120.0
"""A lease not renewed for this long belongs to a process that is gone."""
RENEW_S = 20.0
SETTLE_S = 0.5
"""Between writing a lease and reading it back: longer than a read-then-write takes."""

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another live process trains this run; the message names it."""


class LeaseLost(RuntimeError):
    """This process held the run's lease and no longer does; the message says why."""


@dataclass(frozen=True)
class Holder:
    owner: str
    host: str
    pid: int
    renewed: float
    """Unix time of the last renewal, by the holder's clock."""
    pid_namespace: str = ""

    @classmethod
    def parse(cls, text: bytes) -> Holder:
        record = json.loads(text)
        return cls(**{key: record[key] for key in cls.__dataclass_fields__ if key in record})

    def age(self, now: float) -> float:
        return max(0.0, now - self.renewed)

    def alive(self, now: float, ttl: float) -> bool:
        if self.age(now) > ttl:
            return False
        if self.host == socket.gethostname() and self.pid_namespace == pid_namespace():
            return pid_alive(self.pid)  # its pid means something here
        return True

    def describe(self, now: float) -> str:
        if not self.owner:
            return f"an unreadable lease file (written {self.age(now):.0f} s ago)"
        return f"pid {self.pid} on {self.host} (lease renewed {self.age(now):.0f} s ago)"


READ_TRIES = 3


def read_holder(fs: pafs.FileSystem, path: str) -> Holder | None:
    """The lease's holder, or None when there is no lease file.

    A file that cannot be read or parsed (a write in flight on a store without atomic
    replace, a writer killed mid-write) is read again; if it stays unreadable it counts as
    held, by nobody in particular, until ``TTL_S`` after it was last written. Counting it as
    free would let a second trainer in while the first one renews."""
    for attempt in range(READ_TRIES):
        try:
            with fs.open_input_stream(path) as stream:
                return Holder.parse(stream.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            time.sleep(0.1 * (attempt + 1))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    written = info.mtime.timestamp() if info.mtime is not None else time.time()
    return Holder(owner="", host="", pid=-1, renewed=written)


def check_held(fs: pafs.FileSystem, run_path: str, owner: str) -> None:
    """Raise :class:`LeaseLost` unless lease ``owner`` still holds ``run_path``'s lease.

    Called before each checkpoint is written, so that a trainer whose lease passed to another
    process stops instead of interleaving its checkpoints with the new holder's."""
    holder = read_holder(fs, f"{run_path.rstrip('/')}/{LEASE_FILE}")
    if holder is None or holder.owner != owner:
        who = "nobody" if holder is None else holder.describe(time.time())
        raise LeaseLost(
            f"this trainer no longer holds the lease on {run_path} (now: {who}); it stops "
            "before writing another checkpoint, so that two trainers never share the run folder"
        )


class RunLease:
    """The lease on one run folder; use as ``with RunLease(fs, run_path).acquire(): ...``."""

    def __init__(self, fs: pafs.FileSystem, run_path: str, *, ttl: float = TTL_S,
                 renew_every: float = RENEW_S, settle: float = SETTLE_S,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.fs = fs
        self.run_path = run_path.rstrip("/")
        self.path = f"{self.run_path}/{LEASE_FILE}"
        self.ttl, self.renew_every, self.settle = ttl, renew_every, settle
        self.owner = uuid.uuid4().hex
        self.on_lost = on_lost
        self.lost: str | None = None
        """Why this process no longer holds the lease, once it has lost it."""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def holder(self) -> Holder | None:
        return read_holder(self.fs, self.path)

    def _write(self) -> None:
        """Write the lease whole, so a reader never sees half of it."""
        record = Holder(self.owner, socket.gethostname(), os.getpid(), time.time(), pid_namespace())
        write_whole(self.fs, self.path, json.dumps(asdict(record)).encode())

    def _other(self) -> Holder | None:
        """A live holder that is not this lease, else None."""
        holder = self.holder()
        if holder is None or holder.owner == self.owner:
            return None
        return holder if holder.alive(time.time(), self.ttl) else None

    def acquire(self, *, wait: bool = False, poll: float = 5.0) -> RunLease:
        """Take the lease and start renewing it. Raise :class:`LeaseHeld` if another live
        process holds it, or with ``wait=True`` poll until it is released or expires."""
        self.fs.create_dir(self.run_path, recursive=True)
        while True:
            other = self._other()
            if other is None:
                self._write()
                time.sleep(self.settle)
                other = self._other()  # a process that wrote just after us keeps it
                if other is None:
                    break
            if not wait:
                raise LeaseHeld(
                    f"run folder {self.run_path} is being trained by another process: "
                    f"{other.describe(time.time())}. Wait for it to finish, or stop it; a lease "
                    f"left by a killed process expires {self.ttl:.0f} s after its last renewal"
                )
            time.sleep(poll)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name="paralab-lease", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.renew_every):
            try:
                holder = self.holder()
                if holder is not None and holder.owner != self.owner:
                    self._lose(f"the lease on {self.run_path} was taken by "
                               f"{holder.describe(time.time())}")
                    return
                self._write()
                renewed = time.monotonic()
            except OSError as err:  # storage briefly unreachable: try again next period
                log.warning("could not renew the lease on %s: %s", self.run_path, err)
                unrenewed = time.monotonic() - renewed
                if unrenewed + self.renew_every >= self.ttl:  # it expires before the next try
                    self._lose(f"could not renew the lease on {self.run_path} for "
                               f"{unrenewed:.0f} s ({err}); it expires, and another process "
                               "may take the run")
                    return

    def _lose(self, why: str) -> None:
        self.lost = why
        log.error("%s", why)
        if self.on_lost is not None:
            self.on_lost(why)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)
            self._renewer = None
        holder = self.holder()
        if holder is not None and holder.owner == self.owner:
            try:
                self.fs.delete_file(self.path)
            except OSError as err:
                log.warning("could not delete the lease %s: %s", self.path, err)

    def __enter__(self) -> RunLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
