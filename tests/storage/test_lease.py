"""The run-folder lease: one trainer per run, a stale lease taken over, a close race lost by
one side only; on S3, conditional writes close the race outright."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pyarrow.fs as pafs
import pytest

from paralab.platform.storage.lease import (
    LEASE_FILE,
    ConditionalWritesUnsupported,
    LeaseHeld,
    LeaseLost,
    RunLease,
    S3Object,
    check_held,
    conditional_object,
)


@pytest.fixture
def folder(tmp_path):
    return pafs.LocalFileSystem(), str(tmp_path / "run-0123456789ab")


def place(fs, run_path, *, pid=None, host=None, age=0.0, owner="someone-else", namespace=None):
    """Write a lease record as another process would."""
    fs.create_dir(run_path, recursive=True)
    record = {"owner": owner, "host": host or socket.gethostname(), "pid": pid or os.getpid(),
              "renewed": time.time() - age,
              "pid_namespace": os.readlink("/proc/self/ns/pid") if namespace is None else namespace}
    with fs.open_output_stream(f"{run_path}/{LEASE_FILE}") as stream:
        stream.write(json.dumps(record).encode())


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_acquire_writes_and_release_deletes(folder):
    fs, run_path = folder
    lease = RunLease(fs, run_path, settle=0.0).acquire()
    holder = lease.holder()
    assert holder.owner == lease.owner and holder.pid == os.getpid()
    lease.release()
    assert fs.get_file_info(f"{run_path}/{LEASE_FILE}").type == pafs.FileType.NotFound


def test_a_live_holder_is_refused_by_name(folder):
    fs, run_path = folder
    with RunLease(fs, run_path, settle=0.0).acquire():
        with pytest.raises(LeaseHeld, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
            RunLease(fs, run_path, settle=0.0).acquire()


def test_a_remote_holder_is_live_until_its_ttl(folder):
    fs, run_path = folder
    place(fs, run_path, host="another-host", pid=1, age=30)
    with pytest.raises(LeaseHeld, match="another-host"):
        RunLease(fs, run_path, ttl=60, settle=0.0).acquire()
    place(fs, run_path, host="another-host", pid=1, age=90)
    with RunLease(fs, run_path, ttl=60, settle=0.0).acquire() as lease:
        assert lease.holder().owner == lease.owner


def test_a_dead_process_on_this_host_is_taken_over_at_once(folder):
    fs, run_path = folder
    place(fs, run_path, pid=dead_pid(), age=0)
    with RunLease(fs, run_path, settle=0.0).acquire() as lease:
        assert lease.holder().owner == lease.owner


def test_a_dead_pid_in_another_container_on_this_host_is_not_trusted(folder):
    """Containers sharing the host's name (``--net=host``) have their own pids: a pid that does
    not exist here may be alive there, so only the lease's age counts."""
    fs, run_path = folder
    place(fs, run_path, pid=dead_pid(), namespace="pid:[1]")
    with pytest.raises(LeaseHeld):
        RunLease(fs, run_path, settle=0.0).acquire()


def test_release_leaves_a_lease_that_is_not_ours(folder):
    fs, run_path = folder
    lease = RunLease(fs, run_path, settle=0.0).acquire()
    place(fs, run_path, host="another-host", pid=1)  # taken over while we were stalled
    lease.release()
    assert lease.holder().host == "another-host"


def test_renewal_keeps_the_lease_fresh(folder):
    fs, run_path = folder
    with RunLease(fs, run_path, renew_every=0.05, settle=0.0).acquire() as lease:
        first = lease.holder().renewed
        time.sleep(0.3)
        assert lease.holder().renewed > first


def test_wait_polls_until_the_holder_releases(folder):
    fs, run_path = folder
    first = RunLease(fs, run_path, settle=0.0).acquire()
    threading.Timer(0.3, first.release).start()
    started = time.monotonic()
    with RunLease(fs, run_path, settle=0.0).acquire(wait=True, poll=0.05) as second:
        assert second.holder().owner == second.owner
    assert time.monotonic() - started >= 0.25


def test_of_two_close_writers_the_later_keeps_it(folder):
    """Object stores have no compare-and-set: a lease written within the settle time of ours
    (after we found the folder free) wins, and we stop."""
    fs, run_path = folder
    threading.Timer(0.1, place, (fs, run_path), {"host": "another-host", "pid": 1}).start()
    with pytest.raises(LeaseHeld, match="another-host"):
        RunLease(fs, run_path, settle=0.5).acquire()


def test_an_unreadable_lease_is_held_until_it_expires(folder):
    """A half-written or corrupt lease file is someone's lease, not none: else a second
    trainer would walk in while the first one renews."""
    fs, run_path = folder
    fs.create_dir(run_path, recursive=True)
    with fs.open_output_stream(f"{run_path}/{LEASE_FILE}") as stream:
        stream.write(b'{"owner": "some')
    with pytest.raises(LeaseHeld, match="an unreadable lease file"):
        RunLease(fs, run_path, settle=0.0).acquire()
    old = time.time() - 300
    os.utime(f"{run_path}/{LEASE_FILE}", (old, old))
    with RunLease(fs, run_path, ttl=60, settle=0.0).acquire() as lease:
        assert lease.holder().owner == lease.owner


def test_the_lease_is_written_whole(folder):
    """Written beside and moved over: readers see the old record or the new, never a part."""
    fs, run_path = folder
    with RunLease(fs, run_path, renew_every=0.01, settle=0.0).acquire() as lease:
        reads = [lease.holder() for _ in range(200)]
    assert all(h is not None and h.owner == lease.owner for h in reads)
    assert sorted(os.listdir(run_path)) == [], "no staged lease left behind"


def test_a_taken_lease_is_lost_and_the_checkpoint_path_stops(folder):
    fs, run_path = folder
    lost = []
    lease = RunLease(fs, run_path, renew_every=0.05, settle=0.0, on_lost=lost.append).acquire()
    check_held(fs, run_path, lease.owner)
    place(fs, run_path, host="another-host", pid=1)
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lost and "was taken by pid 1 on another-host" in lost[0] and lease.lost == lost[0]
    with pytest.raises(LeaseLost, match="no longer holds the lease .* pid 1 on another-host"):
        check_held(fs, run_path, lease.owner)
    lease.release()


def test_a_lease_that_cannot_be_renewed_before_it_expires_is_lost(folder, monkeypatch):
    fs, run_path = folder
    lost = []
    lease = RunLease(fs, run_path, ttl=0.3, renew_every=0.05, settle=0.0,
                     on_lost=lost.append).acquire()  # fmt: skip

    def unreachable():
        raise OSError("storage unreachable")

    monkeypatch.setattr(lease, "_write", unreachable)
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lost and "could not renew the lease" in lost[0] and "storage unreachable" in lost[0]
    lease.release()


@pytest.mark.s3
def test_lease_on_a_real_s3_server(seaweedfs):
    from paralab.platform.storage import Storage

    root, fs = Storage.from_config(seaweedfs.storage_config("lease-test")).ray_storage()
    run_path = f"{root}/run-0123456789ab"
    with RunLease(fs, run_path, settle=0.2).acquire() as lease:
        with pytest.raises(LeaseHeld):
            RunLease(fs, run_path, settle=0.0).acquire()
        assert lease.holder().owner == lease.owner
        check_held(fs, run_path, lease.owner)
    assert fs.get_file_info(f"{run_path}/{LEASE_FILE}").type == pafs.FileType.NotFound
    with pytest.raises(LeaseLost):
        check_held(fs, run_path, lease.owner)


class _Refusing:
    """A store that refuses conditional writes (501 NotImplemented)."""

    def read(self):
        return None, None, None

    def put(self, data, expect):
        raise ConditionalWritesUnsupported("NotImplemented")


def test_a_store_that_refuses_conditions_falls_back_to_write_and_read_back(folder, caplog):
    fs, run_path = folder
    with RunLease(fs, run_path, settle=0.0, conditional=_Refusing()).acquire() as lease:
        assert lease.conditional is None and lease.holder().owner == lease.owner
        with pytest.raises(LeaseHeld):
            RunLease(fs, run_path, settle=0.0, conditional=_Refusing()).acquire()
    assert "refuses conditional writes" in caplog.text


def test_s3_answers_map_to_taken_unsupported_or_unreachable():
    from botocore.exceptions import ClientError, EndpointConnectionError

    class Client:
        def __init__(self, error):
            self.error = error

        def put_object(self, **kwargs):
            raise self.error

    def answer(status, code):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "PutObject")

    assert S3Object(Client(answer(412, "PreconditionFailed")), "b", "k").put(b"x", None) is None
    assert S3Object(Client(answer(409, "ConditionalRequestConflict")), "b", "k").put(b"x", "e") is None
    with pytest.raises(ConditionalWritesUnsupported):
        S3Object(Client(answer(501, "NotImplemented")), "b", "k").put(b"x", None)
    with pytest.raises(OSError, match="AccessDenied"):
        S3Object(Client(answer(403, "AccessDenied")), "b", "k").put(b"x", None)
    with pytest.raises(OSError):  # the renewal retries these; it must not die of them
        S3Object(Client(EndpointConnectionError(endpoint_url="http://x")), "b", "k").put(b"x", None)


@pytest.fixture
def s3_leases(seaweedfs):
    """(make a conditional lease on one S3 run folder, its pyarrow fs, the run path, client)."""
    from paralab.platform.storage import Storage

    storage = Storage.from_config(seaweedfs.storage_config(f"lease-{time.time_ns()}"))
    root, fs = storage.ray_storage()
    run_path = f"{root}/run-0123456789ab"

    def make(**kwargs):
        conditional = conditional_object(storage, run_path)
        assert conditional is not None
        return RunLease(fs, run_path, conditional=conditional, **{"settle": 0.0, **kwargs})

    return make, fs, run_path, storage.client


def _beaten_after_reading(lease, rival):
    """Make ``rival`` take the lease right after ``lease`` first reads it."""
    read = lease.conditional.read
    done = []

    def read_then_let_the_rival_in():
        got = read()
        if not done:
            done.append(rival.acquire())
        return got

    lease.conditional.read = read_then_let_the_rival_in
    return done


@pytest.mark.s3
def test_conditional_lease_on_a_real_s3_server(s3_leases):
    make, fs, run_path, _ = s3_leases
    with make().acquire() as lease:
        assert lease.conditional is not None, "SeaweedFS honours conditional writes"
        with pytest.raises(LeaseHeld):
            make().acquire()
        check_held(fs, run_path, lease.owner)
    assert fs.get_file_info(f"{run_path}/{LEASE_FILE}").type == pafs.FileType.NotFound


@pytest.mark.s3
@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_of_two_that_read_the_same_state_only_one_writes(s3_leases, stale):
    """The race that waiting and reading back narrows but cannot close: the loser read the
    lease free (or stale) just before the winner wrote it, and its write is refused."""
    make, fs, run_path, _ = s3_leases
    if stale:
        place(fs, run_path, host="another-host", pid=1, age=600)
    winner, loser = make(), make()
    beaten = _beaten_after_reading(loser, winner)
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        loser.acquire()
    assert beaten and winner.holder().owner == winner.owner, "the winner's lease stands"
    winner.release()


@pytest.mark.s3
def test_a_renewal_never_overwrites_a_lease_changed_since(s3_leases, monkeypatch):
    """A rival writes between the renewal's read (still ours) and its write: only the
    condition on the version can tell, and the renewal must not overwrite the rival."""
    make, fs, run_path, client = s3_leases
    lost = []
    lease = make(renew_every=0.05, on_lost=lost.append).acquire()
    bucket, _, key = run_path.partition("/")
    rival = {"owner": "rival", "host": "another-host", "pid": 1, "renewed": time.time(),
             "pid_namespace": ""}
    read = lease.holder

    def read_then_the_rival_writes():
        holder = read()
        client.put_object(Bucket=bucket, Key=f"{key}/{LEASE_FILE}", Body=json.dumps(rival).encode())
        return holder

    monkeypatch.setattr(lease, "holder", read_then_the_rival_writes)
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lost and "was taken by pid 1 on another-host" in lost[0]
    body = client.get_object(Bucket=bucket, Key=f"{key}/{LEASE_FILE}")["Body"].read()
    assert json.loads(body)["owner"] == "rival", "the renewal did not overwrite the rival"
    monkeypatch.setattr(lease, "holder", read)
    lease.release()


@pytest.mark.s3
def test_a_renewal_whose_answer_was_lost_keeps_the_lease(s3_leases):
    """botocore retries a PUT whose answer was lost; the retry's condition fails on our own
    write. The lease is still ours, and renewing goes on."""
    make, fs, run_path, client = s3_leases
    lease = make(renew_every=60).acquire()
    bucket, _, key = run_path.partition("/")
    stale = lease._version
    # The renewal's write lands, its answer is lost: the lease keeps the version before it.
    client.put_object(Bucket=bucket, Key=f"{key}/{LEASE_FILE}", Body=lease._record())
    lease._write()  # the retry, on the stale version: refused by the condition
    assert lease.lost is None and lease._version not in (None, stale)
    assert lease.holder().owner == lease.owner
    lease._write()  # and the next renewal goes through on the version it adopted
    lease.release()
