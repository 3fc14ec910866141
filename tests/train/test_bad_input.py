"""`paralab run` refuses bad input in one line, exit status 2, before it records anything."""

from __future__ import annotations

import socket

import pytest
from paralab_testing import QUICKSTART, mlflow_at, runs_of

TINY = ["name=bad", "model.d_model=32", "model.n_layers=1", "model.heads=2", "data.seq_len=32",
        "data.max_tokens=20000", "train.steps=2", "train.batch_size=2", "train.workers=1"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_refused_cleanly(proc, home, *words):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    # The progress bars appear with the first progress: a refusal before the data is
    # prepared is the one line printed, with no empty bar above it.
    assert proc.stdout.strip() == "" or "data" in proc.stdout, proc.stdout
    assert runs_of(mlflow_at(home), "bad") == [], "a run was recorded for input that was refused"
    storage = home / ".paralab" / "storage"
    assert not storage.exists() or not any(storage.iterdir()), "something was written to storage"


def test_missing_dataset(paralab_cli, tmp_path):
    proc = paralab_cli("run", str(QUICKSTART), *TINY, "data.source=text",
                       f"data.path={tmp_path}/nowhere/*.txt", home=tmp_path / "h")
    assert_refused_cleanly(proc, tmp_path / "h", "data.path")


def test_more_workers_than_cpus(paralab_cli, tmp_path):
    proc = paralab_cli("run", str(QUICKSTART), *TINY, "train.workers=64", "train.batch_size=64",
                       home=tmp_path / "h")
    assert_refused_cleanly(proc, tmp_path / "h", "train.workers=64", "CPUs")


def test_unreachable_s3_endpoint(paralab_cli, tmp_path):
    proc = paralab_cli("run", str(QUICKSTART), *TINY, "storage.uri=s3://bucket/runs",
                       f"storage.endpoint_url=http://127.0.0.1:{closed_port()}", home=tmp_path / "h",
                       env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    assert_refused_cleanly(proc, tmp_path / "h", "127.0.0.1")


@pytest.mark.s3
def test_wrong_s3_credentials(paralab_cli, tmp_path, seaweedfs):
    proc = paralab_cli("run", str(QUICKSTART), *TINY, f"storage.uri=s3://{seaweedfs.bucket}/runs",
                       f"storage.endpoint_url={seaweedfs.endpoint_url}", home=tmp_path / "h",
                       env={"AWS_ACCESS_KEY_ID": seaweedfs.access_key, "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert_refused_cleanly(proc, tmp_path / "h", "AWS_SECRET_ACCESS_KEY")


@pytest.mark.s3
def test_missing_bucket(paralab_cli, tmp_path, seaweedfs):
    proc = paralab_cli("run", str(QUICKSTART), *TINY, "storage.uri=s3://no-such-bucket/runs",
                       f"storage.endpoint_url={seaweedfs.endpoint_url}", home=tmp_path / "h")
    assert_refused_cleanly(proc, tmp_path / "h", "no-such-bucket")


def test_less_data_than_one_batch(paralab_cli, tmp_path):
    # 5,000 tokens of 32 are ~140 sequences: not one global batch of 256. The workers would
    # find out only after every restart; the driver says so first.
    proc = paralab_cli("run", str(QUICKSTART), *TINY, "data.max_tokens=5000",
                       "train.batch_size=256", home=tmp_path / "h")
    assert_refused_cleanly(proc, tmp_path / "h", "train.batch_size", "data.max_tokens")


def test_vocabulary_larger_than_the_model():
    from paralab.platform.config.load import load_experiment
    from paralab.platform.train.launch import LaunchError, check_data

    class Prepared:  # what check_data reads of PreparedData, for a 50,257-token tokenizer
        vocab_size = 50257

    cfg = load_experiment(QUICKSTART, TINY)
    with pytest.raises(LaunchError, match=r"model.vocab_size=256 .* at least 50257"):
        check_data(cfg, Prepared())


def test_changed_corpus_is_not_resumed_under_the_same_config(paralab_cli, tmp_path):
    """The config names the file, not its contents: editing the corpus keeps the identity, and
    the run's checkpoints were trained on the old text. The run folder holds the key of the
    data the run started on, as a real run leaves it (test_run_e2e checks that one does)."""
    import json

    from paralab.platform.config.load import load_experiment
    from paralab.platform.identity import run_identity
    from paralab.platform.train.checkpoint import DATA_RECORD

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("And the earth was without form, and void. " * 1000)
    home = tmp_path / "h"
    text = [*TINY, "data.source=text", f"data.path={corpus}"]
    run_dir = home / ".paralab" / "storage" / f"bad-{run_identity(load_experiment(QUICKSTART, text))}"
    run_dir.mkdir(parents=True)
    (run_dir / DATA_RECORD).write_text(json.dumps({"data_key": "text-0123456789ab"}))

    proc = paralab_cli("run", str(QUICKSTART), *text, home=home)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert "the data changed since run bad-" in err and "text-0123456789ab" in err, err
    assert "--restart" in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert runs_of(mlflow_at(home), "bad") == []
    assert sorted(p.name for p in run_dir.iterdir()) == [DATA_RECORD]  # left as it was


def test_a_run_another_process_trains_is_refused(paralab_cli, tmp_path):
    """Two `paralab run`s of one experiment would interleave checkpoints in one folder: the
    second finds the first's live lease and stops, naming it, before anything is recorded."""
    import json
    import os
    import time

    from paralab.platform.config.load import load_experiment
    from paralab.platform.identity import run_identity
    from paralab.platform.storage.lease import LEASE_FILE

    home = tmp_path / "h"
    cfg = load_experiment(QUICKSTART, TINY)
    run_dir = home / ".paralab" / "storage" / f"bad-{run_identity(cfg)}"
    run_dir.mkdir(parents=True)
    holder = {"owner": "first", "host": socket.gethostname(), "pid": os.getpid(), "renewed": time.time()}
    (run_dir / LEASE_FILE).write_text(json.dumps(holder))

    proc = paralab_cli("run", str(QUICKSTART), *TINY, home=home)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert f"pid {os.getpid()} on {socket.gethostname()}" in err and str(run_dir) in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert runs_of(mlflow_at(home), "bad") == []
    assert json.loads((run_dir / LEASE_FILE).read_text())["owner"] == "first"  # left as it was
