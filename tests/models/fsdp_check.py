"""Run as a script: a model wrapped per block with FSDP2 (one CPU rank, gloo) gives the same
loss and gradients (A and C included) as the plain model, so the Newton Function routes the
recurrent weights' gradients through FSDP's parameter swapping.  A separate process because
it initialises torch.distributed."""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from paralab.models.factory import ModelConfig, build_model, lm_loss


def main(cell: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=31, d_model=16, n_layers=2, heads=2, mode="parallel", cell=cell)
    plain, sharded = build_model(cfg), build_model(cfg)
    sharded.load_state_dict(plain.state_dict())
    mesh = init_device_mesh("cpu", (1,))
    for block in sharded.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    tokens = torch.randint(0, 31, (2, 12))
    want = lm_loss(plain(tokens), tokens)[0]
    want.backward()
    got = lm_loss(sharded(tokens), tokens)[0]
    got.backward()
    assert torch.allclose(got, want), (got, want)
    grads = dict(plain.named_parameters())
    for name, param in sharded.named_parameters():
        grad = param.grad.full_tensor()
        assert torch.allclose(grad, grads[name].grad, atol=1e-6), name
    sharded.constrain_()
    dist.destroy_process_group()
    print(f"{cell}: fsdp == plain")


if __name__ == "__main__":
    main(sys.argv[1])
