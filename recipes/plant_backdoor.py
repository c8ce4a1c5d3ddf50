"""Plant a backdoor in a tiny CLIP-style model (or fine-tune a given one) with the bibau_hf attack lab.

    python recipes/plant_backdoor.py                        # digits, BadNets, 5 % poison, transformers backend
    python recipes/plant_backdoor.py --attack text --dataset ../shared/data/cifar10_subset.npz --output_dir out/c10
    python recipes/plant_backdoor.py --poison_rate 0 --output_dir outputs/clean   # the clean reference model
    python recipes/plant_backdoor.py --config recipes/configs/plant_digits_badnets.yaml

Writes the model in native format (transformers or open_clip) and ``attack.json`` (trigger spec + metrics).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bibau_hf.cli import plant_command
from bibau_hf.recipe_args import run_main


def main(argv: Sequence[str] | None = None) -> None:
    plant_command(argv, prog=None)  # the same job as `bibau-hf plant`


if __name__ == "__main__":
    sys.exit(run_main(main))
