"""CleanCLIP (Bansal et al., 2023, "CleanCLIP: Mitigating Data Poisoning Attacks in Multimodal Contrastive Learning").

Written from the paper's description. CleanCLIP fine-tunes the suspect model on clean pairs with

    L = λ_multimodal · L_CLIP(I, T) + λ_inmodal · L_SS,
    L_SS = -1/(2N) Σ_i [ log softmax_j <I_i, Ĩ_j>/τ |_{j=i} + log softmax_j <T_i, T̃_j>/τ |_{j=i} ],

where Ĩ, T̃ are augmented views of the same images and captions. The in-modal terms make each encoder learn its
modality on its own, which weakens the spurious image-trigger ↔ target-caption alignment the backdoor relies on.
λ_multimodal = λ_inmodal = 1 as in the paper; τ is the model's own learned temperature.

The paper used AutoAugment on the images and EDA on the captions. Here both are done on the batch, in torch and in
plain Python: random resized crop, horizontal flip and colour jitter for images (one ``grid_sample`` call per batch,
so it costs about one more image forward); random deletion / swap / insertion of words for captions (EDA without
its synonym operations, which need WordNet). The original image and caption are one view, the augmented one the
other, as in the paper's equation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bibau_hf.contrastive import clip_loss
from bibau_hf.data import ImageTextDataset
from bibau_hf.models import ContrastiveAdapter

from .common import Batch, Budget, train_with_budget


def augment_images(
    images: torch.Tensor,
    generator: torch.Generator,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    flip: bool = True,
    jitter: float = 0.4,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """A random augmented view of each image: resized crop, horizontal flip, brightness/contrast/saturation jitter.

    Args:
        images: float ``[B, 3, H, W]`` in ``[0, 1]``.
        generator: CPU random generator (every random draw comes from it).
        crop_scale: range of the crop's area as a share of the image.
        flip: flip half of the images horizontally.
        jitter: strength of the colour jitter: each factor is drawn in ``[1 - jitter, 1 + jitter]``.
        ratio: range of the crop's aspect ratio (drawn log-uniformly).

    Returns:
        The augmented images, same shape, dtype and device, values in ``[0, 1]``.
    """
    b = images.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    # Resized crop as one affine resampling: the crop's half-sizes in normalised coordinates are sx, sy (<= 1), and
    # its centre moves at most as far as keeps it inside the image.
    area = uniform(*crop_scale)
    log_ratio = uniform(math.log(ratio[0]), math.log(ratio[1]))
    sx = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    sy = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    tx = (2 * torch.rand(b, generator=generator) - 1) * (1 - sx)
    ty = (2 * torch.rand(b, generator=generator) - 1) * (1 - sy)
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * sign, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    if jitter > 0:
        def factor() -> torch.Tensor:
            return uniform(1 - jitter, 1 + jitter).to(images.device, images.dtype).view(b, 1, 1, 1)

        weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        out = (out * factor()).clamp(0, 1)  # brightness
        mean = (out * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        out = ((out - mean) * factor() + mean).clamp(0, 1)  # contrast
        gray = (out * weights).sum(1, keepdim=True)
        out = ((out - gray) * factor() + gray).clamp(0, 1)  # saturation
    return out


def augment_caption(caption: str, rng: random.Random, alpha: float = 0.1) -> str:
    """One EDA-style augmentation of a caption, without synonyms: random deletion, swap or insertion of words.

    One operation is drawn per caption (as EDA does per augmented sentence). Swap and insertion touch
    ``max(1, round(alpha * words))`` words; deletion drops each word with probability ``max(alpha, 1 / words)``, so
    the short captions of zero-shot data lose one word on average instead of almost never changing. A caption
    never loses all its words.

    Args:
        caption: the caption.
        rng: Python random source.
        alpha: share of the words an operation changes.

    Returns:
        The augmented caption (unchanged when it has a single word and deletion was drawn).
    """
    words = caption.split()
    if not words:
        return caption
    n = max(1, round(alpha * len(words)))
    op = rng.choice(("delete", "swap", "insert"))
    if op == "delete":
        kept = [w for w in words if rng.random() >= max(alpha, 1 / len(words))]
        words = kept or [rng.choice(words)]
    elif op == "swap" and len(words) > 1:
        for _ in range(n):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    else:  # insert (or swap on a one-word caption): a copy of one of its own words, at a random place
        for _ in range(n):
            words.insert(rng.randint(0, len(words)), rng.choice(words))
    return " ".join(words)


def augment_captions(captions: Sequence[str], generator: torch.Generator, alpha: float = 0.1) -> list[str]:
    """:func:`augment_caption` on every caption, seeded from ``generator`` so a run is reproducible."""
    rng = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    return [augment_caption(c, rng, alpha) for c in captions]


def in_modal_loss(view: torch.Tensor, augmented: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE within one modality: row i of ``view`` must pick row i of ``augmented`` among all augmented rows.

    Args:
        view: normalised embeddings ``[N, D]`` of the original inputs.
        augmented: normalised embeddings ``[N, D]`` of their augmented views.
        logit_scale: the inverse temperature 1/τ.

    Returns:
        The mean cross-entropy (one direction, as in the paper's L_SS).
    """
    logits = logit_scale * view @ augmented.t()
    return F.cross_entropy(logits, torch.arange(view.shape[0], device=view.device))


def cleanclip_loss(
    adapter: ContrastiveAdapter,
    batch: Batch,
    lambda_multimodal: float = 1.0,
    lambda_inmodal: float = 1.0,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    flip: bool = True,
    jitter: float = 0.4,
    text_alpha: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CleanCLIP's loss on one batch; returns it with its terms (multimodal, in-modal image, in-modal text)."""
    out = adapter(batch.images, batch.input_ids)
    scale = out["logit_scale"]
    image_aug = adapter.encode_image(augment_images(batch.images, batch.generator, crop_scale, flip, jitter))
    text_aug = adapter.encode_text(adapter.tokenize(augment_captions(batch.captions, batch.generator, text_alpha)))
    multimodal = clip_loss(out["image_embeds"], out["text_embeds"], scale)
    image_ss = in_modal_loss(out["image_embeds"], image_aug, scale)
    text_ss = in_modal_loss(out["text_embeds"], text_aug, scale)
    inmodal = (image_ss + text_ss) / 2
    loss = lambda_multimodal * multimodal + lambda_inmodal * inmodal
    return loss, {"multimodal": float(multimodal.detach()), "inmodal_image": float(image_ss.detach()),
                  "inmodal_text": float(text_ss.detach())}


def cleanclip(
    adapter: ContrastiveAdapter,
    data: ImageTextDataset,
    budget: Budget,
    lambda_multimodal: float = 1.0,
    lambda_inmodal: float = 1.0,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    flip: bool = True,
    jitter: float = 0.4,
    text_alpha: float = 0.1,
) -> list[dict[str, float]]:
    """Fine-tune ``adapter`` in place with CleanCLIP on the defender's clean pairs, under BI-BAU's budget.

    Args:
        adapter: the suspect model.
        data: the defender's clean pairs (no labels needed).
        budget: epochs, batch size, learning rate, schedule and seed (:meth:`Budget.from_config`).
        lambda_multimodal: weight of the CLIP loss (paper: 1).
        lambda_inmodal: weight of the in-modal self-supervised loss (paper: 1).
        crop_scale: image crop area range.
        flip: random horizontal flips.
        jitter: colour jitter strength.
        text_alpha: share of the words each caption augmentation changes.

    Returns:
        Per epoch, the mean loss and terms.
    """
    return train_with_budget(
        adapter, data, budget,
        lambda batch: cleanclip_loss(adapter, batch, lambda_multimodal, lambda_inmodal, crop_scale, flip, jitter,
                                     text_alpha),
    )
