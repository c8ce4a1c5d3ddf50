"""One entry point from a ``--dataset`` argument to (training pairs, zero-shot evaluation set)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from bibau_hf.data.builtin import load_digits_data, load_npz_data
from bibau_hf.data.hf_datasets import load_image_text_dataset, load_zero_shot_set
from bibau_hf.data.image_text import ImageTextDataset, ZeroShotSet
from bibau_hf.errors import DataError


def is_builtin(dataset: str | os.PathLike) -> bool:
    """True for ``"digits"`` and ``.npz`` paths (the offline arrays format)."""
    text = os.fspath(dataset).lower()
    return text == "digits" or text.endswith(".npz")


def load_train_and_eval(
    dataset: str | os.PathLike,
    image_size: int = 32,
    seed: int = 0,
    image_column: str = "image",
    caption_column: str | None = "caption",
    label_column: str | None = None,
    train_split: str = "train",
    eval_split: str | None = "test",
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> tuple[ImageTextDataset, ZeroShotSet | None]:
    """Load training pairs and, where labels exist, a zero-shot evaluation set.

    Args:
        dataset: ``"digits"``, a ``.npz`` path, or anything :func:`load_image_text_dataset` accepts.
        image_size: side length images are resized to (ignored for ``.npz``, which keeps its own size).
        seed: seeds the split (digits) and any subsampling.
        image_column: image column of a datasets source.
        caption_column: caption column of a datasets source (``None`` makes captions from labels).
        label_column: class-label column; needed for zero-shot evaluation and for planting a backdoor.
        train_split: split of the training pairs.
        eval_split: split of the evaluation images (``None``: no evaluation set for datasets sources).
        class_names: class names when the label column is not a ``ClassLabel``.
        templates: prompt templates for the zero-shot classifier.
        max_train_samples: seeded random subset of the training pairs.
        max_eval_samples: seeded random subset of the evaluation images.
    """
    text = os.fspath(dataset)
    if text.lower() == "digits":
        train, test = load_digits_data(image_size=image_size, seed=seed)
    elif text.lower().endswith(".npz"):
        train, test = load_npz_data(text, seed=seed, templates=templates)
    else:
        train = load_image_text_dataset(
            text, image_column=image_column, caption_column=caption_column, label_column=label_column,
            split=train_split, image_size=image_size, max_samples=max_train_samples, seed=seed,
            class_names=class_names,
        )
        test = None
        if label_column is not None and eval_split is not None:
            test = load_zero_shot_set(
                text, image_column=image_column, label_column=label_column, class_names=class_names or
                train.class_names, templates=templates, split=eval_split, image_size=image_size,
                max_samples=max_eval_samples, seed=seed,
            )
        return train, test
    if max_train_samples is not None and max_train_samples < len(train):
        train = train.take(max_train_samples, seed=seed)
    if templates is not None:
        test = ZeroShotSet(test.images, test.labels, test.class_names, list(templates))
    if max_eval_samples is not None and max_eval_samples < len(test):
        raise DataError("max_eval_samples only applies to datasets sources; built-ins use their fixed test split")
    return train, test
