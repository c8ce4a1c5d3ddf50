"""The one interface the method talks to: :class:`ContrastiveAdapter`.

An adapter wraps a native image-text model (transformers ``CLIPModel`` or an open_clip ``CLIP``) and exposes what
BI-BAU needs and nothing method-specific: tokenisation, normalised image/text embeddings from images in [0, 1], the
logit scale, the text token-embedding layer (for soft-token text triggers) and native save.

Images enter as float tensors ``[B, 3, H, W]`` in [0, 1] so that image triggers can act in pixel space and stay
differentiable; resizing and mean/std normalisation happen inside the adapter.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle


class ContrastiveAdapter(nn.Module):
    """Backend-neutral wrapper of a CLIP-like dual encoder.

    Subclasses set :attr:`backend` and implement the ``_raw_*`` encoders, :meth:`tokenize` and :meth:`save_native`.

    Args:
        model: the native model (kept as ``self.model``; it may later be replaced by a peft wrapper of itself).
        image_size: side length the vision tower expects.
        image_mean: per-channel mean used for normalisation.
        image_std: per-channel std used for normalisation.
    """

    backend: str = ""

    def __init__(
        self, model: nn.Module, image_size: int, image_mean: Sequence[float], image_std: Sequence[float]
    ) -> None:
        super().__init__()
        self.model = model
        self.image_size = int(image_size)
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1), False)
        self._soft_tokens: tuple[torch.Tensor, torch.Tensor] | None = None
        # A forward hook (a public torch mechanism) lets soft text-trigger vectors replace placeholder token
        # embeddings without re-implementing each backend's text transformer.
        self._hook: tuple[int, RemovableHandle] | None = None
        self._bind_soft_token_hook()

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.image_mean.device

    @property
    @abstractmethod
    def token_embedding(self) -> nn.Embedding:
        """The text tower's token-embedding layer."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Maximum number of text tokens (BOS and EOS included)."""

    @property
    @abstractmethod
    def placeholder_token_id(self) -> int:
        """A token id that is neither end-of-text nor the largest id, used to reserve soft-token slots."""

    @property
    @abstractmethod
    def eos_token_id(self) -> int:
        """End-of-text token id."""

    @property
    @abstractmethod
    def pad_token_id(self) -> int:
        """Padding token id."""

    @abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """The (exponentiated) temperature of the contrastive logits, a scalar tensor."""

    @property
    def patch_size(self) -> int:
        """The vision tower's patch size (1 for towers without patches); triggers move on this grid."""
        return 1

    @property
    def vision_blocks(self) -> list[nn.Module]:
        """The vision tower's transformer blocks, whose outputs are ``[B, L, width]`` token states (empty when the
        tower is not a transformer); their class tokens are what the representation-invariance term compares."""
        return []

    @property
    def embed_dim(self) -> int:
        with torch.no_grad():
            return int(self.encode_text(self.tokenize(["a"])).shape[-1])

    # ------------------------------------------------------------------------------------------------ backend
    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.LongTensor:
        """Token ids ``[B, L]`` (BOS ... EOS, padded), truncated to :attr:`context_length`, on :attr:`device`."""

    @abstractmethod
    def _raw_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings from already resized and normalised pixels."""

    @abstractmethod
    def _raw_text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unnormalised text embeddings from token ids."""

    @abstractmethod
    def save_native(self, output_dir: str | Path) -> None:
        """Write the model (safetensors), its tokenizer and its preprocessing config in the backend's format."""

    @property
    def native_model(self) -> nn.Module:
        """The underlying transformers/open_clip model, unwrapping a peft wrapper if there is one."""
        model = self.model
        get_base = getattr(model, "get_base_model", None)
        return get_base() if callable(get_base) else model

    # --------------------------------------------------------------------------------------------- encoders
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize images in [0, 1] to the model's size and normalise them (differentiable)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        images = images.to(self.device, torch.float32)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return (images - self.image_mean) / self.image_std

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed images given in [0, 1] (float) or 0..255 (uint8), shape ``[B, 3, H, W]``."""
        features = self._raw_image_features(self.preprocess(images))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(
        self,
        input_ids: torch.Tensor,
        normalize: bool = True,
        soft_tokens: torch.Tensor | None = None,
        soft_position: int = 1,
    ) -> torch.Tensor:
        """Embed token ids; optionally insert learned soft-token vectors.

        Args:
            input_ids: ``[B, L]`` ids from :meth:`tokenize`.
            normalize: L2-normalise the output.
            soft_tokens: ``[k, width]`` vectors inserted into every sequence's token-embedding sequence, or
                ``[B, k, width]`` with one set per sequence.
            soft_position: index at which the soft tokens go (1 = right after BOS); clamped to before EOS.
        """
        input_ids = input_ids.to(self.device)
        if soft_tokens is None:
            features = self._raw_text_features(input_ids)
        else:
            ids, slots = insert_placeholder_tokens(
                input_ids, soft_tokens.shape[-2], soft_position, self.placeholder_token_id, self.eos_token_id,
                self.pad_token_id, self.context_length,
            )
            with self._soft_token_context(slots, soft_tokens):
                features = self._raw_text_features(ids)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        triggered_pixel_values: torch.Tensor | None = None,
        soft_tokens: torch.Tensor | None = None,
        soft_position: int = 1,
        class_token_states: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Normalised embeddings and the logit scale: everything a contrastive step needs, in one call.

        One call matters under DistributedDataParallel, which synchronises gradients only for computations made
        inside the wrapped module's forward.

        Args:
            pixel_values: clean images ``[B, 3, H, W]`` in [0, 1].
            input_ids: their captions' token ids.
            triggered_pixel_values: optional triggered images, embedded in the same image batch.
            soft_tokens: optional soft text-trigger vectors; the captions are embedded once more with them.
            soft_position: where the soft tokens go.
            class_token_states: also return ``image_class_states`` ``[layers, B', width]``: the class token after
                every vision block, for all images embedded (clean, then triggered).
        """
        batch = pixel_values.shape[0]
        images = pixel_values if triggered_pixel_values is None else torch.cat([pixel_values, triggered_pixel_values])
        states: list[torch.Tensor] = []
        with self._record_class_tokens(states if class_token_states else None):
            image_embeds = self.encode_image(images)
        out = {
            "image_embeds": image_embeds[:batch],
            "text_embeds": self.encode_text(input_ids),
            "logit_scale": self.logit_scale(),
        }
        if triggered_pixel_values is not None:
            out["triggered_image_embeds"] = image_embeds[batch:]
        if class_token_states:
            if not states:
                raise ValueError(f"the {self.backend} adapter exposes no vision transformer blocks")
            out["image_class_states"] = torch.stack(states)
        if soft_tokens is not None:
            out["triggered_text_embeds"] = self.encode_text(
                input_ids, soft_tokens=soft_tokens, soft_position=soft_position
            )
        return out

    @contextlib.contextmanager
    def _record_class_tokens(self, sink: list[torch.Tensor] | None) -> Iterator[None]:
        """While active, append each vision block's class-token output to ``sink`` (nothing if ``sink`` is None)."""
        if sink is None:
            yield
            return

        def record(module: nn.Module, args: tuple, output) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            sink.append(hidden[:, 0])

        handles = [block.register_forward_hook(record) for block in self.vision_blocks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ---------------------------------------------------------------------------------------- soft tokens
    def _bind_soft_token_hook(self) -> None:
        """Hook the outermost token-embedding layer. LoRA on the embedding wraps the layer after this adapter was
        built; a hook left on the inner layer would have the adapter's delta for the placeholder id added on top of
        the soft tokens."""
        module = self.token_embedding
        if self._hook is not None and self._hook[0] == id(module):
            return
        if self._hook is not None:
            self._hook[1].remove()
        # The id, not the module: a module attribute would register the layer a second time as a submodule.
        self._hook = (id(module), module.register_forward_hook(self._replace_placeholder_embeddings))

    def token_embedding_weight(self) -> torch.Tensor:
        """The token embeddings the text tower actually uses, ``[vocab, width]``, detached.

        The layer's weight, or, when a wrapper such as a LoRA adapter on the embedding changes its output, the
        wrapped layer's output for every id (its ``weight`` is then the frozen base's).
        """
        module = self.token_embedding
        if isinstance(module, nn.Embedding):
            return module.weight.detach()
        with torch.no_grad():
            return module(torch.arange(module.weight.shape[0], device=module.weight.device))

    @contextlib.contextmanager
    def _soft_token_context(self, slots: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
        self._bind_soft_token_hook()
        self._soft_tokens = (slots, values)
        try:
            yield
        finally:
            self._soft_tokens = None

    def _replace_placeholder_embeddings(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self._soft_tokens is None:
            return output
        slots, values = self._soft_tokens
        # slots: [B, L] bool with exactly k True per row, in order; values [k, width] (shared by every row) or
        # [B, k, width] (one set per row, e.g. several inversion restarts in one batch).
        batch = output.shape[0]
        if values.dim() == 2:
            values = values.unsqueeze(0).expand(batch, -1, -1)
        filled = output.clone()
        filled[slots] = values.to(output.dtype).reshape(-1, output.shape[-1])
        return filled


def insert_placeholder_tokens(
    input_ids: torch.Tensor,
    num_tokens: int,
    position: int,
    placeholder_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert ``num_tokens`` placeholder ids at ``position`` in every row, keeping EOS inside ``max_length``.

    Returns:
        The new ids ``[B, L']`` and a boolean mask of the inserted slots (``num_tokens`` per row).
    """
    batch, length = input_ids.shape
    # Length of each row up to and including its first EOS.
    is_eos = input_ids == eos_id
    last = torch.full((batch,), length - 1, device=input_ids.device)
    eos_pos = torch.where(is_eos.any(1), is_eos.float().argmax(1), last)
    position = max(1, int(position))
    rows, masks = [], []
    new_len = min(max_length, length + num_tokens)
    for b in range(batch):
        content = input_ids[b, : int(eos_pos[b]) + 1].tolist()
        insert_at = min(position, len(content) - 1)  # never after EOS
        row = content[:insert_at] + [placeholder_id] * num_tokens + content[insert_at:]
        mask = [False] * insert_at + [True] * num_tokens + [False] * (len(content) - insert_at)
        if len(row) > max_length:  # drop caption tokens before EOS, never the soft tokens or EOS
            overflow = len(row) - max_length
            keep_until = len(row) - 1 - overflow
            if keep_until < insert_at + num_tokens:
                raise ValueError(f"{num_tokens} soft tokens at position {insert_at} do not fit in {max_length} tokens")
            row = row[:keep_until] + row[-1:]
            mask = mask[:keep_until] + mask[-1:]
        row += [pad_id] * (new_len - len(row))
        mask += [False] * (new_len - len(mask))
        rows.append(row)
        masks.append(mask)
    device = input_ids.device
    return torch.tensor(rows, dtype=input_ids.dtype, device=device), torch.tensor(masks, device=device)
