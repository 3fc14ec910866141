"""CUDA checks (marker ``gpu``, skipped without CUDA): every Newton mode equals
``sequential`` on the GPU, ``auto`` takes ``triton``, and a bf16-autocast LM trains in
``triton`` mode."""

from __future__ import annotations

import pytest
import torch
from models_testing import assert_close, make_cell, random_state, tolerance

from paralab.models import modes
from paralab.models.config import ModelConfig
from paralab.models.lm import build_model
from paralab.models.loss import lm_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("cell_name", ["paragru", "paralstm", "linear", "leaky_tanh"])
@pytest.mark.parametrize("mode", ["parallel", "triton"])
@pytest.mark.parametrize("seq_len", [1, 37, 1024])
def test_newton_modes_match_sequential_on_cuda(cell_name, mode, seq_len):
    torch.manual_seed(seq_len)
    cell = make_cell(cell_name, 32, 64, 4, torch.float32, newton_iters=6).cuda()
    x = torch.randn(3, seq_len, 32, device="cuda", requires_grad=True)
    h0 = random_state(cell, 3, torch.float32).cuda().requires_grad_()
    weights = torch.randn(3, seq_len, 64, device="cuda")
    results = {}
    for m in ("sequential", mode):
        y, final = cell(x, h0, mode=m)
        loss = (y * weights).sum() + final.sum()
        results[m] = (y.detach(), torch.autograd.grad(loss, [x, h0, *cell.parameters()]))
    assert cell.newton_fallbacks == 0
    assert_close(results[mode][0], results["sequential"][0], 1e-5, "output")
    for got, want in zip(results[mode][1], results["sequential"][1]):
        assert_close(got, want, 10 * tolerance(torch.float32, seq_len, "grad"), "gradient")


def test_auto_prefers_triton_on_cuda():
    cell = make_cell("paragru", 8, 16, 2, torch.float32).cuda()
    assert modes.resolve_mode("auto", cell, torch.randn(1, 8, 3, 16, device="cuda")) == "triton"


def test_fused_path_falls_back_on_divergence():
    torch.manual_seed(0)
    cell = make_cell("paragru", 8, 16, 1, torch.float32, newton_iters=3).cuda()
    cell.a_bound = 100.0
    with torch.no_grad():
        cell.A.uniform_(-60, 60)
    x = 3 * torch.randn(2, 300, 8, device="cuda")
    want, _ = cell(x, mode="sequential")
    got, _ = cell(x, mode="triton")
    assert cell.last_newton_stats.fell_back and cell.newton_fallbacks == 1
    assert_close(got, want, 1e-6, "fallback output")


@pytest.mark.parametrize("cell_name", ["paragru", "paralstm"])
def test_lm_trains_under_bf16_autocast_in_triton_mode(cell_name):
    torch.manual_seed(1)
    cfg = ModelConfig(cell=cell_name, vocab_size=64, d_model=64, n_layers=2, heads=4, mode="triton")
    model = build_model(cfg).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, 64, (4, 257), device="cuda")
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
        loss, _ = lm_loss(logits, tokens[:, 1:], z_loss=1e-4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.constrain_()
        losses.append(loss.item())
    stats = model.newton_stats()
    assert losses[-1] < losses[0] - 0.5, losses
    assert stats["newton/fallbacks"] == 0 and stats["newton/residual_3"] < 1e-4, stats
