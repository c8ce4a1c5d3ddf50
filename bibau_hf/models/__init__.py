"""Model adapters: one interface over transformers CLIPModel and open_clip, plus tiny models built from config."""

from .base import ContrastiveAdapter, insert_placeholder_tokens
from .hf_clip import HFCLIPAdapter
from .loading import detect_backend, load_adapter
from .open_clip_adapter import OpenCLIPAdapter
from .tiny import TinyCLIPSpec, build_clip_bpe_tokenizer, build_tiny_hf_clip, build_tiny_model, build_tiny_open_clip

__all__ = [
    "ContrastiveAdapter",
    "HFCLIPAdapter",
    "OpenCLIPAdapter",
    "TinyCLIPSpec",
    "build_clip_bpe_tokenizer",
    "build_tiny_hf_clip",
    "build_tiny_model",
    "build_tiny_open_clip",
    "detect_backend",
    "insert_placeholder_tokens",
    "load_adapter",
]
