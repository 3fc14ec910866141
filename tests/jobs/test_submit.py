"""`paralab submit`: an experiment runs as a Ray job with this checkout's code, and only
where its results outlive the job.

The refusals run without Ray. The last test starts a real Ray head with its job API on
127.0.0.1, submits a tiny run through the CLI, follows it to the end and finds the run in
MLflow and its checkpoint and prepared data on a real S3 server (SeaweedFS); then a sweep
with storage on a shared absolute path, fitted afterwards from the same MLflow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from paralab_testing import QUICKSTART, run_paralab, runs_of

from paralab.platform.jobs.submit import (
    Submission,
    SubmitError,
    _relative_store,
    plan_submission,
    submit_when_agent_is_up,
)

DURABLE = ["tracking.uri=http://mlflow.internal:5000", "storage.uri=s3://bucket/runs"]
SCALING = QUICKSTART.parent / "scaling" / "cells.yaml"


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "paralab submit needs the cluster's job API: --address"),
        (["--address", "127.0.0.1:8265"], "the job API is the dashboard's HTTP address"),
        (["--address", "http://127.0.0.1:9"], "tracking.uri: a submitted run needs an MLflow server"),
        (["--address", "http://127.0.0.1:9", "tracking.uri=sqlite:///runs.db"],
         "is relative to the job's temporary working directory"),
        (["--address", "http://127.0.0.1:9", "tracking.uri=http://m:5000"],
         "storage.uri: '(default .paralab/storage)' would be inside the job's temporary"),
        (["--address", "http://127.0.0.1:9", "tracking.uri=http://m:5000", "storage.uri=rel/dir"],
         "storage.uri: 'rel/dir' would be inside"),
        (["--address", "http://127.0.0.1:9", *DURABLE], "no Ray job API answers there"),
        # `paralab stack up`'s exports, sent to a remote cluster: it could not reach them.
        (["--address", "http://10.0.0.5:8265", "tracking.uri=http://127.0.0.1:5000", DURABLE[1]],
         "tracking.uri: http://127.0.0.1:5000 is this machine's loopback address, which the "
         "cluster at http://10.0.0.5:8265 cannot reach"),
        (["--address", "http://10.0.0.5:8265", *DURABLE, "storage.endpoint_url=http://localhost:9000"],
         "storage.endpoint_url: http://localhost:9000 is this machine's loopback address"),
    ],
    ids=["no-address", "not-http", "no-tracking", "relative-sqlite", "default-storage",
         "relative-storage", "nobody-there", "loopback-tracking", "loopback-endpoint"],
)  # fmt: skip
def test_refusals_are_one_line_and_exit_2(extra, message, tmp_path):
    env = {"RAY_API_SERVER_ADDRESS": "", "MLFLOW_TRACKING_URI": "", "PARALAB_STORAGE": ""}
    proc = run_paralab(tmp_path, "submit", str(QUICKSTART), *extra, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1


def test_an_address_where_something_else_answers_is_one_line(tmp_path):
    """An MLflow UI, say: HTTP answers, but not Ray's job API."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's API
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"http://127.0.0.1:{server.server_address[1]}"
        env = {"RAY_API_SERVER_ADDRESS": "", "MLFLOW_TRACKING_URI": "", "PARALAB_STORAGE": ""}
        proc = run_paralab(tmp_path, "submit", str(QUICKSTART), "--address", address, *DURABLE, env=env)
    finally:
        server.shutdown()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "it is not a Ray dashboard); give the head's dashboard address" in proc.stderr


@pytest.mark.parametrize("uri, relative", [
    ("sqlite:///runs.db", True), ("sqlite:////shared/mlflow.db", False),
    ("file:./mlruns", True), ("file:mlruns", True), ("mlruns", True),
    ("file:///shared/mlruns", False), ("/shared/mlruns", False),
    ("http://mlflow:5000", False), ("https://mlflow.example.com", False), ("databricks", False),
])  # fmt: skip
def test_a_tracking_store_the_job_would_lose_is_found(uri, relative):
    """A relative store lives in the job's temporary working directory and goes with it
    (bare paths come only from env MLFLOW_TRACKING_URI: the schema refuses them)."""
    assert _relative_store(uri) is relative


def test_a_relative_file_store_is_refused(monkeypatch):
    with pytest.raises(SubmitError, match="'file:./mlruns' is relative to the job's temporary"):
        plan_submission(str(QUICKSTART), ["tracking.uri=file:./mlruns", DURABLE[1]], "http://h:8265")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    with pytest.raises(SubmitError, match="'mlruns' is relative to the job's temporary"):
        plan_submission(str(QUICKSTART), [DURABLE[1]], "http://h:8265")


def test_the_job_carries_the_resolved_experiment_and_this_code(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    sub = plan_submission(str(QUICKSTART), [*DURABLE, "train.steps=7"], "http://head:8265")
    try:
        work = sub.runtime_env["working_dir"]
        (code,) = sub.runtime_env["py_modules"]
        shipped = yaml.safe_load(open(os.path.join(work, "experiment.yaml")))
        assert shipped["train"]["steps"] == 7
        assert shipped["tracking"]["uri"] == "http://mlflow.internal:5000"
        assert shipped["storage"]["uri"] == "s3://bucket/runs"
        assert shipped["data"]["cache_dir"] == "s3://bucket/runs/data"  # shared by all workers
        for module in ("platform/cli.py", "models/lm.py", "kernels/scan/triton.py",
                       "dashboards/study.py"):  # fmt: skip
            assert os.path.exists(os.path.join(code, module)), module
        assert not any("__pycache__" in root for root, _, _ in os.walk(code))
        assert sub.entrypoint == "python -m paralab.platform.cli run experiment.yaml"
        assert sub.submission_id.startswith("paralab-run-quickstart-")
    finally:
        import shutil

        shutil.rmtree(sub.stage)


def test_run_and_sweep_options_reach_the_job_and_only_the_right_command():
    import shutil

    sub = plan_submission(str(SCALING), DURABLE, "http://head:8265", sweep=True,
                          flags=["--resume", "--create-bucket"])  # fmt: skip
    shutil.rmtree(sub.stage)
    assert sub.entrypoint == "python -m paralab.platform.cli sweep experiment.yaml --resume --create-bucket"
    with pytest.raises(SubmitError, match="--resume is an option of paralab sweep: use it with --sweep"):
        plan_submission(str(QUICKSTART), DURABLE, "http://head:8265", flags=["--resume"])
    with pytest.raises(SubmitError, match="--restart is an option of paralab run: use it without"):
        plan_submission(str(SCALING), DURABLE, "http://head:8265", sweep=True, flags=["--restart"])


NO_AGENT = "Request failed with status code 500: No available agent to submit job, please try again later.."


class _JobAPI:
    """Ray's job API as a freshly started head answers it: ``answers`` in turn, then an id."""

    def __init__(self, *answers: str):
        self.answers, self.calls = list(answers), 0

    def submit_job(self, **job):
        self.calls += 1
        if self.answers:
            raise RuntimeError(self.answers.pop(0))
        return job["submission_id"]


def _sub() -> Submission:
    return Submission(address="http://head:8265", cfg=None, entrypoint="python -m x",
                      runtime_env={}, submission_id="paralab-run-x")  # fmt: skip


def test_a_head_without_its_job_agent_yet_is_waited_for():
    api, slept = _JobAPI(NO_AGENT, NO_AGENT), []
    assert submit_when_agent_is_up(api, _sub(), wait_s=60, sleep=slept.append) == "paralab-run-x"
    assert api.calls == 3 and slept == [2.0, 2.0]


def test_a_head_that_never_gets_an_agent_or_refuses_is_one_error_line():
    with pytest.raises(SubmitError, match=r"no job agent for 0 s .*`ray status`") as err:
        submit_when_agent_is_up(_JobAPI(NO_AGENT), _sub(), wait_s=0, sleep=lambda s: None)
    assert "\n" not in str(err.value)
    refused = "Request failed with status code 400: Job with submission_id paralab-run-x already exists."
    api = _JobAPI(refused)
    with pytest.raises(SubmitError, match="refused the job: .*already exists"):
        submit_when_agent_is_up(api, _sub(), wait_s=60, sleep=lambda s: None)
    assert api.calls == 1, "a refusal is not retried"


def test_file_storage_puts_the_data_cache_on_the_same_shared_path():
    sub = plan_submission(str(QUICKSTART), [DURABLE[0], "storage.uri=file:///shared/ckpt"],
                          "http://head:8265")  # fmt: skip
    import shutil

    shutil.rmtree(sub.stage)
    assert sub.cfg.storage.uri == "file:///shared/ckpt"
    assert sub.cfg.data.cache_dir == "/shared/ckpt/data"


def test_a_sweep_job_runs_paralab_sweep_and_needs_a_sweep_section(tmp_path):
    sub = plan_submission(str(SCALING), DURABLE, "http://head:8265", sweep=True)
    import shutil

    shutil.rmtree(sub.stage)
    assert sub.entrypoint == "python -m paralab.platform.cli sweep experiment.yaml"
    assert sub.submission_id.startswith("paralab-sweep-scaling-cells-")
    proc = run_paralab(tmp_path, "submit", str(QUICKSTART), "--sweep", "--address",
                       "http://127.0.0.1:9", *DURABLE)  # fmt: skip
    assert proc.returncode == 2 and "has no sweep: section" in proc.stderr


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held together while chosen, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head started as on a cluster node (`ray start --head`), its job API on 127.0.0.1.

    Every port it listens on is chosen here: Ray's fixed defaults (the dashboard agent's
    52365 above all, which serves job submission) may be held by a local cluster that another
    test runs meanwhile, and the head would then never get a job agent.
    """
    gcs, port, agent, client = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A job's entrypoint runs `python` from the head's PATH, as on a cluster image: here that
    # must be this venv's, which `make test` calls by path without activating it.
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # stop at SIGTERM, no 30 s drain
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={port}",
         f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
         "--num-cpus=2", '--resources={"TRAIN_DRIVER": 100}'],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (401 while token authentication is on): it is up
            except OSError:
                if head.poll() is not None:
                    raise RuntimeError(f"the Ray head exited:\n{(tmp_path / 'head.log').read_text()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no job API at {url} after 120 s") from None
                time.sleep(1)
        yield url
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        log.close()


@pytest.mark.slow
@pytest.mark.ray(last=True)  # its own Ray head; the longest Ray test
@pytest.mark.s3
def test_submit_runs_the_experiment_on_the_cluster(seaweedfs, ray_head, tmp_path):
    results = tmp_path / "results"
    bucket = f"s3://{seaweedfs.bucket}/submitted"
    tiny = [
        f"tracking.uri=sqlite:///{results / 'mlflow.db'}", f"storage.uri={bucket}",
        "model.d_model=32", "model.n_layers=1", "model.heads=2", "model.mode=sequential",
        "data.seq_len=32", "data.max_tokens=60000", "train.steps=4", "train.batch_size=8",
        "train.workers=1", "train.eval_every=4", "train.checkpoint_every=4",
        "train.eval_batches=1", "tracking.log_model=false",
    ]  # fmt: skip
    results.mkdir()
    # Ray turns token authentication on for local clusters; clients opt in the same way.
    # The endpoint travels in the job's experiment (from AWS_ENDPOINT_URL here); the head has
    # the credentials in its environment, as cluster nodes have theirs, and the job none.
    proc = run_paralab(tmp_path / "laptop", "submit", str(QUICKSTART), "--address", ray_head,
                       "--follow", *tiny, timeout=600,
                       env={"RAY_AUTH_MODE": "token", "AWS_ENDPOINT_URL": seaweedfs.endpoint_url})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "SUCCEEDED" in proc.stdout and "submitted job paralab-run-quickstart-" in proc.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    (run,) = runs_of(client, "quickstart")
    assert run.info.status == "FINISHED" and run.data.metrics["val_loss"] > 0
    checkpoint = run.data.tags["paralab.checkpoint"]
    assert checkpoint.startswith(f"{bucket}/"), checkpoint
    listing = seaweedfs.client().list_objects_v2(Bucket=seaweedfs.bucket, Prefix="submitted/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    prefix = checkpoint.removeprefix(f"s3://{seaweedfs.bucket}/")
    assert any(k.startswith(f"{prefix}/") and k.endswith("trainer.pt") for k in keys), keys
    assert any(k.startswith("submitted/data/") for k in keys), keys  # prepared data beside them

    # A sweep goes the same way, and its results are fitted here, from the shared MLflow.
    # It uses the other durable kind of storage: an absolute path the cluster shares.
    study = [
        f"tracking.uri=sqlite:///{results / 'mlflow.db'}", f"storage.uri={results / 'storage'}",
        "sweep.params[model.d_model].values=[8,16]", "sweep.params[model.cell].values=[paragru]",
        "model.n_layers=1", "model.mode=sequential", "data.seq_len=16", "data.max_tokens=20000",
        "train.steps=4", "train.batch_size=4", "train.workers=1", "train.cpus_per_worker=1",
        "train.eval_every=4", "train.checkpoint_every=4", "train.eval_batches=1",
        "tracking.log_model=false",
    ]  # fmt: skip
    proc = run_paralab(tmp_path / "laptop", "submit", str(SCALING), "--sweep", "--follow",
                       "--address", ray_head, *study, env={"RAY_AUTH_MODE": "token"},
                       timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 finished" in proc.stdout
    proc = run_paralab(tmp_path / "laptop", "scaling", str(SCALING), *study)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model.cell=paragru" in proc.stdout and "left out" not in proc.stdout


def test_losing_the_job_api_while_following_is_one_line(monkeypatch, capsys):
    """The head restarting, a dropped tunnel: the job may still run; say so, no traceback."""
    import aiohttp

    from paralab.platform import cli

    submit_module = sys.modules["paralab.platform.jobs.submit"]

    def lost(address, job_id, write):
        raise aiohttp.ClientConnectionError("Connection closed")

    monkeypatch.setattr(submit_module, "submit", lambda sub: "job-1")
    monkeypatch.setattr(submit_module, "follow", lost)
    assert cli.main(["submit", str(QUICKSTART), "--address", "http://head:8265", "--follow", *DURABLE]) == 1
    err = capsys.readouterr().err
    assert "stopped following: lost the job API at http://head:8265 (Connection closed); job job-1 may" in " ".join(err.split())
    assert "Traceback" not in err
