"""Data loading: in-memory image-caption sets, zero-shot sets, offline built-ins and Hugging Face datasets."""

from __future__ import annotations

import os
from typing import Any

from bibau_hf.data.builtin import DIGIT_CLASS_NAMES, load_digits_data, load_npz_data
from bibau_hf.data.captions import (
    DEFAULT_TEMPLATES,
    DIGIT_TEMPLATES,
    captions_for_labels,
    make_caption,
    validate_templates,
)
from bibau_hf.data.hf_datasets import load_image_text_dataset, load_zero_shot_set
from bibau_hf.data.image_text import ImageTextDataset, ZeroShotSet, stratified_indices
from bibau_hf.errors import DataError

BUILTIN_NAMES: tuple[str, ...] = ("digits",)


def load_builtin(name: str | os.PathLike, **kwargs: Any) -> tuple[ImageTextDataset, ZeroShotSet]:
    """Load an offline dataset by name: ``"digits"`` or a path to a ``.npz`` file.

    Args:
        name: ``"digits"`` (scikit-learn's bundled digits) or a path ending in ``.npz``.
        **kwargs: Passed on to :func:`load_digits_data` (``image_size``, ``test_fraction``, ``seed``) or
            :func:`load_npz_data` (``seed``, ``templates``, ``max_train``).

    Returns:
        ``(train, test)``: a captioned :class:`ImageTextDataset` and a :class:`ZeroShotSet`.

    Raises:
        DataError: If the name is neither a built-in nor an ``.npz`` path, or loading fails.
    """
    text = os.fspath(name)
    if text.lower() == "digits":
        return load_digits_data(**kwargs)
    if text.lower().endswith(".npz"):
        return load_npz_data(text, **kwargs)
    raise DataError(
        f"unknown built-in dataset {text!r}; use one of {list(BUILTIN_NAMES)} or a path to a .npz file "
        "(for Hub or local image-caption data use load_image_text_dataset)"
    )


__all__ = [
    "BUILTIN_NAMES",
    "DEFAULT_TEMPLATES",
    "DIGIT_CLASS_NAMES",
    "DIGIT_TEMPLATES",
    "ImageTextDataset",
    "ZeroShotSet",
    "captions_for_labels",
    "load_builtin",
    "load_digits_data",
    "load_image_text_dataset",
    "load_npz_data",
    "load_zero_shot_set",
    "make_caption",
    "stratified_indices",
    "validate_templates",
]
