"""Launch-configuration sweep: the same kernels under other tile shapes, side by side.

The defaults in :func:`paralab.kernels.scan.triton.scan_launch_config` and
:func:`paralab.kernels.newton.common.newton_launch_config` are heuristics.  This script times
the public ops (``newton_gru_fused``, ``newton_lstm_fused``, ``linear_scan``) with the launch
configuration replaced, at the sizes that matter most:

    fused       the paper's setting, L = 512 at (B, N) = (8, 1024): every Newton iteration in
                one launch, over rows-per-tile BT, units-per-program BN and warps; each
                configuration's output is held to the default's
    sequential  the baseline of the paper's setting in the same run: the cell's step under
                ``torch.compile`` in a Python loop (20 warm-up runs, the min of 100 forward)
    scan        the bare scans at long T, over BT, BN, warps and how many programs the time
                split aims for (``programs_per_sm``), with bandwidth against the device's peak

    python benchmarks/launch_configs.py --out bench/launch          # GPU, ~4 min
    python benchmarks/launch_configs.py --smoke --out /tmp/launch   # tiny, CPU, interpreter

Writes ``results.json`` and ``results.md`` into ``--out`` after every record.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path


def load_kernel_bench():
    """benchmarks/kernels.py as a module: its clock, recorder and sequential baseline."""
    path = Path(__file__).with_name("kernels.py")
    spec = importlib.util.spec_from_file_location("paralab_kernel_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def launch_config(module, name: str, **override):
    """Replace ``module.name`` (a launch-config function) by one whose result has ``override``
    applied: BT, BN and num_warps as given, the unit blocks and the time split recomputed.
    ``programs_per_sm`` sets how many programs the time split aims for; ``one_launch`` keeps
    time in a single group (the fused kernels' one-launch solve)."""
    from paralab.kernels.newton.common import FUSED_PROGRAMS_PER_SM
    from paralab.kernels.scan.triton import SCAN_PROGRAMS_PER_SM, split_time

    original = getattr(module, name)
    fused = name == "newton_launch_config"

    def patched(*args, **kwargs):
        cfg = dict(original(*args, **kwargs))
        if fused:
            (B, T, _, N), device = args[0].shape, args[0].device
        else:
            B, T, N, device = args[0], args[1], args[2], args[4]
        BT, BN = override.get("BT", cfg["BT"]), override.get("BN", cfg["BN"])
        per_sm = FUSED_PROGRAMS_PER_SM if fused else SCAN_PROGRAMS_PER_SM
        per_sm = override.get("programs_per_sm", per_sm)
        rows = T if override.get("one_launch") else None
        cfg.update(BT=BT, BN=BN, num_warps=override.get("num_warps", cfg["num_warps"]),
                   **split_time(B, T, N, BT, BN, device, rows, per_sm))  # fmt: skip
        return cfg

    setattr(module, name, patched)
    try:
        yield
    finally:
        setattr(module, name, original)


# (BT, BN, num_warps) for the one-launch fused solve.  BT sets the serial walk's length
# (T / BT tiles per iteration), BN the number of programs.  The first was the default when
# the sweep of 2026-11-29 ran on an H200; (32, 16, 4) is the one it chose.
FUSED_CONFIGS = [
    (32, 32, 4), (64, 32, 4), (128, 32, 4), (32, 16, 4), (64, 16, 4), (128, 16, 4),
    (32, 16, 2), (64, 16, 2), (128, 16, 8), (64, 8, 2), (128, 8, 4), (32, 32, 1), (64, 32, 8),
]  # fmt: skip
# (BT, BN, num_warps, programs_per_sm) for the bare scans; the first of each kind was the
# default before the sweep of 2026-11-29, which chose (64, 64, 4, 16) and (16, 32, 2, 16).
SCAN_CONFIGS = {
    False: [(64, 64, 4, 4), (64, 64, 4, 16), (64, 64, 4, 64), (128, 64, 4, 16),
            (128, 128, 8, 16), (64, 128, 4, 16), (32, 64, 4, 16), (128, 64, 8, 64)],
    True: [(32, 32, 4, 4), (32, 32, 4, 16), (32, 32, 4, 64), (64, 32, 4, 16),
           (32, 16, 2, 16), (64, 16, 4, 16), (32, 64, 4, 16), (16, 32, 2, 16)],
}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/launch"))
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run under TRITON_INTERPRET=1")
    ap.add_argument("--budget-s", type=float, default=270.0)
    ap.add_argument("--paper-bn", default="8,1024", help="B,N of the fused sweep (L = 512)")
    args = ap.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit import
    import torch
    import triton

    bench = load_kernel_bench()
    from paralab.kernels.newton import gru_triton, lstm_triton, newton_gru_fused, newton_lstm_fused
    from paralab.kernels.scan import linear_scan
    from paralab.kernels.scan import triton as scan_triton

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("no CUDA device: run with --smoke on CPU", file=sys.stderr)
        return 2
    if args.smoke:
        (B, N), L, scan_bnt = (1, 8), 24, (1, 8, 40)
        fused_configs = [(8, 8, 1), (16, 4, 1)]
        scan_configs = {False: [(8, 8, 1, 1), (16, 8, 1, 4)], True: [(8, 4, 1, 1)]}
        counts, seq_counts = (0, 1), (1, 1)
    else:
        (B, N), L, scan_bnt = tuple(int(x) for x in args.paper_bn.split(",")), 512, (8, 256, 2**17)
        fused_configs, scan_configs = FUSED_CONFIGS, SCAN_CONFIGS
        counts, seq_counts = (10, 50), (20, 100)
    peak, peak_src = bench.peak_bandwidth_gbs(torch, device)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "triton": triton.__version__,
        "peak_bandwidth_gbs": peak, "peak_bandwidth_source": peak_src,
        "fused_size": {"B": B, "T": L, "N": N}, "scan_size": dict(zip("BNT", scan_bnt)),
        "budget_s": args.budget_s,
    }  # fmt: skip
    print(json.dumps(info, indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rec = bench.Recorder(args.budget_s)
    clock = bench.Clock(torch, device, max_reps=1 if args.smoke else 100)

    def save():
        info["wall_s"] = round(time.time() - rec.t0, 1)
        for name, text in (
            ("results.json", json.dumps({"info": info, "records": rec.records}, indent=1)),
            ("results.md", markdown(info, rec.records)),
        ):
            tmp = args.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(args.out / name)

    rec.on_record = save
    gen = torch.Generator(device=device).manual_seed(0)
    p = torch.randn(B, L, 3, N, generator=gen, device=device)
    A = (torch.rand(3, N, generator=gen, device=device) * 2 - 1) * 0.5
    C = (torch.rand(2, N, generator=gen, device=device) * 2 - 1) * 0.5
    ops = {"gru": (gru_triton, newton_gru_fused, (A,)), "lstm": (lstm_triton, newton_lstm_fused, (A, C))}

    # Part 1: the one-launch fused solve over tile shapes, cells innermost.
    want = {cell: op(p, *weights) for cell, (_, op, weights) in ops.items()}
    for BT, BN, warps in fused_configs:
        for cell, (module, op, weights) in ops.items():

            def timed(module=module, op=op, weights=weights, cell=cell, BT=BT, BN=BN, w=warps):
                leaves = [x.detach().requires_grad_() for x in (p, *weights)]
                g = torch.ones_like(want[cell])
                fwd = lambda: op(*leaves)
                fwd_bwd = lambda: torch.autograd.grad(op(*leaves), leaves, g)
                with launch_config(module, "newton_launch_config", BT=BT, BN=BN, num_warps=w,
                                   one_launch=True):  # fmt: skip
                    max_abs, rel = bench.max_errors(fwd(), want[cell])
                    f = clock.measure(fwd, *counts)[0]
                    fb = clock.measure(fwd_bwd, *counts)[0]
                return {"fwd_ms": f, "fwd_bwd_ms": fb, "max_abs_vs_default": max_abs,
                        "rel_vs_default": rel}  # fmt: skip

            rec.run("fused", {"cell": cell, "BT": BT, "BN": BN, "num_warps": warps}, timed)

    # Part 2: the sequential baseline at the same size, in the same run.
    for cell in ops:

        def seq(cell=cell):
            runners = bench.make_runners(torch, device, cell, B, L, N, not args.smoke, None,
                                         {"cudnn": 0})  # fmt: skip
            fwd, fwd_bwd = runners["sequential"]
            fwd_bwd()  # compile the backward before the warm-up
            return {
                "fwd_ms": clock.measure(fwd, *seq_counts)[0],
                "fwd_bwd_ms": clock.measure(fwd_bwd, min(5, seq_counts[0]),
                                            min(20, seq_counts[1]))[0],
            }  # fmt: skip

        rec.run("sequential", {"cell": cell}, seq, need_s=40.0)

    # Part 3: the bare scans at long T.
    Bs, Ns, Ts = scan_bnt
    for block in (False, True):
        shape_b = (Bs, Ts, Ns, 2) if block else (Bs, Ts, Ns)
        a = torch.rand(*shape_b[:3], *((2, 2) if block else ()), generator=gen, device=device)
        a = a * (0.5 if block else 0.9)
        b = torch.randn(*shape_b, generator=gen, device=device)
        ref = linear_scan(a, b, backend="triton")
        nbytes = (a.numel() + 2 * b.numel()) * 4  # read a, b; write h: once each
        for BT, BN, warps, per_sm in scan_configs[block]:

            def timed(BT=BT, BN=BN, warps=warps, per_sm=per_sm, a=a, b=b, ref=ref, nbytes=nbytes):
                with launch_config(scan_triton, "scan_launch_config", BT=BT, BN=BN,
                                   num_warps=warps, programs_per_sm=per_sm):  # fmt: skip
                    got = linear_scan(a, b, backend="triton")
                    max_abs, rel = bench.max_errors(got, ref)
                    f = clock.measure(lambda: linear_scan(a, b, backend="triton"))[0]
                gbs = nbytes / (f * 1e-3) / 1e9
                return {"fwd_ms": f, "fwd_gbs": gbs, "fwd_pct_peak": 100 * gbs / peak if peak else None,
                        "max_abs_vs_default": max_abs, "rel_vs_default": rel}  # fmt: skip

            rec.run("scan", {"block": block, "BT": BT, "BN": BN, "num_warps": warps,
                             "programs_per_sm": per_sm}, timed)  # fmt: skip
        del a, b, ref
        if device.type == "cuda":
            torch.cuda.empty_cache()
    save()
    print(markdown(info, rec.records), flush=True)
    return 0


def markdown(info: dict, records: list[dict]) -> str:
    lines = ["# Launch-configuration sweep", ""] + [f"- {k}: {v}" for k, v in info.items()] + [""]
    seq = {r["cell"]: r for r in records if r["section"] == "sequential" and "fwd_ms" in r}
    fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "—"
    fused = [r for r in records if r["section"] == "fused"]
    if fused:
        lines += ["## Fused Newton solve, one launch, L = 512 (min of 50 after 10 warm-up)", "",
                  "| cell | BT | BN | warps | fwd ms | fwd+bwd ms | speed-up fwd | speed-up fwd+bwd "
                  "| max-abs vs default | error |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in fused:
            s = seq.get(r["cell"], {})
            up = lambda k, r=r, s=s: fmt(s[k] / r[k], ".1f") + "×" if k in s and k in r else "—"
            lines.append(
                f"| {r['cell']} | {r['BT']} | {r['BN']} | {r['num_warps']} | {fmt(r.get('fwd_ms'), '.3f')} "
                f"| {fmt(r.get('fwd_bwd_ms'), '.3f')} | {up('fwd_ms')} | {up('fwd_bwd_ms')} "
                f"| {fmt(r.get('max_abs_vs_default'), '.1e')} | {r.get('error', r.get('skipped', ''))[:60]} |"
            )  # fmt: skip
        lines.append("")
    if seq or any(r["section"] == "sequential" for r in records):
        lines += ["## Sequential baseline (compiled step in a Python loop)", "",
                  "| cell | fwd ms (min of 100) | fwd+bwd ms (min of 20) |", "|---|---|---|"]  # fmt: skip
        for r in records:
            if r["section"] == "sequential":
                lines.append(f"| {r['cell']} | {fmt(r.get('fwd_ms'), '.3f')} | "
                             f"{fmt(r.get('fwd_bwd_ms'), '.3f')} {r.get('error', r.get('skipped', ''))[:60]} |")  # fmt: skip
        lines.append("")
    scans = [r for r in records if r["section"] == "scan"]
    if scans:
        lines += ["## Scans (fwd GB/s counting a, b read and h written once)", "",
                  "| kind | BT | BN | warps | programs/SM | fwd ms | GB/s | % peak | max-abs vs default | error |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in scans:
            lines.append(
                f"| {'2x2' if r['block'] else 'diag'} | {r['BT']} | {r['BN']} | {r['num_warps']} "
                f"| {r['programs_per_sm']} | {fmt(r.get('fwd_ms'), '.3f')} | {fmt(r.get('fwd_gbs'), '.0f')} "
                f"| {fmt(r.get('fwd_pct_peak'), '.0f')} | {fmt(r.get('max_abs_vs_default'), '.1e')} "
                f"| {r.get('error', r.get('skipped', ''))[:60]} |"
            )  # fmt: skip
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
