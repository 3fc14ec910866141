"""One trainer per run folder at a time.

Two ``paralab run``s of the same experiment (or a run and a sweep trial with an equal config)
address the same run folder, and Ray Train would interleave their checkpoints and snapshots
in it. The process that trains a run holds a lease file in the run folder and renews it while
it trains; a second process that finds a live lease stops (or, in a sweep, waits) instead.

The lease needs nothing but the run's storage, so it works across machines and on any S3
endpoint. On S3 every write of the lease is conditional (``If-None-Match: *`` to create it,
``If-Match: <ETag last seen>`` to take over or renew it; AWS, MinIO and SeaweedFS honour
both), so of two processes that read the same state only one writes. On a local folder, or a
server that refuses conditional writes, acquiring writes the lease, waits a moment and reads
it back: of two processes that start within that moment, the later writer keeps it. Both ways
read the lease back once written, which also catches a server that ignores the conditions.
A process killed without releasing its lease blocks the folder until the lease expires
(``TTL_S`` after its last renewal), or at once when it ran on this machine.

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
from typing import Any, Protocol

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

    @classmethod
    def unreadable(cls, written: float | None) -> Holder:
        """The holder of a lease file that cannot be parsed: nobody in particular, renewed
        when the file was ``written`` (now, if unknown)."""
        return cls(owner="", host="", pid=-1, renewed=time.time() if written is None else written)

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


class ConditionalObject(Protocol):
    """One object that is written only if it is as the writer last saw it."""

    def read(self) -> tuple[bytes | None, str | None, float | None]:
        """(body, version, last-modified Unix time); (None, None, None) when absent."""

    def put(self, data: bytes, expect: str | None) -> str | None:
        """Write ``data`` if the object is at version ``expect`` (absent, for None); return
        the new version, or None when it is not.  Raise :class:`ConditionalWritesUnsupported`
        where the store refuses conditions, and ``OSError`` when it cannot be reached."""


class ConditionalWritesUnsupported(RuntimeError):
    """The store refuses conditional writes: the lease falls back to write, settle, read."""


class S3Object:
    """A :class:`ConditionalObject` on S3: the version is the ETag."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key

    def read(self) -> tuple[bytes | None, str | None, float | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
            return got["Body"].read(), got["ETag"], got["LastModified"].timestamp()
        except ClientError as err:
            if _status(err) == 404 or _code(err) in ("NoSuchKey", "NotFound"):
                return None, None, None
            raise OSError(f"reading s3://{self.bucket}/{self.key}: {_code(err)}") from err
        except BotoCoreError as err:
            raise OSError(f"reading s3://{self.bucket}/{self.key}: {err}") from err

    def put(self, data: bytes, expect: str | None) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data,
                                          **condition)["ETag"]
        except ClientError as err:
            # 409: another conditional write to the key is in flight (AWS); it may win.
            if _status(err) in (412, 409) or _code(err) in ("PreconditionFailed",
                                                             "ConditionalRequestConflict"):
                return None
            if _status(err) == 501 or _code(err) == "NotImplemented":
                raise ConditionalWritesUnsupported(_code(err)) from err
            raise OSError(f"writing s3://{self.bucket}/{self.key}: {_code(err)}") from err
        except BotoCoreError as err:
            raise OSError(f"writing s3://{self.bucket}/{self.key}: {err}") from err


def _code(err: Any) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _status(err: Any) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def conditional_object(storage: Any, run_path: str) -> ConditionalObject | None:
    """The lease file of ``run_path`` (``bucket/prefix/run``) as an :class:`S3Object` when
    ``storage`` is on S3; None for local storage."""
    from paralab.platform.storage.backends import S3Storage

    if not isinstance(storage, S3Storage):
        return None
    bucket, _, key = run_path.strip("/").partition("/")
    return S3Object(storage.client, bucket, f"{key}/{LEASE_FILE}")


READ_TRIES = 3


def parse_holder(text: bytes, written: float | None) -> Holder:
    """The holder a lease file names; an unreadable one is held by nobody in particular,
    renewed when it was ``written`` (see :func:`read_holder`)."""
    try:
        return Holder.parse(text)
    except (ValueError, TypeError, KeyError):
        return Holder.unreadable(written)


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
    return Holder.unreadable(info.mtime.timestamp() if info.mtime is not None else None)


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
                 on_lost: Callable[[str], None] | None = None,
                 conditional: ConditionalObject | None = None) -> None:
        self.fs = fs
        self.conditional = conditional
        """The lease file as an object written only if unchanged (S3), else None."""
        self._version: str | None = None
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

    def _record(self) -> bytes:
        record = Holder(self.owner, socket.gethostname(), os.getpid(), time.time(), pid_namespace())
        return json.dumps(asdict(record)).encode()

    def _write(self) -> None:
        """Write the lease whole, so a reader never sees half of it; on S3 only if it is as
        this lease last wrote it (raise :class:`LeaseLost` if not)."""
        if self.conditional is None:
            write_whole(self.fs, self.path, self._record())
            return
        try:
            version = self.conditional.put(self._record(), self._version)
        except ConditionalWritesUnsupported:
            self._unsupported()
            return self._write()
        if version is None:
            holder, version = self._read_conditional()
            if holder is not None and holder.owner == self.owner:
                # Our own write, its answer lost and the retry refused: the lease is ours.
                self._version = version
                return
            who = "nobody" if holder is None else holder.describe(time.time())
            raise LeaseLost(f"the lease on {self.run_path} was taken by {who}")
        self._version = version

    def _read_conditional(self) -> tuple[Holder | None, str | None]:
        """The holder and version of the lease as the conditional object reads them."""
        body, version, written = self.conditional.read()
        return (None if body is None else parse_holder(body, written)), version

    def _unsupported(self) -> None:
        log.warning("the storage of %s refuses conditional writes; the lease falls back to "
                    "write, wait and read back", self.run_path)
        self.conditional = None

    def _try_take(self) -> tuple[bool, Holder | None]:
        """One conditional attempt: write the lease if it is free or stale as just read.
        Returns (taken, the live holder that keeps it when not taken, if any)."""
        holder, version = self._read_conditional()
        if holder is not None and holder.owner != self.owner and holder.alive(time.time(), self.ttl):
            return False, holder
        mine = self.conditional.put(self._record(), version)
        if mine is not None:
            time.sleep(self.settle)
            holder, version = self._read_conditional()  # a server may ignore conditions
            if holder is not None and holder.owner == self.owner:
                self._version = version
                return True, None
        # Another process wrote between our read and our write: it keeps the lease.
        return False, self._other()

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
            if self.conditional is not None:
                try:
                    taken, other = self._try_take()
                except ConditionalWritesUnsupported:
                    self._unsupported()
                    continue
                if taken:
                    break
                if other is None:  # the writer that beat us is gone already: try again
                    continue
            else:
                other = self._other()
                if other is None:
                    write_whole(self.fs, self.path, self._record())
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
            except LeaseLost as err:
                self._lose(str(err))
                return
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
