"""The training function each Ray Train worker runs.

One optimizer step consumes ``train.batch_size`` sequences in total: each of the W workers
runs ``grad_accum`` micro-batches of ``batch_size / (W * grad_accum)`` sequences. The data
iterator gives the ranks disjoint slices of the same global batch, so a run on W workers
follows the same trajectory as a single process, up to floating-point reordering.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from paralab.models.factory import build_model
from paralab.models.flops import training_flops_per_token
from paralab.models.loss import lm_loss
from paralab.platform.config.schema import ExperimentConfig
from paralab.platform.data import PreparedData
from paralab.platform.train import checkpoint as ckpt
from paralab.platform.train.optim import build_optimizer, build_scheduler
from paralab.platform.train.parallel import device_for_worker, parallelize, unwrap
from paralab.platform.train.staging import staging_folder

# Dense bf16 peak of common accelerators, for model FLOPs utilisation.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12}


class Hooks(Protocol):
    """What the loop needs from its host: Ray Train on a cluster, or nothing at all."""

    def report(self, metrics: dict[str, float], folder: Path | None, name: str | None) -> None:
        """Every rank calls it; persists this rank's ``folder`` as part of checkpoint ``name``
        when given. Ranks may return before the others' files are persisted."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record metrics; every rank calls it, the host decides who writes."""

    def keep_best(self, step: int) -> None:
        """Checkpoint ``step`` is the best so far: keep a copy Ray's retention won't delete.
        Every rank calls it, so the host can wait until all ranks' files are persisted."""

    def diverged(self, step: int, why: str) -> None:
        """Training stopped at ``step`` on a loss that is not finite; every rank calls it."""


class NoHooks:
    """Run the loop bare, in one process: nothing reported, logged or kept."""

    def report(self, metrics, folder, name):
        pass

    def log(self, metrics, step):
        pass

    def keep_best(self, step):
        pass

    def diverged(self, step, why):
        pass


@dataclass
class WorkerContext:
    rank: int
    world: int
    device: torch.device


def _context(use_gpu: bool) -> WorkerContext:
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    return WorkerContext(rank, world, device_for_worker(use_gpu))


def _all_mean(value: torch.Tensor, ctx: WorkerContext) -> float:
    if ctx.world > 1:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world
    return float(value)


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def _losses(logits: torch.Tensor, targets: torch.Tensor, z_loss: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to optimise, cross-entropy to report): the z-loss term is not part of the metric."""
    loss, z_term = lm_loss(logits, targets, z_loss)
    return loss, (loss - z_loss * z_term if z_loss else loss)


class Trainer:
    """State and steps of one worker; ``run`` is the whole job."""

    def __init__(self, cfg: ExperimentConfig, data: PreparedData, hooks: Hooks):
        self.cfg, self.hooks = cfg, hooks
        tc = cfg.train
        self.ctx = _context(tc.use_gpu)
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        model = build_model(cfg.model)
        self.model = parallelize(model, tc, self.ctx.device)
        self.core = unwrap(self.model)
        self.optimizer = build_optimizer(self.model, tc)
        self.scheduler = build_scheduler(self.optimizer, tc)
        self.micro_batch = tc.batch_size // (self.ctx.world * tc.grad_accum)
        if data.vocab_size > cfg.model.vocab_size:
            raise ValueError(
                f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                f"vocabulary ({data.vocab_size})"
            )
        seq_len, where = cfg.data.seq_len, {"rank": self.ctx.rank, "world_size": self.ctx.world}
        self.train_data = data.train_batches(seq_len, self.micro_batch, seed=tc.seed, **where)
        self.val_data = lambda n: data.val_batches(n, seq_len, self.micro_batch, **where)
        self.step = 0
        self.diverged_at: int | None = None
        """The step whose loss was not finite, where training stopped; None if it did not."""
        self.best_val = math.inf
        self.best_step: int | None = None
        self.flops_per_token = training_flops_per_token(cfg.model, cfg.data.seq_len)
        self.peak = _peak_flops(self.ctx.device)
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.ctx.device.type == "cuda" and tc.precision == "bf16" and tc.strategy == "ddp"
            else contextlib.nullcontext()
        )
        torch.manual_seed(tc.seed + 1000 * (self.ctx.rank + 1))

    @property
    def sharded(self) -> bool:
        return self.cfg.train.strategy == "fsdp" and self.ctx.world > 1

    # -- checkpoints ---------------------------------------------------------------------
    def restore(self, folder: Path) -> None:
        state = ckpt.load(folder, self.model, self.optimizer, sharded=self.sharded,
                          rank=self.ctx.rank, device=self.ctx.device)
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_data.load_state_dict(state["data"])
        self.step = state["step"]
        self.best_val = state["best_val"]
        self.best_step = state["best_step"]

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "scheduler": self.scheduler.state_dict(),
            "data": self.train_data.state_dict(),
            "best_val": self.best_val,
            "best_step": self.best_step,
        }

    def report(self, metrics: dict[str, float], with_checkpoint: bool) -> None:
        """Report to Ray from every rank, with this rank's checkpoint files if asked."""
        if not with_checkpoint:
            self.hooks.report(metrics, None, None)
            return
        with staging_folder() as folder:
            ckpt.save(folder, self.model, self.optimizer, self._trainer_state(),
                      sharded=self.sharded, rank=self.ctx.rank, device=self.ctx.device)
            self.hooks.report(metrics, folder, ckpt.checkpoint_name(self.step))

    # -- steps -----------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        tc = self.cfg.train
        self.model.train()
        total = torch.zeros((), device=self.ctx.device)
        for micro in range(tc.grad_accum):
            inputs, targets = (t.to(self.ctx.device, non_blocking=True) for t in next(self.train_data))
            sync = micro == tc.grad_accum - 1 or not hasattr(self.model, "no_sync")
            with (contextlib.nullcontext() if sync else self.model.no_sync()), self.autocast:
                loss, ce = _losses(self.model(inputs), targets, tc.z_loss)
                (loss / tc.grad_accum).backward()
            total += ce.detach() / tc.grad_accum
        if tc.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.core.constrain_()
        self.step += 1
        if hasattr(grad_norm, "full_tensor"):  # FSDP returns a DTensor
            grad_norm = grad_norm.full_tensor()
        return {"loss": total, "grad_norm": grad_norm.detach(), "lr": lr}

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        total = torch.zeros((), device=self.ctx.device)
        batches = self.val_data(self.cfg.train.eval_batches)
        for inputs, targets in batches:
            inputs, targets = inputs.to(self.ctx.device), targets.to(self.ctx.device)
            with self.autocast:
                total += lm_loss(self.model(inputs), targets)[0]
        return _all_mean(total / self.cfg.train.eval_batches, self.ctx)

    def run(self) -> None:
        tc = self.cfg.train
        tokens_per_step = tc.batch_size * self.cfg.data.seq_len
        window_start, window_steps = time.perf_counter(), 0
        while self.step < tc.steps:
            out = self.train_step()
            window_steps += 1
            is_last = self.step == tc.steps
            metrics: dict[str, float] = {}
            if self.step % tc.log_every == 0 or is_last:
                elapsed = time.perf_counter() - window_start
                tps = tokens_per_step * window_steps / elapsed
                metrics.update(
                    loss=_all_mean(out["loss"], self.ctx),
                    grad_norm=float(out["grad_norm"]),
                    lr=out["lr"],
                    tokens_per_s=tps,
                    model_tflops_per_s=tps * self.flops_per_token / 1e12,
                    tokens=float(self.step * tokens_per_step),
                )
                if self.peak:
                    metrics["mfu"] = tps * self.flops_per_token / (self.peak * self.ctx.world)
                metrics.update(self.core.newton_stats())
                window_start, window_steps = time.perf_counter(), 0
            do_ckpt = self.step % tc.checkpoint_every == 0 or is_last
            # Every checkpoint is validated, so "best" always names a checkpoint that exists.
            if self.step % tc.eval_every == 0 or do_ckpt:
                val = self.evaluate()
                metrics.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)))
                if do_ckpt and val < self.best_val:
                    self.best_val, self.best_step = val, self.step
            if metrics:
                self.hooks.log(metrics, self.step)
            # Both are all-reduced, so every rank stops here together, and before a checkpoint
            # of the diverged weights could replace the last good one.
            bad = [f"{key}={metrics[key]}" for key in ("loss", "val_loss")
                   if key in metrics and not math.isfinite(metrics[key])]  # fmt: skip
            if bad:
                self.diverged_at = self.step
                self.hooks.diverged(self.step, ", ".join(bad))
                return
            if "val_loss" in metrics:
                # For Tune: a sweep's trials may train different step counts (train.steps or
                # train.flops_budget swept), so each says where its own end is.
                metrics.update(step=self.step, steps=tc.steps)
                self.report(metrics, with_checkpoint=do_ckpt)
                if do_ckpt and self.best_step == self.step:
                    self.hooks.keep_best(self.step)
