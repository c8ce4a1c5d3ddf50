"""Contrastive (CLIP) loss and a plain training loop.

The loop is what the attack lab uses to plant backdoors, and what clean fine-tuning and the retuning attack use: a
deliberately simple single-process loop over tensors held in memory. BI-BAU itself trains through
:class:`~bibau_hf.BIBAUTrainer`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .models.base import ContrastiveAdapter


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of normalised, paired embeddings (pair i is the positive of row i)."""
    logits = logit_scale * image_embeds @ text_embeds.t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (reflect padding), a cheap augmentation for tiny images."""
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def tokenize_all(adapter: ContrastiveAdapter, captions: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
    """Token ids for every caption, padded to one common length (so batches can be sliced from one tensor)."""
    chunks = [adapter.tokenize(captions[i : i + batch_size]).cpu() for i in range(0, len(captions), batch_size)]
    length = max(c.shape[1] for c in chunks)
    return torch.cat([F.pad(c, (0, length - c.shape[1]), value=adapter.pad_token_id) for c in chunks])


LR_SCHEDULES = ("constant", "cosine", "linear")


def make_optimizer(adapter: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases, norms and the logit scale get no weight decay (as in CLIP)."""
    decay, no_decay = [], []
    for name, param in adapter.named_parameters():
        if param.requires_grad:
            (no_decay if param.dim() < 2 or "logit_scale" in name else decay).append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
    )


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.0, schedule: str = "cosine"
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps (at least one step), then the named schedule.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        total_steps: optimizer steps in the whole run.
        warmup_fraction: share of the steps used for the linear warm-up.
        schedule: ``"cosine"`` (decay to 0), ``"linear"`` (decay to 0) or ``"constant"`` (the peak rate throughout,
            what ``transformers``' ``"constant"`` scheduler, BIBAUConfig's default, does).

    Raises:
        ValueError: on an unknown schedule name.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    warmup = max(1, int(warmup_fraction * total_steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


def clamp_logit_scale(adapter: ContrastiveAdapter) -> None:
    """Clamp the learned temperature as CLIP does, so logits cannot blow up (call after each optimizer step)."""
    with torch.no_grad():
        adapter.native_model.logit_scale.clamp_(0, math.log(100))


def train_contrastive(
    adapter: ContrastiveAdapter,
    images: torch.Tensor,
    captions: Sequence[str],
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.1,
    warmup_fraction: float = 0.05,
    max_shift: int = 0,
    horizontal_flip: bool = False,
    seed: int = 0,
    progress: bool = True,
    description: str = "train",
    lr_schedule: str = "cosine",
) -> list[float]:
    """Train all parameters of ``adapter`` with the CLIP loss on in-memory pairs.

    Args:
        adapter: the model to train (in place).
        images: uint8 ``[N, 3, H, W]``.
        captions: ``N`` captions, caption i describes image i.
        epochs: passes over the data.
        batch_size: pairs per step (the last partial batch is dropped when there is more than one batch).
        learning_rate: peak AdamW learning rate (cosine decay after a linear warm-up).
        weight_decay: AdamW weight decay (not applied to biases, norms and the logit scale).
        warmup_fraction: fraction of the steps used for warm-up.
        max_shift: random translation augmentation in pixels (0 = none).
        horizontal_flip: random horizontal flips.
        seed: seeds shuffling and augmentation.
        progress: show a progress bar.
        description: progress bar label.
        lr_schedule: ``"cosine"`` (decay after the warm-up), ``"constant"`` or ``"linear"``; see
            :func:`make_lr_scheduler`.

    Returns:
        The mean loss of each epoch.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(images) < 2:
        raise ValueError("contrastive training needs at least 2 pairs")
    generator = torch.Generator().manual_seed(seed)
    token_ids = tokenize_all(adapter, captions)
    n = len(images)
    batch_size = min(batch_size, n)
    steps_per_epoch = max(1, n // batch_size)
    total_steps = epochs * steps_per_epoch

    optimizer = make_optimizer(adapter, learning_rate, weight_decay)
    scheduler = make_lr_scheduler(optimizer, total_steps, warmup_fraction, lr_schedule)
    adapter.train()
    epoch_losses = []
    bar = tqdm(total=total_steps, desc=description, disable=not progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            batch = images[idx].float() / 255.0
            batch = random_shift(batch, max_shift, generator)
            if horizontal_flip:
                flip = torch.rand(len(idx), generator=generator) < 0.5
                batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
            out = adapter(batch, token_ids[idx])
            loss = clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            clamp_logit_scale(adapter)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        epoch_losses.append(sum(losses) / len(losses))
    bar.close()
    adapter.eval()
    return epoch_losses
