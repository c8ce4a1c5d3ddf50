"""Prompt templates and caption generation for labelled image data.

Labelled data (digits, CIFAR-style ``.npz`` files) has no captions, so contrastive fine-tuning needs made-up ones.
Drawing a random template per image, rather than one fixed sentence, keeps the text side from collapsing onto a
single phrasing; seeding the draw keeps runs reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from bibau_hf.errors import DataError

DEFAULT_TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
    "a low resolution photo of a {}.",
    "a good photo of a {}.",
    "a photo of the {}.",
]
"""Generic CLIP-style templates (a subset of the ImageNet prompt ensemble)."""

DIGIT_TEMPLATES: list[str] = [
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "a handwritten digit {}.",
    "an image of the number {}.",
    "a blurry photo of the digit {}.",
    "a low resolution image of the digit {}.",
    "a black and white photo of the number {}.",
]
"""Templates for handwritten digit images; class names are spelled out ("zero" .. "nine")."""


def validate_templates(templates: Iterable[str] | None) -> list[str]:
    """Check prompt templates and return them as a list.

    Args:
        templates: Format strings, each with exactly one ``{}`` placeholder.

    Returns:
        The templates as a new list.

    Raises:
        DataError: If there are no templates or one lacks exactly one ``{}``.
    """
    if templates is None or isinstance(templates, str):
        raise DataError("templates must be a list of format strings such as ['a photo of a {}.']")
    out = list(templates)
    if not out:
        raise DataError("templates is empty; give at least one format string such as 'a photo of a {}.'")
    for t in out:
        # Exactly one placeholder: zero would give every class the same prompt, two would fail at format time.
        if not isinstance(t, str) or t.count("{}") != 1:
            raise DataError(f"template {t!r} must be a string with exactly one '{{}}' where the class name goes")
    return out


def make_caption(class_name: str, rng: random.Random, templates: Sequence[str] = DEFAULT_TEMPLATES) -> str:
    """Fill a randomly chosen template with ``class_name``.

    Args:
        class_name: The class name to insert.
        rng: Random source; pass a seeded ``random.Random`` for reproducible captions.
        templates: Format strings with one ``{}`` each.

    Returns:
        The caption.
    """
    if not templates:
        raise DataError("templates is empty; give at least one format string such as 'a photo of a {}.'")
    return rng.choice(list(templates)).format(class_name)


def captions_for_labels(
    labels: Iterable[int],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    seed: int = 0,
) -> list[str]:
    """Make one varied caption per label, deterministically for a given seed.

    Args:
        labels: Class id per image (list, numpy array or tensor).
        class_names: Class names indexed by class id.
        templates: Format strings with one ``{}`` each.
        seed: Seed for the template choices.

    Returns:
        One caption per label.

    Raises:
        DataError: If a label has no class name or the templates are invalid.
    """
    templates = validate_templates(templates)
    names = [str(c) for c in class_names]
    rng = random.Random(seed)
    captions = []
    for y in labels:
        y = int(y)
        if not 0 <= y < len(names):
            raise DataError(f"label {y} has no class name ({len(names)} class names given); pass one per class id")
        captions.append(make_caption(names[y], rng, templates))
    return captions
