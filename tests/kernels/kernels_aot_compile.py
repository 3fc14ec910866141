"""Compile the Triton kernels ahead of time for a Hopper GPU (sm_90) without one.

The CPU interpreter accepts programs the GPU compiler rejects (loop-carried values that
change type, unsupported ops); this catches those on machines with no GPU.  Run as a
script, in a process where TRITON_INTERPRET is unset; prints one OK/FAIL line per kernel
variant and exits non-zero if any failed.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler.compiler import ASTSource  # noqa: E402

import paralab.kernels.newton.common as newton_common  # noqa: E402
import paralab.kernels.newton.gru_triton as gru  # noqa: E402
import paralab.kernels.newton.lstm_triton as lstm  # noqa: E402
import paralab.kernels.scan.triton as scan  # noqa: E402

INTS = {"T", "N", "ROWS", "G", "ITERS"}


def compile_variant(kernel, consts: dict, dtypes: dict | None = None) -> str | None:
    """Compile one specialisation; pointers are fp32 unless ``dtypes`` says otherwise.
    ``consts["num_warps"]``, when there, is the launch option, not a kernel argument."""
    consts = dict(consts)
    num_warps = consts.pop("num_warps", 4)
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in INTS:
            sig[name] = "i32"
        else:
            sig[name] = "*" + (dtypes or {}).get(name, "fp32")
    try:
        triton.compile(
            ASTSource(kernel, sig, consts),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": num_warps},
        )
        return None
    except Exception as e:  # report every failure, not just the first
        return f"{type(e).__name__}: {e}"


def gpu_tiles() -> tuple[dict, dict, dict, dict]:
    """The tiles (BT, BN, num_warps) the launch heuristics pick on a 132-SM GPU: the diagonal
    and 2×2-block scans, the fused kernels' one-launch solve and their chunked path."""
    for module in (scan, newton_common):
        module.num_sms = lambda device: 132  # an H100's or H200's; there is no GPU here
    cuda = torch.device("cuda")
    tile = lambda cfg: {k: cfg[k] for k in ("BT", "BN", "num_warps")}
    p_like = lambda B, T, N: SimpleNamespace(shape=(B, T, 3, N), device=cuda)
    one = newton_common.newton_launch_config(p_like(8, 512, 1024), None, None)
    chunked = newton_common.newton_launch_config(p_like(8, 2**15, 256), None, None)
    assert one["G"] == 1 and chunked["G"] > 1, (one, chunked)
    return (
        tile(scan.scan_launch_config(8, 2**17, 256, False, cuda)),
        tile(scan.scan_launch_config(8, 2**17, 256, True, cuda)),
        tile(one),
        tile(chunked),
    )


def variants():
    diag_tile, block_tile, one_tile, chunked_tile = gpu_tiles()
    diag = dict(**diag_tile, USE_ASSOC=True, ACC=tl.float32, I64=False)
    block = dict(**block_tile, USE_ASSOC=True, ACC=tl.float32, I64=False)
    one = dict(**one_tile, USE_ASSOC=True, I64=False)  # the solve, and its backward
    newton = dict(**chunked_tile, USE_ASSOC=True, I64=False)
    fp64 = dict(ACC=tl.float64)
    i64 = dict(I64=True)  # sequences whose offsets pass int32 (needs_int64)
    yield scan._diag_chunk_reduce_kernel, {**diag, "REVERSE": True, "A_SHIFT": -1}, None
    yield (
        scan._diag_chunk_scan_kernel,
        {
            **diag,
            "REVERSE": False,
            "A_SHIFT": 0,
            "HAS_H0": True,
            "HAS_CARRY": False,
            "GRAD_A": False,
            "HAS_HINIT": False,
        },
        {"a": "bf16", "b": "bf16", "h0": "bf16", "h": "bf16"},
    )
    yield (
        scan._diag_chunk_scan_kernel,
        {
            **diag,
            "REVERSE": True,
            "A_SHIFT": 1,
            "HAS_H0": False,
            "HAS_CARRY": True,
            "GRAD_A": True,
            "HAS_HINIT": True,
        },
        {"a": "bf16", "b": "bf16", "h_fwd": "bf16", "h_init": "bf16", "grad_a": "bf16"},
    )
    # fp64 input accumulates in fp64 (ACC), forward and adjoint.
    yield (
        scan._diag_chunk_scan_kernel,
        {
            **diag,
            **fp64,
            "REVERSE": True,
            "A_SHIFT": 1,
            "HAS_H0": True,
            "HAS_CARRY": True,
            "GRAD_A": True,
            "HAS_HINIT": True,
        },
        dict.fromkeys(("a", "b", "h0", "carry", "h", "h_fwd", "h_init", "grad_a"), "fp64"),
    )
    yield scan._diag_chunk_carry_kernel, {"BN": diag["BN"], "HAS_H0": True, "ACC": tl.float32}, None
    yield (
        scan._block_chunk_reduce_kernel,
        {**block, "REVERSE": False, "A_SHIFT": 0, "TRANSPOSE": False},
        None,
    )
    yield (
        scan._block_chunk_scan_kernel,
        {
            **block,
            "REVERSE": True,
            "A_SHIFT": 1,
            "TRANSPOSE": True,
            "HAS_H0": True,
            "HAS_CARRY": True,
            "GRAD_A": True,
            "HAS_HINIT": True,
        },
        None,
    )
    yield (
        scan._block_chunk_reduce_kernel,
        {**block, **fp64, "REVERSE": True, "A_SHIFT": -1, "TRANSPOSE": True},
        dict.fromkeys(("a", "b", "chunk_a", "chunk_b"), "fp64"),
    )
    yield (
        scan._block_chunk_carry_kernel,
        {"BN": block["BN"], "HAS_H0": True, **fp64},
        dict.fromkeys(("chunk_a", "chunk_b", "h0", "carry"), "fp64"),
    )
    for bn in {block["BN"], newton["BN"]}:  # the scan's, and the fused chunked path's
        yield scan._block_chunk_carry_kernel, {"BN": bn, "HAS_H0": True, "ACC": tl.float32}, None
    yield gru._gru_newton_solve_kernel, {**one, "HAS_H0": True}, {"p": "bf16"}
    yield gru._gru_newton_solve_kernel, {**one, "HAS_H0": False}, None
    yield lstm._lstm_newton_solve_kernel, {**one, "HAS_S0": True}, None
    yield lstm._lstm_newton_solve_kernel, {**one, "HAS_S0": False}, {"p": "bf16"}
    yield (
        gru._gru_newton_bwd_kernel,
        {**one, "STAGE": 1, "HAS_CARRY": False, "HAS_H0": False},
        {"p": "bf16", "grad_p": "bf16"},
    )
    yield (
        lstm._lstm_newton_bwd_kernel,
        {**one, "STAGE": 1, "HAS_CARRY": False, "HAS_S0": True, "HAS_GC": True},
        None,
    )
    yield (
        gru._gru_newton_fwd_kernel,
        {**newton, "STAGE": 1, "HAS_CARRY": False, "FIRST": True, "HAS_H0": True},
        {"p": "bf16"},
    )
    yield (
        gru._gru_newton_fwd_kernel,
        {**newton, "STAGE": 0, "HAS_CARRY": False, "FIRST": False, "HAS_H0": False},
        None,
    )
    yield (
        gru._gru_newton_bwd_kernel,
        {**newton, "STAGE": 1, "HAS_CARRY": True, "HAS_H0": True},
        {"p": "bf16", "grad_p": "bf16"},
    )
    yield (
        lstm._lstm_newton_fwd_kernel,
        {**newton, "STAGE": 1, "HAS_CARRY": True, "FIRST": False, "HAS_S0": True},
        None,
    )
    yield (
        lstm._lstm_newton_bwd_kernel,
        {**newton, "STAGE": 1, "HAS_CARRY": False, "HAS_S0": True, "HAS_GC": True},
        None,
    )
    yield (
        lstm._lstm_newton_bwd_kernel,
        {**newton, "STAGE": 0, "HAS_CARRY": False, "HAS_S0": False, "HAS_GC": False},
        None,
    )
    scan_flags = {"HAS_H0": True, "HAS_CARRY": True, "GRAD_A": True, "HAS_HINIT": True}
    yield (
        scan._diag_chunk_scan_kernel,
        {**diag, **i64, "REVERSE": True, "A_SHIFT": 1, **scan_flags},
        None,
    )
    yield (
        scan._block_chunk_scan_kernel,
        {**block, **i64, "REVERSE": True, "A_SHIFT": 1, "TRANSPOSE": True, **scan_flags},
        None,
    )
    yield scan._diag_chunk_reduce_kernel, {**diag, **i64, "REVERSE": False, "A_SHIFT": 0}, None
    yield gru._gru_newton_solve_kernel, {**one, **i64, "HAS_H0": True}, None
    yield lstm._lstm_newton_solve_kernel, {**one, **i64, "HAS_S0": True}, None
    yield (
        gru._gru_newton_bwd_kernel,
        {**newton, **i64, "STAGE": 1, "HAS_CARRY": True, "HAS_H0": True},
        None,
    )
    yield (
        lstm._lstm_newton_bwd_kernel,
        {**newton, **i64, "STAGE": 1, "HAS_CARRY": True, "HAS_S0": True, "HAS_GC": True},
        None,
    )


def main() -> int:
    failures = 0
    for kernel, consts, dtypes in variants():
        err = compile_variant(kernel, consts, dtypes)
        failures += err is not None
        print(
            f"{'FAIL' if err else 'OK'} {kernel.__name__} {consts}" + (f"\n  {err}" if err else ""),
            flush=True,
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
