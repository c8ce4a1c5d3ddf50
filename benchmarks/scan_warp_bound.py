"""The warp family's round-0 statistics at several bounds, on the digits lab's models (scan only, no unlearning).

    python benchmarks/scan_warp_bound.py --seeds 0 1 2 3 4 5 --bounds 0.125 0.25

For every (seed, attack, bound) it plants the model if the lab has not (the clean reference included), scans it with
the warp family alone under BI-BAU's defaults plus ``warp_max_shift``, and writes the family's score, suspected
target, confidence gap and mean displacement. Then it counts, for each bound and confidence-gap gate, how many WaNet
models pass BI-BAU's image gates toward the true target and how many models without a warp pass them
(docs/METHOD_NOTES.md §24). Writes ``benchmarks/results/scan_warp_bound.json``.
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

from bibau_hf.inversion import CONFIDENCE_GAP_THRESHOLD, IMAGE_THRESHOLD  # noqa: E402

GATES = (CONFIDENCE_GAP_THRESHOLD, 0.065)
"""Confidence-gap gates compared: BI-BAU's default, and the one §24 read off seeds 0–2 at bound 0.25."""


def scan_row(seed: int, attack: str, bound: float, runs: Path, data) -> dict:
    found = scan_family(runs / f"digits_hf_{attack}_s{seed}", data, seed, "warp", warp_max_shift=bound)
    return {"seed": seed, "attack": attack, "bound": bound, "score": round(found.score, 3),
            "target": found.suspected_target, "confidence_gap": round(found.confidence_gap, 4),
            "mean_shift_pixels": round(found.details["mean_shift_pixels"], 3)}


def tally(rows: list[dict], threshold: float) -> list[dict]:
    """Per bound and gate: WaNet models caught toward their target, and warp-free models flagged."""
    out = []
    for bound in sorted({r["bound"] for r in rows}):
        for gate in GATES:
            flagged = [r for r in rows if r["bound"] == bound and r["score"] >= threshold
                       and r["confidence_gap"] <= gate]
            out.append({
                "bound": bound, "gate": gate,
                "wanet_found": sum(r["attack"] == "wanet" and r["target"] == "zero" for r in flagged),
                "wanet_models": sum(r["bound"] == bound and r["attack"] == "wanet" for r in rows),
                "false_positives": [f"{r['attack']} s{r['seed']} → {r['target']}" for r in flagged
                                    if r["attack"] != "wanet"],
                "warp_free_models": sum(r["bound"] == bound and r["attack"] != "wanet" for r in rows),
            })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--bounds", nargs="+", type=float, default=[0.125, 0.25])
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "lab"), help="the lab's model cache")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scan_warp_bound.json"))
    args = parser.parse_args(argv)

    runs, rows = Path(args.runs), []
    for seed, attack, _, data in lab_models(runs, "digits", args.seeds, ["clean", *ATTACKS]):
        for bound in args.bounds:
            rows.append(scan_row(seed, attack, bound, runs, data))
            print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python benchmarks/scan_warp_bound.py " + " ".join(argv or sys.argv[1:]),
              "unlearn_threshold": IMAGE_THRESHOLD, "tally": tally(rows, IMAGE_THRESHOLD), "rows": rows}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
