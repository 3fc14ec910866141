"""What paralab's training path costs over a bare PyTorch loop, on the same model and data.

Three ways to train the same experiment for the same steps, side by side in one run:

- ``bare``: a plain PyTorch loop (AdamW, cosine schedule, clipping), batches from the same
  token shards, nothing else;
- ``paralab loop``: paralab's ``Trainer`` in this process, without Ray;
- ``paralab run``: the full path, Ray Train with one worker, MLflow logging, checkpoints.

Every path runs with the same number of torch threads. Throughput is tokens/s over windows of ``--log-every`` steady-state steps (the first
``--warmup`` steps and the final validation/checkpoint step are excluded), measured the same
way for every path. The overhead is ``1 - tokens_per_s / bare``; the target is under 10%.

These machines are shared and their speed drifts by 10–40% from one minute to the next. The
paths run in rounds whose order rotates, and the headline compares each path's fastest
window over all rounds: outside load only ever slows a window down, so the fastest window is
the least disturbed estimate of a path's own speed. The per-round median ratios, with their
range, are printed beside it to show the noise.

    python benchmarks/train_overhead.py [--steps 60] [--threads 2] [--repeats 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def experiment(args):
    from paralab.platform.config.load import load_experiment

    return load_experiment(
        ROOT / "experiments" / "quickstart.yaml",
        [
            "name=overhead",
            f"model.mode={args.mode}",
            f"train.steps={args.steps}",
            "train.workers=1",
            f"train.cpus_per_worker={args.threads}",
            "train.batch_size=16",
            f"train.log_every={args.log_every}",
            f"train.eval_every={args.steps}",
            f"train.checkpoint_every={args.steps}",
            "train.eval_batches=1",
        ],
    )


def windows(step_seconds: list[float], tokens_per_step: int, size: int) -> list[float]:
    """tokens/s over consecutive windows of ``size`` steps."""
    return [
        tokens_per_step * size / sum(step_seconds[i : i + size])
        for i in range(0, len(step_seconds) - size + 1, size)
    ]


def bare_loop(cfg, data, warmup: int, log_every: int) -> list[float]:
    """tokens/s per window of ``log_every`` steady-state steps of the plainest loop that trains
    the same model on the same batches."""
    from paralab.models.factory import build_model
    from paralab.models.loss import lm_loss
    from paralab.platform.train.optim import build_optimizer, build_scheduler

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    batches = data.train_batches(cfg.data.seq_len, cfg.train.batch_size, seed=cfg.train.seed)
    times = []
    for _ in range(cfg.train.steps):
        start = time.perf_counter()
        inputs, targets = next(batches)
        loss, _ = lm_loss(model(inputs), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        model.constrain_()
        times.append(time.perf_counter() - start)
    # The same windows paralab logs: steps warmup+1 .. steps-1 (the last one validates).
    steady = times[warmup : cfg.train.steps - 1]
    return windows(steady, cfg.train.batch_size * cfg.data.seq_len, log_every)


def paralab_loop(cfg, data, warmup: int) -> list[float]:
    """tokens/s per logged window of paralab's Trainer, in this process, without Ray."""
    from paralab.platform.train.loop import NoHooks, Trainer

    rates: list[float] = []

    class Record(NoHooks):
        def log(self, metrics, step):
            if step > warmup and step < cfg.train.steps:
                rates.append(metrics["tokens_per_s"])

    Trainer(cfg, data, Record()).run()
    return rates


def paralab_run(cfg, warmup: int) -> tuple[list[float], float]:
    """(tokens/s per logged window, wall seconds of the whole `launch`, Ray start-up included)."""
    import ray
    from mlflow.tracking import MlflowClient

    from paralab.platform.train.launch import launch

    start = time.perf_counter()
    summary = launch(cfg, restart=True)
    wall = time.perf_counter() - start
    # Ray's daemons (GCS, raylet, dashboard, idle workers) would otherwise keep taking CPU
    # from the paths measured after this one in this process.
    ray.shutdown()
    history = MlflowClient(summary.tracking_uri).get_metric_history(
        summary.mlflow_run_id, "tokens_per_s"
    )
    return [m.value for m in history if warmup < m.step < cfg.train.steps], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", default="sequential")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of all three paths")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_overhead.json"
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="paralab-overhead-"))
    os.environ["PARALAB_HOME"] = str(home)
    torch.set_num_threads(args.threads)
    from paralab.platform.data import prepare

    cfg = experiment(args)
    data = prepare(cfg.data)
    paths = {
        "bare": lambda: bare_loop(cfg, data, args.warmup, args.log_every),
        "paralab loop": lambda: paralab_loop(cfg, data, args.warmup),
        "paralab run": lambda: paralab_run(cfg, args.warmup),
    }
    names = list(paths)
    rounds: list[dict[str, list[float]]] = []
    walls: list[float] = []
    for r in range(args.repeats):
        rates: dict[str, list[float]] = {}
        for name in names[r % 3 :] + names[: r % 3]:  # rotate who goes first
            out = paths[name]()
            if name == "paralab run":
                out, wall = out
                walls.append(wall)
            rates[name] = out
        rounds.append(rates)
        med = {n: statistics.median(rates[n]) for n in names}
        ratios = ", ".join(f"{n} {med[n] / med['bare']:.3f}" for n in names[1:])
        print(f"round {r + 1}/{args.repeats}: bare {med['bare']:,.0f} tokens/s (median "
              f"window); {ratios}", flush=True)  # fmt: skip

    # Load from elsewhere only ever slows a window down, so each path's fastest window is the
    # least disturbed estimate of its own speed. The per-round ratios show the spread.
    best = {n: max(w for rates in rounds for w in rates[n]) for n in names}
    round_ratios = {
        n: [statistics.median(r[n]) / statistics.median(r["bare"]) for r in rounds] for n in names
    }
    print(
        f"\n{cfg.model.cell} d_model={cfg.model.d_model} layers={cfg.model.n_layers} "
        f"batch={cfg.train.batch_size}x{cfg.data.seq_len} mode={args.mode} threads={args.threads}, "
        f"{args.repeats} rounds, windows of {args.log_every} steps"
    )
    print("| path | best window tokens/s | ratio to bare (best windows) | overhead | "
          "per-round median ratio (range) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    summary = {}
    for name in names:
        rr = round_ratios[name]
        summary[name] = {"best_window_tokens_per_s": best[name],
                         "ratio_best": best[name] / best["bare"],
                         "round_ratio_median": statistics.median(rr),
                         "round_ratio_min": min(rr), "round_ratio_max": max(rr)}  # fmt: skip
        print(f"| {name} | {best[name]:,.0f} | {best[name] / best['bare']:.3f} | "
              f"{1 - best[name] / best['bare']:+.1%} | {statistics.median(rr):.3f} "
              f"({min(rr):.3f} – {max(rr):.3f}) |")  # fmt: skip
    print(f"\n`paralab run` wall time, Ray start-up and MLflow included: {min(walls):.1f} s (best)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "config": {
                    "cell": cfg.model.cell,
                    "d_model": cfg.model.d_model,
                    "layers": cfg.model.n_layers,
                    "batch": cfg.train.batch_size,
                    "seq_len": cfg.data.seq_len,
                    "mode": args.mode,
                    "threads": args.threads,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "repeats": args.repeats,
                },
                "rounds_window_tokens_per_s": rounds,
                "summary": summary,
                "paralab_run_wall_s": walls,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
