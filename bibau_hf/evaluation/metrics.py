"""Pure metric functions on predictions and retrieved labels.

These are the single definitions of CA, ASR, RA, text ASR and DER used throughout bibau_hf; the model-facing helpers
in :mod:`bibau_hf.evaluation.zero_shot` only compute predictions and delegate here. All results are plain Python
floats in ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

LabelsLike = Tensor | Sequence[int]


def as_label_tensor(values: LabelsLike, what: str) -> Tensor:
    """Convert predictions or labels to a non-empty 1-D int64 CPU tensor.

    Args:
        values: A tensor or sequence of integer class indices.
        what: Name used in error messages.

    Returns:
        The values as a 1-D ``LongTensor`` on the CPU.

    Raises:
        ValueError: If the input is not 1-D, empty, or not integer-valued.
    """
    try:
        tensor = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{what} must be a 1-D sequence of integer class indices: {exc}") from exc
    if tensor.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise ValueError(f"{what} is empty; at least one sample is needed")
    # Bool is technically integral in torch but is never a class index; floats would be silently truncated.
    if tensor.dtype == torch.bool or tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise ValueError(f"{what} must hold integer class indices, got dtype {tensor.dtype}")
    return tensor.to(device="cpu", dtype=torch.long)


def _check_same_length(preds: Tensor, labels: Tensor, preds_name: str) -> None:
    if preds.numel() != labels.numel():
        raise ValueError(f"{preds_name} has {preds.numel()} entries but labels has {labels.numel()}; they must match")


def check_class_index(value: int, num_classes: int | None, what: str) -> int:
    """Validate a class index such as the target class.

    Args:
        value: The class index.
        num_classes: Number of classes, or ``None`` to check only non-negativity.
        what: Name used in error messages.

    Returns:
        ``value`` as an ``int``.

    Raises:
        ValueError: If ``value`` is not an integer or lies outside ``[0, num_classes)``.
    """
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_floating_point:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer class index, got {value!r}")
    if value < 0 or (num_classes is not None and value >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(f"{what} = {value} is out of range; it must be in {bound}")
    return value


def clean_accuracy(preds: LabelsLike, labels: LabelsLike) -> float:
    """CA: top-1 accuracy of predictions on clean images.

    Args:
        preds: ``[N]`` predicted class indices.
        labels: ``[N]`` true class indices.

    Returns:
        Fraction of samples with ``preds == labels``.

    Raises:
        ValueError: If either input is empty, not 1-D integers, or the lengths differ.
    """
    preds_t = as_label_tensor(preds, "preds")
    labels_t = as_label_tensor(labels, "labels")
    _check_same_length(preds_t, labels_t, "preds")
    return float((preds_t == labels_t).double().mean())


def _non_target_mask(labels: Tensor, target: int) -> Tensor:
    mask = labels != target
    if not bool(mask.any()):
        raise ValueError(
            f"every sample has the target class {target} as its true class; ASR/RA need at least one non-target sample"
        )
    return mask


def attack_success_rate(
    triggered_preds: LabelsLike, labels: LabelsLike, target: int, num_classes: int | None = None
) -> float:
    """ASR: among samples whose true class is not ``target``, the fraction predicted as ``target`` once triggered.

    Args:
        triggered_preds: ``[N]`` predictions on triggered images.
        labels: ``[N]`` true class indices of the (clean) images.
        target: The attack's target class.
        num_classes: If given, ``target`` is checked to lie in ``[0, num_classes)``.

    Returns:
        The attack success rate.

    Raises:
        ValueError: On empty or mismatched inputs, an out-of-range target, or no non-target samples.
    """
    preds_t = as_label_tensor(triggered_preds, "triggered_preds")
    labels_t = as_label_tensor(labels, "labels")
    _check_same_length(preds_t, labels_t, "triggered_preds")
    target = check_class_index(target, num_classes, "target")
    mask = _non_target_mask(labels_t, target)
    return float((preds_t[mask] == target).double().mean())


def robust_accuracy(
    triggered_preds: LabelsLike, labels: LabelsLike, target: int, num_classes: int | None = None
) -> float:
    """RA: among samples whose true class is not ``target``, the fraction still predicted correctly once triggered.

    Args:
        triggered_preds: ``[N]`` predictions on triggered images.
        labels: ``[N]`` true class indices of the (clean) images.
        target: The attack's target class.
        num_classes: If given, ``target`` is checked to lie in ``[0, num_classes)``.

    Returns:
        The robust accuracy.

    Raises:
        ValueError: On empty or mismatched inputs, an out-of-range target, or no non-target samples.
    """
    preds_t = as_label_tensor(triggered_preds, "triggered_preds")
    labels_t = as_label_tensor(labels, "labels")
    _check_same_length(preds_t, labels_t, "triggered_preds")
    target = check_class_index(target, num_classes, "target")
    mask = _non_target_mask(labels_t, target)
    return float((preds_t[mask] == labels_t[mask]).double().mean())


def text_attack_success_rate(retrieved_labels: LabelsLike, target: int, num_classes: int | None = None) -> float:
    """Text ASR: fraction of triggered non-target prompts whose top-1 retrieved image belongs to ``target``.

    The caller is responsible for building the prompts (every template x every non-target class, trigger applied to
    the formatted prompt) and passing the true class of each prompt's top-1 retrieved image; see
    :func:`bibau_hf.evaluation.zero_shot.evaluate_zero_shot` for the canonical pipeline.

    Args:
        retrieved_labels: ``[P]`` true class of the top-1 image retrieved for each triggered prompt.
        target: The attack's target class.
        num_classes: If given, ``target`` is checked to lie in ``[0, num_classes)``.

    Returns:
        The text attack success rate.

    Raises:
        ValueError: If ``retrieved_labels`` is empty or malformed, or the target is out of range.
    """
    labels_t = as_label_tensor(retrieved_labels, "retrieved_labels")
    target = check_class_index(target, num_classes, "target")
    return float((labels_t == target).double().mean())


def _check_fraction(value: float, name: str) -> float:
    # Accept anything float() understands (numpy scalars, 0-d tensors) but not bools or strings, which float()
    # would happily convert and thereby hide a mistake.
    try:
        number = None if isinstance(value, (bool, str)) else float(value)
    except (TypeError, ValueError, RuntimeError):
        number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")
    value = number
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} = {value} is outside [0, 1]; pass fractions, not percentages")
    return float(value)


def defense_effectiveness_rate(*, ca_before: float, ca_after: float, asr_before: float, asr_after: float) -> float:
    """DER = [max(0, ASR_before - ASR_after) - max(0, CA_before - CA_after) + 1] / 2.

    Rewards ASR reduction and penalises clean-accuracy loss; 0.5 means "no effect", 1.0 means the attack was fully
    removed at no accuracy cost. Arguments are keyword-only because all four are same-typed fractions and a
    positional mix-up would go unnoticed.

    Args:
        ca_before: Clean accuracy of the backdoored model, in ``[0, 1]``.
        ca_after: Clean accuracy after the defense, in ``[0, 1]``.
        asr_before: Attack success rate of the backdoored model, in ``[0, 1]``.
        asr_after: Attack success rate after the defense, in ``[0, 1]``.

    Returns:
        The defense effectiveness rate in ``[0, 1]``.

    Raises:
        ValueError: If any input is not a finite fraction in ``[0, 1]``.
    """
    ca_before = _check_fraction(ca_before, "ca_before")
    ca_after = _check_fraction(ca_after, "ca_after")
    asr_before = _check_fraction(asr_before, "asr_before")
    asr_after = _check_fraction(asr_after, "asr_after")
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1.0) / 2.0
