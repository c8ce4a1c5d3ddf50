"""Remove a backdoor from a CLIP / open_clip model with BI-BAU.

    accelerate launch recipes/clean_clip.py                     # the demo: plant digits BadNets, clean, report
    python recipes/clean_clip.py --model_name_or_path path/to/suspect --dataset_name my/captions \\
        --max_clean_samples 500 --output_dir outputs/clean
    python recipes/clean_clip.py --config recipes/configs/clean_digits.yaml
    accelerate launch --config_file recipes/accelerate_configs/cpu_2proc.yaml recipes/clean_clip.py

Arguments: everything of ``CleanArguments`` (model, data, evaluation) and of ``BIBAUConfig`` (the method and
``transformers.TrainingArguments``); ``--help`` lists them all.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bibau_hf.bibau_config import BIBAUConfig
from bibau_hf.clean_pipeline import CleanArguments, run_clean
from bibau_hf.recipe_args import parse_recipe_args, run_main


def main(argv: Sequence[str] | None = None) -> None:
    args, config = parse_recipe_args([CleanArguments, BIBAUConfig], argv)
    run_clean(args, config)


if __name__ == "__main__":
    sys.exit(run_main(main))
