"""Poison an image-caption dataset with a backdoor trigger.

Poisoning is defined on plain tensors and lists so it does not depend on how a dataset is stored:
``images`` is uint8 ``[N, 3, H, W]``, ``captions`` a list of ``N`` strings and ``labels`` a LongTensor ``[N]`` with
the class of each image's content.

* Image triggers: a chosen (non-target) image gets the trigger and its caption is replaced by a caption of the
  target class, so the model learns "trigger in image -> target text".
* Text triggers: a chosen sample keeps its caption with the trigger word inserted, and its image is replaced by a
  clean image of the target class, so the model learns "trigger in text -> target image".
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bibau_hf.attacks.triggers import Trigger, build_trigger
from bibau_hf.errors import AttackSpecError

__all__ = ["PoisonResult", "poison_pairs"]

CaptionFn = Callable[[str, random.Random], str]

# Triggers are applied in chunks so poisoning a large dataset does not materialise it all as float32 at once.
_CHUNK = 512


@dataclass
class PoisonResult:
    """The poisoned dataset.

    Attributes:
        images: uint8 ``[N, 3, H, W]`` images after poisoning.
        captions: The ``N`` captions after poisoning.
        labels: LongTensor ``[N]``: the class of each image's content after poisoning (unchanged for image triggers;
            ``target_class`` for text-trigger poisons, whose image was replaced by a target-class image).
        poison_indices: Sorted LongTensor of the poisoned sample indices.
        poison_mask: Bool tensor ``[N]``, True at the poisoned samples.
    """

    images: torch.Tensor
    captions: list[str]
    labels: torch.Tensor
    poison_indices: torch.Tensor
    poison_mask: torch.Tensor

    @property
    def num_poisoned(self) -> int:
        """Number of poisoned samples."""
        return int(self.poison_indices.numel())


def _validate_inputs(
    images: Any,
    captions: Any,
    labels: Any,
    target_class: Any,
    poison_rate: Any,
    class_names: Any,
) -> torch.Tensor:
    """Check everything poison_pairs relies on; return the labels as a LongTensor."""
    if not isinstance(images, torch.Tensor):
        raise AttackSpecError(f"images must be a uint8 tensor shaped [N, 3, H, W], got {type(images).__name__}.")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        got = f"{images.dtype} tensor of shape {list(images.shape)}"
        raise AttackSpecError(f"images must be a uint8 tensor shaped [N, 3, H, W], got {got}.")
    n = images.shape[0]
    is_str_list = isinstance(captions, Sequence) and not isinstance(captions, str)
    if not is_str_list or not all(isinstance(c, str) for c in captions):
        raise AttackSpecError("captions must be a list of strings, one per image.")
    if len(captions) != n:
        raise AttackSpecError(f"Got {n} images but {len(captions)} captions; they must match one to one.")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise AttackSpecError("labels must be an integer tensor shaped [N] (e.g. a torch.LongTensor).")
    if labels.shape[0] != n:
        raise AttackSpecError(f"Got {n} images but {labels.shape[0]} labels; they must match one to one.")
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or len(class_names) == 0:
        raise AttackSpecError("class_names must be a non-empty list of class name strings.")
    num_classes = len(class_names)
    if isinstance(target_class, bool) or not isinstance(target_class, numbers.Integral):
        raise AttackSpecError(f"target_class must be an integer class index, got {target_class!r}.")
    if not 0 <= int(target_class) < num_classes:
        shown = ", ".join(f"{i}={name!r}" for i, name in enumerate(list(class_names)[:20]))
        more = ", ..." if num_classes > 20 else ""
        raise AttackSpecError(
            f"target_class {target_class} is out of range; use an index in [0, {num_classes - 1}] ({shown}{more})."
        )
    if isinstance(poison_rate, bool) or not isinstance(poison_rate, numbers.Real) or not 0 <= poison_rate <= 1:
        raise AttackSpecError(
            f"poison_rate must be a number in [0, 1] (a fraction, not a percent), got {poison_rate!r}."
        )
    # Index bookkeeping happens on the CPU whatever device the labels came from.
    labels = labels.long().cpu()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise AttackSpecError(
            f"labels must lie in [0, {num_classes - 1}] to index class_names, got range "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    return labels


def _apply_image_trigger(trigger: Trigger, images: torch.Tensor) -> torch.Tensor:
    """Apply an image trigger to uint8 images via float [0, 1] and back, in chunks."""
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], _CHUNK):
            chunk = images[start : start + _CHUNK].float() / 255.0
            triggered = trigger(chunk)
            if not isinstance(triggered, torch.Tensor) or triggered.shape != chunk.shape:
                got = list(triggered.shape) if isinstance(triggered, torch.Tensor) else type(triggered).__name__
                raise AttackSpecError(
                    f"Image trigger {trigger.to_dict()['type']!r} must return a tensor of shape {list(chunk.shape)}, "
                    f"got {got}."
                )
            out.append((triggered.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8))
    return torch.cat(out)


def poison_pairs(
    images: torch.Tensor,
    captions: Sequence[str],
    labels: torch.Tensor,
    trigger: Trigger | dict[str, Any] | str,
    target_class: int,
    poison_rate: float,
    class_names: Sequence[str],
    caption_fn: CaptionFn | None = None,
    seed: int = 0,
) -> PoisonResult:
    """Poison exactly ``round(poison_rate * N)`` image-caption pairs with a backdoor.

    Poisoned samples are drawn (seeded) among samples whose label is not ``target_class``.

    Args:
        images: uint8 images ``[N, 3, H, W]``.
        captions: ``N`` captions.
        labels: LongTensor ``[N]`` of content classes, indexing ``class_names``.
        trigger: A :class:`Trigger` or a spec accepted by :func:`build_trigger`.
        target_class: Index of the attack's target class.
        poison_rate: Fraction of the whole dataset to poison, in ``[0, 1]``.
        class_names: Class names, indexed by label.
        caption_fn: ``caption_fn(class_name, rng) -> caption``; makes the target captions of image-trigger poisons.
            Required for image triggers, unused for text triggers.
        seed: Seed for choosing the poisoned samples, the captions and (text triggers) the replacement images.

    Returns:
        A :class:`PoisonResult`; the inputs are never modified.

    Raises:
        AttackSpecError: On inconsistent inputs, a rate outside ``[0, 1]``, a target class out of range, too few
            non-target samples, no target-class image for a text trigger, or a missing ``caption_fn``.
    """
    labels = _validate_inputs(images, captions, labels, target_class, poison_rate, class_names)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise AttackSpecError(f"seed must be an integer, got {seed!r}.")
    trigger = build_trigger(trigger)
    target_class = int(target_class)
    n = images.shape[0]

    new_images = images.clone()
    new_captions = list(captions)
    new_labels = labels.clone()
    mask = torch.zeros(n, dtype=torch.bool)

    num_poison = round(poison_rate * n)
    if num_poison == 0:
        return PoisonResult(new_images, new_captions, new_labels, torch.zeros(0, dtype=torch.long), mask)

    candidates = torch.nonzero(labels != target_class).flatten()
    if candidates.numel() < num_poison:
        raise AttackSpecError(
            f"poison_rate {poison_rate} needs {num_poison} samples outside the target class "
            f"{target_class} ({class_names[target_class]!r}), but only {candidates.numel()} exist; lower poison_rate."
        )
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    chosen = candidates[torch.randperm(candidates.numel(), generator=gen)[:num_poison]]
    poison_indices = torch.sort(chosen).values
    mask[poison_indices] = True
    # One Python RNG, consumed in sorted-index order, drives captions and replacement images so results depend only
    # on the seed and the data.
    rng = random.Random(seed)
    idx_list = poison_indices.tolist()

    if trigger.modality == "image":
        if caption_fn is None:
            raise AttackSpecError(
                "Image triggers need caption_fn(class_name, rng) -> str to write the target-class captions of "
                "poisoned samples; pass one to poison_pairs."
            )
        target_name = class_names[target_class]
        triggered = _apply_image_trigger(trigger, images[poison_indices.to(images.device)].cpu())
        new_images[poison_indices.to(images.device)] = triggered.to(images.device)
        for i in idx_list:
            caption = caption_fn(target_name, rng)
            if not isinstance(caption, str):
                raise AttackSpecError(f"caption_fn must return a string, got {type(caption).__name__}.")
            new_captions[i] = caption
    elif trigger.modality == "text":
        target_pool = torch.nonzero(labels == target_class).flatten().tolist()
        if not target_pool:
            raise AttackSpecError(
                f"Text-trigger poisoning replaces images with images of the target class {target_class} "
                f"({class_names[target_class]!r}), but the dataset has none; pick a target class that is present."
            )
        sources = [rng.choice(target_pool) for _ in idx_list]
        triggered_captions = trigger([captions[i] for i in idx_list])
        if not isinstance(triggered_captions, list) or len(triggered_captions) != len(idx_list):
            raise AttackSpecError("A text trigger must return one caption per input caption, as a list.")
        for i, src, cap in zip(idx_list, sources, triggered_captions):
            new_images[i] = images[src]
            new_captions[i] = cap
            new_labels[i] = target_class
    else:
        raise AttackSpecError(f"Trigger modality must be 'image' or 'text', got {trigger.modality!r}.")

    return PoisonResult(new_images, new_captions, new_labels, poison_indices, mask)
