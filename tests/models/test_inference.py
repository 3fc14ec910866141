"""Token-by-token inference equals the parallel forward, for every block type; generation
reads the prompt in parallel and continues with O(1) steps."""

from __future__ import annotations

import pytest
import torch

from paralab.models.config import ModelConfig
from paralab.models.lm import build_model

VARIANTS = {
    "paragru": dict(cell="paragru"),
    "paralstm": dict(cell="paralstm"),
    "linear": dict(cell="linear"),
    "leaky_tanh": dict(cell="leaky_tanh"),
    "paragru-noconv-nomlp-untied": dict(
        cell="paragru", conv_kernel=0, mlp_ratio=0, tie_embeddings=False, d_hidden=24
    ),
    "paralstm-conv2": dict(cell="paralstm", conv_kernel=2),
    "transformer": dict(arch="transformer"),
}


def _model(variant: str, mode: str = "parallel"):
    cfg = ModelConfig(
        vocab_size=29,
        d_model=16,
        n_layers=2,
        heads=2,
        max_seq_len=64,
        mode=mode,
        newton_iters=8,
        **VARIANTS[variant],
    )
    return build_model(cfg).double().eval()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seq_len", [1, 3, 13])
def test_step_by_step_equals_parallel_forward(variant, seq_len):
    torch.manual_seed(seq_len)
    model = _model(variant)
    tokens = torch.randint(0, 29, (3, seq_len))
    with torch.no_grad():
        want = model(tokens)
        state, got = model.init_state(3), []
        for t in range(seq_len):
            logits, state = model.step(tokens[:, t], state)
            got.append(logits)
    torch.testing.assert_close(torch.stack(got, dim=1), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", ["paragru", "paralstm", "transformer"])
def test_prefill_state_continues_like_the_full_forward(variant):
    """forward(return_state) on a prefix, then steps, equals the forward of the whole."""
    torch.manual_seed(0)
    model = _model(variant)
    tokens = torch.randint(0, 29, (2, 12))
    with torch.no_grad():
        want = model(tokens)
        logits, state = model(tokens[:, :5], return_state=True)
        got = [logits]
        for t in range(5, 12):
            step_logits, state = model.step(tokens[:, t], state)
            got.append(step_logits.unsqueeze(1))
    torch.testing.assert_close(torch.cat(got, dim=1), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", ["paragru", "transformer"])
def test_greedy_generation_is_the_argmax_of_the_forward(variant):
    torch.manual_seed(1)
    model = _model(variant)
    prompt = torch.randint(0, 29, (2, 4))
    out = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 10) and torch.equal(out[:, :4], prompt)
    with torch.no_grad():
        logits = model(out[:, :-1])
    assert torch.equal(logits[:, 3:].argmax(-1), out[:, 4:])


def test_sampling_respects_top_k_and_generator():
    torch.manual_seed(2)
    model = _model("paralstm")
    prompt = torch.randint(0, 29, (4, 3))
    draws = [
        model.generate(
            prompt, 5, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(s)
        )
        for s in (0, 1)
    ]
    greedy = model.generate(prompt, 5, temperature=0)
    assert torch.equal(draws[0], greedy) and torch.equal(draws[1], greedy)  # top-1 is greedy
    a, b = (
        model.generate(prompt, 5, top_k=10, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    )
    assert torch.equal(a, b)


def test_cell_step_equals_cell_forward():
    from paralab.models.registry import get_cell

    torch.manual_seed(3)
    cell = get_cell("paralstm")(4, 6, 2).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    with torch.no_grad():
        want, want_final = cell(x, mode="sequential")
        state, got = cell.init_state(2), []
        for t in range(9):
            y, state = cell.step(x[:, t], state)
            got.append(y)
    torch.testing.assert_close(torch.stack(got, 1), want, rtol=0, atol=1e-14)
    torch.testing.assert_close(state, want_final, rtol=0, atol=1e-14)
