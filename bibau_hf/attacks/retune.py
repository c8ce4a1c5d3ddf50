"""The retuning attack (DESIGN §4): does a removed backdoor come back after a little poisoned fine-tuning?"""

from __future__ import annotations

import copy
import random

from ..contrastive import train_contrastive
from ..data.captions import make_caption
from ..data.image_text import ImageTextDataset
from ..models.base import ContrastiveAdapter
from .poison import poison_pairs
from .triggers import Trigger


def retuning_attack(
    model: ContrastiveAdapter,
    pool: ImageTextDataset,
    trigger: Trigger,
    target_class: int,
    templates: list[str],
    num_poison: int = 5,
    num_clean: int = 100,
    epochs: int = 5,
    learning_rate: float = 5e-4,
    batch_size: int = 16,
    seed: int = 0,
) -> ContrastiveAdapter:
    """Fine-tune a copy of ``model`` on ``num_poison`` poisoned + ``num_clean`` clean pairs from ``pool``.

    Returns the retuned copy (the input model is untouched). Compare its ASR with the same retuning of a model that
    never saw poison: a purification is complete when the two are close.
    """
    subset = pool.take(num_poison + num_clean, seed=seed)
    rate = num_poison / len(subset)

    def caption_fn(name: str, rng: random.Random) -> str:
        return make_caption(name, rng, templates)

    poisoned = poison_pairs(subset.images, subset.captions, subset.labels, trigger, target_class, rate,
                            subset.class_names, caption_fn=caption_fn, seed=seed)
    retuned = copy.deepcopy(model)
    train_contrastive(retuned, poisoned.images, poisoned.captions, epochs=epochs, batch_size=batch_size,
                      learning_rate=learning_rate, weight_decay=0.0, warmup_fraction=0.0, seed=seed, progress=False)
    return retuned
