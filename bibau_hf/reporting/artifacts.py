"""Inverted triggers and similarity diagnostics, saved beside the purified model for plots and audits.

``inverted_triggers.safetensors`` holds, for the scan before unlearning and the scan after it, every inverted trigger
toward its family's suspected target: for image masks the mask ``[H, W]`` and pattern ``[3, H, W]``, for additive
triggers the perturbation ``[3, H, W]``, for text triggers the soft-token vectors ``[k, width]`` and the ids of their
nearest vocabulary tokens. Keys are ``"{phase}/{modality}/{family}/{name}"`` (``phase`` is ``before`` or ``after``);
``example/clean`` is one clean image and ``.../example_triggered`` the same image under each image trigger, so a
plot can show what a trigger does without rebuilding it. The safetensors metadata carries the JSON summary that
:func:`save_trigger_artifacts` also returns for the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..inversion.blind_inversion import InvertedTrigger, ScanResult
from ..inversion.image_trigger import AdditiveTrigger, MaskPatternTrigger, WarpTrigger
from ..inversion.periodic_trigger import PeriodicTrigger
from ..inversion.text_trigger import SoftTokenTrigger, decode_token_ids
from ..models.base import ContrastiveAdapter

TRIGGERS_FILE = "inverted_triggers.safetensors"
METADATA_KEY = "bibau_triggers"
NEAREST_TOKENS = 3
SIMILARITY_DECIMALS = 4


def _example_float(example_image: torch.Tensor | None) -> torch.Tensor | None:
    """One image as float ``[1, 3, H, W]`` in [0, 1] (accepts uint8 or float, with or without batch axis)."""
    if example_image is None:
        return None
    image = example_image.detach().cpu()
    if image.dim() == 3:
        image = image.unsqueeze(0)
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def _trigger_tensors(
    found: InvertedTrigger, adapter: ContrastiveAdapter, example: torch.Tensor | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors that define one inverted trigger, and what the report should say about them."""
    trigger = found.trigger
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {}
    with torch.no_grad():
        if isinstance(trigger, MaskPatternTrigger):
            tensors["mask"] = trigger.mask()[0, 0]
            tensors["pattern"] = trigger.pattern()[0]
        elif isinstance(trigger, WarpTrigger):
            # The dense displacement field [2, H, W] in pixels (x, y), and its control grid.
            flow = trigger.sampling_grid()[0] - trigger.identity
            scale = torch.tensor([trigger.image_size[1] - 1, trigger.image_size[0] - 1], dtype=flow.dtype) / 2
            tensors["displacement_pixels"] = (flow * scale.to(flow.device)).permute(2, 0, 1)
            tensors["control_grid"] = trigger.displacement()[0]
            info["max_shift"] = trigger.max_shift
        elif isinstance(trigger, AdditiveTrigger):
            tensors["delta"] = trigger.delta()[0]
            info["epsilon"] = trigger.epsilon
        elif isinstance(trigger, PeriodicTrigger):
            tensors["delta"] = trigger.amplitude * trigger.signals[0].expand(3, -1, -1)
            info.update({k: v for k, v in trigger.describe(0).items() if k != "family"})
        elif isinstance(trigger, SoftTokenTrigger):
            tensors["tokens"] = trigger.tokens[0]
            ids = trigger.nearest_token_ids(adapter, 0, k=NEAREST_TOKENS)
            tensors["nearest_token_ids"] = torch.tensor(ids, dtype=torch.int64)
            info["nearest_token_ids"] = ids
            info["nearest_tokens"] = decode_token_ids(adapter, ids)
            info["nearest_text"] = _decoded_text(adapter, ids)
        # Image triggers are inverted at the clean data's resolution; an example of another size is not shown.
        if example is not None and found.modality == "image" and tuple(example.shape[-2:]) == trigger.image_size:
            device = next(iter([*trigger.parameters(), *trigger.buffers()])).device
            tensors["example_triggered"] = trigger.apply_one(example.to(device), 0)[0]
    # Copies: safetensors refuses tensors that share memory, and a trigger can be shared by both phases.
    return {name: value.detach().cpu().clone().contiguous() for name, value in tensors.items()}, info


def _decoded_text(adapter: ContrastiveAdapter, ids: list[list[int]]) -> list[list[str]]:
    """Each token id as the text it stands for (byte-level BPE pieces such as ``ðŁı¿`` become real characters)."""
    decode = getattr(adapter.tokenizer, "decode", None)
    if decode is None:
        return decode_token_ids(adapter, ids)
    return [[decode([i]).strip() for i in row] for row in ids]


def save_trigger_artifacts(
    output_dir: str | Path,
    scan_before: ScanResult | None,
    scan_after: ScanResult | None,
    adapter: ContrastiveAdapter,
    example_image: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Write ``inverted_triggers.safetensors`` into ``output_dir``.

    Args:
        output_dir: folder of the purified model.
        scan_before: the E-step on the suspect model (round 0), or ``None``.
        scan_after: the E-step on the purified model (final scan, else the last round), or ``None``; skipped when
            it is ``scan_before`` itself.
        adapter: the model, used only to decode text-trigger tokens (its vocabulary does not change).
        example_image: one clean image (uint8 or float in [0, 1], ``[3, H, W]``) shown with each image trigger.

    Returns:
        A JSON-ready summary for the report: the file name and, per saved trigger, phase, modality, family,
        suspected target, score, tensor keys, and for text triggers the nearest token ids, their vocabulary strings
        and the text they decode to. Empty (and no file written) when neither scan holds a trigger.
    """
    example = _example_float(example_image)
    tensors: dict[str, torch.Tensor] = {}
    entries: list[dict[str, Any]] = []
    for phase, result in (("before", scan_before), ("after", scan_after)):
        # With one round and no final scan the "after" scan is the round-0 scan: nothing new to show.
        if result is None or (phase == "after" and result is scan_before):
            continue
        for found in result.triggers:
            prefix = f"{phase}/{found.key}"
            values, info = _trigger_tensors(found, adapter, example)
            tensors.update({f"{prefix}/{name}": value for name, value in values.items()})
            entries.append({
                "phase": phase, "modality": found.modality, "family": found.family,
                "suspected_target": found.suspected_target, "score": round(found.score, 3),
                "tensors": [f"{prefix}/{name}" for name in values], **info,
            })
    if not entries:
        return {}
    if example is not None:
        tensors["example/clean"] = example[0].contiguous()
    summary = {"file": TRIGGERS_FILE, "triggers": entries}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(output_dir / TRIGGERS_FILE), metadata={"format": "pt", METADATA_KEY: json.dumps(summary)})
    return summary


@torch.no_grad()
def trigger_similarities(
    adapter: ContrastiveAdapter,
    images: torch.Tensor,
    trigger: Any,
    target_embedding: torch.Tensor,
    batch_size: int = 64,
) -> dict[str, list[float]]:
    """Cosine of clean and of triggered image embeddings to a target concept's embedding.

    A backdoor shows as two separated histograms (triggered images sit near the target, clean ones do not); after a
    successful unlearning they overlap again.

    Args:
        adapter: the model.
        images: clean images, uint8 or float in [0, 1], ``[N, 3, H, W]``.
        trigger: an image trigger family holding one candidate (``apply_one(images, 0)``).
        target_embedding: the normalised concept embedding ``[D]``.
        batch_size: images per forward pass (bounds memory on large vision towers).

    Returns:
        ``{"clean": [...], "triggered": [...]}``, one rounded cosine per image.
    """
    was_training = adapter.training
    adapter.eval()
    target = target_embedding.to(adapter.device).float()
    clean, triggered = [], []
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            chunk = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
            chunk = chunk.to(adapter.device)
            clean.append(adapter.encode_image(chunk) @ target)
            triggered.append(adapter.encode_image(trigger.apply_one(chunk, 0)) @ target)
    finally:
        adapter.train(was_training)

    def rounded(parts: list[torch.Tensor]) -> list[float]:
        return [round(v, SIMILARITY_DECIMALS) for v in torch.cat(parts).cpu().tolist()]

    return {"clean": rounded(clean), "triggered": rounded(triggered)}


def similarity_sample(images: torch.Tensor, max_images: int = 256, seed: int = 0) -> torch.Tensor:
    """A fixed, seeded subset of at most ``max_images`` images (the same one before and after unlearning)."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(images), generator=generator)[:max_images]
    return images[index.sort().values]


__all__ = ["TRIGGERS_FILE", "save_trigger_artifacts", "similarity_sample", "trigger_similarities"]
