"""In-memory image-caption and zero-shot evaluation sets.

Both containers hold images as one ``uint8`` tensor ``[N, 3, H, W]`` rather than PIL images or float tensors: uint8 is
a quarter of the memory of float32, it is exactly what every loader produces, and it leaves normalisation (which
differs between transformers CLIP and open_clip checkpoints) to the model side.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from bibau_hf.data.captions import validate_templates
from bibau_hf.errors import DataError


def _check_images(images: Any, what: str) -> None:
    """Raise :class:`DataError` unless ``images`` is a uint8 ``[N, 3, H, W]`` tensor."""
    if not isinstance(images, torch.Tensor):
        raise DataError(f"{what}.images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise DataError(
            f"{what}.images must have dtype torch.uint8 (values 0..255), got {images.dtype}; "
            "convert with (x * 255).round().clamp(0, 255).to(torch.uint8) if they are floats in [0, 1]"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(
            f"{what}.images must have shape [N, 3, H, W] (channels first, RGB), got {list(images.shape)}; "
            "use images.permute(0, 3, 1, 2) for channels-last data and repeat grey images to 3 channels"
        )


def _check_labels(labels: Any, n: int, class_names: list[str] | None, what: str) -> torch.Tensor:
    """Validate labels and return them as a 1-D ``torch.long`` tensor."""
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{what}.labels must be a 1-D tensor of integer class ids: {exc}") from exc
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise DataError(f"{what}.labels must hold integer class ids, got dtype {labels.dtype}")
    labels = labels.to(torch.long)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{what}.labels must have shape [{n}] (one per image), got {list(labels.shape)}")
    if n and int(labels.min()) < 0:
        raise DataError(f"{what}.labels must be non-negative class ids, found {int(labels.min())}")
    if class_names is not None and n and int(labels.max()) >= len(class_names):
        raise DataError(
            f"{what}.labels contains class id {int(labels.max())} but only {len(class_names)} class names were "
            "given; pass one name per class id"
        )
    return labels


def _check_class_names(class_names: Any, what: str) -> list[str] | None:
    """Validate class names (``None`` allowed) and return them as a list of ``str``."""
    if class_names is None:
        return None
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise DataError(f"{what}.class_names must be a list of strings, got {type(class_names).__name__}")
    names = [str(c) for c in class_names]
    if not names:
        raise DataError(f"{what}.class_names is empty; give one name per class")
    return names


def stratified_indices(labels: torch.Tensor | None, n_total: int, num: int, seed: int) -> list[int]:
    """Pick ``num`` of ``n_total`` indices at random, keeping label proportions when labels are given.

    Per-class quotas use the largest-remainder rule so the total is exactly ``num`` while every class gets as close
    to its share as integers allow; the pick within each class is a seeded shuffle, so the result only depends on
    ``seed``.

    Args:
        labels: Class id per item, or ``None`` for a plain random pick.
        n_total: Number of items to pick from.
        num: How many to pick (clamped to ``[0, n_total]``).
        seed: Seed for the random pick.

    Returns:
        Sorted list of picked indices.
    """
    num = max(0, min(int(num), n_total))
    rng = random.Random(seed)
    if labels is None or num == n_total:
        picked = rng.sample(range(n_total), num)
        return sorted(picked)

    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        by_class.setdefault(int(y), []).append(i)
    classes = sorted(by_class)
    exact = {c: num * len(by_class[c]) / n_total for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    leftover = num - sum(quota.values())
    # Largest remainder first; ties go to the larger class, then the smaller class id, so it is deterministic.
    order = sorted(classes, key=lambda c: (-(exact[c] - quota[c]), -len(by_class[c]), c))
    for c in order[:leftover]:
        quota[c] += 1
    picked: list[int] = []
    for c in classes:
        members = list(by_class[c])
        rng.shuffle(members)
        picked.extend(members[: quota[c]])
    return sorted(picked)


@dataclass(eq=False)  # eq=False: tensor fields make the generated __eq__ ambiguous.
class ImageTextDataset(Dataset):
    """Image-caption pairs for fine-tuning/unlearning, optionally with class labels.

    Attributes:
        images: ``uint8`` tensor ``[N, 3, H, W]``; all images share one size.
        captions: One caption per image.
        labels: Optional ``torch.long`` tensor ``[N]`` of class ids.
        class_names: Optional class names, indexed by class id.
    """

    images: torch.Tensor
    captions: list[str]
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        _check_images(self.images, "ImageTextDataset")
        n = self.images.shape[0]
        if isinstance(self.captions, str) or not isinstance(self.captions, Sequence):
            raise DataError(f"ImageTextDataset.captions must be a list of strings, got {type(self.captions).__name__}")
        self.captions = list(self.captions)
        if len(self.captions) != n:
            raise DataError(f"ImageTextDataset has {n} images but {len(self.captions)} captions; give one per image")
        bad = next((i for i, c in enumerate(self.captions) if not isinstance(c, str)), None)
        if bad is not None:
            raise DataError(
                f"ImageTextDataset.captions[{bad}] is {type(self.captions[bad]).__name__}, not str; "
                "every caption must be text"
            )
        self.class_names = _check_class_names(self.class_names, "ImageTextDataset")
        if self.labels is not None:
            self.labels = _check_labels(self.labels, n, self.class_names, "ImageTextDataset")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Return one item: ``pixel_values`` (uint8 ``[3, H, W]``), ``caption``, ``index`` and maybe ``label``."""
        i = int(i)
        n = len(self)
        if i < -n or i >= n:
            raise IndexError(f"index {i} out of range for ImageTextDataset of length {n}")
        i %= n  # normalise negative indices so "index" always refers to the stored position
        item: dict[str, Any] = {"pixel_values": self.images[i], "caption": self.captions[i], "index": i}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return item

    @property
    def image_size(self) -> tuple[int, int]:
        """Height and width shared by all images."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageTextDataset:
        """Return a new dataset with the items at ``indices`` (in that order).

        Args:
            indices: Positions to keep; a list, range, or integer tensor.

        Returns:
            A new :class:`ImageTextDataset` sharing class names with this one.

        Raises:
            DataError: If an index is out of range.
        """
        idx = torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor) else indices, dtype=torch.long)
        idx = idx.reshape(-1)
        n = len(self)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise DataError(f"subset indices must be in [0, {n - 1}], got min {int(idx.min())}, max {int(idx.max())}")
        return ImageTextDataset(
            images=self.images[idx].clone(),
            captions=[self.captions[j] for j in idx.tolist()],
            labels=None if self.labels is None else self.labels[idx].clone(),
            class_names=None if self.class_names is None else list(self.class_names),
        )

    def take(self, num: int, seed: int = 0) -> ImageTextDataset:
        """Return a seeded random subset of ``num`` items, stratified by label when labels exist.

        Args:
            num: Number of items to keep (at least 1; more than ``len(self)`` keeps everything).
            seed: Seed for the random pick.

        Returns:
            A new :class:`ImageTextDataset`, items kept in their original order.

        Raises:
            DataError: If ``num`` is less than 1 or the dataset is empty.
        """
        if int(num) < 1:
            raise DataError(f"number of items to take must be at least 1, got {num}")
        if len(self) == 0:
            raise DataError("cannot take items from an empty ImageTextDataset")
        return self.subset(stratified_indices(self.labels, len(self), int(num), seed))

    def take_fraction(self, fraction: float, seed: int = 0) -> ImageTextDataset:
        """Return a seeded random fraction of the data, stratified by label when labels exist.

        Args:
            fraction: Share of items to keep, in ``(0, 1]``; at least one item is always kept.
            seed: Seed for the random pick.

        Returns:
            A new :class:`ImageTextDataset`, items kept in their original order.

        Raises:
            DataError: If ``fraction`` is outside ``(0, 1]`` or the dataset is empty.
        """
        if not 0.0 < float(fraction) <= 1.0:
            raise DataError(f"fraction must be in (0, 1], got {fraction}")
        return self.take(max(1, round(float(fraction) * len(self))), seed)


@dataclass(eq=False)
class ZeroShotSet:
    """Labelled images plus the class names and prompt templates for zero-shot classification.

    Attributes:
        images: ``uint8`` tensor ``[N, 3, H, W]``.
        labels: ``torch.long`` tensor ``[N]`` of class ids.
        class_names: Class names, indexed by class id.
        templates: Prompt format strings with exactly one ``{}``, e.g. ``"a photo of a {}."``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    templates: list[str]

    def __post_init__(self) -> None:
        _check_images(self.images, "ZeroShotSet")
        names = _check_class_names(self.class_names, "ZeroShotSet")
        if names is None:
            raise DataError("ZeroShotSet.class_names is required; give one name per class id")
        self.class_names = names
        self.labels = _check_labels(self.labels, int(self.images.shape[0]), self.class_names, "ZeroShotSet")
        self.templates = validate_templates(self.templates)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``class_names``)."""
        return len(self.class_names)

    def prompts(self) -> list[list[str]]:
        """Return ``prompts[c][t]``: template ``t`` filled with class name ``c``."""
        return [[t.format(name) for t in self.templates] for name in self.class_names]
