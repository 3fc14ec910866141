"""Process plumbing shared by the local services: free ports, start, wait, stop.

Services are started in their own session (process group), so that a Ctrl+C in the shell
that started them does not kill them half-way, and so that stopping them reaches every
child (``mlflow server`` forks workers). They can be stopped from another process by pid;
:func:`pid_matches` guards against the pid having been reused by something else.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
GRPC_OFFSET = 10000
"""SeaweedFS opens ``port + 10000`` for gRPC beside every HTTP port."""
# Below Linux's ephemeral range (32768-60999), so outgoing connections rarely take them,
# and with +10000 still under it.
PORT_RANGE = (15000, 22768)


class ServiceError(RuntimeError):
    """A local service failed to start or stop; the message says why and where its log is."""


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``host:port`` can be bound now (no one listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers bind: a port whose last connections linger in TIME_WAIT is free, so a
        # stack restarted at once gets its old ports (and its exported URLs stay right).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, with_grpc: bool = False, avoid: Sequence[int] = ()) -> list[int]:
    """``count`` distinct free loopback ports; ``with_grpc`` also needs ``port + 10000`` free.

    There is a race between choosing and binding; callers retry a failed start.
    """
    taken = set(avoid)
    chosen: list[int] = []
    for _ in range(10_000):
        if len(chosen) == count:
            return chosen
        port = random.randrange(*PORT_RANGE)
        needed = [port, port + GRPC_OFFSET] if with_grpc else [port]
        if any(p in taken for p in needed) or not all(port_is_free(p) for p in needed):
            continue
        chosen.append(port)
        taken.update(needed)
    raise ServiceError(f"could not find {count} free loopback ports in {PORT_RANGE}")


def ephemeral_port(host: str = LOOPBACK) -> int:
    """A free port the kernel picks from its ephemeral range (32768 and up on Linux): clear
    of Ray's worker ports (10002-19999), which ``PORT_RANGE`` overlaps and Ray refuses to
    share with its other components."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def spawn(argv: Sequence[str], *, env: Mapping[str, str], log_path: Path,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``argv`` detached in its own session, stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )


def wait_until(ready: Callable[[], bool], *, timeout: float, proc: subprocess.Popen | None,
               name: str, log_path: Path, interval: float = 0.2) -> None:
    """Poll ``ready()`` until it is true; fail fast if ``proc`` exits, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{name} exited with code {proc.returncode} while starting; "
                               f"log {log_path}: {log_tail(log_path)}")
        try:
            if ready():
                return
        except Exception:  # not up yet: connection refused, 503, half-started server...
            pass
        if time.monotonic() > deadline:
            raise ServiceError(f"{name} not ready after {timeout:.0f} s; log {log_path}: "
                               f"{log_tail(log_path)}")
        time.sleep(interval)


def log_tail(log_path: Path, lines: int = 3) -> str:
    """The last non-empty lines of a log, joined on one line (for error messages)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) or "(empty log)"


def pid_namespace() -> str:
    """Which pids this process sees: containers on one host (``--net=host`` keeps the host's
    name) each have their own. Empty where /proc does not say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        return status.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def pid_matches(pid: int, needle: str) -> bool:
    """Whether ``pid`` is alive and its command line contains ``needle``.

    Used before signalling a pid read from a state file: after a reboot the pid may belong
    to an unrelated process.
    """
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        out = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True,
                             text=True, check=False)
        cmdline = out.stdout
    return needle in cmdline


def terminate(pid: int, *, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """SIGTERM the process group led by ``pid``, then SIGKILL after ``timeout`` seconds.

    Returns True when it stopped within ``timeout`` (cleanly), False when it was killed.
    """
    def signal_group(sig: int, *, leader_alive: bool = True) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:  # no such group: not a group leader, or all gone
            if not leader_alive:  # its pid may already belong to someone else
                return
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def gone() -> bool:
        if proc is not None:
            return proc.poll() is not None
        return not pid_alive(pid)

    signal_group(signal.SIGTERM, leader_alive=not gone())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone():
            # Workers of a leader that exited (mlflow's) would otherwise linger.
            signal_group(signal.SIGKILL, leader_alive=False)
            return True
        time.sleep(0.1)
    signal_group(signal.SIGKILL)
    if proc is not None:
        proc.wait(timeout=10)
    else:
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    return False


class ManagedProcess:
    """A service process this object started: its pid, whether it runs, and how it stops.

    Subclasses set ``self.proc`` in ``start()``; ``stop_timeout`` is how long a SIGTERM gets
    before SIGKILL, and ``_after_stop`` cleans up what the process leaves behind.
    """

    stop_timeout: float = 10.0
    proc: subprocess.Popen | None = None

    def start(self):  # pragma: no cover - every service defines it
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The process's pid (its process-group leader) while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.pid is not None

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout`` s. Safe when not running."""
        if self.proc is None:
            return
        terminate(self.proc.pid, timeout=self.stop_timeout if timeout is None else timeout, proc=self.proc)
        self.proc = None
        self._after_stop()

    def _after_stop(self) -> None:
        pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

