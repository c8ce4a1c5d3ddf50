"""Load a suspect model from a local folder or a Hub id, in its native format, reading safetensors only.

The model being cleaned may have been made by an attacker, so nothing here unpickles: a folder that only holds
``.bin``/``.pt``/``.pth`` weights is refused with instructions to convert it, and remote code is never run unless
the caller asks for it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import ModelFormatError, UnsafeCheckpointError
from .base import ContrastiveAdapter
from .hf_clip import CLIP_MEAN, CLIP_STD, HFCLIPAdapter
from .open_clip_adapter import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, OpenCLIPAdapter

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# What we fetch from the Hub: configs, tokenizer files and safetensors weights; never pickles or code.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "README.md"]


def detect_backend(model_dir: str | Path) -> str:
    """``"open_clip"`` or ``"hf"`` from the files in a native model folder."""
    model_dir = Path(model_dir)
    if (model_dir / OPEN_CLIP_CONFIG).is_file():
        return "open_clip"
    if (model_dir / "config.json").is_file():
        return "hf"
    raise ModelFormatError(
        f"{model_dir} holds neither config.json (transformers) nor {OPEN_CLIP_CONFIG} (open_clip); "
        "pass a folder written by save_pretrained / bibau_hf, or a Hub id of such a model."
    )


def _check_weights(model_dir: Path) -> list[Path]:
    safetensors = sorted(model_dir.glob("*.safetensors"))
    if safetensors:
        return safetensors
    pickles = [p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise UnsafeCheckpointError(
            f"{model_dir} only has pickle checkpoints ({', '.join(pickles)}). bibau_hf reads safetensors only, "
            "because a pickle from an untrusted model can run code when loaded. Convert it in a trusted "
            "environment (e.g. `model.save_pretrained(dir, safe_serialization=True)`) and pass that folder."
        )
    raise ModelFormatError(f"{model_dir} has no weights (*.safetensors); did the save finish?")


def resolve_model_dir(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder for ``name_or_path``: the path itself, or a Hub snapshot of its safe files."""
    path = Path(name_or_path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise UnsafeCheckpointError(
                f"{path} is a pickle checkpoint; bibau_hf reads safetensors only. Pass the model folder with "
                "its config and *.safetensors weights."
            )
        raise ModelFormatError(f"{path} is a file; pass the model folder (config + *.safetensors) instead.")
    if path.is_dir():
        return path
    if str(name_or_path).startswith((".", "/")) or str(name_or_path).count("/") > 1:
        raise ModelFormatError(f"model folder {name_or_path} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # network, auth or missing repo: all need the user's action
        raise ModelFormatError(
            f"could not fetch {name_or_path!r} from the Hub ({type(err).__name__}: {err}). Check the id, your "
            "network and HF_TOKEN, or pass a local folder."
        ) from err


def load_adapter(
    name_or_path: str | Path,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ContrastiveAdapter:
    """Load a transformers CLIP or open_clip model in native format and wrap it in its adapter.

    Args:
        name_or_path: local folder or Hub id.
        backend: ``"auto"`` (detect from the files), ``"hf"`` or ``"open_clip"``.
        device: where to put the model.
        revision: Hub revision.
        trust_remote_code: forwarded to transformers; off unless you trust the model's author.
    """
    model_dir = resolve_model_dir(name_or_path, revision)
    found = detect_backend(model_dir)
    if backend not in ("auto", found):
        raise ModelFormatError(f"{model_dir} is a {found} model, but backend={backend!r} was asked for")
    _check_weights(model_dir)
    adapter = _load_hf(model_dir, trust_remote_code) if found == "hf" else _load_open_clip(model_dir)
    return adapter.to(device)


def _load_hf(model_dir: Path, trust_remote_code: bool) -> HFCLIPAdapter:
    from transformers import AutoTokenizer, CLIPModel

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "clip":
        raise ModelFormatError(
            f"{model_dir} holds a {config.get('model_type')!r} model; bibau_hf's transformers backend expects "
            "model_type 'clip' (CLIPModel)."
        )
    model = CLIPModel.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=trust_remote_code)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ModelFormatError(f"{model_dir} has no loadable tokenizer files ({err})") from err
    mean, std, size = CLIP_MEAN, CLIP_STD, model.config.vision_config.image_size
    # transformers 5 writes processor_config.json (image processor nested); older saves preprocessor_config.json.
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        processor_file = model_dir / name
        if processor_file.is_file():
            processor = json.loads(processor_file.read_text())
            processor = processor.get(key, {}) if key else processor
            mean = processor.get("image_mean", mean)
            std = processor.get("image_std", std)
            break
    return HFCLIPAdapter(model, tokenizer, size, mean, std)


def _load_open_clip(model_dir: Path) -> OpenCLIPAdapter:
    import open_clip
    from safetensors.torch import load_file

    config = json.loads((model_dir / OPEN_CLIP_CONFIG).read_text())
    if "model_cfg" not in config:
        raise ModelFormatError(f"{model_dir / OPEN_CLIP_CONFIG} lacks 'model_cfg'")
    weights = model_dir / OPEN_CLIP_WEIGHTS
    if not weights.is_file():
        candidates = sorted(model_dir.glob("*.safetensors"))
        weights = candidates[0]
    # Build the architecture without weights, then read the safetensors ourselves (never a pickle).
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights loaded", which is what we asked for
    try:
        model = open_clip.create_model(f"local-dir:{model_dir}", load_weights=False)
    finally:
        logger.setLevel(level)
    state = load_file(str(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFormatError(f"{weights} does not match the architecture in {OPEN_CLIP_CONFIG}: {err}") from err
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    return OpenCLIPAdapter(model, tokenizer, config["model_cfg"], config.get("preprocess_cfg"))
