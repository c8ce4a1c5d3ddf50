"""Learnable text trigger: k soft-token embeddings inserted into the caption's token-embedding sequence."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.base import ContrastiveAdapter


class SoftTokenTrigger(nn.Module):
    """C candidate text triggers, each ``num_tokens`` free vectors in the token-embedding space.

    The prior keeps their norm near that of real token embeddings (a trigger is a word, not an arbitrarily large
    vector): cost = mean over tokens of (‖v‖ / typical norm − 1)₊².

    Args:
        adapter: the model whose token-embedding layer defines the space.
        num_candidates: independent candidates optimised together.
        num_tokens: soft tokens per candidate.
        position: insertion index in the token sequence (1 = right after BOS).
        generator: seeds the initialisation (random existing token embeddings).
    """

    family = "soft_tokens"

    def __init__(
        self, adapter: ContrastiveAdapter, num_candidates: int, num_tokens: int, position: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        weight = adapter.token_embedding_weight()
        self.num_candidates = int(num_candidates)
        self.num_tokens = int(num_tokens)
        self.position = int(position)
        # Built on the CPU, like the tokens, so that one ``.to(device)`` moves the whole trigger.
        self.register_buffer("typical_norm", weight.norm(dim=-1).median().float().cpu(), persistent=False)
        rows = torch.randint(0, weight.shape[0], (num_candidates * num_tokens,), generator=generator)
        init = weight[rows.to(weight.device)].float().cpu().view(num_candidates, num_tokens, -1)
        self.tokens = nn.Parameter(init.clone())

    def prior_cost(self) -> torch.Tensor:
        ratio = self.tokens.norm(dim=-1) / self.typical_norm
        return torch.relu(ratio - 1).pow(2).mean(-1)

    def size(self) -> torch.Tensor:
        return (self.tokens.norm(dim=-1).mean(-1) / self.typical_norm).detach()

    def embed(self, adapter: ContrastiveAdapter, input_ids: torch.Tensor) -> torch.Tensor:
        """Normalised text embeddings of every caption under every candidate: ``[C, B, D]``."""
        batch = input_ids.shape[0]
        ids = input_ids.repeat(self.num_candidates, 1)
        values = self.tokens.to(adapter.device).repeat_interleave(batch, dim=0)
        emb = adapter.encode_text(ids, soft_tokens=values, soft_position=self.position)
        return emb.view(self.num_candidates, batch, -1)

    def select(self, indices: list[int], adapter: ContrastiveAdapter) -> SoftTokenTrigger:
        new = SoftTokenTrigger(adapter, len(indices), self.num_tokens, self.position)
        with torch.no_grad():
            new.tokens.copy_(self.tokens[indices])
        return new.to(self.tokens.device)

    def nearest_token_ids(self, adapter: ContrastiveAdapter, index: int, k: int = 5) -> list[list[int]]:
        """Ids of the ``k`` vocabulary tokens closest (cosine) to each soft token of candidate ``index``."""
        weight = adapter.token_embedding_weight()
        sims = torch.nn.functional.normalize(self.tokens[index].detach().to(weight.device), dim=-1) @ (
            torch.nn.functional.normalize(weight, dim=-1).t()
        )
        return sims.topk(k, dim=-1).indices.tolist()

    def nearest_tokens(self, adapter: ContrastiveAdapter, index: int, k: int = 5) -> list[list[str]]:
        """The ``k`` vocabulary tokens closest (cosine) to each soft token of candidate ``index``."""
        return decode_token_ids(adapter, self.nearest_token_ids(adapter, index, k))

    def describe(self, index: int) -> dict[str, Any]:
        return {"family": self.family, "num_tokens": self.num_tokens, "relative_norm": float(self.size()[index])}


def nearest_vocabulary_ids(adapter: ContrastiveAdapter, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each ``[k, width]`` vector, the id of the nearest (L2) token embedding and its distance.

    Distances are computed exactly (not through a matrix product), so that a copied embedding is at distance 0."""
    weight = adapter.token_embedding_weight()
    distances = torch.cdist(vectors.to(weight), weight, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.min(-1)
    return nearest.indices, nearest.values


def decode_token_ids(adapter: ContrastiveAdapter, ids: list[list[int]]) -> list[list[str]]:
    """Vocabulary strings of token ids, with either backend's tokenizer (HF, or open_clip's BPE ``decoder``)."""
    tokenizer = adapter.tokenizer
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return [tokenizer.convert_ids_to_tokens(row) for row in ids]
    decoder = getattr(tokenizer, "decoder", {})
    return [[decoder.get(i, str(i)) for i in row] for row in ids]
