"""Data parallelism, applied from outside the model: DDP, or FSDP2 per block and then the root."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from paralab.platform.config.schema import TrainConfig


def device_for_worker(use_gpu: bool) -> torch.device:
    if use_gpu:
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


def parallelize(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Wrap ``model`` for ``cfg.strategy``. A single process gets the bare model."""
    model.to(device)
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    if cfg.strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    return _fully_shard(model, cfg, device)


def _fully_shard(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # bf16 parameters with fp32 reductions on GPU, as in the paper; CPUs train in fp32.
    if device.type == "cuda" and cfg.precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    options = {"mesh": mesh, "mp_policy": mp}
    if cfg.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for block in model.blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
