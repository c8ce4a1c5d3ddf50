"""Adapter for open_clip models (native format: ``open_clip_config.json`` + ``open_clip_model.safetensors``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import ModelFormatError
from .base import ContrastiveAdapter
from .hf_clip import CLIP_MEAN, CLIP_STD

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


class OpenCLIPAdapter(ContrastiveAdapter):
    """Wraps an open_clip ``CLIP``/``CustomTextCLIP`` with a CLIP-BPE text tower (``SimpleTokenizer``).

    Args:
        model: the open_clip model.
        tokenizer: the open_clip tokenizer (callable ``texts -> LongTensor``).
        model_cfg: the architecture dict (``model_cfg`` of ``open_clip_config.json``), needed to save natively.
        preprocess_cfg: the ``preprocess_cfg`` dict (mean, std, interpolation, ...).
    """

    backend = "open_clip"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        model_cfg: dict[str, Any],
        preprocess_cfg: dict[str, Any] | None = None,
    ) -> None:
        preprocess_cfg = dict(preprocess_cfg or {})
        preprocess_cfg.setdefault("mean", list(CLIP_MEAN))
        preprocess_cfg.setdefault("std", list(CLIP_STD))
        image_size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
        if isinstance(image_size, (list, tuple)):
            image_size = image_size[0]
        super().__init__(model, image_size, preprocess_cfg["mean"], preprocess_cfg["std"])
        if not hasattr(tokenizer, "eot_token_id"):
            raise ModelFormatError(
                "bibau_hf supports open_clip models whose text tower uses the CLIP BPE tokenizer (SimpleTokenizer); "
                f"this model's tokenizer is {type(tokenizer).__name__}."
            )
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.preprocess_cfg = preprocess_cfg

    @property
    def _text_tower(self) -> nn.Module:
        native = self.native_model
        # CLIP keeps the text transformer's parts on itself; CustomTextCLIP keeps them in `.text`.
        return native.text if hasattr(native, "text") else native

    @property
    def patch_size(self) -> int:
        size = self.model_cfg.get("vision_cfg", {}).get("patch_size", 1)
        return int(size[0] if isinstance(size, (list, tuple)) else size or 1)

    @property
    def vision_blocks(self) -> list[nn.Module]:
        transformer = getattr(self.native_model.visual, "transformer", None)
        if transformer is None or not getattr(transformer, "batch_first", False):
            return []  # a CNN tower, or a sequence-first transformer whose class token is not row 0
        return list(transformer.resblocks)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self._text_tower.token_embedding

    @property
    def context_length(self) -> int:
        return int(self.model_cfg.get("text_cfg", {}).get("context_length", 77))

    @property
    def placeholder_token_id(self) -> int:
        return int(self.tokenizer.sot_token_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eot_token_id)

    @property
    def pad_token_id(self) -> int:
        return 0

    def logit_scale(self) -> torch.Tensor:
        return self.native_model.logit_scale.exp()

    def tokenize(self, texts: Sequence[str]) -> torch.LongTensor:
        return self.tokenizer(list(texts), context_length=self.context_length).to(self.device)

    def _raw_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)

    def _raw_text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)

    def save_native(self, output_dir: str | Path) -> None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.native_model.state_dict().items()}
        save_file(state, str(output_dir / OPEN_CLIP_WEIGHTS), metadata={"format": "pt"})
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}
        (output_dir / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
