"""What the scan-only studies (``scan_warp_bound.py``, ``scan_periodic.py``, ``scan_target_rank.py``) share: the
benchmark's defender data, the lab's models to scan, one image family's round-0 scan of a lab model, and the results
file with its tally."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from run_benchmark import DEFENDER_FRACTION
from run_lab import CIFAR, plant


def defender_data(source: str, seed: int):
    """The benchmark's defender data for ``seed``: 5 % of the training pairs, and the test set (class names)."""
    from bibau_hf.data.sources import load_train_and_eval

    train, test = load_train_and_eval(source, seed=seed)
    return train.take_fraction(DEFENDER_FRACTION, seed=seed), test


def lab_models(
    runs: Path, dataset: str, seeds: Iterable[int], attacks: Iterable[str], plant_missing: bool = True
) -> Iterator[tuple[int, str, Path, Any]]:
    """The lab's HF models of ``dataset`` (``digits`` or ``cifar10_subset``), seed by seed, as ``(seed, attack,
    folder, defender data)``; a model the lab lacks is planted first, or skipped without ``plant_missing``."""
    source = "digits" if dataset == "digits" else str(CIFAR)
    for seed in seeds:
        data = defender_data(source, seed)
        for attack in attacks:
            folder = runs / f"{dataset}_hf_{attack}_s{seed}"
            if not (folder / "attack.json").is_file():
                if not plant_missing:
                    continue
                plant(source, "hf", attack, seed, runs, False)
            yield seed, attack, folder, data


def scan_family(folder: Path, data, seed: int, family: str, **config: Any):
    """Round-0 scan of the model in ``folder`` with the image ``family`` alone, under BI-BAU's defaults plus
    ``config`` (``BIBAUConfig`` fields); its :class:`~bibau_hf.inversion.InvertedTrigger`."""
    from bibau_hf.bibau_config import BIBAUConfig
    from bibau_hf.inversion import scan
    from bibau_hf.models import load_adapter

    clean, test = data
    settings = BIBAUConfig(output_dir=str(folder.parent / "_scan"), seed=seed, trigger_families=[family],
                           invert_towers="image", **config)
    return scan(load_adapter(folder), clean.images, clean.captions, concepts=test.class_names,
                config=settings.inversion_config(progress=False)).triggers[0]


def write_result(out: str | Path, result: dict[str, Any]) -> None:
    """Write ``result`` as JSON to ``out`` and print its tally, a line per entry."""
    Path(out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    for line in result["tally"]:
        print(json.dumps(line, ensure_ascii=False))
