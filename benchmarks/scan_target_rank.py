"""Where the planted target ranks among each family's concepts when the gates miss it (scan only, no unlearning).

    python benchmarks/scan_target_rank.py --seeds 0 1 2 3 4 5

For every lab model of the digits dataset (``--seeds``, the clean references included) it runs BI-BAU's round-0 scan
under the library's defaults (every default family of both towers) and writes, per family, its score, confidence
gap, suspected target, whether it passes its gates, and the rank of the planted target among the family's concepts by
anomaly, and an image family's ``refined_costs`` (§31: the sweep's own choice is the first of ``likeliest``, the
family's suspected target the cheapest refined concept). The tally says, per backdoored model, whether its tower's
gates found the target, flagged another concept, or missed, and the best rank of the target in the tower's families
under their gates: how many concepts ``ungated_concepts`` must keep to unlearn the planted target there
(docs/METHOD_NOTES.md §29). Writes
``benchmarks/results/scan_target_rank.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from family_scan import lab_models, write_result  # noqa: E402
from run_lab import ATTACKS  # noqa: E402


def scan_rows(seed: int, attack: str, folder: Path, data) -> list[dict]:
    """One row per family of the model's round-0 scan under BI-BAU's defaults."""
    from bibau_hf.bibau_config import BIBAUConfig
    from bibau_hf.inversion import passes_gates, scan
    from bibau_hf.models import load_adapter

    clean, test = data
    settings = BIBAUConfig(output_dir=str(folder.parent / "_scan"), seed=seed)
    result = scan(load_adapter(folder), clean.images, clean.captions, concepts=test.class_names,
                  config=settings.inversion_config(progress=False))
    true_target = json.loads((folder / "attack.json").read_text()).get("target_name")
    rows = []
    for t in result.triggers:
        ranked = t.likeliest
        rows.append({
            "seed": seed, "attack": attack, "family": t.key, "true_target": true_target,
            "score": round(t.score, 3), "target": t.suspected_target,
            "confidence_gap": None if t.confidence_gap != t.confidence_gap else round(t.confidence_gap, 4),
            "passes_gates": passes_gates(t.modality, t.score, t.confidence_gap, threshold=settings.unlearn_threshold,
                                         text_threshold=settings.text_unlearn_threshold,
                                         max_confidence_gap=settings.confidence_gap_threshold, family=t.family,
                                         periodic_threshold=settings.periodic_unlearn_threshold),
            "target_rank": ranked.index(true_target) + 1 if true_target in ranked else None,
            "likeliest": ranked[:3],
            # The sweep's own choice is ranked[0]; an image family's target is the cheapest of its refined concepts.
            "refined_costs": t.details.get("refined_costs"),
        })
    return rows


def tally(rows: list[dict]) -> list[dict]:
    """Per backdoored model: what its tower's gates did, and the planted target's best rank in the families of that
    tower under their gates (where a uniform posterior over the likeliest concepts would unlearn it)."""
    out = []
    for seed, attack in dict.fromkeys((r["seed"], r["attack"]) for r in rows):
        if attack == "clean":
            continue
        modality = "text" if attack == "text" else "image"
        tower = [r for r in rows if r["seed"] == seed and r["attack"] == attack
                 and r["family"].startswith(modality + "/")]
        passed = [r for r in tower if r["passes_gates"]]
        gated_ranks = [r["target_rank"] for r in tower if not r["passes_gates"] and r["target_rank"] is not None]
        if any(r["target"] == r["true_target"] for r in passed):
            verdict = "found"
        else:
            verdict = "mistaken" if passed else "missed"
        out.append({"seed": seed, "attack": attack, "gates": verdict,
                    "flagged": [f"{r['family']} → {r['target']}" for r in passed],
                    "best_rank_under_the_gates": min(gated_ranks, default=None)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--attacks", nargs="+", default=["clean", *ATTACKS], choices=["clean", *ATTACKS])
    parser.add_argument("--no-plant", action="store_true", help="scan only the models the lab already has")
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "lab"), help="the lab's model cache")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scan_target_rank.json"))
    args = parser.parse_args(argv)

    rows = []
    for seed, attack, folder, data in lab_models(Path(args.runs), "digits", args.seeds, args.attacks,
                                                 plant_missing=not args.no_plant):
        found = scan_rows(seed, attack, folder, data)
        rows.extend(found)
        for row in found:
            print(json.dumps(row, ensure_ascii=False), flush=True)
    write_result(args.out, {"command": "python benchmarks/scan_target_rank.py " + " ".join(argv or sys.argv[1:]),
                            "rows": rows, "tally": tally(rows)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
