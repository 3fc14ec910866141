"""Newton (parallel over time) against the sequential loop, and Newton's convergence.

Part 1, speed: forward and forward+backward wall time of one cell layer applied to
``[B, T, D]`` in modes ``sequential`` and ``parallel`` (``triton`` too on CUDA), next to
PyTorch's ``nn.GRU``/``nn.LSTM`` of the same state size, for T from 256 to 16384; ratios
are to ``sequential``.  The ``torch.nn`` column is ``nn.GRU`` for ParaGRU rows and
``nn.LSTM`` for ParaLSTM rows (dense recurrent weights, fused C++/cuDNN kernels).

Part 2, convergence: max |h_k − h| against the sequential answer h after k = 0..6 Newton
iterations, for both cells at T = 2048 with recurrent weights uniform in ±a_bound (the
worst case the constraint allows), in fp32 and fp64.

    python benchmarks/newton_vs_sequential.py [--out PATH] [--device cpu|cuda] [--quick]

Prints markdown tables and writes them as JSON (default
``benchmarks/results/newton_vs_sequential.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from paralab.models.newton import NewtonSettings, newton_solve, sequential_solve
from paralab.models.registry import get_cell

CELLS = {"paragru": nn.GRU, "paralstm": nn.LSTM}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    """Best-of-``repeats`` seconds, after one warm-up call when ``repeats > 1`` (long runs
    are timed once: they dwarf any warm-up effect and bound the script's time)."""
    if repeats > 1:
        fn()
        _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _cell_runner(cell, mode: str, x: torch.Tensor, backward: bool):
    def run():
        if backward:
            y, _ = cell(x, mode=mode)
            y.sum().backward()
        else:
            with torch.no_grad():
                cell(x, mode=mode)

    return run


def _torch_runner(rnn: nn.Module, x: torch.Tensor, backward: bool):
    def run():
        if backward:
            rnn(x)[0].sum().backward()
        else:
            with torch.no_grad():
                rnn(x)

    return run


def speed(args) -> list[dict]:
    rows = []
    modes = ["sequential", "parallel"] + (["triton"] if args.device == "cuda" else [])
    for cell_name, torch_rnn in CELLS.items():
        cell = get_cell(cell_name)(args.d_in, args.hidden, args.heads).to(args.device)
        rnn = torch_rnn(args.d_in, args.hidden, batch_first=True).to(args.device)
        for seq_len in args.seq_lens:
            x = torch.randn(args.batch, seq_len, args.d_in, device=args.device, requires_grad=True)
            repeats = 3 if seq_len <= 1024 else 1
            for backward in (False, True):
                times = {
                    m: _timed(_cell_runner(cell, m, x, backward), args.device, repeats)
                    for m in modes
                }
                times["torch.nn"] = _timed(_torch_runner(rnn, x, backward), args.device, repeats)
                row = {
                    "cell": cell_name,
                    "torch.nn": torch_rnn.__name__,
                    "T": seq_len,
                    "pass": "fwd+bwd" if backward else "fwd",
                    "ms": {k: round(v * 1e3, 2) for k, v in times.items()},
                    "ratio_to_sequential": {
                        k: round(v / times["sequential"], 3) for k, v in times.items()
                    },
                    "fallbacks": cell.newton_fallbacks,
                }
                rows.append(row)
                print(_speed_line(row), flush=True)
    return rows


def convergence(args) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.float64):
        for cell_name in CELLS:
            torch.manual_seed(0)
            cell = get_cell(cell_name)(args.d_in, args.hidden, args.heads).to(args.device, dtype)
            with torch.no_grad():
                for name in cell.recurrent_parameter_names():
                    getattr(cell, name).uniform_(-cell.a_bound, cell.a_bound)
                x = torch.randn(
                    args.batch, args.convergence_T, args.d_in, device=args.device, dtype=dtype
                )
                p = cell.project(x)
                h0 = cell.init_state(args.batch, device=args.device, dtype=dtype)
                exact = sequential_solve(cell.transition, p, h0)
                errors = []
                for iters in range(7):
                    settings = NewtonSettings(newton_iters=iters, fallback_tol=None)
                    states, _ = newton_solve(
                        cell.transition, cell.transition_and_jacobian, p, h0, settings
                    )
                    errors.append(float((states - exact).abs().max()))
            row = {
                "cell": cell_name,
                "dtype": str(dtype).removeprefix("torch."),
                "max_error": errors,
            }
            rows.append(row)
            print(f"{cell_name:9s} {row['dtype']:8s} " + " ".join(f"{e:.1e}" for e in errors))
    return rows


def _speed_line(row: dict) -> str:
    cells = " | ".join(
        f"{row['ms'][k]:9.2f} ({row['ratio_to_sequential'][k]:.2f}×)" for k in row["ms"]
    )
    return f"| {row['cell']} | {row['T']} | {row['pass']} | {cells} |"


def markdown(result: dict) -> str:
    speed_rows = result["speed"]
    names = list(speed_rows[0]["ms"]) if speed_rows else []
    lines = [
        "| cell | T | pass | " + " | ".join(f"{n} ms (× seq)" for n in names) + " |",
        "|---|---|---|" + "---|" * len(names),
        *(_speed_line(r) for r in speed_rows),
        "",
        "| cell | dtype | " + " | ".join(f"k={k}" for k in range(7)) + " |",
        "|---|---|" + "---|" * 7,
        *(
            f"| {r['cell']} | {r['dtype']} | "
            + " | ".join(f"{e:.1e}" for e in r["max_error"])
            + " |"
            for r in result["convergence"]
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/newton_vs_sequential.json")
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (intra-op)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-in", dest="d_in", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument(
        "--seq-lens", dest="seq_lens", type=int, nargs="+", default=[256, 1024, 4096, 16384]
    )
    parser.add_argument("--convergence-T", dest="convergence_T", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="T in {256, 1024} only")
    args = parser.parse_args()
    if args.quick:
        args.seq_lens = [256, 1024]
    torch.set_num_threads(args.threads)
    started = time.time()
    result = {
        "setup": {
            "device": torch.cuda.get_device_name()
            if args.device == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "threads": args.threads,
            "batch": args.batch,
            "d_in": args.d_in,
            "hidden": args.hidden,
            "heads": args.heads,
            "newton_iters": NewtonSettings().newton_iters,
            "dtype": "float32",
        },
        "speed": speed(args),
        "convergence": convergence(args),
    }
    result["setup"]["wall_s"] = round(time.time() - started, 1)
    print()
    print(markdown(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} in {result['setup']['wall_s']} s")


if __name__ == "__main__":
    main()
