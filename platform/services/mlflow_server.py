"""An MLflow tracking server on loopback that proxies artifacts into S3.

Runs and metrics go to a SQLite file; artifacts go through the server into
``--artifacts-destination`` (``s3://bucket/mlflow``), so clients need only the tracking URL,
never S3 credentials. Settings chosen for small machines (see NOTES.md, "MLflow pitfalls"):
one worker and no job runner, about 0.5 GB and ready in a few seconds. The server's
host-header check stays on; ``127.0.0.1`` and ``localhost`` pass it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from paralab.platform.services.process import (
    LOOPBACK,
    ManagedProcess,
    ServiceError,
    free_ports,
    spawn,
    wait_until,
)

STOP_TIMEOUT_S = 10.0
"""Grace period after SIGTERM before the server's process group is killed."""


def health_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``GET {url}/health`` answers 200."""
    with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
        return response.status == 200


class MlflowServer(ManagedProcess):
    """One ``mlflow server`` process on ``127.0.0.1``.

    ::

        with MlflowServer(tmp / "mlflow.db", "s3://ckpt/mlflow",
                          s3_endpoint_url=s3.endpoint_url) as server:
            MlflowClient(server.url).create_experiment("demo")

    ``s3_env`` holds the S3 credentials the *server* uses (``AWS_ACCESS_KEY_ID``...); when
    omitted it inherits this process's environment.
    """

    stop_timeout = STOP_TIMEOUT_S

    def __init__(self, db_path: str | os.PathLike, artifacts_destination: str, *,
                 s3_endpoint_url: str | None = None, s3_env: Mapping[str, str] | None = None,
                 port: int | None = None, log_path: str | os.PathLike | None = None,
                 startup_timeout: float = 60.0) -> None:
        self.db_path = Path(db_path).resolve()
        self.artifacts_destination = artifacts_destination
        self.s3_endpoint_url = s3_endpoint_url
        self.s3_env = dict(s3_env or {})
        self.port = port
        self.log_path = Path(log_path) if log_path else self.db_path.with_suffix(".log")
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The tracking URI, ``http://127.0.0.1:<port>``."""
        if self.port is None:
            raise ServiceError("MlflowServer has no port until it is started")
        return f"http://{LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        """The ``mlflow server`` command line, run with this interpreter."""
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.db_path}",
            "--artifacts-destination", self.artifacts_destination,
            "--host", LOOPBACK, "--port", str(self.port), "--workers", "1",
        ]

    def env(self) -> dict[str, str]:
        """The server's environment: this process's, plus the S3 settings and switches."""
        env = dict(os.environ)
        # A session token or profile from the shell would be sent with the stack's own keys,
        # which SeaweedFS then rejects (InvalidAccessKeyId) on every artifact upload.
        for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            env.pop(name, None)
        env.update(self.s3_env)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # its job runner costs ~270 MB
        if self.s3_endpoint_url:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        return env

    def start(self) -> MlflowServer:
        """Start the server and wait until ``/health`` answers. Returns self."""
        if self.running:
            return self
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_ports(1)[0]
        self.proc = spawn(self.argv(), env=self.env(), log_path=self.log_path,
                          cwd=self.db_path.parent)
        try:
            wait_until(lambda: health_ok(self.url), timeout=self.startup_timeout,
                       proc=self.proc, name="MLflow server", log_path=self.log_path,
                       interval=0.3)
        except ServiceError:
            self.stop(timeout=2)
            raise
        return self

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"MlflowServer({self.url if self.port else 'no port yet'}, {state})"
