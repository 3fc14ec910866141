"""``auto`` picks the measured-fastest mode on CPU, once per shape bucket; explicit modes
are honoured; every mode gives the sequential answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from models_testing import assert_close, make_cell

from paralab.models import modes
from paralab.models.registry import get_cell


@pytest.fixture
def fresh_choices():
    modes.clear_auto_choices()
    yield
    modes.clear_auto_choices()


def test_auto_takes_the_faster_measured_mode_and_caches_it(monkeypatch, fresh_choices):
    calls = []
    fake_seconds = {"sequential": 2.0, "parallel": 1.0}

    def fake_time(cell, mode, shape, dtype, device, grad):
        calls.append((mode, shape))
        return fake_seconds[mode]

    monkeypatch.setattr(modes, "_time_mode", fake_time)
    cell = make_cell("paragru", 4, 8, 1, torch.float32)
    p = torch.randn(2, 100, 3, 8)
    assert modes.resolve_mode("auto", cell, p) == "parallel"
    assert modes.resolve_mode("auto", cell, torch.randn(2, 120, 3, 8)) == "parallel"
    assert len(calls) == 2, "same bucket (T=100 and 120 both round to 128): probed once"

    fake_seconds.update(sequential=0.5)
    assert modes.resolve_mode("auto", cell, torch.randn(2, 300, 3, 8)) == "sequential"
    assert len(calls) == 4, "new bucket: probed again"
    assert sorted(modes.auto_choices().values()) == ["parallel", "sequential"]


def test_explicit_modes_are_not_probed(monkeypatch):
    monkeypatch.setattr(modes, "_time_mode", lambda *a: pytest.fail("probed"))
    cell = make_cell("paragru", 4, 8, 1, torch.float32)
    for mode in ("sequential", "parallel", "triton"):
        assert modes.resolve_mode(mode, cell, torch.randn(1, 4, 3, 8)) == mode
    with pytest.raises(ValueError, match="mode must be one of"):
        modes.resolve_mode("fast", cell, torch.randn(1, 4, 3, 8))


def test_a_bad_mode_fails_when_the_cell_is_built():
    with pytest.raises(ValueError, match="mode must be one of .* got 'fast'"):
        get_cell("paragru")(4, 8, 1, mode="fast")


def test_triton_mode_on_cpu_without_the_interpreter_says_what_it_needs(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cell = make_cell("paragru", 4, 8, 1, torch.float32)
    with pytest.raises(ValueError, match="need a CUDA tensor .* TRITON_INTERPRET=1 .* use mode='parallel'"):
        modes.resolve_mode("triton", cell, torch.randn(1, 4, 3, 8))


def test_auto_on_cpu_gives_the_sequential_answer_and_leaves_grads_alone(fresh_choices):
    torch.manual_seed(0)
    cell = make_cell("paralstm", 4, 8, 2, torch.float64, newton_iters=8)
    x = torch.randn(2, 50, 4, dtype=torch.float64)
    want, _ = cell(x, mode="sequential")
    got, _ = cell(x, mode="auto")
    assert all(p.grad is None for p in cell.parameters()), "the probe must not touch .grad"
    assert list(modes.auto_choices().values())[0] in modes.PROBED_MODES
    assert_close(got.detach(), want.detach(), 1e-10, "auto vs sequential")


def test_neither_the_auto_probe_nor_registering_cells_moves_the_global_rng(fresh_choices):
    """Both happen after a run seeds torch (the probe at the first forward, registration when
    build_model first imports the cells); the run's randomness must not depend on them. A
    registration that drew from it made fresh Ray workers initialise other weights than the
    process that had imported the cells before seeding."""
    cell = make_cell("paragru", 4, 8, 2, torch.float32)
    x = torch.randn(2, 16, 4)
    torch.manual_seed(7)
    cell(x, mode="auto")  # probes: no choice cached
    after_probe = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(4), after_probe)

    code = ("import torch; torch.manual_seed(5); a = torch.rand(3); torch.manual_seed(5); "
            "from paralab.models.registry import registered_cells; registered_cells(); "
            "assert torch.equal(torch.rand(3), a), 'registration moved the global RNG'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_triton_mode_matches_sequential():
    """Fused kernels (ParaGRU, ParaLSTM) and Triton scans (leaky_tanh) in fp32, and Triton
    scans in fp64 (ParaGRU, ParaLSTM); on CPU through the Triton interpreter in a fresh
    process (see triton_mode_check.py)."""
    script = Path(__file__).with_name("triton_mode_check.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"} if not torch.cuda.is_available() else None
    done = subprocess.run(
        [sys.executable, str(script), "29"], cwd=script.parent, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("triton == sequential") == 5
