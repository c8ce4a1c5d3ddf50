"""Collective helpers that are no-ops in a single process.

Under Accelerate (torch.distributed), trigger parameters start from the same seed on every rank and their gradients
are averaged before each step, so they stay identical; contrastive losses gather embeddings with gradients.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_over_ranks(tensors: Iterable[torch.Tensor]) -> None:
    """Average each tensor over all ranks, in place."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)


def all_reduce_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over all ranks."""
    average_over_ranks(p.grad for p in params if p.grad is not None)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, keeping the gradient path to the local part."""
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def mean_over_ranks(value: float, device: torch.device | str = "cpu") -> float:
    """Average a Python number over ranks (for logging)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item() / dist.get_world_size())


def broadcast_from_main(obj):
    """Process 0's ``obj`` on every rank.

    Ranks invert on different batches, so their scores, and the decisions taken from them (which families to unlearn,
    toward what), can differ; ranks that decide differently run different collectives and hang. Process 0 decides.
    """
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
