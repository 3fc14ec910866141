"""The GPU launch heuristics pick the tiles measured best, checked without a GPU.

The heuristics are plain Python over (B, T, N) and the SM count; here the device is a
132-SM CUDA device in name only, so the choices a GPU run would make are visible on CPU.
The measurements behind them are in docs/benchmarks.md (benchmarks/launch_configs.py).
"""

from types import SimpleNamespace

import pytest
import torch

SMS = 132  # an H100's or H200's
CUDA = torch.device("cuda")  # a name: nothing is allocated on it


@pytest.fixture
def gpu_heuristics(monkeypatch):
    import paralab.kernels.newton.common as common
    import paralab.kernels.scan.triton as scan

    for module in (scan, common):
        monkeypatch.setattr(module, "num_sms", lambda device: SMS)
        monkeypatch.setattr(module, "interpreting", lambda: False)
    return SimpleNamespace(scan=scan, common=common)


def p_like(B, T, N):
    return SimpleNamespace(shape=(B, T, 3, N), device=CUDA)


def tile(cfg):
    return {k: cfg[k] for k in ("BT", "BN", "num_warps")}


def check_split(cfg, B, T, N):
    assert cfg["ROWS"] % cfg["BT"] == 0
    assert (cfg["G"] - 1) * cfg["ROWS"] < T <= cfg["G"] * cfg["ROWS"]
    assert cfg["n_blocks"] == -(-N // cfg["BN"])


def test_the_paper_setting_is_solved_in_one_launch_with_the_narrow_tile(gpu_heuristics):
    common = gpu_heuristics.common
    cfg = common.newton_launch_config(p_like(8, 512, 1024), None, None)
    assert cfg["G"] == 1 and tile(cfg) == common.ONE_LAUNCH_TILE
    check_split(cfg, 8, 512, 1024)


@pytest.mark.parametrize(
    "B, T, N, one_launch",
    [
        (8, 512, 256, True),  # 16 tiles: short enough for one launch on a GPU not yet full
        (4, 512, 512, True),
        (8, 2048, 256, False),  # 64 tiles, 64 programs: split time instead
        (8, 2**17, 256, False),
        (64, 4096, 1024, True),  # 2048 programs already fill the GPU
        (1, 1, 5, True),
    ],
)
def test_one_launch_or_chunked(gpu_heuristics, B, T, N, one_launch):
    common = gpu_heuristics.common
    cfg = common.newton_launch_config(p_like(B, T, N), None, None)
    assert (cfg["G"] == 1) == one_launch
    want = common.ONE_LAUNCH_TILE if cfg["G"] == 1 else common.CHUNKED_TILE
    assert tile(cfg) == {**want, "BT": min(want["BT"], max(2, 1 << (T - 1).bit_length()))}
    check_split(cfg, B, T, N)


def test_a_given_chunk_size_splits_time_with_the_chunked_tile(gpu_heuristics):
    common = gpu_heuristics.common
    cfg = common.newton_launch_config(p_like(2, 1000, 64), 100, None)
    assert tile(cfg) == common.CHUNKED_TILE
    assert cfg["ROWS"] == 128 and cfg["G"] == 8  # 100 rounded up to whole 32-row tiles
    check_split(cfg, 2, 1000, 64)


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("B, T, N", [(8, 2**17, 256), (4, 8192, 512), (1, 100, 3), (64, 512, 4096)])
def test_scan_tiles_and_time_split(gpu_heuristics, block, B, T, N):
    scan = gpu_heuristics.scan
    cfg = scan.scan_launch_config(B, T, N, block, CUDA)
    want = {"BT": 16, "BN": 32, "num_warps": 2} if block else {"BT": 64, "BN": 64, "num_warps": 4}
    assert tile(cfg) == {**want, "BT": min(want["BT"], max(2, 1 << (T - 1).bit_length()))}
    check_split(cfg, B, T, N)
    programs = B * cfg["n_blocks"] * cfg["G"]
    n_tiles = -(-T // cfg["BT"])
    # Time is split until the target is met, or into single tiles when it cannot be.
    target = scan.SCAN_PROGRAMS_PER_SM * SMS
    assert programs >= min(target, B * cfg["n_blocks"] * n_tiles) // 2
    if B * cfg["n_blocks"] >= target:
        assert cfg["G"] == 1  # the GPU is full without a split: no reduce pass


def test_the_interpreter_keeps_one_group_and_its_own_tiles():
    from paralab.kernels.newton.common import newton_launch_config

    p = torch.zeros(2, 300, 3, 6)
    cfg = newton_launch_config(p, None, None)
    assert cfg["G"] == 1 and cfg["num_warps"] == 1
    assert newton_launch_config(p, 64, None)["G"] == 5
