"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (fresh processes, gloo on CPU).

Forked workers (accelerate's debug_launcher) can deadlock once the parent has started torch's thread pools, which a
test session always has; torchrun starts clean processes instead.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F


def check_clip_loss(rank: int, world: int) -> None:
    from bibau_hf.bibau_trainer import distributed_clip_loss
    from bibau_hf.contrastive import clip_loss

    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(8, 16, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(8, 16, generator=generator), dim=-1)
    scale = torch.tensor(7.0)
    full_images = images.clone().requires_grad_(True)
    full_loss = clip_loss(full_images, texts, scale)
    full_loss.backward()
    half = 8 // world
    rows = slice(rank * half, (rank + 1) * half)
    local = images[rows].clone().requires_grad_(True)
    loss = distributed_clip_loss(local, texts[rows], scale)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    # The mean of the ranks' losses is the one-process loss on the whole batch ...
    torch.testing.assert_close(mean_loss, full_loss.detach(), atol=1e-6, rtol=1e-6)
    # ... and each rank's gradient, once averaged as DDP does, is the one-process gradient of its rows.
    torch.testing.assert_close(local.grad / world, full_images.grad[rows], atol=1e-6, rtol=1e-5)


def check_trigger_sync(rank: int, world: int) -> None:
    from bibau_hf.inversion.distributed import all_reduce_gradients, mean_over_ranks

    param = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.Adam([param], lr=0.1)
    for step in range(3):
        param.grad = torch.full((4,), float(rank + 1 + step))  # each rank sees different data
        all_reduce_gradients([param])
        optimizer.step()
    gathered = [torch.zeros(4) for _ in range(world)]
    dist.all_gather(gathered, param.detach())
    torch.testing.assert_close(gathered[0], gathered[1])
    assert mean_over_ranks(float(rank)) == (world - 1) / 2


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    check_clip_loss(rank, world)
    check_trigger_sync(rank, world)
    dist.barrier()
    print(f"rank {rank}: ok", flush=True)
    sys.stdout.flush()
    # Leave without interpreter teardown: gloo's background threads sometimes abort at exit ("terminate called
    # without an active exception") after every check has passed, which would turn a passing run red at random.
    os._exit(0)


if __name__ == "__main__":
    main()
