"""Patch completion: a mask trigger that a few vision-tower cells hold is unlearned as those whole cells, filled in
with the pattern that drives images to the target hardest (docs/METHOD_NOTES.md §21).

The mask family's L1 prior finds the *cheapest* trigger, which for a planted patch is a few of its pixels (on digits,
the white squares of a checkerboard; its black squares vanish into the black background). Unlearning those few
pixels leaves most of the patch's features in place, and later rounds, which re-invert on the partly cleaned model,
reach for natural features of the target instead (scattered strokes of a "zero"); unlearning those costs the target
class its own accuracy. A ViT embeds each ``patch_size`` cell with one linear map, so a patch backdoor lives in
what a cell's content looks like: once the refined mask sits in a few cells, the whole cells are the trigger's
support, and filling them in gives a stand-in for the attacker's patch that is closer than the sparse inversion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .image_trigger import MaskPatternTrigger

CELL_SHARE = 0.25
"""A cell is part of the patch if it holds at least this share of the fullest cell's mask mass."""
HARD_LOGIT = 12.0
"""Mask logit of a completed patch: σ(12) ≈ 1 − 6e-6, so the cells are fully replaced."""


def patch_cells(mask: torch.Tensor, cell: int, share: float = CELL_SHARE) -> torch.Tensor:
    """The grid cells (``cell`` pixels a side) a mask ``[H, W]`` occupies: boolean ``[⌈H/cell⌉, ⌈W/cell⌉]``, true
    where a cell holds at least ``share`` of the fullest cell's mass."""
    h, w = mask.shape
    padded = F.pad(mask, (0, -w % cell, 0, -h % cell))
    mass = padded.reshape(padded.shape[0] // cell, cell, padded.shape[1] // cell, cell).sum((1, 3))
    return mass >= share * mass.max().clamp_min(1e-12)


def cells_connected(cells: torch.Tensor) -> bool:
    """Whether the true cells of a boolean grid form one region (8-connected: cells that touch at a corner count).

    A patch trigger is one compact stamp. A mask whose cells lie apart (on CIFAR-10, a blended trigger that a few
    scattered pixels already fire, METHOD_NOTES §23) is a piece of a global trigger, not a patch to complete.
    """
    todo = [tuple(cells.nonzero()[0].tolist())] if cells.any() else []
    seen = set(todo)
    while todo:
        r, c = todo.pop()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                n = (r + dr, c + dc)
                if n not in seen and 0 <= n[0] < cells.shape[0] and 0 <= n[1] < cells.shape[1] and bool(cells[n]):
                    seen.add(n)
                    todo.append(n)
    return len(seen) == int(cells.sum())


def cells_to_pixels(cells: torch.Tensor, cell: int, size: tuple[int, int]) -> torch.Tensor:
    """A boolean cell grid as a float pixel mask ``[H, W]`` (cropped to ``size``)."""
    pixels = cells.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return pixels[: size[0], : size[1]].float()


def _fit(
    params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], steps: int, learning_rate: float,
    after_step: Callable[[], None] | None = None,
) -> float:
    # Local steps on purpose, no all-reduce: under Accelerate only process 0's result is kept (the trainer broadcasts
    # its triggers), and a collective here would hang if the ranks' masks disagreed on whether to complete.
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    loss = torch.zeros(())
    for _ in range(steps):
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
    return float(loss.detach())


def complete_patch(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    logit_scale: torch.Tensor,
    trigger: MaskPatternTrigger,
    concepts: torch.Tensor,
    target: int,
    sample: Callable[[], torch.Tensor],
    *,
    cell: int,
    max_cells: int,
    steps: int,
    mask_l1_weight: float,
    learning_rate: float,
) -> tuple[MaskPatternTrigger | None, dict[str, Any]]:
    """Refine a mask trigger toward ``target`` and, if it then sits in at most ``max_cells`` cells that touch each
    other, complete it.

    Args:
        encode_image: the (frozen) model's normalised image embedding.
        logit_scale: its logit scale.
        trigger: the inverted mask trigger (candidate 0 is used); left unchanged.
        concepts: normalised concept embeddings ``[K, D]``.
        target: index of the suspected target concept.
        sample: draws a batch of clean images ``[B, 3, H, W]`` in [0, 1].
        cell: the vision tower's patch side in data pixels.
        max_cells: most cells a completed patch may cover; a trigger spread wider is not a patch.
        steps: optimisation steps of each stage (refinement, then completion).
        mask_l1_weight: the mask prior's weight during refinement (the inversion's own).
        learning_rate: Adam learning rate of both stages.

    Returns:
        ``(completed, info)``: the completed trigger (a single-candidate family whose mask is 1 on the chosen cells
        and 0 elsewhere), or ``None`` when the refined mask is not held by a few adjacent cells; ``info`` says why.
    """
    labels = None

    def cross_entropy(candidate: MaskPatternTrigger) -> torch.Tensor:
        nonlocal labels
        images = sample()
        if labels is None or len(labels) != len(images):
            labels = torch.full((len(images),), target, device=images.device)
        emb = encode_image(candidate.apply_one(images, 0))
        return F.cross_entropy(logit_scale * emb @ concepts.t(), labels)

    # 1. Refine: the sweep's trigger has had its steps split over every candidate concept's batch; more steps toward
    # the one target under the same L1 prior gather the mask into the cells the backdoor answers to.
    refined = trigger.select([0])
    _fit(list(refined.parameters()),
         lambda: cross_entropy(refined) + mask_l1_weight * refined.prior_cost().sum(), steps, learning_rate)
    mask = refined.mask()[0, 0].detach()
    cells = patch_cells(mask, cell)
    info: dict[str, Any] = {"cells": int(cells.sum()), "cell_pixels": cell, "refined_mask_pixels": float(mask.sum()),
                            "connected": cells_connected(cells)}
    if int(cells.sum()) > max_cells or not info["connected"]:
        info["completed"] = False
        return None, info

    # 2. Complete: the chosen cells entirely. The pixels the refined mask already holds keep their pattern (the part
    # of the patch that was found: this fills in the rest, it does not invert a new trigger); the rest of the cells
    # gets the pattern that drags images to the target hardest.
    completed = refined.select([0])
    pixels = cells_to_pixels(cells, cell, mask.shape).to(completed.mask_logits.device)
    found = (mask > 0.5).to(pixels.device)
    known = completed.pattern_logits.detach().clone()
    with torch.no_grad():
        completed.mask_logits.copy_((2 * pixels - 1).mul(HARD_LOGIT).expand_as(completed.mask_logits))
    completed.mask_logits.requires_grad_(False)

    def keep_found() -> None:
        with torch.no_grad():
            completed.pattern_logits.copy_(torch.where(found, known, completed.pattern_logits))

    info["completion_loss"] = round(_fit([completed.pattern_logits], lambda: cross_entropy(completed), steps,
                                         learning_rate, after_step=keep_found), 4)
    completed.mask_logits.requires_grad_(True)
    info["found_pixels"] = int((found * pixels).sum())
    info["completed"] = True
    return completed, info
