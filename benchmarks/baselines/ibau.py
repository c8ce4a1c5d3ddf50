"""I-BAU adapted to a zero-shot CLIP classifier (Zeng et al., 2022, "Adversarial Unlearning of Backdoors via Implicit
Hypergradient").

Written from the paper's description. I-BAU solves the minimax

    min_θ  max_{‖δ‖∞ ≤ ε}  (1/N) Σ_i  ℓ(f_θ(x_i + δ), y_i)

on the defender's clean labelled data: the inner problem finds ONE universal perturbation δ that a backdoor (a
shortcut shared by all inputs) makes easy to find, the outer problem trains the model to be right despite it.

Adaptation to CLIP: the classifier f_θ is the zero-shot one (DESIGN §4): class embeddings are the normalised mean
text embeddings of the class prompts, logits are the model's logit scale times the cosine, and ℓ is cross-entropy
with the defender's labels. The outer loss adds the CLIP loss on the clean pairs (weight 1) so the shared embedding
space (retrieval, other concepts) is kept; the class embeddings keep their gradient, so both towers learn, as the
whole classifier does in I-BAU.

Approximation: the paper differentiates through the inner solution with an implicit hypergradient. This module uses
the simple alternating approximation instead: at every outer step, ``inner_steps`` signed-gradient (PGD) ascent
steps update δ on the current batch with θ fixed, then θ takes one AdamW step on the loss at that δ. δ is
warm-started from the previous step, so over the run it is optimised over all the clean data, i.e. it stays
universal (the paper re-solves the inner problem over the whole clean set before each outer step).

This baseline uses labels; CleanCLIP and BI-BAU do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bibau_hf.contrastive import clip_loss
from bibau_hf.data import ImageTextDataset
from bibau_hf.models import ContrastiveAdapter

from .common import Batch, Budget, train_with_budget


def class_embeddings(
    adapter: ContrastiveAdapter, class_names: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Zero-shot class embeddings ``[C, D]``, differentiable (the classifier I-BAU fine-tunes).

    Same definition as :func:`bibau_hf.evaluation.zero_shot_classifier` (renormalised mean of the normalised prompt
    embeddings), but kept in the autograd graph, on the model's device.
    """
    prompts = [template.format(name) for name in class_names for template in templates]
    emb = adapter.encode_text(adapter.tokenize(prompts))
    return F.normalize(emb.view(len(class_names), len(templates), -1).mean(1), dim=-1)


def zero_shot_loss(
    adapter: ContrastiveAdapter, images: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of the zero-shot classifier on images in ``[0, 1]``."""
    logits = logit_scale * adapter.encode_image(images) @ classifier.t()
    return F.cross_entropy(logits, labels)


def universal_pgd(
    adapter: ContrastiveAdapter,
    images: torch.Tensor,
    labels: torch.Tensor,
    delta: torch.Tensor,
    classifier: torch.Tensor,
    logit_scale: torch.Tensor,
    epsilon: float,
    steps: int,
    step_size: float,
) -> torch.Tensor:
    """Signed-gradient ascent on one perturbation shared by the whole batch, projected on ‖δ‖∞ ≤ ε.

    Args:
        adapter: the model (not updated: gradients are taken w.r.t. δ only).
        images: float ``[B, 3, H, W]`` in ``[0, 1]``.
        labels: class ids ``[B]``.
        delta: the starting perturbation ``[1, 3, H, W]`` (warm start).
        classifier: class embeddings ``[C, D]`` (fixed).
        logit_scale: the inverse temperature.
        epsilon: L∞ bound.
        steps: ascent steps.
        step_size: size of each signed step.

    Returns:
        The new δ, detached, with every entry in ``[-ε, ε]``.
    """
    delta = delta.detach().clamp(-epsilon, epsilon)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = zero_shot_loss(adapter, (images + delta).clamp(0, 1), labels, classifier, logit_scale)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-epsilon, epsilon)
    return delta.detach()


@dataclass
class IBAUResult:
    """What :func:`ibau` returns: per-epoch loss terms and the final universal perturbation ``[1, 3, H, W]``."""

    history: list[dict[str, float]]
    perturbation: torch.Tensor


def ibau(
    adapter: ContrastiveAdapter,
    data: ImageTextDataset,
    budget: Budget,
    class_names: Sequence[str],
    templates: Sequence[str],
    epsilon: float = 16 / 255,
    inner_steps: int = 5,
    step_size: float | None = None,
    adversarial_weight: float = 1.0,
    clip_weight: float = 1.0,
) -> IBAUResult:
    """Unlearn in place with the I-BAU minimax (alternating approximation) under BI-BAU's budget.

    Args:
        adapter: the suspect model.
        data: the defender's clean pairs, with labels (class ids into ``class_names``).
        budget: epochs, batch size, learning rate, schedule and seed (:meth:`Budget.from_config`).
        class_names: the zero-shot classes.
        templates: prompt templates, each with one ``{}``.
        epsilon: L∞ bound of the universal perturbation (images in ``[0, 1]``; default: BI-BAU's additive bound).
        inner_steps: PGD steps per outer step.
        step_size: PGD step (default ``2.5 · ε / inner_steps``, the usual choice that can cross the ball).
        adversarial_weight: weight of the zero-shot loss on perturbed images.
        clip_weight: weight of the CLIP loss on the clean pairs.

    Returns:
        An :class:`IBAUResult`.

    Raises:
        ValueError: when the data has no labels or a bad ε / step count is given.
    """
    if data.labels is None:
        raise ValueError("I-BAU needs class labels on the clean pairs (its inner loss is a classification loss)")
    if not 0 < epsilon <= 1:
        raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
    step_size = 2.5 * epsilon / inner_steps if step_size is None else step_size
    _, _, h, w = data.images.shape
    state = {"delta": torch.zeros(1, 3, h, w, device=adapter.device)}

    def step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        # Inner maximisation, θ fixed (eval mode: no dropout noise in the attack).
        adapter.eval()
        with torch.no_grad():
            classifier = class_embeddings(adapter, class_names, templates)
            scale = adapter.logit_scale().detach()
        state["delta"] = universal_pgd(adapter, batch.images, batch.labels, state["delta"], classifier, scale,
                                       epsilon, inner_steps, step_size)
        adapter.train()
        # Outer minimisation at that δ, plus the clean CLIP loss that keeps the embedding space.
        perturbed = (batch.images + state["delta"]).clamp(0, 1)
        out = adapter(batch.images, batch.input_ids, triggered_pixel_values=perturbed)
        classifier = class_embeddings(adapter, class_names, templates)
        logits = out["logit_scale"] * out["triggered_image_embeds"] @ classifier.t()
        adversarial = F.cross_entropy(logits, batch.labels)
        clean = clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"])
        fooled = float((logits.argmax(1) != batch.labels).float().mean())
        loss = adversarial_weight * adversarial + clip_weight * clean
        return loss, {"adversarial": float(adversarial.detach()), "clip": float(clean.detach()),
                      "fooled_before_step": fooled}

    history = train_with_budget(adapter, data, budget, step)
    return IBAUResult(history=history, perturbation=state["delta"].cpu())
