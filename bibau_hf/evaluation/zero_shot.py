"""Zero-shot classification and the CA / ASR / RA / text-ASR evaluation pipeline.

The zero-shot classifier is the standard CLIP one: each class embedding is the renormalised mean of the normalised
text embeddings of ``template.format(class_name)`` over all templates, and a prediction is the class with the
highest cosine similarity. Metric definitions live in :mod:`bibau_hf.evaluation.metrics`.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .encoding import (
    DEFAULT_BATCH_SIZE,
    EncoderLike,
    ImageTrigger,
    TextTrigger,
    check_batch_size,
    check_images,
    check_model,
    check_texts,
    encode_images,
    encode_texts,
    l2_normalize,
)
from .metrics import (
    LabelsLike,
    as_label_tensor,
    attack_success_rate,
    check_class_index,
    clean_accuracy,
    robust_accuracy,
    text_attack_success_rate,
)
from .retrieval import top1_retrieval

_MODALITIES = ("image", "text")


def trigger_modality(trigger: Callable[..., object]) -> str:
    """Return ``"image"`` or ``"text"`` from the trigger's ``modality`` attribute (``"image"`` if absent).

    Args:
        trigger: An image or text trigger callable.

    Returns:
        The modality string.

    Raises:
        ValueError: If ``trigger`` is not callable or declares an unknown modality.
    """
    if not callable(trigger):
        raise ValueError(f"trigger must be callable, got {type(trigger).__name__}")
    modality = getattr(trigger, "modality", "image")
    if modality not in _MODALITIES:
        raise ValueError(f"trigger.modality must be one of {_MODALITIES}, got {modality!r}")
    return modality


def _check_templates(templates: Sequence[str]) -> list[str]:
    templates = check_texts(templates, "templates")
    for template in templates:
        # Parse with the real format-string grammar so escaped braces ("{{") are handled correctly and templates
        # with named or numbered fields (which would fail or misbehave on .format(name)) are rejected up front.
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
        except ValueError as exc:
            raise ValueError(f"template {template!r} is not a valid format string: {exc}") from exc
        if fields != [""]:
            raise ValueError(f"template {template!r} must contain exactly one '{{}}' placeholder for the class name")
    return templates


def zero_shot_classifier(
    model: EncoderLike,
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """Build the zero-shot classifier weights.

    Args:
        model: An :class:`~bibau_hf.evaluation.encoding.EncoderLike` model.
        class_names: ``C`` class names, index ``c`` being class ``c``.
        templates: ``T`` prompt templates, each with exactly one ``{}`` (e.g. ``"a photo of a {}."``).
        batch_size: Number of prompts encoded at once.

    Returns:
        ``[C, D]`` float32 CPU tensor; row ``c`` is the L2-normalised mean of the L2-normalised embeddings of
        ``template.format(class_names[c])`` over all templates.

    Raises:
        ValueError: On empty class names or templates, or a template without exactly one ``{}``.
    """
    check_model(model)
    class_names = check_texts(class_names, "class_names")
    templates = _check_templates(templates)
    check_batch_size(batch_size)
    # Class-major order, so a reshape to [C, T, D] groups each class's prompts together.
    prompts = [template.format(name) for name in class_names for template in templates]
    emb = l2_normalize(encode_texts(model, prompts, batch_size=batch_size))
    emb = emb.reshape(len(class_names), len(templates), -1)
    return l2_normalize(emb.mean(dim=1))


def _check_classifier(classifier: Tensor) -> Tensor:
    if not isinstance(classifier, Tensor) or classifier.ndim != 2 or 0 in classifier.shape:
        shape = tuple(classifier.shape) if isinstance(classifier, Tensor) else type(classifier).__name__
        raise ValueError(f"classifier must be a non-empty [C, D] tensor, got {shape}")
    classifier = classifier.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(classifier).all()):
        raise ValueError("classifier contains NaN or infinite values")
    return classifier


def _predict_from_embeddings(image_emb: Tensor, classifier: Tensor) -> Tensor:
    if image_emb.shape[1] != classifier.shape[1]:
        raise ValueError(
            f"embedding sizes differ: model gives D={image_emb.shape[1]}, classifier has D={classifier.shape[1]}"
        )
    # Scoring on the CPU in float32 keeps predictions identical whatever device or batch size produced the
    # embeddings; argmax returns the first maximal index, so exact ties go to the lower class index.
    return (l2_normalize(image_emb) @ l2_normalize(classifier).T).argmax(dim=1)


def predict(
    model: EncoderLike,
    images: Tensor,
    classifier: Tensor,
    trigger: ImageTrigger | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """Zero-shot top-1 predictions, optionally on triggered images.

    Args:
        model: An :class:`~bibau_hf.evaluation.encoding.EncoderLike` model.
        images: ``[N, 3, H, W]`` uint8 in ``[0, 255]`` or float in ``[0, 1]``.
        classifier: ``[C, D]`` weights from :func:`zero_shot_classifier`.
        trigger: Optional image trigger, applied per batch to float images in ``[0, 1]``.
        batch_size: Number of images encoded at once.

    Returns:
        ``LongTensor[N]`` of predicted class indices, on the CPU.

    Raises:
        ValueError: On malformed images or classifier, or if ``trigger`` is a text trigger.
    """
    classifier = _check_classifier(classifier)
    if trigger is not None and trigger_modality(trigger) != "image":
        raise ValueError("predict() applies image triggers only; got a trigger with modality 'text'")
    image_emb = encode_images(model, images, trigger=trigger, batch_size=batch_size)
    return _predict_from_embeddings(image_emb, classifier)


def text_trigger_prompts(
    class_names: Sequence[str], templates: Sequence[str], target_class: int, trigger: TextTrigger
) -> tuple[list[str], Tensor]:
    """Build the triggered prompts used for text ASR: every template x every non-target class.

    Args:
        class_names: ``C`` class names.
        templates: Prompt templates, each with exactly one ``{}``.
        target_class: The attack's target class (its prompts are excluded).
        trigger: Callable mapping a list of prompts to the same number of triggered prompts.

    Returns:
        ``(prompts, classes)``: the triggered prompts and ``LongTensor`` of the class each was built from.

    Raises:
        ValueError: On invalid inputs, a single-class problem (no non-target class), or a trigger that changes the
            number of prompts.
    """
    class_names = check_texts(class_names, "class_names")
    templates = _check_templates(templates)
    target_class = check_class_index(target_class, len(class_names), "target_class")
    if not callable(trigger):
        raise ValueError(f"trigger must be callable, got {type(trigger).__name__}")
    sources = [c for c in range(len(class_names)) if c != target_class]
    if not sources:
        raise ValueError("text ASR needs at least one non-target class, but the only class is the target")
    clean = [template.format(class_names[c]) for c in sources for template in templates]
    triggered = trigger(list(clean))
    if isinstance(triggered, str) or not isinstance(triggered, Sequence) or len(triggered) != len(clean):
        got = len(triggered) if isinstance(triggered, Sequence) and not isinstance(triggered, str) else triggered
        raise ValueError(f"text trigger must return a list of {len(clean)} strings, got {got!r}")
    triggered = check_texts(triggered, "triggered prompts")
    classes = torch.tensor([c for c in sources for _ in templates], dtype=torch.long)
    return triggered, classes


def evaluate_zero_shot(
    model: EncoderLike,
    images: Tensor,
    labels: LabelsLike,
    class_names: Sequence[str],
    templates: Sequence[str],
    trigger: ImageTrigger | TextTrigger | None = None,
    target_class: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
    """Zero-shot evaluation: clean accuracy, plus backdoor metrics when a trigger is given.

    The trigger's modality is read from its ``modality`` attribute (``"image"`` when absent):

    * image trigger: adds ``attack_success_rate`` and ``robust_accuracy``, measured on the triggered test images
      whose true class is not ``target_class`` (only those are encoded);
    * text trigger: adds ``text_attack_success_rate``: prompts of every template x every non-target class with the
      trigger applied retrieve their top-1 clean test image, and a hit is an image of class ``target_class``.

    Args:
        model: An :class:`~bibau_hf.evaluation.encoding.EncoderLike` model.
        images: ``[N, 3, H, W]`` uint8 in ``[0, 255]`` or float in ``[0, 1]``.
        labels: ``[N]`` true class indices in ``[0, C)``.
        class_names: ``C`` class names.
        templates: Prompt templates, each with exactly one ``{}``.
        trigger: Optional image or text trigger.
        target_class: The attack's target class; required when ``trigger`` is given.
        batch_size: Batch size for both encoders.

    Returns:
        Dict of plain floats in ``[0, 1]``: always ``clean_accuracy``; ``attack_success_rate`` and
        ``robust_accuracy`` for an image trigger; ``text_attack_success_rate`` for a text trigger.

    Raises:
        ValueError: On empty inputs, a label/image count mismatch, labels or target out of range, a trigger without a
            target class, an unknown trigger modality, or no non-target samples.
    """
    check_model(model)
    check_images(images)
    check_batch_size(batch_size)
    class_names = check_texts(class_names, "class_names")
    num_classes = len(class_names)
    labels_t = as_label_tensor(labels, "labels")
    if labels_t.numel() != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {labels_t.numel()} labels; they must match")
    if int(labels_t.min()) < 0 or int(labels_t.max()) >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for {num_classes} classes, "
            f"got range [{int(labels_t.min())}, {int(labels_t.max())}]"
        )
    modality = None
    if trigger is not None:
        modality = trigger_modality(trigger)
        if target_class is None:
            # Silently skipping the attack metrics would make a forgotten argument look like a clean result.
            raise ValueError("a trigger was given without target_class; backdoor metrics need the target class")
    if target_class is not None:
        target_class = check_class_index(target_class, num_classes, "target_class")

    classifier = zero_shot_classifier(model, class_names, templates, batch_size=batch_size)
    clean_emb = encode_images(model, images, batch_size=batch_size)
    results = {"clean_accuracy": clean_accuracy(_predict_from_embeddings(clean_emb, classifier), labels_t)}

    if modality == "image":
        non_target = torch.nonzero(labels_t != target_class).flatten()
        if non_target.numel() == 0:
            raise ValueError(
                f"every test image has the target class {target_class}; ASR/RA need at least one non-target image"
            )
        # Target-class images are excluded from both metrics, so they are never triggered or encoded.
        triggered_emb = encode_images(model, images, trigger=trigger, batch_size=batch_size, indices=non_target)
        triggered_preds = _predict_from_embeddings(triggered_emb, classifier)
        sub_labels = labels_t[non_target]
        results["attack_success_rate"] = attack_success_rate(triggered_preds, sub_labels, target_class, num_classes)
        results["robust_accuracy"] = robust_accuracy(triggered_preds, sub_labels, target_class, num_classes)
    elif modality == "text":
        prompts, _ = text_trigger_prompts(class_names, templates, target_class, trigger)
        prompt_emb = encode_texts(model, prompts, batch_size=batch_size)
        retrieved = labels_t[top1_retrieval(prompt_emb, clean_emb)]
        results["text_attack_success_rate"] = text_attack_success_rate(retrieved, target_class, num_classes)
    return results
