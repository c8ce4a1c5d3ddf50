"""Batched, device-agnostic encoding of images and texts through any CLIP-like model.

Every metric in :mod:`bibau_hf.evaluation` goes through these two helpers, so input conversion (uint8 vs float
images), trigger application, batching and device placement are defined exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

ImageTrigger = Callable[[Tensor], Tensor]
TextTrigger = Callable[[list[str]], list[str]]

DEFAULT_BATCH_SIZE = 256


@runtime_checkable
class EncoderLike(Protocol):
    """The duck-typed model interface the evaluation code relies on.

    Any object with these members works (a wrapped transformers CLIP, an open_clip model, or a test fake). Both
    encoders must return L2-normalised embeddings; the evaluation code renormalises anyway where cosine similarity
    is needed, so slightly off-norm outputs (e.g. from half precision) do not skew results.
    """

    device: torch.device

    def encode_image(self, images: Tensor) -> Tensor:
        """Embed float images ``[B, 3, H, W]`` in ``[0, 1]`` into ``[B, D]``."""
        ...

    def tokenize(self, texts: list[str]) -> Tensor:
        """Turn ``B`` strings into a ``LongTensor[B, L]`` of token ids."""
        ...

    def encode_text(self, input_ids: Tensor) -> Tensor:
        """Embed token ids ``[B, L]`` into ``[B, D]``."""
        ...


def check_model(model: object) -> None:
    """Raise ``ValueError`` unless ``model`` implements :class:`EncoderLike`.

    Args:
        model: The object to check.

    Raises:
        ValueError: If a required member is missing.
    """
    # isinstance on a runtime-checkable Protocol only checks that the members exist; that is exactly the level of
    # checking we want: a clear message up front instead of an AttributeError deep inside a batch loop.
    if not isinstance(model, EncoderLike):
        missing = [name for name in ("device", "encode_image", "tokenize", "encode_text") if not hasattr(model, name)]
        raise ValueError(
            f"model of type {type(model).__name__} does not implement the EncoderLike interface; missing: {missing}"
        )


def check_batch_size(batch_size: int) -> None:
    """Raise ``ValueError`` unless ``batch_size`` is a positive integer.

    Args:
        batch_size: The value to check.

    Raises:
        ValueError: If it is not a positive ``int``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def check_images(images: Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` is a non-empty ``[N, 3, H, W]`` uint8 or floating-point tensor.

    Args:
        images: The image batch to check.

    Raises:
        ValueError: If the type, shape or dtype is wrong, or there are no images.
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape [N, 3, H, W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty (N = 0); at least one image is needed")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise ValueError(f"images must be uint8 in [0, 255] or floating point in [0, 1], got dtype {images.dtype}")


def _to_unit_float(batch: Tensor) -> Tensor:
    """Convert one image batch to float32 in ``[0, 1]``, rejecting float input that is clearly on a 0-255 scale."""
    if batch.dtype == torch.uint8:
        return batch.float() / 255
    batch = batch.float()
    # A float tensor holding 0-255 values is the most common silent mistake; the model would see saturated images
    # and every metric would be garbage without any error. Checking per batch keeps memory flat.
    lo, hi = float(batch.min()), float(batch.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"float images must lie in [0, 1], found values in [{lo:.4g}, {hi:.4g}]; "
            "pass uint8 images or divide by 255"
        )
    return batch


def _check_embeddings(emb: object, expected_rows: int, what: str) -> Tensor:
    """Validate a model output and return it as a float32 CPU tensor."""
    if not isinstance(emb, Tensor) or emb.ndim != 2 or emb.shape[0] != expected_rows:
        shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
        raise ValueError(f"model.{what} must return a [{expected_rows}, D] tensor, got {shape}")
    emb = emb.detach().to(device="cpu", dtype=torch.float32)
    # NaNs would make every comparison false and silently turn into "wrong prediction"; fail loudly instead.
    if not bool(torch.isfinite(emb).all()):
        raise ValueError(f"model.{what} returned NaN or infinite values")
    return emb


def encode_images(
    model: EncoderLike,
    images: Tensor,
    trigger: ImageTrigger | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    indices: Tensor | None = None,
) -> Tensor:
    """Embed images in batches, optionally applying an image trigger first.

    Args:
        model: An :class:`EncoderLike` model.
        images: ``[N, 3, H, W]`` uint8 in ``[0, 255]`` or float in ``[0, 1]``, on any device.
        trigger: Optional callable mapping a float ``[B, 3, H, W]`` batch in ``[0, 1]`` (on ``model.device``) to a
            batch of the same shape; applied per batch after conversion to float.
        batch_size: Number of images sent to the model at once.
        indices: Optional 1-D index tensor selecting which images to encode (in that order); lets callers encode a
            subset without copying the whole image tensor.

    Returns:
        ``[M, D]`` float32 CPU embeddings, one row per selected image, in input order.

    Raises:
        ValueError: On malformed images, batch size, model output, or a trigger that changes the batch shape.
    """
    check_model(model)
    check_images(images)
    check_batch_size(batch_size)
    if indices is not None:
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        if indices.numel() == 0:
            raise ValueError("indices selects no images; at least one image is needed")
        if int(indices.min()) < 0 or int(indices.max()) >= images.shape[0]:
            lo, hi = int(indices.min()), int(indices.max())
            raise ValueError(f"indices must lie in [0, {images.shape[0]}), got values in [{lo}, {hi}]")
    total = images.shape[0] if indices is None else indices.numel()

    chunks: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            raw = images[start:stop] if indices is None else images[indices[start:stop].to(images.device)]
            # Move before converting: uint8 is a quarter of the float32 bytes to transfer.
            batch = _to_unit_float(raw.to(model.device))
            if trigger is not None:
                triggered = trigger(batch)
                if not isinstance(triggered, Tensor) or triggered.shape != batch.shape:
                    got = tuple(triggered.shape) if isinstance(triggered, Tensor) else type(triggered).__name__
                    raise ValueError(f"image trigger must return a tensor of shape {tuple(batch.shape)}, got {got}")
                batch = triggered
            chunks.append(_check_embeddings(model.encode_image(batch), stop - start, "encode_image"))
    return torch.cat(chunks)


def check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    """Raise ``ValueError`` unless ``texts`` is a non-empty sequence of strings; return it as a list.

    Args:
        texts: The strings to check.
        what: Name used in error messages.

    Returns:
        The strings as a ``list``.

    Raises:
        ValueError: If ``texts`` is a bare string, empty, or holds non-strings.
    """
    # A bare str is a Sequence[str] too; iterating it would silently encode single characters.
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{what} must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty; at least one string is needed")
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{what} must contain only strings, found {type(bad[0]).__name__}")
    return texts


def encode_texts(model: EncoderLike, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> Tensor:
    """Tokenize and embed texts in batches.

    Args:
        model: An :class:`EncoderLike` model.
        texts: Non-empty sequence of strings.
        batch_size: Number of texts tokenized and encoded at once.

    Returns:
        ``[len(texts), D]`` float32 CPU embeddings in input order.

    Raises:
        ValueError: On empty or non-string input, a bad batch size, or malformed model output.
    """
    check_model(model)
    texts = check_texts(texts)
    check_batch_size(batch_size)

    chunks: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            # Tokenizing per batch keeps padding lengths local to the batch; embeddings do not depend on it.
            input_ids = model.tokenize(batch).to(model.device)
            chunks.append(_check_embeddings(model.encode_text(input_ids), len(batch), "encode_text"))
    return torch.cat(chunks)


def l2_normalize(x: Tensor) -> Tensor:
    """Row-wise L2 normalisation with a tiny floor so an all-zero row stays zero instead of becoming NaN.

    Args:
        x: ``[N, D]`` tensor.

    Returns:
        The row-normalised tensor.
    """
    return torch.nn.functional.normalize(x, dim=-1, eps=1e-12)
