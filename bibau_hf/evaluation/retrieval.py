"""Cross-modal retrieval: Recall@K on paired image/caption sets and top-1 retrieval.

Ties are broken deterministically in favour of the lower index (as a stable descending sort would), so results do
not depend on the device, the chunk size or ``torch.topk`` internals.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .encoding import DEFAULT_BATCH_SIZE, EncoderLike, check_texts, encode_images, encode_texts, l2_normalize

# Rows of the similarity matrix processed at once; bounds memory at chunk x N floats for large evaluation sets.
_CHUNK_ROWS = 1024


def _check_embedding_matrix(emb: Tensor, name: str) -> Tensor:
    if not isinstance(emb, Tensor) or emb.ndim != 2:
        shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
        raise ValueError(f"{name} must be a 2-D [N, D] tensor, got {shape}")
    if emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(emb.shape)}); at least one non-empty embedding is needed")
    emb = emb.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(emb).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return emb


def top1_retrieval(query_emb: Tensor, gallery_emb: Tensor) -> Tensor:
    """Index of the most cosine-similar gallery item for each query (lowest index wins ties).

    Args:
        query_emb: ``[Q, D]`` query embeddings.
        gallery_emb: ``[G, D]`` gallery embeddings.

    Returns:
        ``LongTensor[Q]`` of gallery indices, on the CPU.

    Raises:
        ValueError: If either input is empty, not 2-D, non-finite, or the embedding sizes differ.
    """
    query = l2_normalize(_check_embedding_matrix(query_emb, "query_emb"))
    gallery = l2_normalize(_check_embedding_matrix(gallery_emb, "gallery_emb"))
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"embedding sizes differ: query_emb has D={query.shape[1]}, gallery_emb D={gallery.shape[1]}")
    # torch.argmax returns the first maximal index, which gives the documented lowest-index tie-break.
    return torch.cat([(chunk @ gallery.T).argmax(dim=1) for chunk in query.split(_CHUNK_ROWS)])


def _paired_ranks(query: Tensor, gallery: Tensor) -> Tensor:
    """0-based rank of gallery item ``i`` among all gallery items for query ``i`` (stable, lower index first)."""
    ranks = []
    index = torch.arange(gallery.shape[0])
    for start in range(0, query.shape[0], _CHUNK_ROWS):
        scores = query[start : start + _CHUNK_ROWS] @ gallery.T
        rows = torch.arange(scores.shape[0])
        own = (rows + start).unsqueeze(1)
        correct = scores[rows, rows + start].unsqueeze(1)
        # Items strictly better, plus equally good items that a stable sort would place first.
        ahead = (scores > correct) | ((scores == correct) & (index.unsqueeze(0) < own))
        ranks.append(ahead.sum(dim=1))
    return torch.cat(ranks)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if isinstance(ks, int):
        ks = (ks,)
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return ks


def retrieval_recall(image_emb: Tensor, text_emb: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image-to-text and text-to-image Recall@K on paired embeddings (pair ``i`` = image ``i`` with caption ``i``).

    Image ``i`` is a hit at ``K`` if caption ``i`` is among its ``K`` most cosine-similar captions; symmetrically for
    text-to-image. With ``K >= N`` recall is trivially 1.

    Args:
        image_emb: ``[N, D]`` image embeddings.
        text_emb: ``[N, D]`` caption embeddings, row ``i`` paired with image row ``i``.
        ks: The cut-offs ``K``.

    Returns:
        ``{"image_to_text_R@K": ..., "text_to_image_R@K": ...}`` for every ``K`` in ``ks`` (image-to-text first).

    Raises:
        ValueError: On empty, non-2-D or non-finite embeddings, mismatched shapes, or invalid ``ks``.
    """
    images = _check_embedding_matrix(image_emb, "image_emb")
    texts = _check_embedding_matrix(text_emb, "text_emb")
    if images.shape != texts.shape:
        raise ValueError(
            f"image_emb {tuple(images.shape)} and text_emb {tuple(texts.shape)} must have the same shape [N, D]"
        )
    ks = _check_ks(ks)
    images, texts = l2_normalize(images), l2_normalize(texts)
    directions = {"image_to_text": _paired_ranks(images, texts), "text_to_image": _paired_ranks(texts, images)}
    return {
        f"{direction}_R@{k}": float((ranks < k).double().mean()) for direction, ranks in directions.items() for k in ks
    }


def evaluate_retrieval(
    model: EncoderLike,
    images: Tensor,
    captions: Sequence[str],
    ks: Sequence[int] = (1, 5),
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
    """Encode held-out image/caption pairs with ``model`` and compute :func:`retrieval_recall`.

    Args:
        model: An :class:`~bibau_hf.evaluation.encoding.EncoderLike` model.
        images: ``[N, 3, H, W]`` uint8 or float in ``[0, 1]``.
        captions: ``N`` captions, caption ``i`` describing image ``i``.
        ks: The cut-offs ``K``.
        batch_size: Batch size for both encoders.

    Returns:
        Recall dict as returned by :func:`retrieval_recall`.

    Raises:
        ValueError: On malformed inputs or if the number of captions differs from the number of images.
    """
    captions = check_texts(captions, "captions")
    if isinstance(images, Tensor) and images.ndim >= 1 and images.shape[0] != len(captions):
        raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions; they must be paired 1:1")
    ks = _check_ks(ks)
    image_emb = encode_images(model, images, batch_size=batch_size)
    text_emb = encode_texts(model, captions, batch_size=batch_size)
    return retrieval_recall(image_emb, text_emb, ks=ks)
