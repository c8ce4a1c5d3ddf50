"""The ``bibau-hf`` command line: scan, clean, plant, report and push.

    bibau-hf scan path/to/suspect                       # is it backdoored, and toward what? (model unchanged)
    bibau-hf clean --model_name_or_path path/to/suspect --output_dir purified
    bibau-hf plant --attack blended --output_dir planted
    bibau-hf report purified                            # re-render README.md and plots from the report
    bibau-hf push purified me/purified-clip             # publish the native model, card and report

``clean`` and ``plant`` take exactly the arguments of ``recipes/clean_clip.py`` and ``recipes/plant_backdoor.py``
(``HfArgumentParser`` dataclasses, ``--config file.yaml``). User errors print ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BIBAUError, DataError
from .hub import REPORT_FILE
from .recipe_args import parse_recipe_args, run_main

EXAMPLES = """examples:
  bibau-hf scan path/to/suspect --json scan.json
  bibau-hf clean --model_name_or_path path/to/suspect --output_dir purified --push_to_hub --hub_model_id me/clean
  bibau-hf plant --attack blended --output_dir planted
  bibau-hf report purified
  bibau-hf report --attach CARD.md --report purified/unlearning_report.json --output NEW.md
  bibau-hf push purified me/purified-clip --private

'bibau-hf COMMAND --help' describes each command's arguments."""


# ------------------------------------------------------------------------------------------ clean / plant
def clean_command(argv: Sequence[str] | None = None, prog: str | None = "bibau-hf clean") -> dict[str, Any]:
    """``bibau-hf clean``: the cleaning recipe (:func:`bibau_hf.clean_pipeline.run_clean`); returns the report."""
    from .bibau_config import BIBAUConfig
    from .clean_pipeline import CleanArguments, run_clean

    args, config = parse_recipe_args(
        [CleanArguments, BIBAUConfig], argv, prog=prog,
        description="Remove a backdoor from a CLIP / open_clip model with BI-BAU. Without --model_name_or_path it "
        "runs the demo (plants a digits BadNets backdoor, cleans it, reports CA/ASR before and after). "
        "--push_to_hub with --hub_model_id publishes the purified model.",
    )
    return run_clean(args, config)


def plant_command(argv: Sequence[str] | None = None, prog: str | None = "bibau-hf plant") -> dict[str, Any]:
    """``bibau-hf plant``: plant a backdoor with the attack lab; prints and returns a summary of ``attack.json``."""
    from .attacks.plant import PlantConfig, plant_backdoor

    (config,) = parse_recipe_args(
        [PlantConfig], argv, prog=prog,
        description="Plant a backdoor in a tiny CLIP-style model trained from scratch (or fine-tune a given one); "
        "writes the model in native format and attack.json (trigger spec and measured CA/ASR).",
    )
    record = plant_backdoor(config).record
    summary = {"output_dir": config.output_dir, "attack": record["attack"], **record["metrics"],
               "train_seconds": record["training"]["seconds"]}
    print(json.dumps(summary, indent=2))
    return summary


_RECIPES: dict[str, Callable[[Sequence[str]], Any]] = {"clean": clean_command, "plant": plant_command}


# ------------------------------------------------------------------------------------------------ scan
def _add_scan_parser(commands: argparse._SubParsersAction) -> None:
    from .inversion import (
        CONFIDENCE_GAP_THRESHOLD,
        IMAGE_FAMILIES,
        IMAGE_THRESHOLD,
        PERIODIC_THRESHOLD,
        TEXT_THRESHOLD,
        InversionConfig,
    )

    defaults = InversionConfig()
    parser = commands.add_parser(
        "scan", help="detect a backdoor and its target by blind trigger inversion (the model is not changed)",
        description="Invert image and text triggers on clean data and report the backdoor score (an anomaly index "
        "over candidate target concepts), the suspected target and its posterior. A backdoor is suspected when a "
        "family's score reaches its tower's threshold (the levels at which BI-BAU unlearns). The exit status is 0 "
        "whatever the verdict.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="suspect model: local folder or Hub id (transformers CLIP or open_clip)")
    parser.add_argument("--revision", default=None, help="Hub revision of the model")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    data = parser.add_argument_group("clean data")
    data.add_argument("--dataset_name", default="digits",
                      help="'digits', a .npz arrays file, or a datasets name/path with image-caption pairs")
    data.add_argument("--image_column", default="image", help="image column of a datasets source")
    data.add_argument("--caption_column", default="caption", help="caption column of a datasets source")
    data.add_argument("--label_column", default=None,
                      help="class-label column of a datasets source; its class names become the candidate targets")
    data.add_argument("--dataset_split", default="train", help="split holding the clean pairs")
    data.add_argument("--max_clean_samples", type=int, default=256,
                      help="use at most this many clean pairs (seeded); a few hundred suffice")
    data.add_argument("--concepts", nargs="+", default=None, metavar="CONCEPT",
                      help="candidate target concepts (default: the data's class names, else its distinct captions)")
    inversion = parser.add_argument_group("inversion")
    inversion.add_argument("--invert_towers", choices=("both", "image", "text"), default="both",
                           help="which encoders to invert triggers on")
    inversion.add_argument("--trigger_families", nargs="+", choices=IMAGE_FAMILIES,
                           default=list(defaults.image_families), help="image trigger families to invert")
    inversion.add_argument("--inversion_steps", type=int, default=defaults.steps,
                           help="steps of each untargeted inversion")
    inversion.add_argument("--score_steps", type=int, default=defaults.score_steps,
                           help="steps of the per-concept targeted inversion behind the score")
    inversion.add_argument("--inversion_batch_size", type=int, default=defaults.batch_size,
                           help="clean pairs per inversion step")
    inversion.add_argument("--inversion_restarts", type=int, default=defaults.restarts,
                           help="random restarts per family")
    inversion.add_argument("--max_candidates", type=int, default=defaults.max_candidates,
                           help="most candidate concepts in the targeted inversion")
    inversion.add_argument("--refine_concepts", type=int, default=defaults.refine_concepts,
                           help="an image family's target is the cheapest of this many likeliest concepts after "
                           "further optimisation (0 or 1: the sweep's own choice)")
    inversion.add_argument("--seed", type=int, default=0, help="seed of the data subset and the inversion")
    inversion.add_argument("--repeats", type=int, default=1,
                           help="run the inversion this many times (seeds seed, seed+1, ...; same clean pairs) and "
                           "flag a family only when it passes its gates toward the same target in most runs; one "
                           "run's image score is noisy near the threshold")
    output = parser.add_argument_group("output")
    output.add_argument("--threshold", type=float, default=IMAGE_THRESHOLD,
                        help="an image trigger family at or above this score means 'backdoor suspected'")
    output.add_argument("--text_threshold", type=float, default=TEXT_THRESHOLD,
                        help="the same for the text family (its score is on another scale: an exact token search)")
    output.add_argument("--periodic_threshold", type=float, default=PERIODIC_THRESHOLD,
                        help="the same for the periodic image family (an exhaustive dictionary search, another scale)")
    output.add_argument("--confidence_gap", type=float, default=CONFIDENCE_GAP_THRESHOLD,
                        help="an image family is flagged only if its trigger's images match the target within this "
                        "cosine of the target's own images (a natural shortcut stays further; 2 turns this off)")
    output.add_argument("--no_text_veto", dest="text_veto", action="store_false",
                        help="also flag an image family that passes toward another concept than a passing text "
                        "family (by default it is taken as a natural shortcut, as BI-BAU's text_target_veto does)")
    output.add_argument("--top_k", type=int, default=5, help="posterior entries to show")
    output.add_argument("--format", choices=("table", "json"), default="table", help="what to print on stdout")
    output.add_argument("--json", dest="json_path", metavar="PATH", default=None,
                        help="also write the result as JSON to this file")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=scan_command)


def _top(posterior: dict[str, float], k: int) -> dict[str, float]:
    return {c: round(p, 4) for c, p in sorted(posterior.items(), key=lambda kv: -kv[1])[:k]}


def scan_summary(
    result: Any, *, model: str, threshold: float, text_threshold: float, confidence_gap: float, top_k: int,
    num_clean_pairs: int, periodic_threshold: float | None = None, text_veto: bool = True,
) -> dict[str, Any]:
    """The JSON-ready verdict of a :class:`~bibau_hf.inversion.ScanResult`: a backdoor is suspected when any family
    reaches its tower's threshold (``threshold`` for image families, ``text_threshold`` for the text one) and, for
    an image family, its confidence gap is at most ``confidence_gap`` (2 never vetoes). With ``text_veto`` (and a
    positive ``text_threshold``), an image family that passes toward another concept than a passing text family is not
    flagged (``vetoed_by`` says so), as BI-BAU's ``text_target_veto`` does not unlearn it."""
    from .inversion import PERIODIC_THRESHOLD, gate_threshold, passes_gates, text_vetoed_families

    periodic_threshold = PERIODIC_THRESHOLD if periodic_threshold is None else periodic_threshold
    details = result.to_dict()
    families = []
    for t in result.triggers:
        level = gate_threshold(t.modality, t.family, threshold=threshold, text_threshold=text_threshold,
                               periodic_threshold=periodic_threshold)
        families.append({
            "family": t.key, "score": round(t.score, 3), "threshold": level,
            "confidence_gap": None if math.isnan(t.confidence_gap) else round(t.confidence_gap, 4),
            "suspected": passes_gates(t.modality, t.score, t.confidence_gap, threshold=threshold,
                                      text_threshold=text_threshold, max_confidence_gap=confidence_gap,
                                      family=t.family, periodic_threshold=periodic_threshold),
            "suspected_target": t.suspected_target,
            "posterior_top": _top(t.posterior, top_k),
        })
    if text_veto:
        vetoed = text_vetoed_families({f["family"]: f["suspected_target"] if f["suspected"] else None
                                       for f in families}, text_threshold=text_threshold)
        for family in families:
            if family["family"] in vetoed:
                family.update(suspected=False, vetoed_by=vetoed[family["family"]])
    flagged = [f for f in families if f["suspected"]]
    # The headline (target, its posterior, the posterior's top) is one family's: the flagged family most anomalous
    # relative to its threshold, else the scan's strongest. Mixing them paired one family's target with another's
    # posterior.
    lead = max(flagged, key=lambda f: f["score"] / max(f["threshold"], 1e-9)) if flagged else None
    lead_trigger = result.triggers[families.index(lead)] if lead else result.strongest
    posterior = lead_trigger.posterior if lead_trigger is not None else {}
    target = lead_trigger.suspected_target if lead_trigger is not None else ""
    return {
        "model": model,
        "verdict": "backdoor suspected" if flagged else "no backdoor detected",
        "backdoor_suspected": bool(flagged),
        "thresholds": {"image": threshold, "text": text_threshold, "periodic": periodic_threshold,
                       "confidence_gap": confidence_gap, "text_veto": text_veto},
        "flagged_families": [f["family"] for f in flagged],
        "backdoor_score": details["backdoor_score"],
        "suspected_target": target,
        "suspected_target_posterior": round(posterior.get(target, 0.0), 4),
        "posterior_top": _top(posterior, top_k),
        "strongest_family": lead["family"] if lead else details["strongest_family"],
        "families": families,
        "num_clean_pairs": num_clean_pairs,
        "num_candidates": len(result.candidates),
        "natural_similarity": details["natural_similarity"],
        "seconds": details["seconds"],
        "triggers": details["triggers"],
    }


def combine_repeats(summaries: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """The majority verdict of scans repeated with different inversion seeds (:func:`scan_summary` each, same data).

    A family is flagged when it passes its gates toward one same target in more than half of the runs. The headline
    (target, posterior) comes from the run where the leading flagged family scored highest; with nothing flagged
    it is the first run's. The runs' own summaries are kept under ``runs``.
    """
    from collections import Counter
    from statistics import median

    runs = len(summaries)
    families = []
    for index, first in enumerate(summaries[0]["families"]):
        entries = [summary["families"][index] for summary in summaries]
        targets = [entry["suspected_target"] for entry in entries]
        target, agreeing = Counter(targets).most_common(1)[0]
        passing = [i for i, entry in enumerate(entries) if entry["suspected"] and entry["suspected_target"] == target]
        families.append({
            "family": first["family"], "threshold": first["threshold"],
            "scores": [entry["score"] for entry in entries],
            "median_score": round(median(entry["score"] for entry in entries), 3),
            "targets": targets, "majority_target": target, "agreement": round(agreeing / runs, 4),
            "suspected_runs": len(passing), "suspected": 2 * len(passing) > runs,
            "_best_run": max(passing, key=lambda i: entries[i]["score"]) if passing else None,
        })
    flagged = [f for f in families if f["suspected"]]
    lead = max(flagged, key=lambda f: f["median_score"] / max(f["threshold"], 1e-9)) if flagged else None
    if lead is None:
        base = dict(summaries[0])
    else:
        base = dict(summaries[lead["_best_run"]])
        entry = next(f for f in base["families"] if f["family"] == lead["family"])
        base.update(suspected_target=lead["majority_target"], strongest_family=lead["family"],
                    suspected_target_posterior=entry["posterior_top"].get(lead["majority_target"], 0.0),
                    posterior_top=entry["posterior_top"])
    for family in families:
        del family["_best_run"]
    base.update(
        verdict="backdoor suspected" if flagged else "no backdoor detected", backdoor_suspected=bool(flagged),
        flagged_families=[f["family"] for f in flagged],
        seconds=round(sum(summary["seconds"] for summary in summaries), 2),
        repeats={"seeds": seeds, "families": families, "runs": summaries},
    )
    return base


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as left-aligned text columns, the first one a header underlined with dashes."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_scan(summary: dict[str, Any]) -> str:
    """The human-readable table of :func:`scan_summary`."""
    verdict = summary["verdict"].upper() if summary["backdoor_suspected"] else summary["verdict"]
    levels = summary["thresholds"]
    repeats = summary.get("repeats")
    runs = f" toward one target in most of {len(repeats['seeds'])} runs" if repeats else ""
    flagged = (", ".join(summary["flagged_families"]) + f" at or above their tower's threshold{runs}"
               if summary["flagged_families"] else
               f"no family at or above its tower's threshold (image {levels['image']:g}, text {levels['text']:g}) "
               f"with an image confidence gap of at most {levels['confidence_gap']:g}{runs}")
    posterior = ", ".join(f"{c} {p:.3f}" for c, p in summary["posterior_top"].items()) or "-"
    lines = [
        f"model             {summary['model']}",
        f"clean pairs       {summary['num_clean_pairs']}  (candidate targets: {summary['num_candidates']})",
        f"verdict           {verdict}  ({flagged})",
        f"suspected target  {summary['suspected_target']!r}  (posterior {summary['suspected_target_posterior']:.3f}, "
        f"{summary['strongest_family']})",
        f"posterior top-{len(summary['posterior_top'])}   {posterior}",
        "",
    ]
    rows = [("family", "score", "threshold", "confidence gap", "suspected target", "posterior")]
    for family in summary["families"]:
        target = family["suspected_target"]
        family_gap = family.get("confidence_gap")
        rows.append((family["family"], f"{family['score']:.3f}", f"{family['threshold']:g}",
                     "-" if family_gap is None else f"{family_gap:.3f}", target,
                     f"{family['posterior_top'].get(target, 0.0):.3f}"))
    lines += _aligned(rows)
    for family in summary["families"]:
        if family.get("vetoed_by"):
            lines.append(f"{family['family']} passes its gates toward {family['suspected_target']!r}, but "
                         f"{family['vetoed_by']} names another target: taken as a natural shortcut (--no_text_veto "
                         "flags it)")
    if repeats:
        seeds = ", ".join(map(str, repeats["seeds"]))
        lines += ["", f"over {len(repeats['seeds'])} runs (seeds {seeds}): the verdict flags a family that passes its "
                  "gates toward one target in most runs; the table above is one run's"]
        rows = [("family", "scores", "median", "majority target", "passes")]
        for family in repeats["families"]:
            rows.append((family["family"], " ".join(f"{score:.2f}" for score in family["scores"]),
                         f"{family['median_score']:.3f}",
                         f"{family['majority_target']} ({family['agreement']:.0%})",
                         f"{family['suspected_runs']}/{len(repeats['seeds'])}"))
        lines += _aligned(rows)
    lines.append(f"scan took {summary['seconds']:.1f}s")
    return "\n".join(lines)


def scan_command(args: argparse.Namespace) -> dict[str, Any]:
    """``bibau-hf scan``: load the model and clean data, run :func:`bibau_hf.scan`, print the verdict."""
    from .data.sources import is_builtin, load_train_and_eval
    from .inversion import InversionConfig, scan
    from .models import load_adapter

    for name in ("max_clean_samples", "inversion_steps", "score_steps", "inversion_restarts", "max_candidates",
                 "top_k", "repeats"):
        if getattr(args, name) < 1:
            raise BIBAUError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.refine_concepts < 0:
        raise BIBAUError(f"--refine_concepts must be >= 0 (0 or 1: off), got {args.refine_concepts}")
    if args.inversion_batch_size < 2:
        raise BIBAUError("--inversion_batch_size must be >= 2 (collapse is measured between images)")
    model = load_adapter(args.model, device=args.device, revision=args.revision)
    dataset = args.dataset_name
    train, test = load_train_and_eval(
        dataset, image_size=32 if is_builtin(dataset) else model.image_size, seed=args.seed,
        image_column=args.image_column, caption_column=args.caption_column, label_column=args.label_column,
        train_split=args.dataset_split, eval_split=None,  # class names come with the labelled pairs themselves
    )
    if args.max_clean_samples < len(train):
        train = train.take(args.max_clean_samples, seed=args.seed)
    if len(train) < 2:
        raise DataError(f"{dataset} gave {len(train)} clean pair(s); the scan needs at least 2")
    concepts = args.concepts or (test.class_names if test is not None else train.class_names) or None
    config = InversionConfig(
        steps=args.inversion_steps, score_steps=args.score_steps, batch_size=args.inversion_batch_size,
        restarts=args.inversion_restarts, image_families=tuple(args.trigger_families),
        invert_image=args.invert_towers in ("both", "image"), invert_text=args.invert_towers in ("both", "text"),
        max_candidates=args.max_candidates, refine_concepts=args.refine_concepts, progress=not args.quiet,
    )
    seeds = [args.seed + run for run in range(args.repeats)]
    summaries = []
    for seed in seeds:
        result = scan(model, train.images, train.captions, concepts=concepts, config=replace(config, seed=seed))
        summaries.append(scan_summary(
            result, model=str(args.model), threshold=args.threshold, text_threshold=args.text_threshold,
            top_k=args.top_k, num_clean_pairs=len(train), confidence_gap=args.confidence_gap,
            periodic_threshold=args.periodic_threshold, text_veto=args.text_veto,
        ))
    summary = summaries[0] if len(summaries) == 1 else combine_repeats(summaries, seeds)
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2) if args.format == "json" else format_scan(summary))
    return summary


# ---------------------------------------------------------------------------------------------- report
def _add_report_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report", help="re-render the model card and plots from unlearning_report.json, or attach a report to a card",
        description="'bibau-hf report OUTPUT_DIR' re-renders OUTPUT_DIR/README.md and OUTPUT_DIR/plots/*.png from "
        f"OUTPUT_DIR/{REPORT_FILE}. 'bibau-hf report --attach CARD.md --report {REPORT_FILE} [--output NEW.md]' "
        "merges the report's results into an existing model card.",
    )
    parser.add_argument("output_dir", nargs="?", default=None,
                        help=f"a bibau_hf output folder holding {REPORT_FILE}")
    parser.add_argument("--attach", metavar="CARD.md", default=None,
                        help="existing model card to merge the report into")
    parser.add_argument("--report", metavar=REPORT_FILE, default=None,
                        help=f"the report to attach (default: OUTPUT_DIR/{REPORT_FILE})")
    parser.add_argument("--output", metavar="NEW.md", default=None,
                        help="where the merged card goes (default: overwrite CARD.md)")
    parser.set_defaults(handler=report_command)


def _reporting() -> Any:
    try:
        from . import reporting
    except ImportError as err:
        raise BIBAUError(f"model-card rendering is unavailable in this installation ({err})") from err
    return reporting


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BIBAUError(f"{what} {path} not found")
    return path


def report_command(args: argparse.Namespace) -> list[Path]:
    """``bibau-hf report``: render the card and plots, or attach a report to an existing card; returns the files."""
    if args.attach is None:
        if args.output_dir is None:
            raise BIBAUError("give an OUTPUT_DIR to re-render, or --attach CARD.md --report REPORT.json")
        if args.report is not None or args.output is not None:
            raise BIBAUError("--report and --output go with --attach CARD.md")
        folder = Path(args.output_dir)
        _require_file(folder / REPORT_FILE, "report")
        reporting = _reporting()
        written = [Path(reporting.write_model_card(folder)), *(Path(p) for p in reporting.write_plots(folder))]
    else:
        card = _require_file(Path(args.attach), "model card")
        if args.report is None and args.output_dir is None:
            raise BIBAUError("--attach needs --report path/to/unlearning_report.json (or an OUTPUT_DIR holding it)")
        report = _require_file(Path(args.report) if args.report else Path(args.output_dir) / REPORT_FILE, "report")
        output = Path(args.output) if args.output else card
        _reporting().attach_report(card, report, output_path=output)
        written = [output]
    for path in written:
        print(f"wrote {path}")
    return written


# ------------------------------------------------------------------------------------------------ push
def _add_push_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "push", help="publish an output folder on the Hugging Face Hub (native model, card, report; no pickles)",
        description="Create the model repo if needed and upload, in one commit, the native model (safetensors, "
        "configs, tokenizer and processor files), README.md, unlearning_report.json, inverted_triggers.safetensors, "
        "plots/*.png and lora_adapter/. Pickles (*.bin, *.pt, *.pth) and checkpoint-*/ folders are never uploaded. "
        "The repo loads with plain CLIPModel.from_pretrained or open_clip.create_model_and_transforms('hf-hub:...').",
    )
    parser.add_argument("output_dir", help="folder holding the model in native format (e.g. a bibau-hf clean output)")
    parser.add_argument("repo_id", help="model repo, namespace/name (a bare name goes to your namespace)")
    parser.add_argument("--private", action="store_true", help="create the repo private (no effect if it exists)")
    parser.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN or your login)")
    parser.add_argument("--revision", default=None, help="branch to push to, created if missing (default: main)")
    parser.add_argument("--commit_message", default=None, help="summary of the commit")
    parser.set_defaults(handler=push_command)


def push_command(args: argparse.Namespace) -> str:
    """``bibau-hf push``: :func:`bibau_hf.hub.push_output_dir`; prints and returns the commit URL."""
    from .hub import push_output_dir

    url = push_output_dir(args.output_dir, args.repo_id, private=True if args.private else None, token=args.token,
                          revision=args.revision, commit_message=args.commit_message)
    print(f"pushed {args.output_dir} to {url}")
    return url


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (``clean`` and ``plant`` are listed here but parsed by their recipes' parsers)."""
    parser = argparse.ArgumentParser(
        prog="bibau-hf",
        description="BI-BAU: find and remove backdoors in CLIP-like models (transformers, open_clip).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_scan_parser(commands)
    commands.add_parser("clean", add_help=False,
                        help="remove a backdoor with BI-BAU (the cleaning recipe; YAML --config accepted)")
    commands.add_parser("plant", add_help=False, help="plant a backdoor with the attack lab (for experiments)")
    _add_report_parser(commands)
    _add_push_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bibau-hf``; returns the exit status (0 success, 2 user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in _RECIPES:
            # The recipes parse their own arguments (HfArgumentParser), so their --help lists every field.
            return run_main(_RECIPES[argv[0]], argv[1:])
        args = build_parser().parse_args(argv)
        return run_main(lambda _: args.handler(args))
    except SystemExit as exit_:  # --help / --version (0) and argparse usage errors (2): a status, not a crash
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)


if __name__ == "__main__":
    sys.exit(main())
