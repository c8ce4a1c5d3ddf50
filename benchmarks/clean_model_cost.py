"""What BI-BAU costs a model that was never backdoored: its clean accuracy before and after, per variant.

    python benchmarks/clean_model_cost.py --seeds 0 1 2 3 4 5 --methods bibau bibau_uniform_ungated

A user cannot know that the model is clean, so the defense runs on clean models too. For every seed it loads the
digits lab's clean reference, runs each method as the benchmark does (same defender data, config and budget) and
writes the zero-shot CA before and after, the families BI-BAU unlearned and those it hedged
(docs/METHOD_NOTES.md §29). Writes ``benchmarks/results/clean_model_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import baselines  # noqa: E402
from family_scan import write_result  # noqa: E402
from run_benchmark import DEFENDER_FRACTION, Context, defend, git_commit  # noqa: E402


def measure(ctx: Context, method: str) -> dict:
    """CA of the clean reference before and after ``method``, and what BI-BAU's round 0 decided."""
    model = ctx.load(ctx.clean_dir)
    before = ctx.evaluator(model)["clean_accuracy"]
    started = time.time()
    with tempfile.TemporaryDirectory() as work:
        info = defend(ctx, method, model, work)
    rounds = info.get("rounds") or [{}]
    return {"seed": ctx.seed, "method": method, "ca_before": round(before, 4),
            "ca_after": round(ctx.evaluator(model)["clean_accuracy"], 4), "seconds": round(time.time() - started, 1),
            "unlearned": rounds[0].get("unlearned_targets", {}), "hedged": rounds[0].get("hedged_concepts", {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["bibau", "bibau_uniform_ungated"],
                        choices=sorted(baselines.VARIANTS))
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "lab"), help="the lab's model cache")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "clean_model_cost.json"))
    args = parser.parse_args(argv)
    # The benchmark's own settings: defender fraction, CPU, HF backend, no config overrides.
    bench = argparse.Namespace(runs=args.runs, fraction=DEFENDER_FRACTION, backend="hf", device="cpu",
                               config_overrides={})
    rows, cache = [], {}
    for seed in args.seeds:
        ctx = Context(bench, "digits", "badnets", seed, cache)  # the evaluator's CA does not depend on the attack
        for method in args.methods:
            rows.append(measure(ctx, method))
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    tally = []
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        drop = [r["ca_before"] - r["ca_after"] for r in mine]
        tally.append({"method": method, "mean_ca_drop_points": round(100 * sum(drop) / len(drop), 2),
                      "largest_ca_drop_points": round(100 * max(drop), 2)})
    write_result(args.out, {"command": "python benchmarks/clean_model_cost.py " + " ".join(argv or sys.argv[1:]),
                            "commit": git_commit(), "rows": rows, "tally": tally})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
