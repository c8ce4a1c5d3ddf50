"""Adapter for transformers ``CLIPModel`` (native: ``config.json``, ``model.safetensors``, processor files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .base import ContrastiveAdapter

# The normalisation every OpenAI CLIP checkpoint uses; a tiny model made here uses it too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class HFCLIPAdapter(ContrastiveAdapter):
    """Wraps a transformers ``CLIPModel`` and its tokenizer.

    Args:
        model: a ``transformers.CLIPModel``.
        tokenizer: the matching tokenizer (``CLIPTokenizer`` or any tokenizer that adds BOS/EOS).
        image_size: vision input size; defaults to ``model.config.vision_config.image_size``.
        image_mean: normalisation mean (from the image processor config when loaded from a folder).
        image_std: normalisation std.
    """

    backend = "hf"

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        image_size: int | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ) -> None:
        size = image_size or model.config.vision_config.image_size
        super().__init__(model, size, image_mean, image_std)
        self.tokenizer = tokenizer

    @property
    def config(self):
        return self.native_model.config

    @property
    def patch_size(self) -> int:
        return int(self.config.vision_config.patch_size)

    @property
    def vision_blocks(self) -> list[nn.Module]:
        return list(self.native_model.vision_model.encoder.layers)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.native_model.text_model.embeddings.token_embedding

    @property
    def context_length(self) -> int:
        return int(self.config.text_config.max_position_embeddings)

    @property
    def placeholder_token_id(self) -> int:
        return int(self.tokenizer.bos_token_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eos_token_id)

    def logit_scale(self) -> torch.Tensor:
        return self.native_model.logit_scale.exp()

    def tokenize(self, texts: Sequence[str]) -> torch.LongTensor:
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return encoded["input_ids"].to(self.device)

    def _raw_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    def _raw_text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        # No attention mask: the text tower is causal and pools at EOS, so padding after EOS cannot change it.
        return self.model.get_text_features(input_ids=input_ids).pooler_output

    def save_native(self, output_dir: str | Path) -> None:
        from transformers import CLIPImageProcessor, CLIPProcessor

        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.native_model.save_pretrained(output_dir, safe_serialization=True)
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": self.image_size},
            crop_size={"height": self.image_size, "width": self.image_size},
            image_mean=self.image_mean.flatten().tolist(),
            image_std=self.image_std.flatten().tolist(),
        )
        CLIPProcessor(image_processor=image_processor, tokenizer=self.tokenizer).save_pretrained(output_dir)
