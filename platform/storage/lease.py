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
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from paralab.platform.services.process import pid_alive, pid_namespace

LEASE_FILE = "paralab-lease.json"
TTL_S = 120.0
"""A lease not renewed for this long belongs to a process that is gone."""
RENEW_S = 20.0
SETTLE_S = 0.5
"""Between writing a lease and reading it back: longer than a read-then-write takes."""

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another live process trains this run; the message names it."""


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
        return f"pid {self.pid} on {self.host} (lease renewed {self.age(now):.0f} s ago)"


class RunLease:
    """The lease on one run folder; use as ``with RunLease(fs, run_path).acquire(): ...``."""

    def __init__(self, fs: pafs.FileSystem, run_path: str, *, ttl: float = TTL_S,
                 renew_every: float = RENEW_S, settle: float = SETTLE_S) -> None:
        self.fs = fs
        self.run_path = run_path.rstrip("/")
        self.path = f"{self.run_path}/{LEASE_FILE}"
        self.ttl, self.renew_every, self.settle = ttl, renew_every, settle
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def holder(self) -> Holder | None:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return Holder.parse(stream.read())
        except (FileNotFoundError, OSError, ValueError, TypeError, KeyError):
            return None

    def _write(self) -> None:
        record = Holder(self.owner, socket.gethostname(), os.getpid(), time.time(), pid_namespace())
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(json.dumps(asdict(record)).encode())

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
        while not self._stop.wait(self.renew_every):
            try:
                holder = self.holder()
                if holder is not None and holder.owner != self.owner:
                    log.warning("the lease on %s was taken by %s", self.run_path,
                                holder.describe(time.time()))
                    return
                self._write()
            except OSError as err:  # storage briefly unreachable: try again next period
                log.warning("could not renew the lease on %s: %s", self.run_path, err)

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
