"""Two CPU processes (gloo, through accelerate's debug_launcher) give the same losses as one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import debug_launcher

from bibau_hf.contrastive import clip_loss


def _batch():
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(8, 16, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(8, 16, generator=generator), dim=-1)
    return images, texts, torch.tensor(7.0)


def _two_process_clip_loss():
    import torch.distributed as dist

    from bibau_hf.bibau_trainer import distributed_clip_loss

    # debug_launcher initialises the gloo process group itself.
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    images, texts, scale = _batch()
    full_images = images.clone().requires_grad_(True)
    full_loss = clip_loss(full_images, texts, scale)
    full_loss.backward()
    half = 8 // world
    local = images[rank * half : (rank + 1) * half].clone().requires_grad_(True)
    loss = distributed_clip_loss(local, texts[rank * half : (rank + 1) * half], scale)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    # The mean of the ranks' losses is the one-process loss on the whole batch ...
    torch.testing.assert_close(mean_loss, full_loss.detach(), atol=1e-6, rtol=1e-6)
    # ... and each rank's gradient, once averaged as DDP does, is the one-process gradient of its rows.
    torch.testing.assert_close(local.grad / world, full_images.grad[rank * half : (rank + 1) * half], atol=1e-6,
                               rtol=1e-5)


def _two_process_trigger_sync():
    import torch.distributed as dist

    from bibau_hf.inversion.distributed import all_reduce_gradients, mean_over_ranks

    rank, world = dist.get_rank(), dist.get_world_size()
    param = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.Adam([param], lr=0.1)
    for step in range(3):
        # Each rank sees different data, hence a different gradient ...
        param.grad = torch.full((4,), float(rank + 1 + step))
        all_reduce_gradients([param])
        optimizer.step()
    # ... but the averaged gradient keeps the trigger identical on every rank.
    gathered = [torch.zeros(4) for _ in range(world)]
    dist.all_gather(gathered, param.detach())
    torch.testing.assert_close(gathered[0], gathered[1])
    assert mean_over_ranks(float(rank)) == 0.5


def test_one_and_two_processes_give_the_same_contrastive_loss_and_gradients():
    debug_launcher(_two_process_clip_loss, num_processes=2)


def test_trigger_parameters_stay_identical_across_processes():
    debug_launcher(_two_process_trigger_sync, num_processes=2)
