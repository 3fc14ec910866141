"""The local stack: SeaweedFS (S3) plus an MLflow server, managed across processes.

``paralab stack up`` starts both detached and records them in
``<project>/.paralab/stack/state.json`` (pids, ports, credentials; mode 0600); ``down`` and
``status`` read that file from any later process. Everything else lives beside it::

    .paralab/stack/
        state.json          pids, ports, bucket, credentials
        seaweedfs/          S3 data (kept by `down`, so checkpoints survive)
        seaweedfs.log
        mlflow.db           runs, params, metrics
        mlflow.log

Artifacts logged to MLflow go to ``s3://paralab/mlflow`` through the server; checkpoints
go to ``s3://paralab/checkpoints``. :meth:`StackStatus.env` gives the variables that point
paralab, boto3 and MLflow at the stack.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from paralab.platform.config.schema import project_dir as default_project_dir
from paralab.platform.services.mlflow_server import MlflowServer, health_ok
from paralab.platform.services.process import LOOPBACK, pid_matches, terminate
from paralab.platform.services.seaweedfs import (
    STOP_TIMEOUT_S,
    SeaweedFS,
    SeaweedPorts,
    random_credentials,
)

STACK_BUCKET = "paralab"
"""The bucket the stack creates; checkpoints under ``checkpoints/``, MLflow under ``mlflow/``."""
STATE_VERSION = 1


@dataclass
class ServiceStatus:
    """One service of the stack as seen now."""

    name: str
    """``"seaweedfs"`` or ``"mlflow"``."""
    url: str | None
    """S3 endpoint or tracking URI (None before the first ``up``)."""
    pid: int | None
    """Process id, when one is recorded."""
    alive: bool
    """The recorded pid runs and is this service."""
    healthy: bool
    """It answers: S3 responds to HTTP, MLflow's ``/health`` is 200."""
    log: Path
    """Its log file."""


@dataclass
class StackStatus:
    """The whole stack as seen now; returned by :func:`stack_up`, :func:`stack_down` and
    :func:`stack_status`."""

    project_dir: Path
    """The project whose ``.paralab/stack`` this is."""
    seaweedfs: ServiceStatus
    """The S3 server."""
    mlflow: ServiceStatus
    """The tracking server."""
    bucket: str = STACK_BUCKET
    """The bucket holding checkpoints and MLflow artifacts."""
    region: str = "us-east-1"
    """Region clients sign with."""
    access_key: str | None = None
    """S3 access key of the stack (None before the first ``up``)."""
    secret_key: str | None = field(default=None, repr=False)
    """S3 secret key of the stack."""

    @property
    def running(self) -> bool:
        """Both services are alive and answering."""
        return all(s.alive and s.healthy for s in (self.seaweedfs, self.mlflow))

    @property
    def storage_uri(self) -> str:
        """Where checkpoints go: ``s3://paralab/checkpoints``."""
        return f"s3://{self.bucket}/checkpoints"

    def env(self) -> dict[str, str]:
        """Variables that point paralab (storage and tracking), boto3 and MLflow at the stack."""
        if not (self.seaweedfs.url and self.mlflow.url and self.access_key and self.secret_key):
            return {}
        return {
            "AWS_ENDPOINT_URL": self.seaweedfs.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "PARALAB_STORAGE": self.storage_uri,
            "MLFLOW_TRACKING_URI": self.mlflow.url,
        }


def stack_dir(project_dir: str | os.PathLike | None = None) -> Path:
    """``<project>/.paralab/stack``."""
    return Path(project_dir or default_project_dir()).resolve() / ".paralab" / "stack"


def stack_up(project_dir: str | os.PathLike | None = None, *,
             startup_timeout: float = 60.0) -> StackStatus:
    """Start SeaweedFS and MLflow for ``project_dir`` unless they already run; wait for both.

    Idempotent: a healthy stack is left alone. A half-running one (one service died) is
    stopped and started again; ports and credentials are reused when possible, and data
    (S3 objects, the MLflow database) is kept.
    """
    root = stack_dir(project_dir)
    current = stack_status(project_dir)
    if current.running:
        return current
    stack_down(project_dir)
    state = _read_state(root)
    access_key = state.get("access_key")
    secret_key = state.get("secret_key")
    if not (access_key and secret_key):
        access_key, secret_key = random_credentials()
    ports = SeaweedPorts(**state["seaweedfs"]["ports"]) if state.get("seaweedfs") else None
    if ports is not None and not ports.all_free():
        ports = None
    seaweed = SeaweedFS(root / "seaweedfs", access_key=access_key, secret_key=secret_key,
                        buckets=[STACK_BUCKET], ports=ports, startup_timeout=startup_timeout)
    mlflow = None
    # Whatever stops the start (a failure, Ctrl-C), nothing is left running unrecorded: an
    # orphaned SeaweedFS would hold its store's lock and fail every later `stack up`.
    try:
        seaweed.start()
        mlflow = MlflowServer(root / "mlflow.db", f"s3://{STACK_BUCKET}/mlflow",
                              s3_endpoint_url=seaweed.endpoint_url, s3_env=seaweed.env(),
                              port=_reusable_port(state), startup_timeout=startup_timeout)
        mlflow.start()
    except BaseException:
        for service in (mlflow, seaweed):
            if service is not None:
                service.stop()
        raise
    _write_state(root, {
        "version": STATE_VERSION,
        "bucket": STACK_BUCKET,
        "region": seaweed.region,
        "access_key": access_key,
        "secret_key": secret_key,
        "seaweedfs": {"pid": seaweed.pid, "ports": asdict(seaweed.ports),
                      "url": seaweed.endpoint_url},
        "mlflow": {"pid": mlflow.pid, "port": mlflow.port, "url": mlflow.url},
    })
    return stack_status(project_dir)


def stack_down(project_dir: str | os.PathLike | None = None) -> StackStatus:
    """Stop the stack's services (MLflow first, then SeaweedFS); keep data and settings.

    Only processes whose command line still matches the service are signalled, so a stale
    state file (after a reboot) never kills an unrelated process.
    """
    root = stack_dir(project_dir)
    state = _read_state(root)
    for name in ("mlflow", "seaweedfs"):
        service = state.get(name) or {}
        pid = service.get("pid")
        if pid and pid_matches(pid, _needle(root, name)):
            terminate(pid, timeout=STOP_TIMEOUT_S)
            if name == "seaweedfs":
                SeaweedPorts(**service["ports"]).remove_sockets()
        if service:
            service["pid"] = None
    if state:
        _write_state(root, state)
    return stack_status(project_dir)


def stack_status(project_dir: str | os.PathLike | None = None) -> StackStatus:
    """What runs now, from the state file plus a liveness and health probe of each service."""
    root = stack_dir(project_dir)
    state = _read_state(root)
    services = {}
    for name in ("seaweedfs", "mlflow"):
        recorded = state.get(name) or {}
        pid, url = recorded.get("pid"), recorded.get("url")
        alive = bool(pid) and pid_matches(pid, _needle(root, name))
        healthy = alive and url is not None and _healthy(name, url)
        services[name] = ServiceStatus(name, url, pid, alive, healthy, root / f"{name}.log")
    return StackStatus(
        project_dir=root.parent.parent, seaweedfs=services["seaweedfs"],
        mlflow=services["mlflow"], bucket=state.get("bucket", STACK_BUCKET),
        region=state.get("region", "us-east-1"), access_key=state.get("access_key"),
        secret_key=state.get("secret_key"),
    )


def _needle(root: Path, name: str) -> str:
    """A string only this stack's process of ``name`` has in its command line."""
    if name == "seaweedfs":
        return f"-dir={root / 'seaweedfs'}"
    return f"sqlite:///{root / 'mlflow.db'}"


def _healthy(name: str, url: str) -> bool:
    try:
        if name == "mlflow":
            return health_ok(url)
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except urllib.error.HTTPError:  # S3 answers an unsigned GET with 403: it is up
        return name == "seaweedfs"
    except OSError:
        return False


def _reusable_port(state: dict) -> int | None:
    from paralab.platform.services.process import port_is_free

    port = (state.get("mlflow") or {}).get("port")
    return port if port and port_is_free(port, LOOPBACK) else None


def _read_state(root: Path) -> dict:
    try:
        state = json.loads((root / "state.json").read_text())
    except FileNotFoundError:
        return {}
    return state if state.get("version") == STATE_VERSION else {}


def _write_state(root: Path, state: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "state.json.tmp"
    # Created 0600 from the start: the file holds the S3 secret key.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, root / "state.json")
