"""Scan a CLIP model for a backdoor and, if one is suspected, remove it with BI-BAU from Python.

    python examples/scan_then_clean.py                    # the demo: a digits CLIP with a planted BadNets backdoor
    python examples/scan_then_clean.py --model path/or/hub-id --dataset my_org/clean_captions \
        --label_column label --output_dir outputs/clip-clean

Without ``--model`` it uses the demo's planted model (``recipes/clean_clip.py``'s; planted on first use, about half
a minute on 2 CPU cores), so it runs offline. The steps are the ones a user takes with a downloaded model:

1. ``scan``: the E-step alone, on a few hundred clean pairs; the model is not changed;
2. each trigger family's score against its tower's threshold (the rule BI-BAU itself unlearns by);
3. ``BIBAUTrainer`` on the same pairs; the purified model is saved in its native format beside its model card;
4. the saved folder reloaded with the backend's own loader (no bibau_hf needed to use it) and measured again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bibau_hf import BIBAUConfig, BIBAUTrainer, InversionConfig, load_adapter, scan
from bibau_hf.attacks.plant import ATTACK_FILE, load_attack
from bibau_hf.clean_pipeline import default_cache_dir, demo_model
from bibau_hf.data.sources import is_builtin, load_train_and_eval
from bibau_hf.evaluation import ZeroShotEvaluator
from bibau_hf.inversion import (
    CONFIDENCE_GAP_THRESHOLD,
    IMAGE_THRESHOLD,
    TEXT_THRESHOLD,
    passes_gates,
    text_vetoed_families,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Hub id or local folder (HF or open_clip); default: the demo")
    parser.add_argument("--dataset", default="digits", help="clean pairs: 'digits', a .npz file or a datasets source")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--label_column", default=None, help="class labels: concepts and clean accuracy come from it")
    parser.add_argument("--clean_fraction", type=float, default=0.05, help="share of the training pairs to use")
    parser.add_argument("--output_dir", default="outputs/example-clean")
    parser.add_argument("--cache_dir", default=default_cache_dir(), help="where the demo model is planted")
    parser.add_argument("--max_steps", type=int, default=300, help="M-step optimisation steps (BIBAUConfig's default)")
    parser.add_argument("--score_steps", type=int, default=100, help="steps of the scan's per-concept sweep")
    parser.add_argument("--clean_anyway", action="store_true", help="run BI-BAU even when nothing is suspected")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = args.model or demo_model(args.cache_dir)
    model = load_adapter(model_dir)  # safetensors only; never trust_remote_code
    pairs, eval_set = load_train_and_eval(
        args.dataset, image_size=32 if is_builtin(args.dataset) else model.image_size, image_column=args.image_column,
        caption_column=args.caption_column, label_column=args.label_column, eval_split="test",
    )
    clean = pairs.take_fraction(args.clean_fraction, seed=0)
    concepts = list(eval_set.class_names) if eval_set is not None else None
    print(f"{model_dir} ({model.backend}): {len(clean)} clean pairs")

    # 1-2. Is it backdoored, and toward what?
    result = scan(model, clean.images, clean.captions, concepts=concepts,
                  config=InversionConfig(score_steps=args.score_steps, progress=False))
    gated = {
        family.key: family.suspected_target if passes_gates(
            family.modality, family.score, family.confidence_gap, threshold=IMAGE_THRESHOLD,
            text_threshold=TEXT_THRESHOLD, max_confidence_gap=CONFIDENCE_GAP_THRESHOLD, family=family.family,
        ) else None
        for family in result.triggers
    }
    # As BI-BAU does: an image family naming another concept than a passing text family is a natural shortcut.
    vetoed = text_vetoed_families(gated, text_threshold=TEXT_THRESHOLD)
    suspected = [key for key, target in gated.items() if target is not None and key not in vetoed]
    for family in result.triggers:
        note = ("  <- suspected" if family.key in suspected else
                f"  (passes, but {vetoed[family.key]} names another target)" if family.key in vetoed else "")
        print(f"  {family.key:12s} score {family.score:7.2f} toward {family.suspected_target!r}{note}")
    if not suspected and not args.clean_anyway:
        print("no backdoor suspected; the model is left as it is (--clean_anyway runs BI-BAU regardless, which then "
              "unlearns every family toward its likeliest concepts, in case the scan missed the backdoor)")
        return 0

    # 3. Remove it. The planted model's attack.json lets the demo measure the real trigger's success rate; a user's
    # model has none, and BI-BAU never reads it.
    trigger, target = None, None
    if (Path(model_dir) / ATTACK_FILE).is_file():
        trigger, record = load_attack(model_dir)
        target = record["target_class"]
    evaluator = ZeroShotEvaluator(eval_set, trigger, target) if eval_set is not None else None
    config = BIBAUConfig(output_dir=args.output_dir, overwrite_output_dir=True, concept_names=concepts or [],
                         max_steps=args.max_steps, score_steps=args.score_steps, disable_tqdm=True)
    trainer = BIBAUTrainer(model, config, clean, evaluator=evaluator, base_model_name=model_dir)
    trainer.train()
    trainer.save_model()
    before, after = trainer.report["metrics_before"], trainer.report["metrics_after"]
    for name in sorted(set(before) & set(after)):
        print(f"  {name:22s} {before[name]:8.4f} -> {after[name]:8.4f}")

    # 4. The output folder is a plain HF (or open_clip) model: reload it and measure it again.
    if model.backend == "hf":
        from transformers import CLIPModel

        CLIPModel.from_pretrained(args.output_dir)  # loads with transformers alone
    reloaded = load_adapter(args.output_dir)
    if evaluator is not None:
        print(f"reloaded from {args.output_dir}: {evaluator(reloaded)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
