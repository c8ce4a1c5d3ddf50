"""The cleaning job behind ``recipes/clean_clip.py`` and ``bibau-hf clean``: load, measure, BI-BAU, save, report.

With no model given it runs the embedded demo: it plants (and caches) the lab's default digits BadNets model, gives
BI-BAU 5 % of the training pairs as clean data and reports CA, ASR and the backdoor score before and after.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attacks.plant import ATTACK_FILE, PlantConfig, check_output_dir, load_attack, plant_backdoor
from .attacks.retune import retuning_attack
from .bibau_config import BIBAUConfig
from .bibau_trainer import REPORT_FILE, BIBAUTrainer
from .contrastive import LR_SCHEDULES, train_contrastive
from .data import DIGIT_CLASS_NAMES, ImageTextDataset, ZeroShotSet
from .data.sources import is_builtin, load_train_and_eval
from .errors import DataError
from .evaluation import ZeroShotEvaluator
from .models import ContrastiveAdapter, load_adapter

DEMO_FRACTION = 0.05
DEMO_BATCH_SIZE = 32  # BIBAUConfig's default per-device batch


def default_cache_dir() -> str:
    base = os.environ.get("BIBAU_HF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bibau_hf")
    return os.path.join(base, "demo")


@dataclass
class CleanArguments:
    """What to clean, with which clean data, and how to measure it (the method's knobs are in BIBAUConfig)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Suspect model: local folder or Hub id (HF or open_clip). Empty: the demo."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Clean data: 'digits', a .npz arrays file, or a datasets name/path. Default: digits."},
    )
    image_column: str = field(default="image", metadata={"help": "Image column of a datasets source."})
    caption_column: str | None = field(default="caption", metadata={"help": "Caption column of a datasets source."})
    label_column: str | None = field(
        default=None, metadata={"help": "Label column (for clean accuracy on the eval split); optional."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split holding the clean pairs."})
    eval_split: str = field(default="test", metadata={"help": "Split used to measure clean accuracy / ASR."})
    max_clean_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many clean pairs (seeded, stratified where labelled)."}
    )
    clean_fraction: float | None = field(
        default=None, metadata={"help": "Use this fraction of the clean pairs (the demo uses 0.05)."}
    )
    class_names: list[str] = field(
        default_factory=list, metadata={"help": "Class names for zero-shot accuracy (when labels are plain ints)."}
    )
    eval_attack: str | None = field(
        default=None,
        metadata={"help": "A planted model folder or its attack.json: measure ASR with that known trigger."},
    )
    compare_clean_finetune: bool = field(
        default=False,
        metadata={"help": "Also time plain clean fine-tuning on the same data and epochs (on a copy; not saved)."},
    )
    completeness_test: bool = field(
        default=False,
        metadata={
            "help": "After cleaning, run the retuning attack (DESIGN §4: 5 poisoned + 100 clean pairs from the "
            "labelled training split, 5 epochs; mean of 3 draws) with the --eval_attack trigger, and report the ASR "
            "it brings back. On in the demo."
        },
    )
    reference_model: str | None = field(
        default=None,
        metadata={"help": "A model trained without poison: the completeness test runs on it too, for comparison."},
    )
    demo_cache_dir: str = field(
        default_factory=default_cache_dir, metadata={"help": "Where the demo's planted model is cached."}
    )


def demo_model(cache_dir: str | None = None) -> str:
    """The demo's backdoored model (digits, BadNets, 5 % poison; the lab's defaults): planted into
    ``cache_dir/digits_badnets_hf`` on first use (about half a minute on 2 CPU cores), then reused."""
    folder = Path(cache_dir or default_cache_dir()) / "digits_badnets_hf"
    if not (folder / ATTACK_FILE).is_file():
        print(f"[bibau] planting the demo backdoor (digits, BadNets, 5 %) into {folder} ...")
        plant_backdoor(PlantConfig(output_dir=str(folder), overwrite_output_dir=True))
    return str(folder)


def _demo_model(args: CleanArguments, config: BIBAUConfig) -> str:
    """:func:`demo_model`, planted by the main process while the others wait for it."""
    with config.main_process_first(local=True, desc="planting the demo backdoor"):
        return demo_model(args.demo_cache_dir)


def _load_clean_data(
    args: CleanArguments, image_size: int, seed: int
) -> tuple[ImageTextDataset, ZeroShotSet | None, ImageTextDataset]:
    """The defender's clean pairs, the evaluation set (if labelled) and the whole training split they came from."""
    dataset = args.dataset_name or "digits"
    train, test = load_train_and_eval(
        dataset, image_size=32 if is_builtin(dataset) else image_size, seed=seed, image_column=args.image_column,
        caption_column=args.caption_column, label_column=args.label_column, train_split=args.dataset_split,
        eval_split=args.eval_split, class_names=args.class_names or None,
    )
    pool = train
    if args.clean_fraction is not None:
        if not 0 < args.clean_fraction <= 1:
            raise DataError(f"clean_fraction must be in (0, 1], got {args.clean_fraction}")
        train = train.take_fraction(args.clean_fraction, seed=seed)
    if args.max_clean_samples is not None and args.max_clean_samples < len(train):
        train = train.take(args.max_clean_samples, seed=seed)
    return train, test, pool


def format_table(report: dict[str, Any], clean_finetune_seconds: float | None = None) -> str:
    """The before/after table printed at the end of a run."""
    before, after = report["metrics_before"], report["metrics_after"]
    rows = [("metric", "before", "after")]
    for key, label in (("clean_accuracy", "clean accuracy (CA)"), ("attack_success_rate", "attack success (ASR)"),
                       ("robust_accuracy", "robust accuracy (RA)"),
                       ("text_attack_success_rate", "text attack success"), ("backdoor_score", "backdoor score")):
        if key in before or key in after:
            fmt = "{:.3f}" if key == "backdoor_score" else "{:.2%}"
            rows.append((label, fmt.format(before[key]) if key in before else "-",
                         fmt.format(after[key]) if key in after else "-"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in width))
    timing = report["timing"]
    purification = timing.get("purification_seconds", timing["total_seconds"])
    lines.append(f"suspected target: {report['suspected_target']!r}; BI-BAU purified in {purification:.1f}s "
                 f"(inversion {timing['e_step_seconds']:.1f}s, unlearning {timing['m_step_seconds']:.1f}s), plus "
                 f"{timing['total_seconds'] - purification:.1f}s of evaluation and final scan for the report")
    if clean_finetune_seconds is not None:
        ratio = purification / max(clean_finetune_seconds, 1e-9)
        lines.append(f"plain clean fine-tuning on the same data and steps: {clean_finetune_seconds:.1f}s "
                     f"(BI-BAU / clean fine-tuning = {ratio:.2f}x)")
    completeness = report.get("completeness")
    if completeness:
        reference = completeness.get("reference_retuned_asr")
        lines.append(f"retuning attack (completeness): ASR comes back to {completeness['retuned_asr']:.2%}"
                     + (f" (clean reference: {reference:.2%})" if reference is not None else ""))
    return "\n".join(lines)


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process, as a shell line to reproduce the run (for the report and card).

    A ``.py`` script is shown as ``python script.py ...`` (or ``python -m package.module ...`` when run with ``-m``);
    a console script such as ``bibau-hf`` by its name, not the absolute path of its launcher.
    """
    current = argv is None
    argv = list(sys.argv if current else argv)
    if not argv:
        return ""
    program, rest = argv[0], argv[1:]
    if not program.endswith(".py"):
        head = [Path(program).name]
    else:
        # Under ``python -m``, sys.argv[0] is the module's file path; the module name is what the user typed.
        spec = getattr(sys.modules.get("__main__"), "__spec__", None) if current else None
        if spec is not None and spec.name:
            head = ["python", "-m", spec.name.removesuffix(".__main__")]
        else:
            head = ["python", program]
    return shlex.join(head + rest)


def run_clean(args: CleanArguments, config: BIBAUConfig) -> dict[str, Any]:
    """Clean a model with BI-BAU; returns the report (also written beside the saved model)."""
    check_output_dir(config.output_dir, config.overwrite_output_dir)
    demo = args.model_name_or_path is None
    if demo:
        args.model_name_or_path = _demo_model(args, config)
        args.eval_attack = args.eval_attack or args.model_name_or_path
        if args.clean_fraction is None and args.max_clean_samples is None:
            args.clean_fraction = DEMO_FRACTION
        args.compare_clean_finetune = True
        args.completeness_test = True
        if config.world_size > 1 and config.per_device_train_batch_size == DEMO_BATCH_SIZE:
            # Keep the demo's global contrastive batch (embeddings are gathered across ranks): 63 clean pairs hold
            # one batch of 32, not one of 32 per process.
            config.per_device_train_batch_size = max(2, DEMO_BATCH_SIZE // config.world_size)
    model = load_adapter(args.model_name_or_path, device=config.device)
    train, test, pool = _load_clean_data(args, model.image_size, config.seed)
    trigger, target = None, None
    if args.eval_attack:
        trigger, record = load_attack(args.eval_attack)
        target = record["target_class"]
        if test is None:
            raise DataError("--eval_attack needs a labelled evaluation set: pass --label_column (and --eval_split)")
    if args.completeness_test and trigger is None:
        raise DataError("--completeness_test needs the trigger: pass --eval_attack (a planted model or attack.json)")
    if not config.concept_names:
        if test is not None:
            config.concept_names = list(test.class_names)
        elif (args.dataset_name or "digits") == "digits":
            config.concept_names = list(DIGIT_CLASS_NAMES)
    evaluator = ZeroShotEvaluator(test, trigger, target) if test is not None else None
    print(f"[bibau] {len(train)} clean pairs; model {args.model_name_or_path} ({model.backend})")

    clean_ft_seconds = None
    if args.compare_clean_finetune:
        clean_ft_seconds = clean_finetune(load_adapter(args.model_name_or_path, device=config.device), train, config)

    trainer = BIBAUTrainer(model, config, train, evaluator=evaluator, base_model_name=args.model_name_or_path)
    trainer.train()
    report = trainer.report
    report["dataset"] = args.dataset_name or "digits"
    report["eval_attack"] = args.eval_attack
    report["command"] = command_line()
    if clean_ft_seconds is not None:
        report["timing"]["clean_finetune_seconds"] = round(clean_ft_seconds, 2)
    if args.completeness_test:
        report["completeness"] = completeness_test(model, pool, test, evaluator, trigger, target, config.seed,
                                                   args.reference_model, config.device)
    trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        print(format_table(report, clean_ft_seconds))
        print(f"[bibau] purified model and {REPORT_FILE} written to {config.output_dir}")
    return report


RETUNE_DRAWS = 3


def completeness_test(
    model: ContrastiveAdapter,
    pool: ImageTextDataset,
    test: ZeroShotSet,
    evaluator: ZeroShotEvaluator,
    trigger: Any,
    target: int,
    seed: int,
    reference_model: str | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """The retuning attack (DESIGN §4) on ``model`` (and on a poison-free reference, if given): mean ASR over
    :data:`RETUNE_DRAWS` draws of the poisoned pairs, since one draw is too noisy to compare."""

    def retuned(adapter: ContrastiveAdapter) -> float:
        values = []
        for draw in range(RETUNE_DRAWS):
            attacked = retuning_attack(adapter, pool, trigger, target, test.templates, seed=1000 * seed + draw)
            metrics = evaluator(attacked)
            values.append(metrics.get("attack_success_rate", metrics.get("text_attack_success_rate", 0.0)))
        return round(sum(values) / len(values), 4)

    result: dict[str, Any] = {"retuned_asr": retuned(model)}
    if reference_model:
        result["reference_retuned_asr"] = retuned(load_adapter(reference_model, device=device))
    result["retuning"] = "5 poisoned + 100 clean pairs, 5 epochs, lr 5e-4; mean of 3 draws"
    return result


def lr_schedule_of(config: BIBAUConfig) -> str:
    """The plain-loop name (see :func:`bibau_hf.contrastive.make_lr_scheduler`) of the config's schedule, so that a
    baseline trained outside the Trainer decays its learning rate exactly as BI-BAU's M-step does."""
    name = getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type)
    if name not in LR_SCHEDULES:
        raise ValueError(f"baselines support lr_scheduler_type in {LR_SCHEDULES}, got {name!r}")
    return name


def finetune_epochs(config: BIBAUConfig, num_pairs: int) -> int:
    """Epochs over ``num_pairs`` clean pairs that give a plain training loop BI-BAU's M-step budget: ``max_steps``
    optimisation steps where set (both loops drop the last partial batch), else ``num_train_epochs``."""
    if config.max_steps > 0:
        return math.ceil(config.max_steps / max(1, num_pairs // config.per_device_train_batch_size))
    return int(config.num_train_epochs)


def clean_finetune(model: ContrastiveAdapter, train: ImageTextDataset, config: BIBAUConfig) -> float:
    """Plain CLIP fine-tuning of ``model`` (in place) with BI-BAU's pairs, steps, batch size, learning rate and
    learning-rate schedule: the baseline BI-BAU is compared with. Returns its wall time in seconds."""
    started = time.time()
    train_contrastive(
        model, train.images, train.captions, epochs=finetune_epochs(config, len(train)),
        batch_size=config.per_device_train_batch_size, learning_rate=config.learning_rate, weight_decay=0.0,
        warmup_fraction=0.0, seed=config.seed, progress=False, lr_schedule=lr_schedule_of(config),
    )
    return time.time() - started


__all__ = ["CleanArguments", "clean_finetune", "finetune_epochs", "format_table", "lr_schedule_of", "run_clean"]
