"""What every baseline shares: BI-BAU's training budget and one plain training loop over in-memory pairs.

A baseline is only a fair comparison if it sees the same clean pairs for the same number of optimizer steps, with
the same batch size, learning rate, schedule and seed as BI-BAU's M-step. :class:`Budget` reads those values from a
:class:`~bibau_hf.BIBAUConfig`, and :func:`train_with_budget` runs any loss under them, so a baseline module only
writes its loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bibau_hf.bibau_config import BIBAUConfig
from bibau_hf.clean_pipeline import finetune_epochs, lr_schedule_of
from bibau_hf.contrastive import clamp_logit_scale, make_lr_scheduler, make_optimizer, tokenize_all
from bibau_hf.data import ImageTextDataset
from bibau_hf.models import ContrastiveAdapter


@dataclass(frozen=True)
class Budget:
    """The training budget of a defense: what must be equal between BI-BAU and every baseline.

    Attributes:
        epochs: passes over the defender's clean pairs.
        batch_size: pairs per optimizer step (the last partial batch is dropped, as BI-BAU's Trainer does).
        learning_rate: peak AdamW learning rate.
        lr_schedule: ``"constant"``, ``"cosine"`` or ``"linear"`` (BIBAUConfig's default is constant).
        weight_decay: AdamW weight decay.
        seed: seeds batch order and any randomness of the baseline (augmentations).
    """

    epochs: int
    batch_size: int
    learning_rate: float
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    seed: int = 0

    @classmethod
    def from_config(cls, config: BIBAUConfig, num_pairs: int) -> Budget:
        """The budget of BI-BAU's M-step as configured, over ``num_pairs`` clean pairs (one device:
        ``per_device_train_batch_size``; ``max_steps`` becomes the epochs giving as many optimisation steps)."""
        return cls(
            epochs=finetune_epochs(config, num_pairs), batch_size=config.per_device_train_batch_size,
            learning_rate=config.learning_rate, lr_schedule=lr_schedule_of(config),
            weight_decay=config.weight_decay, seed=config.seed,
        )


@dataclass
class Batch:
    """One training step's inputs, already on the model's device.

    Attributes:
        images: float ``[B, 3, H, W]`` in ``[0, 1]``.
        input_ids: the captions' token ids ``[B, L]``.
        captions: the captions as text (for text augmentation).
        labels: class ids ``[B]`` where the data has labels, else ``None``.
        generator: the run's CPU random generator (augmentations draw from it, so a run is reproducible).
    """

    images: torch.Tensor
    input_ids: torch.Tensor
    captions: list[str]
    labels: torch.Tensor | None
    generator: torch.Generator


StepLoss = Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]
"""``step(batch) -> (loss, {term: value})``: the loss to minimise on one batch and its logged terms."""


def train_with_budget(
    adapter: ContrastiveAdapter, data: ImageTextDataset, budget: Budget, step: StepLoss
) -> list[dict[str, float]]:
    """Minimise ``step``'s loss over ``data`` with the budget's optimizer, schedule and batch order (in place).

    The loop mirrors :func:`bibau_hf.contrastive.train_contrastive` (AdamW without decay on biases, norms and the
    temperature; CLIP's temperature clamp), so the only difference between the baselines is their loss.

    Args:
        adapter: the model to train.
        data: the defender's clean pairs.
        budget: epochs, batch size, learning rate, schedule and seed.
        step: the baseline's loss on one :class:`Batch`.

    Returns:
        Per epoch, the mean of each logged term.

    Raises:
        ValueError: with fewer than two pairs (no contrastive batch).
    """
    n = len(data)
    if n < 2:
        raise ValueError("a contrastive baseline needs at least 2 clean pairs")
    generator = torch.Generator().manual_seed(budget.seed)
    token_ids = tokenize_all(adapter, data.captions)
    batch_size = min(budget.batch_size, n)
    steps_per_epoch = max(1, n // batch_size)
    optimizer = make_optimizer(adapter, budget.learning_rate, budget.weight_decay)
    scheduler = make_lr_scheduler(optimizer, budget.epochs * steps_per_epoch, 0.0, budget.lr_schedule)
    device = adapter.device
    adapter.train()
    history: list[dict[str, float]] = []
    for _ in range(budget.epochs):
        order = torch.randperm(n, generator=generator)
        sums: dict[str, float] = {}
        for index in range(steps_per_epoch):
            idx = order[index * batch_size : (index + 1) * batch_size]
            batch = Batch(
                images=data.images[idx].to(device).float() / 255.0,
                input_ids=token_ids[idx].to(device),
                captions=[data.captions[i] for i in idx.tolist()],
                labels=None if data.labels is None else data.labels[idx].to(device),
                generator=generator,
            )
            loss, logs = step(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            clamp_logit_scale(adapter)
            for name, value in {"loss": float(loss.detach()), **logs}.items():
                sums[name] = sums.get(name, 0.0) + value
        history.append({name: value / steps_per_epoch for name, value in sums.items()})
    adapter.eval()
    return history
