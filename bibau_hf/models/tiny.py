"""Tiny CLIP-style models built from config, for demos, tests and the attack lab (no downloads).

Both backends get a real CLIP byte-level BPE tokenizer. The HF model uses the first ``merges`` merges of the CLIP
BPE that ships inside open_clip (a truncated BPE is still a valid BPE: rarer words split into more pieces), which
keeps its embedding table small; the open_clip model uses open_clip's full default tokenizer, as its native format
expects.
"""

from __future__ import annotations

import gzip
from dataclasses import asdict, dataclass

import torch

from .base import ContrastiveAdapter
from .hf_clip import CLIP_MEAN, CLIP_STD, HFCLIPAdapter
from .open_clip_adapter import OpenCLIPAdapter

# Number of merges in the CLIP BPE file (49152 tokens - 256 bytes - 2 specials).
_CLIP_BPE_MERGES = 49152 - 256 - 2


@dataclass
class TinyCLIPSpec:
    """Architecture of a tiny CLIP (both towers are ViT/Transformer with the same width).

    Attributes:
        image_size: input side in pixels.
        patch_size: ViT patch side.
        width: hidden size of both towers.
        layers: transformer layers per tower.
        heads: attention heads per tower.
        embed_dim: size of the shared embedding space.
        context_length: maximum text tokens.
        bpe_merges: BPE merges kept for the HF tokenizer (vocabulary = 512 byte tokens + merges + 2 specials).
    """

    image_size: int = 32
    patch_size: int = 8
    width: int = 64
    layers: int = 2
    heads: int = 4
    embed_dim: int = 64
    context_length: int = 32
    bpe_merges: int = 8000

    def to_dict(self) -> dict:
        return asdict(self)


def build_clip_bpe_tokenizer(merges: int = 8000, context_length: int = 77):
    """A transformers ``CLIPTokenizer`` with the first ``merges`` merges of the CLIP BPE.

    The end-of-text token gets the largest id, as CLIP's legacy EOS pooling expects.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    if not 0 <= merges <= _CLIP_BPE_MERGES:
        raise ValueError(f"merges must be in [0, {_CLIP_BPE_MERGES}], got {merges}")
    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : merges + 1]
    merge_pairs = [tuple(line.split()) for line in lines]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(p) for p in merge_pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merge_pairs)
    tokenizer.model_max_length = context_length
    return tokenizer


def build_tiny_hf_clip(spec: TinyCLIPSpec | None = None, seed: int = 0) -> HFCLIPAdapter:
    """A randomly initialised transformers ``CLIPModel`` of the given tiny size, wrapped in an adapter."""
    from transformers import CLIPConfig, CLIPModel

    spec = spec or TinyCLIPSpec()
    tokenizer = build_clip_bpe_tokenizer(spec.bpe_merges, spec.context_length)
    tower = dict(
        hidden_size=spec.width,
        intermediate_size=4 * spec.width,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
    )
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=spec.context_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(tower, image_size=spec.image_size, patch_size=spec.patch_size),
        projection_dim=spec.embed_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    return HFCLIPAdapter(model, tokenizer, spec.image_size, CLIP_MEAN, CLIP_STD)


def tiny_open_clip_config(spec: TinyCLIPSpec) -> dict:
    """The ``model_cfg`` dict of a tiny open_clip ViT CLIP."""
    return {
        "embed_dim": spec.embed_dim,
        "vision_cfg": {
            "image_size": spec.image_size,
            "layers": spec.layers,
            "width": spec.width,
            "head_width": spec.width // spec.heads,
            "patch_size": spec.patch_size,
        },
        "text_cfg": {
            "context_length": spec.context_length,
            "vocab_size": 49408,
            "width": spec.width,
            "heads": spec.heads,
            "layers": spec.layers,
        },
    }


def build_tiny_open_clip(spec: TinyCLIPSpec | None = None, seed: int = 0) -> OpenCLIPAdapter:
    """A randomly initialised open_clip ``CLIP`` of the given tiny size, wrapped in an adapter."""
    import open_clip

    spec = spec or TinyCLIPSpec()
    model_cfg = tiny_open_clip_config(spec)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=spec.context_length)
    preprocess_cfg = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
                      "resize_mode": "shortest"}
    return OpenCLIPAdapter(model, tokenizer, model_cfg, preprocess_cfg)


def build_tiny_model(backend: str = "hf", spec: TinyCLIPSpec | None = None, seed: int = 0) -> ContrastiveAdapter:
    """A tiny model of either backend (``"hf"`` or ``"open_clip"``)."""
    if backend == "hf":
        return build_tiny_hf_clip(spec, seed)
    if backend == "open_clip":
        return build_tiny_open_clip(spec, seed)
    raise ValueError(f"unknown backend {backend!r}; choose 'hf' or 'open_clip'")
