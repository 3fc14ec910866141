"""`paralab stack up|status|down` as functions: detached services found again by state file.

The stack's MLflow server is a :class:`MlflowServer`; this test is also where that class is
checked end to end (``/health``, a run with an artifact proxied into S3), because each MLflow
start costs 10-30 s on two cores.
"""

from __future__ import annotations

import stat
import urllib.request
from pathlib import Path

import pytest

from paralab.platform.config.schema import StorageConfig
from paralab.platform.services import stack_down, stack_status, stack_up
from paralab.platform.services.process import pid_alive
from paralab.platform.storage import Storage


@pytest.mark.s3
@pytest.mark.slow
def test_stack_up_status_down(tmp_path, monkeypatch):
    before = stack_status(tmp_path)
    assert not before.running and before.env() == {}

    # A session token in the user's shell must not reach the servers with the stack's keys
    # (SeaweedFS rejected every proxied artifact upload with it).
    monkeypatch.setenv("AWS_SESSION_TOKEN", "stray-token-from-the-shell")
    up = stack_up(tmp_path)
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    try:
        assert up.running, up
        assert up.seaweedfs.url.startswith("http://127.0.0.1:")
        assert up.mlflow.url.startswith("http://127.0.0.1:")
        state_file = tmp_path / ".paralab" / "stack" / "state.json"
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600, "it holds the secret key"

        again = stack_up(tmp_path)
        assert (again.seaweedfs.pid, again.mlflow.pid) == (up.seaweedfs.pid, up.mlflow.pid), \
            "up on a running stack starts nothing"

        # A fresh process would get exactly these variables from `paralab stack status`.
        env = up.env()
        for var in ("PARALAB_STORAGE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
            monkeypatch.setenv(var, env[var])
        storage = Storage.from_config(StorageConfig())
        assert storage.uri == "s3://paralab/checkpoints"
        storage.preflight()
        storage.write_bytes("hello", b"world")
        assert env["MLFLOW_TRACKING_URI"] == up.mlflow.url

        run_id, artifact_key = log_run_with_artifact(up.mlflow.url, tmp_path)
        client = storage.settings.client()
        body = client.get_object(Bucket=up.bucket, Key=artifact_key)["Body"].read()
        assert body == b"proxied", f"{run_id}: artifact not at s3://{up.bucket}/{artifact_key}"
    finally:
        down = stack_down(tmp_path)

    assert not down.running
    assert not pid_alive(up.seaweedfs.pid) and not pid_alive(up.mlflow.pid)
    assert (down.seaweedfs.pid, down.mlflow.pid) == (None, None)
    assert down.access_key == up.access_key, "credentials are kept for the next `up`"
    assert not stack_down(tmp_path).running, "down twice is harmless"

    # Up again at once: the same ports (the exported URLs stay right), and the data is there.
    again = stack_up(tmp_path)
    try:
        assert (again.seaweedfs.url, again.mlflow.url) == (up.seaweedfs.url, up.mlflow.url)
        assert storage.read_bytes("hello") == b"world"
    finally:
        stack_down(tmp_path)


@pytest.mark.s3
def test_an_interrupted_up_leaves_nothing_running(tmp_path, monkeypatch):
    """Ctrl-C while MLflow starts: SeaweedFS, already up, is stopped too (an orphan held its
    store's lock, and every later `stack up` failed)."""
    from paralab.platform.services.mlflow_server import MlflowServer

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(MlflowServer, "start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stack_up(tmp_path)
    assert not _processes_under(tmp_path), "a service was left running"


def _processes_under(folder) -> list[str]:
    """Command lines of live processes that name ``folder``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and str(folder) in argv:
            found.append(argv)
    return found


def log_run_with_artifact(tracking_uri: str, tmp_path) -> tuple[str, str]:
    """Log a run with a metric and a file through the server; return run id and S3 key."""
    from mlflow.tracking import MlflowClient

    with urllib.request.urlopen(f"{tracking_uri}/health", timeout=5) as response:
        assert response.status == 200
    # No S3 credentials on the client side: the server proxies artifacts.
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment("stack-test")
    run = client.create_run(experiment_id, tags={"mlflow.runName": "proxy"})
    client.log_metric(run.info.run_id, "loss", 1.5, step=3)
    artifact = tmp_path / "notes.txt"
    artifact.write_text("proxied")
    client.log_artifact(run.info.run_id, str(artifact), artifact_path="outputs")
    client.set_terminated(run.info.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    assert client.get_metric_history(run.info.run_id, "loss")[0].value == 1.5
    key = f"mlflow/{experiment_id}/{run.info.run_id}/artifacts/outputs/notes.txt"
    return run.info.run_id, key


def test_stale_state_never_signals_a_stranger(tmp_path):
    """After a reboot the recorded pids may belong to other processes: leave them alone."""
    import json
    import os

    root = tmp_path / ".paralab" / "stack"
    root.mkdir(parents=True)
    me = os.getpid()  # alive, but not a weed or mlflow process of this stack
    (root / "state.json").write_text(json.dumps({
        "version": 1, "bucket": "paralab", "access_key": "a", "secret_key": "s",
        "seaweedfs": {"pid": me, "url": "http://127.0.0.1:9",
                      "ports": {"s3": 1, "master": 2, "volume": 3, "filer": 4, "admin": 5}},
        "mlflow": {"pid": me, "port": 9, "url": "http://127.0.0.1:9"},
    }))
    status = stack_status(tmp_path)
    assert not status.seaweedfs.alive and not status.mlflow.alive
    down = stack_down(tmp_path)  # would SIGTERM this very test if it trusted the pids
    assert pid_alive(me)
    assert (down.seaweedfs.pid, down.mlflow.pid) == (None, None)


def test_weed_comes_from_the_wheel_unless_overridden(monkeypatch, tmp_path):
    import os

    from paralab.platform.services import find_weed

    monkeypatch.delenv("PARALAB_WEED", raising=False)
    path = find_weed()
    assert os.access(path, os.X_OK) and os.path.basename(path) == "weed"
    monkeypatch.setenv("PARALAB_WEED", str(tmp_path / "my-weed"))
    assert find_weed() == str(tmp_path / "my-weed")
