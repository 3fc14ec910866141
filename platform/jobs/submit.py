"""``paralab submit FILE [KEY=VALUE ...] --address http://HEAD:8265 [--sweep]``.

A submitted run is an ordinary ``paralab run`` (or, with ``--sweep``, ``paralab sweep``)
executed by a Ray job on the cluster. The job carries two things from this machine:

- the **resolved experiment** (the file with its overrides applied and the tracking and
  storage locations made explicit), as ``experiment.yaml`` in the job's working directory;
- **paralab's code** from this checkout, as a ``py_modules`` entry, so the cluster runs
  exactly the code that was tested here, whatever version its image has installed.

The cluster's Python must already have paralab's dependencies (torch, Ray, MLflow, ...):
the cluster configs under ``cluster/`` install them. Credentials never travel with the job;
the nodes get them from their instance role or environment.

A job's working directory is temporary, so the embedded defaults (``.paralab/storage`` and
``.paralab/mlflow.db`` under it) would vanish with the job: submission is refused unless
checkpoints go to S3 or an absolute path, and runs to an MLflow server or an absolute
SQLite file. Prepared data goes beside the checkpoints (``<storage>/data``) unless
``data.cache_dir`` says otherwise, since the driver writes it and every worker reads it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from paralab.platform.config.load import ConfigError, load_experiment, to_yaml
from paralab.platform.config.schema import ExperimentConfig

PACKAGES = ("platform", "kernels", "models", "dashboards")
"""paralab's mapped folders, shipped as the ``paralab`` namespace package."""


class SubmitError(ConfigError):
    """A submission that cannot work as asked; the message is meant for the user as is."""


@dataclass
class Submission:
    """What ``paralab submit`` sends: the job's entrypoint and runtime environment."""

    address: str
    cfg: ExperimentConfig
    entrypoint: str
    runtime_env: dict
    submission_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    stage: Path | None = None
    """Local staging folder (removed after the upload)."""


def job_address(address: str | None) -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS``, else an ``http(s)://`` ``RAY_ADDRESS``."""
    web = ("http://", "https://")
    if address:
        if not address.startswith(web):
            raise SubmitError(
                f"--address {address!r}: the job API is the dashboard's HTTP address, "
                "e.g. http://HEAD:8265"
            )
        return address.rstrip("/")
    for value in (os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")):
        if value and value.startswith(web):  # RAY_ADDRESS may also name a ray:// client
            return value.rstrip("/")
    raise SubmitError(
        "paralab submit needs the cluster's job API: --address http://HEAD:8265 "
        "(or env RAY_API_SERVER_ADDRESS); `ray dashboard cluster/aws.yaml` forwards it to "
        "http://127.0.0.1:8265"
    )


def _relative_store(uri: str) -> bool:
    """Whether an MLflow tracking URI names a relative path: ``sqlite:///runs.db``,
    ``file:./mlruns`` or a bare ``mlruns`` (MLflow takes a plain path as a file store)."""
    if uri.startswith("databricks"):  # `databricks`, `databricks://profile`: hosted
        return False
    if uri.startswith("sqlite:"):
        return not uri.startswith("sqlite:////")
    if uri.startswith("file:"):
        return not Path(uri.removeprefix("file:").removeprefix("//")).is_absolute()
    return "://" not in uri and not Path(uri).is_absolute()


def _durable(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with tracking and storage locations made explicit, or SubmitError."""
    tracking = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking:
        raise SubmitError(
            "tracking.uri: a submitted run needs an MLflow server the cluster can reach, e.g. "
            "tracking.uri=http://mlflow.internal:5000 (the default SQLite file would live in "
            "the job's temporary working directory)"
        )
    if _relative_store(tracking):
        raise SubmitError(
            f"tracking.uri: {tracking!r} is relative to the job's temporary working "
            "directory; use an MLflow server, or an absolute path on a filesystem the cluster "
            "shares (sqlite:////shared/mlflow.db, file:///shared/mlruns)"
        )
    storage = cfg.storage.uri or os.environ.get("PARALAB_STORAGE", "")
    local = storage.removeprefix("file://")
    if not storage or (not storage.startswith("s3://") and not Path(local).is_absolute()):
        raise SubmitError(
            f"storage.uri: {storage or '(default .paralab/storage)'!r} would be inside the "
            "job's temporary working directory; use s3://bucket/prefix, or an absolute path "
            "on a filesystem the cluster shares"
        )
    cfg.tracking.uri = tracking
    cfg.storage.uri = storage
    if not cfg.data.cache_dir:
        # The driver prepares the shards and the workers read them: on a cluster both must see
        # the same folder, and the default (under the job's working directory) is neither.
        # data.cache_dir takes s3:// or a path, not file:// (storage.uri may be either).
        shared = storage if storage.startswith("s3://") else local
        cfg.data.cache_dir = f"{shared.rstrip('/')}/data"
    if storage.startswith("s3://") and not cfg.storage.endpoint_url:
        # The job carries the endpoint this machine would use (its credentials stay here).
        from paralab.platform.storage.settings import S3Settings

        cfg.storage.endpoint_url = S3Settings.from_config(cfg.storage).endpoint_url
    return cfg


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _check_reachable(cfg: ExperimentConfig, address: str) -> None:
    """A job for a remote cluster must not carry this machine's loopback services (as
    ``paralab stack up``'s exports give): the head would fail to reach them, later."""
    from urllib.parse import urlsplit

    if (urlsplit(address).hostname or "") in LOOPBACK_HOSTS:
        return  # a cluster on this machine reaches them
    for key, value in (("tracking.uri", cfg.tracking.uri), ("storage.endpoint_url", cfg.storage.endpoint_url)):
        if value and (urlsplit(value).hostname or "") in LOOPBACK_HOSTS:
            raise SubmitError(
                f"{key}: {value} is this machine's loopback address, which the cluster at "
                f"{address} cannot reach; give an address the cluster reaches (set it in the "
                "YAML, or export MLFLOW_TRACKING_URI / AWS_ENDPOINT_URL)"
            )


def _stage_code(stage: Path) -> Path:
    """Copy paralab's sources (the installed folders this command runs from) into
    ``stage/paralab``: Python files and package data, no caches."""
    from importlib.util import find_spec

    root = stage / "paralab"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    for name in PACKAGES:
        folder = next(iter(find_spec(f"paralab.{name}").submodule_search_locations))
        shutil.copytree(folder, root / name, ignore=ignore)
    return root


JOB_FLAGS = {"run": ("--restart", "--create-bucket"),
             "sweep": ("--resume", "--retry-errored", "--create-bucket")}
"""The options of ``paralab run`` / ``paralab sweep`` that a submitted job may be given."""


def plan_submission(
    file: str, overrides: list[str], address: str | None, sweep: bool = False,
    flags: list[str] | tuple[str, ...] = (),
) -> Submission:
    """Check everything that can be checked here, and stage the job's files. With ``sweep``
    the job runs ``paralab sweep`` on the file's ``sweep:`` section instead of one run;
    ``flags`` (e.g. ``--resume``) are passed to that command."""
    from paralab.platform.identity import code_version, run_identity

    command = "sweep" if sweep else "run"
    for flag in flags:
        if flag not in JOB_FLAGS[command]:
            other = "without" if command == "sweep" else "with"
            raise SubmitError(f"{flag} is an option of paralab {'run' if sweep else 'sweep'}: "
                              f"use it {other} --sweep")
    url = job_address(address)
    if sweep:
        from paralab.platform.tune.sweep import plan_sweep

        # The same checks as `paralab sweep --dry-run`, on the config it loads.
        cfg = _durable(plan_sweep(file, overrides).cfg)
    else:
        cfg = _durable(load_experiment(file, overrides))
    _check_reachable(cfg, url)
    stage = Path(tempfile.mkdtemp(prefix="paralab-submit-"))
    work = stage / "work"
    work.mkdir()
    (work / "experiment.yaml").write_text(to_yaml(cfg))
    code = _stage_code(stage)
    identity = run_identity(cfg)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe_name = re.sub(r"[^A-Za-z0-9_-]", "-", cfg.name)
    return Submission(
        address=url,
        cfg=cfg,
        entrypoint=" ".join(["python -m paralab.platform.cli", command, "experiment.yaml", *flags]),
        runtime_env={"working_dir": str(work), "py_modules": [str(code)]},
        submission_id=f"paralab-{command}-{safe_name}-{identity[:8]}-{stamp}",
        metadata={"paralab.experiment": cfg.name, "paralab.code_version": code_version(),
                  "paralab.source": str(file)},  # fmt: skip
        stage=stage,
    )


def submit(sub: Submission) -> str:
    """Upload and start the job; returns its submission id. The staging folder is removed."""
    from ray.job_submission import JobSubmissionClient

    try:
        return submit_when_agent_is_up(JobSubmissionClient(sub.address), sub)
    except ConnectionError as err:
        raise SubmitError(f"--address {sub.address}: no Ray job API answers there ({err})") from None
    except Exception as err:
        # Something else answers HTTP there: Ray's version check gets a 404 (a RuntimeError)
        # or another error status (requests' HTTPError).
        if "Jobs API is not supported" in str(err) or type(err).__name__ == "HTTPError":
            raise SubmitError(f"--address {sub.address}: no Ray job API answers there (HTTP is up, "
                              "but it is not a Ray dashboard); give the head's dashboard address, "
                              "port 8265 by default") from None
        if type(err).__name__ != "AuthenticationError":
            raise
        raise SubmitError(
            f"--address {sub.address}: the cluster requires a Ray auth token; export "
            "RAY_AUTH_MODE=token with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token "
            "(https://docs.ray.io/en/latest/ray-security/token-auth.html)"
        ) from None
    finally:
        if sub.stage is not None:
            shutil.rmtree(sub.stage, ignore_errors=True)


AGENT_WAIT_S = 90.0
"""How long to wait for a head whose job API answers before its job agent does."""


def submit_when_agent_is_up(client, sub: Submission, wait_s: float = AGENT_WAIT_S,
                            sleep=time.sleep) -> str:
    """``client.submit_job`` for ``sub``, retried while the head has no job agent yet.

    A head that has just started serves its dashboard a few seconds (longer on a loaded
    machine) before its job agent registers; Ray then answers 500 "No available agent to
    submit job, please try again later". Other refusals of the job API are the user's to fix
    and come back as one :class:`SubmitError` line."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(
                entrypoint=sub.entrypoint, runtime_env=sub.runtime_env,
                submission_id=sub.submission_id, metadata=sub.metadata,
            )  # fmt: skip
        except RuntimeError as err:
            message = str(err).strip()
            if not message.startswith("Request failed with status code"):
                raise
            if "No available agent" not in message:
                raise SubmitError(f"--address {sub.address}: Ray's job API refused the job: "
                                  f"{message}") from None
            if time.monotonic() >= deadline:
                raise SubmitError(
                    f"--address {sub.address}: the head has had no job agent for {wait_s:.0f} s "
                    f"({message}); check that the head node is up (`ray status`) and submit again"
                ) from None
            sleep(2.0)


def follow(address: str, job_id: str, write) -> str:
    """Stream the job's logs through ``write`` until it ends; returns its final status."""
    import asyncio

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    asyncio.run(tail())
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can close a moment before the status
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    if status.value == "FAILED":  # e.g. a runtime_env that failed to set up: no logs say why
        message = client.get_job_info(job_id).message
        if message:
            write(f"{message.rstrip()}\n")
    return str(status.value)
