"""Evaluation of CLIP-like models: zero-shot CA / ASR / RA, text ASR, retrieval Recall@K and DER.

Every metric has exactly one definition (in :mod:`.metrics` and :mod:`.retrieval`); the model-facing helpers only
produce predictions or embeddings and delegate to those definitions. Models are used through the duck-typed
:class:`EncoderLike` protocol.
"""

from .encoding import EncoderLike, ImageTrigger, TextTrigger, encode_images, encode_texts
from .evaluator import ZeroShotEvaluator
from .metrics import (
    attack_success_rate,
    clean_accuracy,
    defense_effectiveness_rate,
    robust_accuracy,
    text_attack_success_rate,
)
from .retrieval import evaluate_retrieval, retrieval_recall, top1_retrieval
from .zero_shot import (
    evaluate_zero_shot,
    predict,
    text_trigger_prompts,
    trigger_modality,
    zero_shot_classifier,
)

__all__ = [
    "ZeroShotEvaluator",
    "EncoderLike",
    "ImageTrigger",
    "TextTrigger",
    "attack_success_rate",
    "clean_accuracy",
    "defense_effectiveness_rate",
    "encode_images",
    "encode_texts",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "predict",
    "retrieval_recall",
    "robust_accuracy",
    "text_attack_success_rate",
    "text_trigger_prompts",
    "top1_retrieval",
    "trigger_modality",
    "zero_shot_classifier",
]
