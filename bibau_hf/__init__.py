"""bibau_hf: Blind Inversion - Backdoor Adversarial Unlearning (BI-BAU) for CLIP-like models.

The main names are imported lazily, so ``import bibau_hf`` stays cheap (transformers and open_clip load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BIBAUConfig": "bibau_hf.bibau_config",
    "BIBAUTrainer": "bibau_hf.bibau_trainer",
    "ContrastiveAdapter": "bibau_hf.models",
    "load_adapter": "bibau_hf.models",
    "build_tiny_model": "bibau_hf.models",
    "scan": "bibau_hf.inversion",
    "ScanResult": "bibau_hf.inversion",
    "InversionConfig": "bibau_hf.inversion",
    "push_output_dir": "bibau_hf.hub",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bibau_hf' has no attribute {name!r}")
