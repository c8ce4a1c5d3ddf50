"""A callable that measures a model on a labelled set: what the trainer records before, between and after rounds."""

from __future__ import annotations

from collections.abc import Callable

from ..data.image_text import ZeroShotSet
from .zero_shot import evaluate_zero_shot


class ZeroShotEvaluator:
    """``evaluator(model) -> {"clean_accuracy": ..., "attack_success_rate": ..., ...}``.

    Args:
        eval_set: labelled images, class names and templates.
        trigger: the real trigger where it is known (planted backdoors, benchmarks); measurement only.
        target_class: the real target class, with ``trigger``.
        batch_size: evaluation batch size.
    """

    def __init__(
        self, eval_set: ZeroShotSet, trigger: Callable | None = None, target_class: int | None = None,
        batch_size: int = 256,
    ) -> None:
        self.eval_set = eval_set
        self.trigger = trigger
        self.target_class = target_class
        self.batch_size = batch_size

    def __call__(self, model) -> dict[str, float]:
        s = self.eval_set
        metrics = evaluate_zero_shot(
            model, s.images, s.labels, s.class_names, s.templates, trigger=self.trigger,
            target_class=self.target_class if self.trigger is not None else None, batch_size=self.batch_size,
        )
        return {k: round(float(v), 4) for k, v in metrics.items()}
