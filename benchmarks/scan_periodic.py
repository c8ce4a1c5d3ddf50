"""The periodic family's round-0 score on the lab's models (scan only, no unlearning): does it tell SIG apart?

    python benchmarks/scan_periodic.py --datasets digits cifar10_subset --seeds 0 1 2
    python benchmarks/scan_periodic.py --datasets cifar10_subset --seeds 0 1 2 --attacks clean wanet sig --no-plant

For every (dataset, seed, attack) it plants the model if the lab has not (unless ``--no-plant``, which skips models
the lab lacks), scans it with the periodic family alone under BI-BAU's defaults, and writes the family's score,
suspected target, confidence gap and cheapest sinusoid. Then it counts, per dataset, the SIG models the family's gates
(``periodic_unlearn_threshold`` and the confidence gap) catch toward their true target, and the other models they flag
(docs/METHOD_NOTES.md §25). Writes ``benchmarks/results/scan_periodic.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from family_scan import lab_models, scan_family, write_result  # noqa: E402
from run_lab import ATTACKS  # noqa: E402

from bibau_hf.inversion import CONFIDENCE_GAP_THRESHOLD, PERIODIC_THRESHOLD  # noqa: E402


def scan_row(dataset: str, seed: int, attack: str, folder: Path, data) -> dict:
    found = scan_family(folder, data, seed, "periodic")
    record = json.loads((folder / "attack.json").read_text())
    return {"dataset": dataset, "seed": seed, "attack": attack, "true_target": record["target_name"],
            "score": round(found.score, 3), "target": found.suspected_target,
            "confidence_gap": round(found.confidence_gap, 4),
            "sinusoid": [found.details["periods_x"], found.details["periods_y"], found.details["phase_radians"]]}


def tally(rows: list[dict]) -> list[dict]:
    """Per dataset: SIG models caught toward their target, and models of other attacks (or clean) flagged."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        flagged = [r for r in mine if r["score"] >= PERIODIC_THRESHOLD
                   and not r["confidence_gap"] > CONFIDENCE_GAP_THRESHOLD]
        others = [r for r in mine if r["attack"] != "sig"]
        out.append({
            "dataset": dataset,
            "sig_found": sum(r["attack"] == "sig" and r["target"] == r["true_target"] for r in flagged),
            "sig_models": len(mine) - len(others),
            "flagged_elsewhere": [f"{r['attack']} s{r['seed']} → {r['target']}" for r in flagged
                                  if r["attack"] != "sig"],
            "other_models": len(others),
            "highest_other_score": max((r["score"] for r in others), default=None),
            "lowest_sig_score": min((r["score"] for r in mine if r["attack"] == "sig"), default=None),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["digits", "cifar10_subset"],
                        choices=["digits", "cifar10_subset"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--attacks", nargs="+", default=["clean", *ATTACKS], choices=["clean", *ATTACKS])
    parser.add_argument("--no-plant", action="store_true", help="scan only the models the lab already has")
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "lab"), help="the lab's model cache")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scan_periodic.json"))
    args = parser.parse_args(argv)

    rows = []
    for dataset in args.datasets:
        for seed, attack, folder, data in lab_models(Path(args.runs), dataset, args.seeds, args.attacks,
                                                     plant_missing=not args.no_plant):
            rows.append(scan_row(dataset, seed, attack, folder, data))
            print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python benchmarks/scan_periodic.py " + " ".join(argv or sys.argv[1:]),
              "periodic_unlearn_threshold": PERIODIC_THRESHOLD, "confidence_gap_threshold": CONFIDENCE_GAP_THRESHOLD,
              "tally": tally(rows), "rows": rows}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
