"""TokenBatches and val_batches: shapes, determinism, disjoint ranks, the union property, resume.

The token array is ``arange``, so ``inputs[i, 0] // seq_len`` names the window a row came from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from paralab.platform.data import DataError, TokenBatches, val_batches

SEQ_LEN = 7  # odd on purpose: windows never line up with powers of two
N_TOKENS = 1_000  # 142 windows of 7 (+1 target); not a multiple of anything used here


@pytest.fixture
def tokens():
    return np.arange(N_TOKENS, dtype=np.uint32)


def _windows(inputs: torch.Tensor) -> list[int]:
    return (inputs[:, 0] // SEQ_LEN).tolist()


def _take(it, n):
    return [next(it) for _ in range(n)]


def _ranks(tokens, world_size, batch_size, seed=0, **kw):
    return [TokenBatches(tokens, SEQ_LEN, batch_size, rank=r, world_size=world_size, seed=seed, **kw)
            for r in range(world_size)]


@pytest.mark.parametrize("batch_size", [1, 5])
def test_shapes_and_shifted_targets(tokens, batch_size):
    inputs, targets = next(TokenBatches(tokens, SEQ_LEN, batch_size))
    assert inputs.shape == targets.shape == (batch_size, SEQ_LEN)
    assert inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(targets, inputs + 1)  # arange: the next token is one more
    assert torch.all(inputs[:, 0] % SEQ_LEN == 0)


def test_seq_len_one_and_the_last_window(tokens):
    it = TokenBatches(tokens[:11], 1, 10)  # 10 windows, one batch per epoch
    inputs, targets = next(it)
    assert sorted(inputs[:, 0].tolist()) == list(range(10)) and targets.max() == 10


def test_deterministic_and_seeded(tokens):
    a = _take(TokenBatches(tokens, SEQ_LEN, 4, seed=3), 40)
    b = _take(TokenBatches(tokens, SEQ_LEN, 4, seed=3), 40)
    c = _take(TokenBatches(tokens, SEQ_LEN, 4, seed=4), 40)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not all(torch.equal(x[0], z[0]) for x, z in zip(a, c))


@pytest.mark.parametrize("world_size,batch_size", [(2, 3), (3, 1), (4, 5)], ids=lambda v: str(v))
def test_ranks_are_disjoint_and_an_epoch_never_repeats(tokens, world_size, batch_size):
    ranks = _ranks(tokens, world_size, batch_size, seed=1)
    steps = ranks[0].steps_per_epoch
    assert steps == (N_TOKENS - 1) // SEQ_LEN // (world_size * batch_size)
    seen = [w for it in ranks for inputs, _ in _take(it, steps) for w in _windows(inputs)]
    assert len(seen) == len(set(seen)) == steps * world_size * batch_size
    # the next epoch is a different order of the same windows
    assert all(it.epoch == 1 and it.step == 0 for it in ranks)
    second = [w for it in ranks for inputs, _ in _take(it, steps) for w in _windows(inputs)]
    assert second != seen and len(set(second)) == len(second)


@pytest.mark.parametrize("world_size,batch_size", [(2, 1), (2, 4), (3, 2), (5, 3)],
                         ids=lambda v: str(v))
def test_union_of_ranks_equals_single_process(tokens, world_size, batch_size):
    """Rank-major concatenation of step s equals world_size=1 with batch W*b at step s."""
    single = TokenBatches(tokens, SEQ_LEN, world_size * batch_size, seed=7)
    ranks = _ranks(tokens, world_size, batch_size, seed=7)
    for _ in range(single.steps_per_epoch + 3):  # across an epoch boundary
        expected = next(single)
        parts = [next(it) for it in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), expected[0])
        assert torch.equal(torch.cat([p[1] for p in parts]), expected[1])


@pytest.mark.parametrize("consumed", [0, 1, 5, 28, 30], ids=lambda k: f"k{k}")
def test_resume_continues_exactly(tokens, consumed):
    """Consume k batches, save, load into a fresh iterator: the next batches are unchanged."""
    uninterrupted = TokenBatches(tokens, SEQ_LEN, 5, seed=11)  # 28 steps per epoch
    expected = _take(uninterrupted, consumed + 6)[consumed:]
    first = TokenBatches(tokens, SEQ_LEN, 5, seed=11)
    _take(first, consumed)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    resumed = TokenBatches(tokens, SEQ_LEN, 5, seed=11)
    resumed.load_state_dict(state)
    for got, want in zip(_take(resumed, 6), expected):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert resumed.tokens_seen == (consumed + 6) * 5 * SEQ_LEN


def test_resume_on_another_world_size_with_the_same_global_batch(tokens):
    before = _ranks(tokens, 2, 2, seed=5)
    for it in before:
        _take(it, 9)
    states = [it.state_dict() for it in before]
    assert states[0] == states[1]  # the position is the same on every rank
    single = TokenBatches(tokens, SEQ_LEN, 4, seed=5)
    _take(single, 9)
    after = _ranks(tokens, 4, 1, seed=5)
    for it in after:
        it.load_state_dict(states[0])
    for _ in range(4):
        assert torch.equal(torch.cat([next(it)[0] for it in after]), next(single)[0])


@pytest.mark.parametrize("change", [{"seq_len": 8}, {"batch_size": 3}, {"seed": 1}],
                         ids=["seq_len", "global_batch_size", "seed"])
def test_resume_refuses_another_layout(tokens, change):
    state = TokenBatches(tokens, SEQ_LEN, 4).state_dict()
    kw = {"seq_len": SEQ_LEN, "batch_size": 4, "seed": 0} | change
    other = TokenBatches(tokens, kw["seq_len"], kw["batch_size"], seed=kw["seed"])
    with pytest.raises(DataError, match="cannot resume the data position"):
        other.load_state_dict(state)


def test_val_batches_are_the_same_every_time(tokens):
    first = list(val_batches(tokens, SEQ_LEN, 4, 3))
    again = list(val_batches(tokens, SEQ_LEN, 4, 3))
    assert len(first) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert _windows(first[0][0]) == [0, 1, 2, 3]  # in order, unshuffled


@pytest.mark.parametrize("world_size,batch_size", [(2, 2), (3, 1)], ids=lambda v: str(v))
def test_val_batches_union_property(tokens, world_size, batch_size):
    single = list(val_batches(tokens, SEQ_LEN, world_size * batch_size, 5))
    ranks = [list(val_batches(tokens, SEQ_LEN, batch_size, 5, rank=r, world_size=world_size))
             for r in range(world_size)]
    for step, expected in enumerate(single):
        assert torch.equal(torch.cat([ranks[r][step][0] for r in range(world_size)]), expected[0])


def test_val_batches_wrap_around(tokens):
    batches = list(val_batches(tokens[:36], SEQ_LEN, 3, 2))  # 5 windows
    assert [_windows(b[0]) for b in batches] == [[0, 1, 2], [3, 4, 0]]


def test_too_small_for_one_batch(tokens):
    with pytest.raises(DataError, match=r"fewer than one global batch of 150 \(3 rank\(s\) x 50\)"):
        TokenBatches(tokens, SEQ_LEN, 50, rank=0, world_size=3)
    with pytest.raises(DataError, match=r"validation split has 5 tokens.*data.seq_len=7"):
        list(val_batches(tokens[:5], SEQ_LEN, 1, 1))
    with pytest.raises(DataError, match="rank must be in"):
        TokenBatches(tokens, SEQ_LEN, 1, rank=2, world_size=2)


def test_prepared_bible_batches_decode_to_scripture(small_bible, cache):
    from paralab.platform.data import prepare

    data = prepare(small_bible, cache)
    inputs, targets = next(data.train_batches(16, 4, rank=1, world_size=2, seed=0))
    assert inputs.shape == (4, 16) and int(inputs.max()) < data.vocab_size
    text = data.tokenizer().decode(np.asarray(data.train))
    for row in inputs:
        assert data.tokenizer().decode(row) in text
    val = list(data.val_batches(2, 16, 4))
    assert len(val) == 2 and torch.equal(val[0][1][:, :-1], val[0][0][:, 1:])
