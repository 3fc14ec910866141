"""The GPU benchmark script still runs: its tiny CPU mode, end to end, under the interpreter.

The script itself runs only on a GPU, so without this test a break in it would surface only
when it is next run there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_kernel_benchmark_smoke(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    records = results["records"]
    assert not [r for r in records if "error" in r], [r for r in records if "error" in r]
    sections = {r["section"] for r in records}
    assert {"correctness", "scan", "paper_L512", "grid"} <= sections
    assert all(r["pass"] for r in records if r["section"] == "correctness")
    impls = {r["impl"] for r in records if r["section"] == "grid" and "impl" in r}
    assert {"sequential", "parallel_torch", "fused_triton", "fused_triton_chunked"} <= impls
    paper = [r for r in records if r["section"] == "paper_L512"]
    assert all(r["speedup_fused_triton_fwd"] > 0 for r in paper)
    assert "## Paper setting" in (tmp_path / "results.md").read_text()
    # Every size's inputs are drawn once and shared by the implementations timed on them.
    assert {r["impl"] for r in records if r["section"] == "scan"} == {"torch", "triton"}


def test_kernel_benchmark_keeps_its_results_when_killed(tmp_path):
    """gpu_check.sh stops the benchmark with SIGTERM at its time limit: what was measured by
    then must be on disk, not lost with the process."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    results = tmp_path / "results.json"
    try:
        deadline = time.monotonic() + 120
        while not results.exists():  # written after the first record
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    saved = json.loads(results.read_text())
    assert saved["info"]["killed_by_signal"] == signal.SIGTERM
    assert saved["records"] and saved["records"][0]["section"] == "correctness"
    assert "## Correctness" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_launch_config_sweep_smoke(tmp_path):
    """benchmarks/launch_configs.py: every tile shape it tries runs and matches the default."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = ROOT / "benchmarks" / "launch_configs.py"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    assert not [r for r in records if "error" in r or "skipped" in r], records
    assert {r["section"] for r in records} == {"fused", "sequential", "scan"}
    assert {(r["BT"], r["BN"]) for r in records if r["section"] == "fused"} == {(8, 8), (16, 4)}
    # Another tile shape reorders fp32 sums, nothing more.
    assert all(r["rel_vs_default"] < 1e-5 for r in records if "rel_vs_default" in r)
    assert all(r["fwd_ms"] > 0 for r in records)
    md = (tmp_path / "results.md").read_text()
    assert "## Fused Newton solve" in md and "## Scans" in md
