"""BI-BAU against no defense and plain clean fine-tuning on the lab's planted backdoors, with completeness and cost.

    python benchmarks/run_defense.py                          # digits, all five attacks, HF backend
    python benchmarks/run_defense.py --quick                  # digits, BadNets only
    python benchmarks/run_defense.py --dataset ../shared/data/cifar10_subset.npz --epochs 20
    python benchmarks/run_defense.py --backend open_clip --attacks badnets blended
    python benchmarks/run_defense.py --lora                   # BI-BAU with LoRA adapters

For every attack: the planted model and the clean reference come from the lab (benchmarks/run_lab.py's cache, planted
on demand), the defender gets 5 % of the training pairs and nothing about trigger or target, and we report CA, ASR
(text ASR for the text trigger), DER, the backdoor score, the retuning attack (5 poisoned + 100 clean pairs, 5 epochs)
on the defended model and on the clean reference, and wall time. Results: benchmarks/results/defense_<tag>.json.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_lab import ATTACKS, plant  # noqa: E402


def asr_of(metrics: dict) -> float:
    return metrics.get("attack_success_rate", metrics.get("text_attack_success_rate", 0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--backend", default="hf", choices=["hf", "open_clip"])
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.05, help="defender's share of the training pairs")
    parser.add_argument("--epochs", type=float, default=None, help="M-step epochs (default: BIBAUConfig's)")
    parser.add_argument("--lora", action="store_true", help="BI-BAU through LoRA adapters")
    parser.add_argument("--quick", action="store_true", help="BadNets only")
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "lab"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    from bibau_hf.attacks.plant import load_attack
    from bibau_hf.attacks.retune import retuning_attack
    from bibau_hf.bibau_config import BIBAUConfig
    from bibau_hf.bibau_trainer import BIBAUTrainer
    from bibau_hf.clean_pipeline import clean_finetune
    from bibau_hf.data.sources import load_train_and_eval
    from bibau_hf.evaluation import ZeroShotEvaluator, defense_effectiveness_rate
    from bibau_hf.inversion import scan
    from bibau_hf.models import load_adapter

    attacks = ["badnets"] if args.quick else args.attacks
    tag = "digits" if args.dataset == "digits" else Path(args.dataset).stem
    runs = Path(args.runs)
    train, test = load_train_and_eval(args.dataset, seed=args.seed)
    clean_set = train.take_fraction(args.fraction, seed=args.seed)
    plant(args.dataset, args.backend, "clean", args.seed, runs, False)
    clean_dir = runs / f"{tag}_{args.backend}_clean_s{args.seed}"
    rows = []
    for attack in attacks:
        plant(args.dataset, args.backend, attack, args.seed, runs, False)
        folder = runs / f"{tag}_{args.backend}_{attack}_s{args.seed}"
        trigger, record = load_attack(folder)
        target = record["target_class"]
        evaluator = ZeroShotEvaluator(test, trigger, target)

        def retuned_asr(model, evaluator=evaluator, trigger=trigger, target=target) -> float:
            attacked = retuning_attack(model, train, trigger, target, test.templates, seed=args.seed)
            return asr_of(evaluator(attacked))

        reference = load_adapter(clean_dir)
        ref_metrics = evaluator(reference)
        ref_retuned = retuned_asr(reference)
        ref_scan = scan(reference, clean_set.images, clean_set.captions, concepts=test.class_names)
        planted = load_adapter(folder)
        before = evaluator(planted)

        config = BIBAUConfig(
            output_dir=str(ROOT / "benchmarks" / "runs" / "defense" / f"{tag}_{args.backend}_{attack}"),
            overwrite_output_dir=True, concept_names=list(test.class_names), seed=args.seed, disable_tqdm=True,
            logging_steps=1000, use_lora=args.lora, **({"num_train_epochs": args.epochs} if args.epochs else {}),
            **({"learning_rate": 1e-3} if args.lora else {}),
        )
        # Plain clean fine-tuning with the same data, epochs, batch size and learning rate.
        finetuned = load_adapter(folder)
        ft_seconds = clean_finetune(finetuned, clean_set, config)
        ft_metrics = evaluator(finetuned)
        ft_retuned = retuned_asr(finetuned)

        defended = load_adapter(folder)
        started = time.time()
        trainer = BIBAUTrainer(defended, config, clean_set, base_model_name=str(folder))
        trainer.train()
        bibau_seconds = time.time() - started
        after = evaluator(defended)
        bibau_retuned = retuned_asr(defended)

        def der(m: dict, before: dict = before) -> float:
            return defense_effectiveness_rate(ca_before=before["clean_accuracy"], ca_after=m["clean_accuracy"],
                                              asr_before=asr_of(before), asr_after=asr_of(m))

        row = {
            "dataset": tag, "backend": args.backend, "attack": attack, "target": record["target_name"],
            "clean_reference": {"ca": ref_metrics["clean_accuracy"], "asr": asr_of(ref_metrics),
                                "retuned_asr": ref_retuned, "backdoor_score": round(ref_scan.backdoor_score, 3),
                                "suspected_target": ref_scan.suspected_target},
            "no_defense": {"ca": before["clean_accuracy"], "asr": asr_of(before)},
            "clean_finetune": {"ca": ft_metrics["clean_accuracy"], "asr": asr_of(ft_metrics), "der": der(ft_metrics),
                               "retuned_asr": ft_retuned, "seconds": round(ft_seconds, 1)},
            "bibau": {"ca": after["clean_accuracy"], "asr": asr_of(after), "der": der(after),
                      "retuned_asr": bibau_retuned, "seconds": round(bibau_seconds, 1),
                      "e_step_seconds": round(trainer.report["timing"]["e_step_seconds"], 1),
                      "score_before": trainer.report["metrics_before"].get("backdoor_score"),
                      "score_after": trainer.report["metrics_after"].get("backdoor_score"),
                      "suspected_target": trainer.report["suspected_target"], "mode": trainer.report["mode"]},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    result = {
        "command": "python benchmarks/run_defense.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "defender_fraction": args.fraction, "rows": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": __import__("bibau_hf.bibau_trainer", fromlist=["library_versions"]).library_versions(),
    }
    suffix = "_lora" if args.lora else ""
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"defense_{tag}_{args.backend}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| attack | ref CA / ASR / retuned | no defense CA / ASR | clean FT CA / ASR / retuned | "
          "BI-BAU CA / ASR / retuned / DER | score ref / before / after | BI-BAU s (FT s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        c, n, f, b = r["clean_reference"], r["no_defense"], r["clean_finetune"], r["bibau"]
        print(f"| {r['attack']} | {c['ca']:.1%} / {c['asr']:.1%} / {c['retuned_asr']:.1%} | {n['ca']:.1%} / "
              f"{n['asr']:.1%} | {f['ca']:.1%} / {f['asr']:.1%} / {f['retuned_asr']:.1%} | {b['ca']:.1%} / "
              f"{b['asr']:.1%} / {b['retuned_asr']:.1%} / {b['der']:.3f} | {c['backdoor_score']} / "
              f"{b['score_before']} / {b['score_after']} | {b['seconds']} ({f['seconds']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
