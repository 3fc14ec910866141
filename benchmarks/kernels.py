"""Kernel benchmark: correctness at realistic sizes on GPU, then timings side by side.

Part 1, correctness (GPU): every kernel against its reference on outputs and gradients —
the Triton scans (diagonal and 2×2 block, both directions, fp32 and bf16) against the
PyTorch scan in fp64, the fused Newton kernels against the PyTorch Newton reference
(3 iterations) and, converged, against the sequential cell, and flash-linear-attention's
HGRN against our diagonal scan when ``fla`` is installed.

Part 2, the paper's setting (arXiv 2510.21450, Fig. 1): L = 512, CUDA events, 20 warm-up
runs then the minimum of 100, 3 Newton iterations, the sequential baseline being the same
cell stepped in a Python loop under ``torch.compile``.

Part 3, the grid: forward and forward+backward for T = 2^9 … 2^17 over (B, N), per cell:

    sequential      the cell's step (``torch.compile``) in a Python loop; measured up to
                    ``--seq-max-t``, linearly extrapolated beyond (flagged)
    parallel_torch  Newton with PyTorch Jacobians and the PyTorch (Hillis–Steele) scan
    parallel_triton Newton with PyTorch Jacobians and the Triton scan
    fused_triton    the fused Triton Newton kernels
    cudnn           torch.nn.GRU / nn.LSTM with input size N (dense recurrence: a yardstick,
                    not the same cell)
    fla_hgrn        flash-linear-attention's ``chunk_hgrn`` (a linear diagonal recurrence),
                    when installed

and the bare scans (diagonal: torch, triton, fla chunk/fused_recurrent HGRN; 2×2 block:
torch, triton) with achieved memory bandwidth against the device's peak.

Every cell of work runs in try/except: an error is recorded in the JSON and the run goes
on.  A global time budget (``--budget-s``) skips what is left rather than overrun.

    python benchmarks/kernels.py --out bench/kernels              # quick grid, ~5 min on H100/H200
    python benchmarks/kernels.py --full --out bench/kernels       # every T and more (B, N)
    python benchmarks/kernels.py --smoke --out /tmp/kbench        # tiny, CPU, TRITON_INTERPRET=1

Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path

# Peak HBM bandwidth in GB/s by device name, used when the clock/bus query is unavailable.
PEAK_BANDWIDTH_GBS = {
    "H200": 4800.0,
    "H100 SXM": 3350.0,
    "H100 80GB HBM3": 3350.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100-SXM4-40GB": 1555.0,
    "A100": 1555.0,
}

# torch.compile options for the sequential step: dynamic shapes compile once per cell
# instead of once per (B, N) in the grid (the step is launch-bound either way).
SEQ_COMPILE_OPTS: dict = {"dynamic": True}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/kernels"))
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="bounded grid (the default)")
    mode.add_argument("--full", action="store_true", help="every T = 2^9..2^17 and more (B, N)")
    mode.add_argument("--smoke", action="store_true", help="tiny CPU run under TRITON_INTERPRET=1")
    ap.add_argument(
        "--budget-s", type=float, default=None, help="stop timing after this many seconds"
    )
    ap.add_argument(
        "--seq-max-t", type=int, default=None, help="longest T the sequential loop is timed at"
    )
    ap.add_argument("--cells", default="gru,lstm", help="comma-separated: gru, lstm")
    ap.add_argument("--no-compile", action="store_true", help="sequential baseline in eager mode")
    ap.add_argument("--paper-bn", default="8,1024", help="B,N for the paper's L=512 setting")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Timing and bookkeeping
# ---------------------------------------------------------------------------------------------


class Clock:
    """Min-of-n timing with CUDA events on GPU (perf_counter on CPU)."""

    def __init__(self, torch, device, max_reps: int = 50):
        self.torch, self.cuda, self.max_reps = torch, device.type == "cuda", max_reps

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def once(self, fn) -> float:
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def measure(self, fn, warmup: int | None = None, reps: int | None = None, target_ms=200.0):
        """(min ms, median ms, reps).  Without explicit counts, warm up twice and repeat as
        often as fits in ``target_ms`` (3 to 50 times), judged from the second call: the
        first one includes Triton's JIT and autotuning."""
        if warmup is None:
            self.once(fn)
            second = self.once(fn)
            warmup = 2
            reps = reps or int(min(self.max_reps, max(3, target_ms / max(second, 1e-3))))
            reps = min(reps, self.max_reps)
        else:
            for _ in range(warmup):
                fn()
            self.sync()
        times = sorted(self.once(fn) for _ in range(reps))
        return times[0], times[len(times) // 2], reps


class Recorder:
    """The run's records, its time budget, and the share of it the current part may use.

    ``on_record`` is called after every record (the script saves there), so a run killed
    from outside loses at most the cell of work in flight."""

    def __init__(self, budget_s: float, on_record=None):
        self.t0 = time.time()
        self.budget_s = budget_s
        self.part_end = math.inf
        self.on_record = on_record
        self.records: list[dict] = []

    def left(self) -> float:
        """Seconds left to the current part: the run's budget, capped by the part's share."""
        return min(self.budget_s - (time.time() - self.t0), self.part_end - time.time())

    def start_part(self, share: float = 1.0) -> None:
        """Let the next part use at most ``share`` of the time left, so that a slow part
        (the paper setting's ``torch.compile``) cannot starve the ones after it."""
        self.part_end = math.inf
        self.part_end = time.time() + share * self.left()

    def add(self, rec: dict) -> None:
        self.records.append(rec)
        if self.on_record is not None:
            self.on_record()

    def run(self, section: str, key: dict, fn, need_s: float = 5.0):
        """Run one benchmark cell; record its result dict, an error, or a skip."""
        rec = {"section": section, **key}
        if self.left() < need_s:
            rec["skipped"] = "time budget"
        else:
            try:
                rec.update(fn())
            except Exception as e:  # one failing cell must not end the run
                rec["error"] = f"{type(e).__name__}: {e}"
                rec["traceback"] = traceback.format_exc(limit=4)
                if "out of memory" in str(e).lower():
                    import torch

                    torch.cuda.empty_cache()
        self.add(rec)
        status = (
            "skipped"
            if "skipped" in rec
            else ("ERROR " + rec["error"][:120] if "error" in rec else "ok")
        )
        print(f"[{time.time() - self.t0:6.1f}s] {section} {key} {status}", flush=True)
        return rec


def peak_bandwidth_gbs(torch, device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "cpu"
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "memory_clock_rate x bus width"
    for name, gbs in PEAK_BANDWIDTH_GBS.items():
        if name in props.name:
            return gbs, f"table ({name})"
    return None, "unknown device"


def max_errors(got, want) -> tuple[float, float]:
    diff = (got.detach().double() - want.detach().double()).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = want.detach().double().abs().max().item() if want.numel() else 0.0
    return max_abs, max_abs / max(scale, 1e-30)


# Tolerance (absolute, or relative to max|reference|) per input dtype: the rounding of the
# outputs to that dtype, plus the accumulation error, which grows as sqrt(T).  Every kernel
# accumulates in fp32 (fp64 for fp64), so a bf16 result's error is its final rounding and
# does not grow with T: scaling 1.6e-2 by sqrt(8192) would pass any bf16 error below 145%.
ROUNDING = {"float64": 0.0, "float32": 0.0, "bfloat16": 1.6e-2}
ACCUMULATION = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 2e-5}


def within(max_abs: float, rel: float, dtype_name: str, T: int) -> bool:
    tol = ROUNDING[dtype_name] + ACCUMULATION[dtype_name] * math.sqrt(T)
    return math.isfinite(max_abs) and (max_abs <= tol or rel <= tol)


# ---------------------------------------------------------------------------------------------
# Part 1: correctness
# ---------------------------------------------------------------------------------------------


def correctness(rec: Recorder, torch, device, sizes: dict, fla):
    from paralab.kernels.newton import (
        gru_sequential,
        lstm_sequential,
        newton_gru_fused,
        newton_gru_reference,
        newton_lstm_fused,
        newton_lstm_reference,
    )
    from paralab.kernels.scan import linear_scan

    # Inputs are drawn on the device: a CPU generator plus a copy costs minutes at these sizes.
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, scale=1.0, dtype=torch.float32):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype=dtype)

    def uniform(*shape):
        return torch.rand(*shape, generator=gen, device=device)

    B, T, N = sizes["scan"]
    for block in (False, True):
        for reverse in (False, True):
            for dtype in (torch.float32, torch.bfloat16):

                def check_scan(block=block, reverse=reverse, dtype=dtype):
                    shape = (B, T, N, 2, 2) if block else (B, T, N)
                    a = (uniform(*shape) - 0.5) if block else (uniform(*shape) * 1.9 - 0.95)
                    a = a.to(dtype=dtype).requires_grad_()
                    b = rand(*((B, T, N, 2) if block else (B, T, N)), dtype=dtype).requires_grad_()
                    h0 = rand(*((B, N, 2) if block else (B, N)), dtype=dtype).requires_grad_()
                    out = linear_scan(a, b, h0, reverse=reverse, backend="triton")
                    g = rand(*out.shape, dtype=out.dtype)
                    grads = torch.autograd.grad(out, (a, b, h0), g)
                    ref_in = [x.detach().double().requires_grad_() for x in (a, b, h0)]
                    ref = linear_scan(*ref_in, reverse=reverse, backend="torch")
                    ref_grads = torch.autograd.grad(ref, ref_in, g.double())
                    res = {}
                    ok = True
                    for name, x, y in zip(
                        ("h", "grad_a", "grad_b", "grad_h0"), (out, *grads), (ref, *ref_grads)
                    ):
                        m, r = max_errors(x, y)
                        res[f"{name}_max_abs"], res[f"{name}_rel"] = m, r
                        ok &= within(m, r, str(dtype).split(".")[-1], T)
                    torch.cuda.synchronize() if device.type == "cuda" else None
                    res["pass"] = bool(ok)
                    return res

                rec.run("correctness", {"kernel": "scan_triton", "block": block, "reverse": reverse,
                                        "dtype": str(dtype).split(".")[-1], "B": B, "T": T, "N": N},
                        check_scan)  # fmt: skip

    B, T, N = sizes["newton"]
    for cell in ("gru", "lstm"):
        for dtype in (torch.float32, torch.bfloat16):

            def check_newton(cell=cell, dtype=dtype):
                p = rand(B, T, 3, N, dtype=dtype).requires_grad_()
                A = ((uniform(3, N) * 2 - 1) * 0.5).to(dtype=dtype).requires_grad_()
                C = ((uniform(2, N) * 2 - 1) * 0.5).to(dtype=dtype).requires_grad_()
                h0 = rand(B, N, dtype=dtype).requires_grad_()
                leaves = (p, A, h0) if cell == "gru" else (p, A, C, h0)
                if cell == "gru":
                    fused = newton_gru_fused(p, A, h0)
                    ref = newton_gru_reference(p, A, h0)
                else:
                    fused = newton_lstm_fused(p, A, C, h0)
                    ref = newton_lstm_reference(p, A, C, h0)
                g = rand(*fused.shape, dtype=fused.dtype)
                gf = torch.autograd.grad(fused, leaves, g)
                gr = torch.autograd.grad(ref, leaves, g)
                names = (
                    ("h", "grad_p", "grad_A", "grad_h0")
                    if cell == "gru"
                    else ("h", "grad_p", "grad_A", "grad_C", "grad_h0")
                )
                res, ok = {}, True
                for name, x, y in zip(names, (fused, *gf), (ref, *gr)):
                    m, r = max_errors(x, y)
                    res[f"{name}_max_abs"], res[f"{name}_rel"] = m, r
                    ok &= within(m, r, str(dtype).split(".")[-1], T)
                # Converged (6 iterations) against the sequential loop in fp64.
                Ts = min(T, sizes["seq_check_T"])
                sl = lambda x: x[:, :Ts] if x.dim() >= 3 else x
                fp64 = [sl(x).detach().double().requires_grad_() for x in leaves]
                if cell == "gru":
                    conv = newton_gru_fused(sl(p), A, h0, newton_iters=6)
                    seq = gru_sequential(*fp64)
                else:
                    conv = newton_lstm_fused(sl(p), A, C, h0, newton_iters=6)
                    seq = lstm_sequential(fp64[0], fp64[1], fp64[2], fp64[3])[0]
                m, r = max_errors(conv, seq)
                res["h_vs_sequential_max_abs"], res["h_vs_sequential_rel"] = m, r
                ok &= within(m, r, str(dtype).split(".")[-1], Ts)
                res["pass"] = bool(ok)
                return res

            rec.run("correctness", {"kernel": f"newton_{cell}_fused", "dtype": str(dtype).split(".")[-1],
                                    "B": B, "T": T, "N": N}, check_newton)  # fmt: skip

    if fla is not None:
        B, T, N = sizes["scan"]

        def check_fla():
            x = rand(B, T, N)
            g = -uniform(B, T, N)  # log decay
            out = fla["chunk_hgrn"](x, g)
            out = out[0] if isinstance(out, tuple) else out
            ref = linear_scan(g.exp(), x, backend="triton")
            m, r = max_errors(out.float(), ref)
            return {"max_abs": m, "rel": r, "pass": within(m, r, "float32", T)}

        rec.run(
            "correctness",
            {"kernel": "fla_chunk_hgrn_vs_triton_scan", "B": B, "T": T, "N": N},
            check_fla,
        )


# ---------------------------------------------------------------------------------------------
# Parts 2 and 3: timings
# ---------------------------------------------------------------------------------------------


COMPILE_FAILURES: list[str] = []


def compiled_or_eager(torch, fn):
    """``torch.compile(fn)``, falling back to eager (and saying so in the results) if
    compilation fails on this machine."""
    compiled = torch.compile(fn, **SEQ_COMPILE_OPTS)
    state = {"fn": compiled}

    def call(*args):
        try:
            return state["fn"](*args)
        except Exception as e:
            if state["fn"] is fn:
                raise
            COMPILE_FAILURES.append(f"{fn.__name__}: {type(e).__name__}: {e}"[:300])
            state["fn"] = fn
            return fn(*args)

    return call


def make_runners(torch, device, cell: str, B: int, T: int, N: int, compile_seq: bool, fla,
                 max_t: dict | None = None):  # fmt: skip
    """name -> (forward fn, forward+backward fn) for one cell and size.

    Inputs are drawn on the device, once, outside the timed region; the backward takes
    gradients of every input with ``torch.autograd.grad`` (nothing accumulates across
    repetitions).  Implementations whose ``max_t`` is below T are not built (their inputs
    would only cost memory), nor fla's unless ``fla`` is given: its kernels do not depend on
    the cell, so the grid times them once per size."""
    from paralab.kernels.newton import (
        gru_cell,
        lstm_cell,
        newton_gru_fused,
        newton_gru_reference,
        newton_lstm_fused,
        newton_lstm_reference,
    )
    from paralab.kernels.newton.common import newton_launch_config
    from paralab.kernels.scan.triton import scan_launch_config

    max_t = max_t or {}
    wanted = lambda name: T <= max_t.get(name, T)
    gen = torch.Generator(device=device).manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen, device=device)
    uniform = lambda *shape: torch.rand(*shape, generator=gen, device=device)
    p = randn(B, T, 3, N).requires_grad_()
    A = ((uniform(3, N) * 2 - 1) * 0.5).requires_grad_()
    C = ((uniform(2, N) * 2 - 1) * 0.5).requires_grad_()
    weights = (A,) if cell == "gru" else (A, C)
    runners = {}

    if wanted("sequential"):
        # The step under torch.compile, looped over time in Python.  Its input is time-major
        # so that every step sees the same contiguous [B, 3, N] slice, whatever T is (strides
        # that change with T would make torch.compile recompile).
        p_seq = randn(T, B, 3, N).requires_grad_()
        step = gru_cell if cell == "gru" else lstm_cell
        if compile_seq:
            step = compiled_or_eager(torch, step)

        def sequential():
            outs = []
            if cell == "gru":
                h = p_seq.new_zeros(B, N)
                for t in range(T):
                    h = step(p_seq[t], A, h)
                    outs.append(h)
            else:
                s = p_seq.new_zeros(B, N, 2)
                for t in range(T):
                    s = step(p_seq[t], A, C, s)
                    outs.append(s[..., 1])
            return torch.stack(outs, 1)

        runners["sequential"] = (sequential, (p_seq, *weights))

    reference = newton_gru_reference if cell == "gru" else newton_lstm_reference
    fused = newton_gru_fused if cell == "gru" else newton_lstm_fused
    runners["parallel_torch"] = (lambda: reference(p, *weights, scan_backend="torch"), (p, *weights))
    runners["parallel_triton"] = (lambda: reference(p, *weights, scan_backend="triton"), (p, *weights))
    runners["fused_triton"] = (lambda: fused(p, *weights), (p, *weights))
    # The per-iteration chunked path beside the default (every iteration in one launch
    # wherever time is not split): time split as the bare scan splits it, or in two groups
    # where that is one; left out where it is the default's split, which it would time twice.
    chunked_rows = scan_launch_config(B, T, N, True, device)["ROWS"]
    if math.ceil(T / chunked_rows) == 1:
        chunked_rows = math.ceil(T / 2)
    if newton_launch_config(p, chunked_rows, None)["G"] != newton_launch_config(p, None, None)["G"]:
        runners["fused_triton_chunked"] = (
            lambda: fused(p, *weights, chunk_size=chunked_rows), (p, *weights)
        )

    if wanted("cudnn"):
        rnn = (torch.nn.GRU if cell == "gru" else torch.nn.LSTM)(N, N, batch_first=True)
        rnn = rnn.to(device)
        x = randn(B, T, N).requires_grad_()
        runners["cudnn"] = (lambda: rnn(x)[0], (x, *rnn.parameters()))
    if fla is not None:
        xg = randn(B, T, N).requires_grad_()
        gg = (-uniform(B, T, N)).requires_grad_()  # log decays

        def hgrn(kernel):
            def run():
                out = fla[kernel](xg, gg)
                return out[0] if isinstance(out, tuple) else out

            return run

        runners["fla_hgrn"] = (hgrn("chunk_hgrn"), (xg, gg))
        if fla.get("fused_recurrent_hgrn") is not None:
            # The single-pass kernel: the baseline the fused Newton forward is held to
            # (target: at most 3x its time, the last table of results.md).
            runners["fla_fused_recurrent_hgrn"] = (hgrn("fused_recurrent_hgrn"), (xg, gg))

    def with_backward(fwd, inputs):
        cotangent = []  # made on the first call, outside the timed ones

        def run():
            out = fwd()
            if not cotangent:
                cotangent.append(torch.ones_like(out))
            torch.autograd.grad(out, inputs, cotangent[0], allow_unused=True)

        return run

    return {name: (fn, with_backward(fn, inputs)) for name, (fn, inputs) in runners.items()}


def fused_bytes(cell: str, B: int, T: int, N: int, iters: int = 3) -> int:
    """Minimum HBM traffic of the fused forward: per iteration read p (fp32, 3 rows) and the
    iterate, write the new iterate (the first iteration builds its iterate from p)."""
    state = 1 if cell == "gru" else 2
    per_iter_read = 3 * B * T * N * 4 + state * B * T * N * 4
    return iters * per_iter_read - state * B * T * N * 4 + iters * state * B * T * N * 4


def time_cells(rec, clock, torch, device, cells, grid, ts, max_t, compile_seq, fla, peak):
    """``max_t`` maps the step-by-step implementations (sequential, cudnn) to the longest T
    they are timed at; beyond it their time is extrapolated linearly from that T."""
    per_step: dict = {}
    # Cells innermost, so a run cut short by the budget loses the longest T, not a cell.
    for B, N in grid:
        for T in ts:
            for cell in cells:
                key = {"cell": cell, "B": B, "T": T, "N": N}
                runners = {}

                def build(cell=cell, B=B, T=T, N=N, runners=runners):
                    with_fla = fla if cell == cells[0] else None  # fla's time has no cell
                    runners.update(
                        make_runners(torch, device, cell, B, T, N, compile_seq, with_fla, max_t)
                    )
                    return {}

                r = rec.run("grid_setup", key, build)
                if "error" in r or "skipped" in r:
                    continue
                for name in max_t:
                    rate = per_step.get((name, cell, B, N))
                    if T > max_t[name] and rate:
                        rec.add({"section": "grid", **key, "impl": name, "extrapolated": True,
                                 "fwd_ms": rate[0] * T, "fwd_bwd_ms": rate[1] * T})  # fmt: skip
                for name, (fwd, fwd_bwd) in runners.items():

                    def timed(name=name, fwd=fwd, fwd_bwd=fwd_bwd, key=key):
                        f_min, f_med, f_n = clock.measure(fwd)
                        b_min, b_med, b_n = clock.measure(fwd_bwd)
                        out = {"impl": name, "fwd_ms": f_min, "fwd_median_ms": f_med, "fwd_reps": f_n,
                               "fwd_bwd_ms": b_min, "fwd_bwd_median_ms": b_med, "fwd_bwd_reps": b_n}  # fmt: skip
                        if name == "fused_triton" and peak:
                            gbs = (
                                fused_bytes(key["cell"], key["B"], key["T"], key["N"])
                                / (f_min * 1e-3)
                                / 1e9
                            )
                            out["fwd_gbs"], out["fwd_pct_peak"] = gbs, 100 * gbs / peak
                        if name in max_t:
                            rate = (f_min / key["T"], b_min / key["T"])
                            per_step[(name, key["cell"], key["B"], key["N"])] = rate
                        return out

                    rec.run("grid", {**key, "impl": name}, timed)
                runners.clear()
                if device.type == "cuda":
                    torch.cuda.empty_cache()


PAPER_IMPLS = ("sequential", "fused_triton", "fused_triton_chunked", "parallel_triton",
               "parallel_torch")  # fmt: skip


def time_paper_setting(
    rec, clock, torch, device, cells, B, N, compile_seq, L=512, counts=(20, 100), sweep=(),
    headline=True,
):  # fmt: skip
    """L = 512, 20 warm-up then min of 100, 3 Newton iterations, compiled sequential baseline,
    at (B, N) when ``headline``; else the (B, N) points of ``sweep`` with 5 warm-up runs and
    the min of 20 (the paper states neither B nor N)."""
    if headline:
        points = [((B, N), counts)]
    else:
        points = [((b, n), (min(5, counts[0]), min(20, counts[1])))
                  for b, n in sweep if (b, n) != (B, N)]  # fmt: skip
    for (b, n), (warmup, reps) in points:
        for cell in cells:
            key = {"cell": cell, "B": b, "T": L, "N": n, "warmup": warmup, "reps": reps}

            def run(cell=cell, b=b, n=n, warmup=warmup, reps=reps):
                runners = make_runners(torch, device, cell, b, L, n, compile_seq, None)
                out = {}
                for name in PAPER_IMPLS:
                    if name not in runners:  # fused_triton_chunked where it equals the default
                        continue
                    fwd, fwd_bwd = runners[name]
                    # One implementation's failure (an OOM, a compile error in the sequential
                    # step's backward) must not lose the others' timings.
                    try:
                        if warmup and name == "sequential":
                            fwd_bwd()  # compile the step's backward before the warm-up starts
                        out[f"{name}_fwd_ms"] = clock.measure(fwd, warmup=warmup, reps=reps)[0]
                        out[f"{name}_fwd_bwd_ms"] = clock.measure(
                            fwd_bwd, warmup=warmup, reps=reps
                        )[0]
                    except Exception as e:
                        out[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                for name in PAPER_IMPLS[1:]:
                    for phase in ("fwd", "fwd_bwd"):
                        seq, ours = out.get(f"sequential_{phase}_ms"), out.get(f"{name}_{phase}_ms")
                        if seq and ours:
                            out[f"speedup_{name}_{phase}"] = seq / ours
                return out

            rec.run("paper_L512", key, run, need_s=30.0)


def time_scans(rec, clock, torch, device, grid, ts, fla, peak):
    """The bare scans, each size's inputs drawn once on the device and shared by every
    implementation."""
    from paralab.kernels.scan import linear_scan

    gen = torch.Generator(device=device).manual_seed(0)
    impls = {
        "torch": lambda a, b: linear_scan(a, b, backend="torch"),
        "triton": lambda a, b: linear_scan(a, b, backend="triton"),
    }
    if fla is not None:
        # h_t = exp(g_t) h_{t-1} + x_t: fla takes (x, g) with g the log decay.
        impls["fla_chunk_hgrn"] = lambda log_a, b: fla["chunk_hgrn"](b, log_a)[0]
        if fla.get("fused_recurrent_hgrn") is not None:
            impls["fla_fused_recurrent_hgrn"] = (
                lambda log_a, b: fla["fused_recurrent_hgrn"](b, log_a)[0]
            )
    for block in (False, True):
        for B, N in grid:
            for T in ts:
                key = {"block": block, "B": B, "T": T, "N": N}
                inputs: dict = {}

                def build(block=block, B=B, T=T, N=N, inputs=inputs):
                    shape_b = (B, T, N, 2) if block else (B, T, N)
                    shape_a = shape_b[:3] + ((2, 2) if block else ())
                    inputs["a"] = torch.rand(*shape_a, generator=gen, device=device) * 0.9
                    inputs["b"] = torch.randn(*shape_b, generator=gen, device=device)
                    inputs["g"] = torch.ones(*shape_b, device=device)  # the cotangent
                    if fla is not None and not block:
                        inputs["log_a"] = inputs["a"].clamp_min(1e-3).log()
                    return {}

                r = rec.run("scan_setup", key, build)
                if "error" in r or "skipped" in r:
                    continue
                for name, fn in impls.items():
                    if name.startswith("fla") and block:
                        continue

                    def timed(fn=fn, name=name, inputs=inputs):
                        decay = inputs["log_a" if name.startswith("fla") else "a"]
                        a = decay.detach().requires_grad_()
                        b = inputs["b"].detach().requires_grad_()
                        f_min, _, f_n = clock.measure(lambda: fn(a, b))
                        b_min, _, b_n = clock.measure(
                            lambda: torch.autograd.grad(fn(a, b), (a, b), inputs["g"])
                        )
                        nbytes = (a.numel() + 2 * b.numel()) * 4  # read a, b; write h
                        gbs = nbytes / (f_min * 1e-3) / 1e9
                        out = {"impl": name, "fwd_ms": f_min, "fwd_bwd_ms": b_min,
                               "fwd_reps": f_n, "fwd_bwd_reps": b_n, "fwd_gbs": gbs}  # fmt: skip
                        if peak:
                            out["fwd_pct_peak"] = 100 * gbs / peak
                        return out

                    rec.run("scan", {**key, "impl": name}, timed)
                inputs.clear()
                if device.type == "cuda":
                    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def fla_ratios(grid: list[dict]) -> dict:
    """(cell, B, N, T) -> (fused fwd ms, fla single-pass HGRN fwd ms), where both ran (fla
    is timed once per size, in the first cell's rows)."""
    fla = {
        (r["B"], r["N"], r["T"]): r["fwd_ms"]
        for r in grid
        if r["impl"] == "fla_fused_recurrent_hgrn" and "fwd_ms" in r
    }
    return {
        (r["cell"], r["B"], r["N"], r["T"]): (r["fwd_ms"], fla[r["B"], r["N"], r["T"]])
        for r in grid
        if r["impl"] == "fused_triton" and "fwd_ms" in r and (r["B"], r["N"], r["T"]) in fla
    }


def markdown(info: dict, records: list[dict]) -> str:
    lines = ["# Kernel benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines.append("")
    corr = [r for r in records if r["section"] == "correctness"]
    if corr:
        lines += [
            "## Correctness",
            "",
            "| kernel | config | pass | max-abs (h) | rel (h) | error |",
            "|---|---|---|---|---|---|",
        ]
        for r in corr:
            cfg = ", ".join(
                f"{k}={r[k]}" for k in ("block", "reverse", "dtype", "B", "T", "N") if k in r
            )
            h_abs = r.get("h_max_abs", r.get("max_abs", ""))
            h_rel = r.get("h_rel", r.get("rel", ""))
            fmt = lambda v: f"{v:.2e}" if isinstance(v, float) else str(v)
            lines.append(
                f"| {r['kernel']} | {cfg} | {r.get('pass', '')} | {fmt(h_abs)} | {fmt(h_rel)} | {r.get('error', r.get('skipped', ''))[:80]} |"
            )
        lines.append("")
    paper = [r for r in records if r["section"] == "paper_L512"]
    if paper:
        lines += [
            "## Paper setting (L=512 on GPU; 3 Newton iterations; min of 100 after 20 warm-up at the headline (B, N))",
            "",
        ]
        lines += [
            "| cell | B | N | L | warm-up/reps | sequential fwd ms | fused fwd ms | speedup fwd | sequential fwd+bwd ms | fused fwd+bwd ms | speedup fwd+bwd | chunked fused speedup fwd | parallel_torch speedup fwd |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in paper:
            if "error" in r or "skipped" in r:
                lines.append(
                    f"| {r['cell']} | {r['B']} | {r['N']} | {r['T']} | {r.get('error', r.get('skipped'))[:80]} ||||||||"
                )
                continue
            ms = lambda k, r=r: f"{r[k]:.3f}" if k in r else "—"
            x = lambda k, r=r: f"{r[k]:.1f}x" if k in r else "—"
            lines.append(
                f"| {r['cell']} | {r['B']} | {r['N']} | {r['T']} | {r['warmup']}/{r['reps']} | {ms('sequential_fwd_ms')} | {ms('fused_triton_fwd_ms')} | "
                f"{x('speedup_fused_triton_fwd')} | {ms('sequential_fwd_bwd_ms')} | {ms('fused_triton_fwd_bwd_ms')} | "
                f"{x('speedup_fused_triton_fwd_bwd')} | {x('speedup_fused_triton_chunked_fwd')} | {x('speedup_parallel_torch_fwd')} |"
            )
            failed = [k[: -len("_error")] for k in r if k.endswith("_error")]
            if failed:
                lines.append(f"| | | | | errors: {', '.join(failed)} (see results.json) ||||||||")
        lines.append("")
    grid = [r for r in records if r["section"] == "grid" and "impl" in r]
    if grid:
        impls = list(dict.fromkeys(r["impl"] for r in grid))
        lines += ["## Cells: time in ms (speedup vs sequential); `~` = sequential extrapolated", ""]
        for phase in ("fwd", "fwd_bwd"):
            lines += [
                f"### {phase}",
                "",
                "| cell | B | N | T | " + " | ".join(impls) + " |",
                "|" + "---|" * (4 + len(impls)),
            ]
            keys = list(dict.fromkeys((r["cell"], r["B"], r["N"], r["T"]) for r in grid))
            for cell, B, N, T in keys:
                row = {
                    r["impl"]: r
                    for r in grid
                    if (r["cell"], r["B"], r["N"], r["T"]) == (cell, B, N, T)
                }
                seq = row.get("sequential", {}).get(f"{phase}_ms")
                cells = []
                for impl in impls:
                    r = row.get(impl)
                    if r is None:
                        cells.append("")
                    elif "error" in r:
                        cells.append("error")
                    elif "skipped" in r:
                        cells.append("skipped")
                    else:
                        ms = r[f"{phase}_ms"]
                        mark = "~" if r.get("extrapolated") else ""
                        ratio = f" ({seq / ms:.1f}x)" if seq and impl != "sequential" else ""
                        cells.append(f"{mark}{ms:.3f}{ratio}")
                lines.append(f"| {cell} | {B} | {N} | {T} | " + " | ".join(cells) + " |")
            lines.append("")
    ratios = fla_ratios(grid)
    if ratios:
        lines += [
            "## Fused Newton forward (3 iterations) against fla's single-pass HGRN forward",
            "",
            "| cell | B | N | T | fused fwd ms | fla fused_recurrent_hgrn fwd ms | ratio (target ≤ 3) |",
            "|---|---|---|---|---|---|---|",
        ]
        for (cell, B, N, T), (ours, theirs) in ratios.items():
            lines.append(
                f"| {cell} | {B} | {N} | {T} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |"
            )
        lines.append("")
    scans = [r for r in records if r["section"] == "scan" and "impl" in r]
    if scans:
        lines += [
            "## Scans alone (fwd GB/s and % of peak from reading a, b and writing h once)",
            "",
        ]
        lines += [
            "| kind | B | N | T | impl | fwd ms | fwd+bwd ms | fwd GB/s | % peak |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in scans:
            kind = "2x2" if r["block"] else "diag"
            if "error" in r or "skipped" in r:
                lines.append(
                    f"| {kind} | {r['B']} | {r['N']} | {r['T']} | {r['impl']} | {r.get('error', r.get('skipped'))[:60]} ||||"
                )
                continue
            pct = f"{r['fwd_pct_peak']:.0f}" if "fwd_pct_peak" in r else ""
            lines.append(
                f"| {kind} | {r['B']} | {r['N']} | {r['T']} | {r['impl']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {r['fwd_gbs']:.0f} | {pct} |"
            )
        lines.append("")
    for r in records:
        if r["section"] == "part_error":
            lines += [f"**Part `{r['part']}` stopped early:** {r['error'][:200]}", ""]
    errors = [r for r in records if "error" in r]
    lines += [f"{len(errors)} cells recorded an error (see results.json).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        # The interpreter is chosen when @triton.jit decorates: set it before any import.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    device = torch.device("cuda" if (torch.cuda.is_available() and not args.smoke) else "cpu")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("no CUDA device: run with --smoke (TRITON_INTERPRET=1) on CPU", file=sys.stderr)
        return 2
    try:
        from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn

        fla = {"chunk_hgrn": chunk_hgrn, "fused_recurrent_hgrn": fused_recurrent_hgrn}
        fla_status = "available"
    except Exception as e:  # fla is optional
        fla, fla_status = None, f"not available ({type(e).__name__}: {e})"
    if device.type != "cuda":
        fla = None  # its kernels need a GPU

    if args.smoke:
        # One T, not a multiple of any block and over one tile (so that the chunked path has
        # two groups): every code path, at the interpreter's pace.
        ts, grid, budget, seq_max_t, cudnn_max_t = [72], [(1, 8)], 300.0, 72, 72
        sizes = {"scan": (1, 24, 5), "newton": (1, 24, 5), "seq_check_T": 24}
        paper_bn, paper_kw = (1, 8), {"L": 24, "counts": (1, 1), "sweep": [(1, 4)]}
    elif args.full:
        ts = [2**k for k in range(9, 18)]
        grid, budget, seq_max_t, cudnn_max_t = (
            [(1, 256), (8, 256), (8, 1024), (32, 1024)],
            540.0,
            4096,
            2**15,
        )
        sizes = {"scan": (4, 8192, 512), "newton": (4, 4096, 512), "seq_check_T": 1024}
        paper_bn = tuple(int(x) for x in args.paper_bn.split(","))
        paper_kw = {"sweep": [(1, 1024), (8, 256), (8, 4096), (32, 1024), (64, 1024)]}
    else:
        ts = [2**9, 2**11, 2**13, 2**15, 2**17]
        grid, budget, seq_max_t, cudnn_max_t = [(8, 256), (4, 512)], 330.0, 2048, 2**13
        sizes = {"scan": (4, 8192, 512), "newton": (4, 4096, 512), "seq_check_T": 1024}
        paper_bn = tuple(int(x) for x in args.paper_bn.split(","))
        paper_kw = {"sweep": [(1, 1024), (8, 256), (32, 1024)]}
    budget = args.budget_s or budget
    seq_max_t = args.seq_max_t or seq_max_t
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    compile_seq = not (args.no_compile or args.smoke)

    peak, peak_src = peak_bandwidth_gbs(torch, device)
    import triton

    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "cpu (TRITON_INTERPRET=1)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "peak_bandwidth_gbs": peak,
        "peak_bandwidth_source": peak_src,
        "fla": fla_status,
        "mode": "smoke" if args.smoke else ("full" if args.full else "quick"),
        "sequential_baseline": "torch.compile'd step in a Python loop"
        if compile_seq
        else "eager step in a Python loop",
        "T": ts,
        "B,N grid": grid,
        "budget_s": budget,
    }
    print(json.dumps(info, indent=1), flush=True)
    rec = Recorder(budget)
    clock = Clock(torch, device, max_reps=1 if args.smoke else 50)

    max_t = {"sequential": seq_max_t, "cudnn": cudnn_max_t}
    info["timed_up_to_T"] = max_t
    args.out.mkdir(parents=True, exist_ok=True)

    def save():
        info["wall_s"] = round(time.time() - rec.t0, 1)
        info["sequential_compile_failures"] = COMPILE_FAILURES
        # Write then rename: a kill in the middle leaves the previous file, not half of one.
        for name, text in (
            ("results.json", json.dumps({"info": info, "records": rec.records}, indent=1,
                                        default=str)),
            ("results.md", markdown(info, rec.records)),
        ):  # fmt: skip
            tmp = args.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(args.out / name)

    # Saved after every record; a kill from outside (gpu_check.sh's timeout) saves too.
    rec.on_record = save

    def on_term(signum, _frame):
        info["killed_by_signal"] = signum
        save()
        print(f"killed by signal {signum}: results so far in {args.out}", flush=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)

    # Cheapest first, each part capped at a share of the time left: the scans' bandwidth and
    # the fla comparison must not be starved by the paper setting's torch.compile of the
    # sequential cells, nor the grid by either.  The paper setting's other (B, N) points come
    # last, in whatever time is left (the 2026-11-29 H200 run had skipped them for time and
    # then finished the grid 35 s inside its budget).
    paper = lambda headline: time_paper_setting(
        rec, clock, torch, device, cells, *paper_bn, compile_seq, headline=headline, **paper_kw)
    parts = (
        ("correctness", 1.0, lambda: correctness(rec, torch, device, sizes, fla)),
        ("scan", 0.25, lambda: time_scans(rec, clock, torch, device, grid[:1], ts, fla, peak)),
        ("paper_L512", 0.6, lambda: paper(True)),
        ("grid", 0.75, lambda: time_cells(
            rec, clock, torch, device, cells, grid, ts, max_t, compile_seq, fla, peak)),
        ("paper_L512_sweep", 1.0, lambda: paper(False)),
    )  # fmt: skip
    for section, share, part in parts:
        rec.start_part(share)
        try:
            part()
        except Exception as e:  # a part that breaks outside its cells must not end the run
            rec.add({"section": "part_error", "part": section, "error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc(limit=6)})  # fmt: skip
    save()
    failed = [r for r in rec.records if r["section"] == "correctness" and r.get("pass") is False]
    errors = [r for r in rec.records if "error" in r]
    print(f"wrote {args.out}/results.json and results.md in {info['wall_s']} s; "
          f"{len(failed)} correctness failures, {len(errors)} errors")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
