"""What the training loop relies on: the weight bound, Newton statistics, the loss, and
the block list that the platform wraps."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from paralab.models.config import ModelConfig
from paralab.models.factory import build_model, lm_loss


def _small(**overrides):
    cfg = ModelConfig(vocab_size=31, d_model=16, n_layers=2, heads=2, mode="parallel", **overrides)
    return build_model(cfg)


@pytest.mark.parametrize("cell", ["paragru", "paralstm", "leaky_tanh"])
def test_init_follows_the_recipe_and_constrain_restores_the_bound(cell):
    torch.manual_seed(0)
    model = _small(cell=cell, a_bound=0.3)
    cells = model.cells()
    for c in cells:
        assert torch.all(c.b == 0)
        bound = math.sqrt(3 / (c.d_in // c.heads))  # U(±bound): variance 1/fan_in
        assert c.B.abs().max() <= bound
        assert abs(c.B.std().item() - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3)
        for name in c.recurrent_rows:
            weight = getattr(c, name)
            assert weight.abs().max() <= 0.3
            # N(0, 1/N) truncated at 2σ (σ = 0.25 here), then clamped to 0.3.
            assert 0.15 < weight.std().item() < 0.25, name
    optimizer = torch.optim.SGD(model.parameters(), lr=100.0)
    model(torch.randint(0, 31, (2, 8))).square().mean().backward()
    optimizer.step()
    assert max(c.A.abs().max().item() for c in cells) > 0.3
    model.constrain_()
    for c in cells:
        for name in c.recurrent_rows:
            assert getattr(c, name).abs().max() <= 0.3


def test_newton_stats_keys_and_fallback_count():
    torch.manual_seed(1)
    model = _small(newton_iters=4)
    assert model.newton_stats() == {"newton/fallbacks": 0.0}
    model(torch.randint(0, 31, (2, 20)))
    stats = model.newton_stats()
    assert [k for k in stats if k.startswith("newton/residual_")] == [
        f"newton/residual_{k}" for k in range(5)
    ]
    assert stats["newton/iterations"] == 4 and stats["newton/fallbacks"] == 0
    assert all(isinstance(v, float) for v in stats.values())
    cell = model.cells()[1]
    cell.a_bound = 100.0
    with torch.no_grad():
        cell.A.uniform_(-60, 60)
    model(3 * torch.randint(0, 31, (2, 200)) % 31)
    assert model.newton_stats()["newton/fallbacks"] >= 1


def test_sequential_call_clears_newton_stats():
    """A sequential forward runs no Newton: newton_stats() must not report the residuals of
    an earlier parallel call as if they were this one's."""
    torch.manual_seed(1)
    model = _small()
    tokens = torch.randint(0, 31, (2, 20))
    model(tokens)
    assert "newton/residual_0" in model.newton_stats()
    for cell in model.cells():
        cell.mode = "sequential"
    model(tokens)
    assert model.newton_stats() == {"newton/fallbacks": 0.0}
    assert all(c.last_newton_stats is None for c in model.cells())


def test_transformer_has_no_newton_stats_but_the_same_hooks():
    model = _small(arch="transformer")
    model.constrain_()
    assert model.newton_stats() == {"newton/fallbacks": 0.0}


def test_blocks_are_a_module_list_for_per_block_wrapping():
    model = _small()
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == 2
    assert model.head.weight is model.embedding.weight
    assert _small(tie_embeddings=False).head.weight is not _small().embedding.weight


def test_lm_loss_with_and_without_z_loss():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    targets[0, 0] = -100
    loss, z_term = lm_loss(logits, targets)
    keep = targets.flatten() != -100
    flat = logits.flatten(0, 1)[keep]
    want_ce = nn.functional.cross_entropy(flat, targets.flatten()[keep])
    want_z = torch.logsumexp(flat, -1).square().mean()
    torch.testing.assert_close(loss, want_ce)
    torch.testing.assert_close(z_term, want_z)
    loss_z, _ = lm_loss(logits, targets, z_loss=1e-2)
    torch.testing.assert_close(loss_z, want_ce + 1e-2 * want_z)


def test_lm_loss_with_every_target_ignored_is_zero():
    """A batch of padding only (e.g. the last, ragged one) gives 0 and zero gradients, not
    the NaN of an empty mean, which would poison the accumulated gradient."""
    logits = torch.randn(2, 5, 7, requires_grad=True)
    targets = torch.full((2, 5), -100)
    loss, z_term = lm_loss(logits, targets, z_loss=1e-4)
    assert loss.item() == 0.0 and z_term.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_bf16_autocast_keeps_the_recurrence_in_fp32():
    torch.manual_seed(3)
    model = _small()
    tokens = torch.randint(0, 31, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens)
    assert torch.isfinite(logits).all()
    lm_loss(logits, tokens)[0].backward()
    assert model.newton_stats()["newton/fallbacks"] == 0


def test_config_rejects_bad_newton_fallback_tol():
    with pytest.raises(ValueError, match="newton_fallback_tol"):
        ModelConfig(newton_fallback_tol=0.0)


@pytest.mark.parametrize("cell", ["paragru", "paralstm"])
def test_fsdp2_per_block_wrapping_keeps_gradients(cell):
    script = Path(__file__).with_name("fsdp_check.py")
    done = subprocess.run(
        [sys.executable, str(script), cell], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fsdp == plain" in done.stdout
