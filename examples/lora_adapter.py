"""BI-BAU with LoRA, keeping the adapter: ship a few hundred kilobytes instead of a whole model.

    python examples/lora_adapter.py                       # the demo's planted digits model
    python examples/lora_adapter.py --model outputs/planted --output_dir outputs/clip-clean-lora

With ``use_lora`` only low-rank adapters are trained (the frozen reference is the base with the adapter disabled, so
no second copy of the model is held). By default the output is merged; ``keep_lora_adapter`` also writes the adapter
to ``OUTPUT_DIR/lora_adapter/``. This script then rebuilds the purified model from the *suspect* model plus that
adapter with peft alone, and checks that it equals the merged model BI-BAU saved.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bibau_hf import BIBAUConfig, BIBAUTrainer, load_adapter
from bibau_hf.attacks.plant import ATTACK_FILE, load_attack
from bibau_hf.clean_pipeline import default_cache_dir, demo_model
from bibau_hf.data.sources import load_train_and_eval
from bibau_hf.evaluation import ZeroShotEvaluator


def folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 2**20


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="a model of the digits lab (HF or open_clip), e.g. a `bibau-hf plant` output: the clean "
                        "pairs and the evaluation are digits'; default: the demo model")
    parser.add_argument("--output_dir", default="outputs/example-clean-lora")
    parser.add_argument("--cache_dir", default=default_cache_dir(), help="where the demo model is planted")
    parser.add_argument("--max_steps", type=int, default=300, help="M-step optimisation steps (BIBAUConfig's default)")
    parser.add_argument("--score_steps", type=int, default=100, help="steps of the E-step's per-concept sweep")
    args = parser.parse_args(argv)

    model_dir = args.model or demo_model(args.cache_dir)
    model = load_adapter(model_dir)
    pairs, eval_set = load_train_and_eval("digits", image_size=32)
    clean = pairs.take_fraction(0.05, seed=0)
    trigger, target = None, None
    if (Path(model_dir) / ATTACK_FILE).is_file():  # the lab's record of the planted trigger: measurement only
        trigger, record = load_attack(model_dir)
        target = record["target_class"]
    evaluator = ZeroShotEvaluator(eval_set, trigger, target)

    # LoRA trains at 1e-3: a rank-8 adapter at the full model's 1e-4 barely moves (docs/METHOD_NOTES.md §16).
    config = BIBAUConfig(output_dir=args.output_dir, overwrite_output_dir=True, use_lora=True, learning_rate=1e-3,
                         keep_lora_adapter=True, concept_names=list(eval_set.class_names), max_steps=args.max_steps,
                         score_steps=args.score_steps, disable_tqdm=True)
    trainer = BIBAUTrainer(model, config, clean, evaluator=evaluator, base_model_name=model_dir)
    trainer.train()
    trainer.save_model()
    print(f"before: {trainer.report['metrics_before']}\nafter:  {trainer.report['metrics_after']}")

    output, adapter_dir = Path(args.output_dir), Path(args.output_dir) / "lora_adapter"
    print(f"merged model {folder_megabytes(output) - folder_megabytes(adapter_dir):.2f} MB, "
          f"adapter {folder_megabytes(adapter_dir):.2f} MB ({adapter_dir})")

    # The suspect model + the adapter, with peft alone, is the purified model.
    from peft import PeftModel

    suspect = load_adapter(model_dir).model  # the backend's own module (transformers CLIPModel or open_clip CLIP)
    rebuilt = PeftModel.from_pretrained(suspect, str(adapter_dir)).merge_and_unload()
    merged = load_adapter(args.output_dir).model.state_dict()
    gap = max((rebuilt.state_dict()[k].float() - v.float()).abs().max().item() for k, v in merged.items())
    print(f"suspect + adapter vs the saved merged model: largest weight difference {gap:.2e}")
    return 0 if gap < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
