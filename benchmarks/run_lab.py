"""Measure the attack lab: plant every attack on every dataset and compare with the clean reference.

    python benchmarks/run_lab.py                       # digits + CIFAR-10 subset, HF backend; open_clip on digits
    python benchmarks/run_lab.py --quick               # digits only, HF backend
    python benchmarks/run_lab.py --datasets digits --backends hf open_clip --attacks badnets blended

Planted models are cached under benchmarks/runs/lab/ (reused when their attack.json exists; --fresh replants).
Writes benchmarks/results/lab.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
ATTACKS = ["badnets", "blended", "wanet", "sig", "text"]


def plant(dataset: str, backend: str, attack: str, seed: int, runs: Path, fresh: bool) -> dict:
    from bibau_hf.attacks.plant import PlantConfig, plant_backdoor

    tag = "digits" if dataset == "digits" else Path(dataset).stem
    folder = runs / f"{tag}_{backend}_{attack}_s{seed}"
    if (folder / "attack.json").is_file() and not fresh:
        return json.loads((folder / "attack.json").read_text())
    clean = attack == "clean"
    config = PlantConfig(
        attack="badnets" if clean else attack, poison_rate=0.0 if clean else None, dataset=dataset,
        model_backend=backend, output_dir=str(folder), overwrite_output_dir=True, seed=seed, progress=False,
    )
    started = time.time()
    record = plant_backdoor(config).record
    record["wall_seconds"] = round(time.time() - started, 1)
    (folder / "attack.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=None, help="digits and/or .npz paths")
    parser.add_argument("--backends", nargs="+", default=None, choices=["hf", "open_clip"])
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="digits, HF backend only")
    parser.add_argument("--fresh", action="store_true", help="replant even when a cached model exists")
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "lab"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lab.json"))
    args = parser.parse_args(argv)

    import torch

    if args.quick:
        plan = [("digits", "hf")]
    else:
        datasets = args.datasets or ["digits", str(CIFAR)]
        backends = args.backends or ["hf"]
        plan = [(d, b) for d in datasets for b in backends]
        if args.datasets is None and args.backends is None:
            plan.append(("digits", "open_clip"))
    runs = Path(args.runs)
    rows = []
    for dataset, backend in plan:
        attacks = ["clean", *args.attacks]
        if backend == "open_clip" and args.attacks == ATTACKS:
            attacks = ["clean", "badnets", "blended"]
        reference = None
        for attack in attacks:
            record = plant(dataset, backend, attack, args.seed, runs, args.fresh)
            metrics = record["metrics"]
            if attack == "clean":
                reference = metrics["clean_accuracy"]
            asr = metrics.get("attack_success_rate", metrics.get("text_attack_success_rate"))
            row = {
                "dataset": "digits" if dataset == "digits" else Path(dataset).stem, "backend": backend,
                "attack": attack, "clean_accuracy": metrics["clean_accuracy"],
                "asr": None if attack == "clean" else asr,
                "ca_drop_vs_clean": None if reference is None else round(reference - metrics["clean_accuracy"], 4),
                "train_seconds": record["training"]["seconds"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "command": "python benchmarks/run_lab.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "rows": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| dataset | backend | attack | CA | ASR | CA drop vs clean | train s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        asr = "-" if r["asr"] is None else f"{r['asr']:.1%}"
        print(f"| {r['dataset']} | {r['backend']} | {r['attack']} | {r['clean_accuracy']:.1%} | {asr} | "
              f"{r['ca_drop_vs_clean']:+.1%} | {r['train_seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
