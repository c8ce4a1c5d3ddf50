"""Plant a backdoor: poison a dataset, train (or fine-tune) a CLIP-style model on it, measure, save.

This is the lab half of every experiment: it writes the model in native format next to ``attack.json``, the exact
trigger spec and the measured metrics, from which the same trigger can be rebuilt to measure ASR later.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..contrastive import train_contrastive
from ..data.captions import make_caption
from ..data.sources import is_builtin, load_train_and_eval
from ..errors import AttackSpecError, DataError, OutputDirError
from ..evaluation import evaluate_zero_shot
from ..models import ContrastiveAdapter, TinyCLIPSpec, build_tiny_model, load_adapter
from .poison import poison_pairs
from .triggers import Trigger, build_trigger

ATTACK_FILE = "attack.json"
ATTACKS = ("badnets", "blended", "wanet", "sig", "text")
DEFAULT_POISON_RATE = 0.05

# Trigger parameters of the lab's standard attacks (32x32 images): visible enough to be learnt at a 5 % poison
# rate by a model trained for a minute, as in the papers that introduced them.
DEFAULT_TRIGGERS: dict[str, dict[str, Any]] = {
    "badnets": {"type": "badnets", "patch_size": 4, "position": "bottom_right", "pattern": "checkerboard"},
    "blended": {"type": "blended", "alpha": 0.2, "seed": 0},
    "wanet": {"type": "wanet", "grid_size": 4, "strength": 4.0, "seed": 0},
    "sig": {"type": "sig", "delta": 0.1, "frequency": 6},
    "text": {"type": "text", "token": "cf", "position": "start", "seed": 0},
}


@dataclass
class TrainingPreset:
    """How a tiny model is trained on a dataset: architecture and schedule."""

    spec: TinyCLIPSpec
    epochs: int
    batch_size: int
    learning_rate: float
    max_shift: int = 0
    horizontal_flip: bool = False
    trigger_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    poison_rates: dict[str, float] = field(default_factory=dict)
    """Per-attack poison rate where it is not :data:`DEFAULT_POISON_RATE`."""


def training_preset(dataset: str) -> TrainingPreset:
    """The lab's training schedule for a dataset: digits trains a 2-layer model, anything else a 3-layer one.

    Natural images with augmentation need stronger global triggers to be learnt in 12 epochs at 5 % poison
    (measured on the CIFAR-10 subset: Blended α = 0.2 reached 56 % ASR, α = 0.3 100 %). WaNet needs both a stronger
    warp and its own paper's poison rate, 10 %: at 5 % strength 4 reached 6 % ASR (12 % when each batch was warped
    after the flips and shifts) and strength 8 23 %, while strength 8 at 10 % reaches 88–94 % (seeds 0–2).
    """
    if str(dataset).lower() == "digits":
        return TrainingPreset(TinyCLIPSpec(patch_size=4), epochs=30, batch_size=64, learning_rate=1e-3)
    return TrainingPreset(
        TinyCLIPSpec(patch_size=4, width=96, layers=3, heads=3, embed_dim=96),
        epochs=12, batch_size=128, learning_rate=2e-3, max_shift=2, horizontal_flip=True,
        trigger_overrides={"blended": {"alpha": 0.3}, "wanet": {"strength": 8.0}}, poison_rates={"wanet": 0.1},
    )


@dataclass
class PlantConfig:
    """Arguments of :func:`plant_backdoor` (and of ``recipes/plant_backdoor.py``)."""

    attack: str = field(default="badnets", metadata={"help": f"Attack: one of {', '.join(ATTACKS)}."})
    target_class: int = field(default=0, metadata={"help": "Index of the attacker's target class."})
    poison_rate: float | None = field(
        default=None,
        metadata={"help": "Fraction of training pairs poisoned (0 = clean). Default: 0.05, or the dataset preset's "
                  "rate for the attack (WaNet on natural images: 0.1)."},
    )
    dataset: str = field(
        default="digits", metadata={"help": "'digits', a .npz arrays file, or a datasets name/path (with labels)."}
    )
    model_backend: str = field(
        default="hf", metadata={"help": "Backend of a model trained from scratch: hf or open_clip."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Fine-tune this model instead of training a tiny one from scratch."}
    )
    output_dir: str = field(default="outputs/planted", metadata={"help": "Where the model and attack.json go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty folder."})
    seed: int = field(default=0, metadata={"help": "Seed of data split, poisoning, initialisation and training."})
    trigger: str | None = field(
        default=None, metadata={"help": "JSON object of trigger parameters overriding the attack's defaults."}
    )
    epochs: int | None = field(default=None, metadata={"help": "Training epochs (default: the dataset's preset)."})
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate (default: preset)."})
    batch_size: int | None = field(default=None, metadata={"help": "Batch size (default: preset)."})
    image_column: str = field(default="image", metadata={"help": "Image column of a datasets source."})
    caption_column: str | None = field(default="caption", metadata={"help": "Caption column of a datasets source."})
    label_column: str | None = field(default="label", metadata={"help": "Label column of a datasets source."})
    eval_split: str = field(default="test", metadata={"help": "Evaluation split of a datasets source."})
    image_size: int = field(default=32, metadata={"help": "Image side for digits and datasets sources."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise AttackSpecError(f"unknown attack {self.attack!r}; choose one of {', '.join(ATTACKS)}")
        if self.poison_rate is None:
            self.poison_rate = training_preset(self.dataset).poison_rates.get(self.attack, DEFAULT_POISON_RATE)
        if not 0.0 <= self.poison_rate <= 1.0:
            raise AttackSpecError(f"poison_rate must be in [0, 1], got {self.poison_rate}")
        if self.model_backend not in ("hf", "open_clip"):
            raise AttackSpecError(f"model_backend must be 'hf' or 'open_clip', got {self.model_backend!r}")
        if self.target_class < 0:
            raise AttackSpecError(f"target_class must be a class index >= 0, got {self.target_class}")

    def trigger_spec(self) -> dict[str, Any]:
        """The attack's default trigger, with the dataset preset's and then the user's overrides."""
        spec = dict(DEFAULT_TRIGGERS[self.attack])
        spec.update(training_preset(self.dataset).trigger_overrides.get(self.attack, {}))
        if self.trigger:
            try:
                overrides = json.loads(self.trigger) if isinstance(self.trigger, str) else dict(self.trigger)
            except json.JSONDecodeError as err:
                raise AttackSpecError(f"--trigger must be a JSON object, e.g. '{{\"alpha\": 0.1}}' ({err})") from err
            spec.update({k: v for k, v in overrides.items() if k != "type"})
        build_trigger(spec)  # validate now, before anything is loaded or written
        return spec


@dataclass
class PlantResult:
    """What :func:`plant_backdoor` made: the trained model and the ``attack.json`` record."""

    model: ContrastiveAdapter
    record: dict[str, Any]


def check_output_dir(output_dir: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty output folder unless overwriting was asked for (never lose a model silently)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path} exists and is a file; pass a folder as output_dir")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputDirError(
            f"{path} is not empty; pass --overwrite_output_dir to write into it, or choose another --output_dir"
        )
    return path


def load_attack(model_dir: str | Path) -> tuple[Trigger, dict[str, Any]]:
    """Rebuild the trigger of a planted model from its ``attack.json``; returns ``(trigger, record)``."""
    path = Path(model_dir)
    path = path if path.suffix == ".json" else path / ATTACK_FILE
    if not path.is_file():
        raise AttackSpecError(f"{path} not found; --eval_attack expects a planted model folder or its attack.json")
    record = json.loads(path.read_text())
    return build_trigger(record["trigger"]), record


def measure_attack(
    model: ContrastiveAdapter, eval_set, trigger: Trigger, target_class: int, batch_size: int = 256
) -> dict[str, float]:
    """CA plus ASR/RA (image trigger) or text ASR (text trigger) of ``model`` on ``eval_set``."""
    return evaluate_zero_shot(
        model, eval_set.images, eval_set.labels, eval_set.class_names, eval_set.templates, trigger=trigger,
        target_class=target_class, batch_size=batch_size,
    )


def plant_backdoor(config: PlantConfig) -> PlantResult:
    """Poison the dataset, train the model, measure CA/ASR, and save model + ``attack.json``.

    Everything that can be checked is checked before training starts, and nothing is written on error.
    """
    output_dir = check_output_dir(config.output_dir, config.overwrite_output_dir)
    trigger_spec = config.trigger_spec()
    trigger = build_trigger(trigger_spec)
    started = time.time()

    preset = training_preset(config.dataset)
    adapter = load_adapter(config.model_name_or_path) if config.model_name_or_path else None
    image_size = adapter.image_size if adapter is not None and not is_builtin(config.dataset) else config.image_size
    train, test = load_train_and_eval(
        config.dataset, image_size=image_size, seed=config.seed, image_column=config.image_column,
        caption_column=config.caption_column, label_column=config.label_column, eval_split=config.eval_split,
    )
    if train.labels is None or train.class_names is None or test is None:
        raise DataError(
            "planting a backdoor needs class labels (to pick the target and measure ASR); pass --label_column "
            "naming a ClassLabel column and an --eval_split that exists"
        )
    num_classes = len(train.class_names)
    if config.target_class >= num_classes:
        raise AttackSpecError(
            f"target_class {config.target_class} is not a class of {config.dataset}: valid are 0..{num_classes - 1} "
            f"({', '.join(train.class_names)})"
        )
    templates = test.templates

    def caption_fn(class_name: str, rng: random.Random) -> str:
        return make_caption(class_name, rng, templates)

    poisoned = poison_pairs(
        train.images, train.captions, train.labels, trigger, config.target_class, config.poison_rate,
        train.class_names, caption_fn=caption_fn, seed=config.seed,
    )
    if adapter is None:
        adapter = build_tiny_model(config.model_backend, preset.spec, seed=config.seed)
    epochs = config.epochs or preset.epochs
    lr = config.learning_rate or preset.learning_rate
    batch_size = config.batch_size or preset.batch_size
    torch.manual_seed(config.seed)
    losses = train_contrastive(
        adapter, poisoned.images, poisoned.captions, epochs=epochs, batch_size=batch_size, learning_rate=lr,
        max_shift=preset.max_shift, horizontal_flip=preset.horizontal_flip, seed=config.seed,
        progress=config.progress, description=f"plant {config.attack}",
    )
    train_seconds = time.time() - started
    metrics = measure_attack(adapter, test, trigger, config.target_class)

    record = {
        "attack": config.attack,
        "trigger": trigger.to_dict(),
        "target_class": config.target_class,
        "target_name": train.class_names[config.target_class],
        "poison_rate": config.poison_rate,
        "num_poisoned": poisoned.num_poisoned,
        "num_train_pairs": len(train),
        "dataset": str(config.dataset),
        "class_names": list(train.class_names),
        "templates": list(templates),
        "seed": config.seed,
        "model_backend": adapter.backend,
        "base_model": config.model_name_or_path,
        "architecture": None if config.model_name_or_path else preset.spec.to_dict(),
        "training": {
            "epochs": epochs, "batch_size": batch_size, "learning_rate": lr, "max_shift": preset.max_shift,
            "horizontal_flip": preset.horizontal_flip, "final_loss": losses[-1], "seconds": round(train_seconds, 1),
        },
        "metrics": metrics,
        "config": asdict(config),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    adapter.save_native(output_dir)
    (output_dir / ATTACK_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return PlantResult(adapter, record)


__all__ = [
    "ATTACKS",
    "ATTACK_FILE",
    "DEFAULT_POISON_RATE",
    "DEFAULT_TRIGGERS",
    "PlantConfig",
    "PlantResult",
    "TrainingPreset",
    "check_output_dir",
    "load_attack",
    "measure_attack",
    "plant_backdoor",
    "training_preset",
]
