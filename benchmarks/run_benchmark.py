"""BI-BAU against the baselines on every attack, with completeness (retuning attack) and cost, side by side.

    python benchmarks/run_benchmark.py              # digits + CIFAR-10 subset, 5 attacks, 6 methods, seeds 0 1 2
    python benchmarks/run_benchmark.py --quick      # digits, BadNets, seed 0, no LoRA run (about 3 min)
    python benchmarks/run_benchmark.py --datasets digits --seeds 0 --resume
    python benchmarks/run_benchmark.py --datasets digits --attacks badnets sig --methods bibau cleanclip --ablations

The matrix is datasets × attacks × methods × seeds. For every (dataset, attack, seed) the planted model and the clean
reference come from the attack lab (``benchmarks/run_lab.py``'s cache under ``benchmarks/runs/lab``, planted on
demand); the defender gets 5 % of the training pairs and, for every method, BI-BAU's epochs, batch size, learning
rate, schedule and seed (``baselines.Budget``). The clean reference (a model trained without poison) and the
undefended model are always measured: they are the rows every defense is read against.

Per cell: CA, ASR, RA (image triggers) or text ASR (text trigger), DER against the undefended model, the ASR after
the retuning attack (5 poisoned + 100 clean pairs, 5 epochs) on the defended model and on the clean reference, the
wall time of the defense alone, and its peak memory (see :class:`PeakMemory` for what is measured). Each cell is
cached as JSON under ``benchmarks/runs/bench/`` (``--resume`` reuses cells computed with the same settings).

Writes ``benchmarks/results/benchmark.json`` (cells, per-seed values, mean ± std over seeds, a per-method summary,
the command, library versions and machine), ``benchmarks/results/asr_vs_ca.png``, and the tables in
``benchmarks/RESULTS.md`` (through ``render_results.py``). ``--quick`` writes ``benchmark_quick.json`` and
``asr_vs_ca_quick.png`` instead and leaves RESULTS.md alone (one seed of one attack is no table to publish).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_lab import ATTACKS, CIFAR, plant  # noqa: E402

METHODS = ["no_defense", "clean_finetune", "cleanclip", "ibau", "bibau", "bibau_lora"]
ABLATIONS = ["bibau_no_text", "bibau_no_target", "bibau_no_prior", "bibau_mask_only", "bibau_additive",
             "bibau_no_extrapolation", "bibau_no_patch", "bibau_all_families", "bibau_wide_warp", "bibau_periodic",
             "bibau_uniform_ungated", "bibau_uniform_ungated_half", "bibau_uniform_if_none", "bibau_relearn_lookahead"]
REFERENCE = "clean_reference"
LABELS = {
    REFERENCE: "clean reference (never poisoned)", "no_defense": "no defense", "clean_finetune": "clean fine-tuning",
    "cleanclip": "CleanCLIP", "ibau": "I-BAU (alternating)", "bibau": "BI-BAU", "bibau_lora": "BI-BAU LoRA",
    "bibau_no_text": "BI-BAU − text branch", "bibau_no_target": "BI-BAU, uniform target posterior",
    "bibau_no_prior": "BI-BAU − prior", "bibau_mask_only": "BI-BAU mask family only",
    "bibau_additive": "BI-BAU additive family only", "bibau_no_extrapolation": "BI-BAU − path extrapolation",
    "bibau_all_families": "BI-BAU + additive family", "bibau_no_patch": "BI-BAU − patch completion",
    "bibau_wide_warp": "BI-BAU, warp bound 1/4", "bibau_periodic": "BI-BAU + periodic family",
    "bibau_uniform_ungated": "BI-BAU, uniform posterior under the gates",
    "bibau_uniform_ungated_half": "BI-BAU, uniform posterior under the gates at half weight",
    "bibau_uniform_if_none": "BI-BAU, uniform posterior when nothing passes the gates",
    "bibau_relearn_lookahead": "BI-BAU + relearning lookahead",
}
QUICK = {
    # One cell and no LoRA run, but every method at its real settings: a quick cell is a real (one-seed) result,
    # shares the cell cache with full runs, and takes about 3 minutes on 2 busy cores (BI-BAU is most of it).
    "datasets": ["digits"], "attacks": ["badnets"], "seeds": [0],
    "methods": ["no_defense", "clean_finetune", "cleanclip", "ibau", "bibau"],
}
DEFENDER_FRACTION = 0.05
"""The defender's share of the training pairs (``--fraction``'s default; the scan-only studies use it too)."""
RETUNE_SEEDS = 3
RETUNE = {"num_poison": 5, "num_clean": 100, "epochs": 5, "learning_rate": 5e-4, "batch_size": 16}
DEFAULT_DATASETS = ["digits", "cifar10_subset"]


# --------------------------------------------------------------------------------------------------- measurement
def _rss_bytes() -> int | None:
    """Current resident set size from /proc (Linux); None where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _max_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the baseline RSS is the live memory only (glibc
    keeps freed blocks otherwise, and a method run after a bigger one would look cheaper than it is)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory a block adds on top of what was live when it started.

    On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated at the start (tensors only; the caching
    allocator's reserve and the CUDA context are not counted). On CPU: the peak resident set size (RSS) minus the
    RSS at the start, sampled every ``interval`` seconds by a thread (torch releases the GIL in its kernels) and
    checked against ``getrusage``'s lifetime maximum, which catches spikes between samples when they set a new
    process maximum. ``tracemalloc`` is not used: torch tensors are not allocated through Python's allocator, so it
    would miss nearly everything. RSS counts every allocation of the process (torch, tokenizers, Python objects).
    """

    def __init__(self, device: str = "cpu", interval: float = 0.005) -> None:
        self.cuda = str(device).startswith("cuda")
        self.interval = interval
        self.kind = "torch.cuda.max_memory_allocated increase" if self.cuda else "peak RSS increase (sampled)"
        self.peak_mb: float | None = None
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss

    def __enter__(self) -> PeakMemory:
        import torch

        _release_free_memory()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._start = _rss_bytes() or _max_rss_bytes()
        self._peak = self._start
        self._max_before = _max_rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes() or 0)
            max_after = _max_rss_bytes()
            if max_after > self._max_before:  # a new lifetime maximum was set inside the block
                peak = max(peak, max_after)
        self.peak_mb = round(max(0, peak - self._start) / 2**20, 1)


# ------------------------------------------------------------------------------------------------------ helpers
def dataset_path(name: str) -> str:
    """``digits``, ``cifar10_subset`` (the shared .npz) or a path to an .npz file."""
    return str(CIFAR) if name in ("cifar10_subset", "cifar10", "cifar") else name


def dataset_tag(dataset: str) -> str:
    return "digits" if dataset == "digits" else Path(dataset).stem


def primary_asr(metrics: dict[str, float]) -> float:
    """The attack's own success rate: image ASR for an image trigger, text ASR for a text trigger."""
    return metrics.get("attack_success_rate", metrics.get("text_attack_success_rate", 0.0))


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except OSError:
        return None


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "device": device,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(path: Path, data: Any) -> None:
    """Write through a temporary file, so an interrupted run never leaves a half-written cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------------- cells
class Context:
    """Everything shared by the cells of one (dataset, attack, seed): data, planted models, trigger, evaluator."""

    def __init__(self, args: argparse.Namespace, dataset: str, attack: str, seed: int, data_cache: dict) -> None:
        from bibau_hf.attacks.plant import load_attack
        from bibau_hf.data.sources import load_train_and_eval
        from bibau_hf.evaluation import ZeroShotEvaluator

        self.args, self.dataset, self.attack, self.seed = args, dataset, attack, seed
        self.tag = dataset_tag(dataset)
        runs = Path(args.runs)
        if (dataset, seed) not in data_cache:
            train, test = load_train_and_eval(dataset, seed=seed)
            data_cache[(dataset, seed)] = (train, test, train.take_fraction(args.fraction, seed=seed))
        self.train, self.test, self.clean_set = data_cache[(dataset, seed)]
        for name in ("clean", attack):  # plant (and cache) what the lab has not made yet
            plant(dataset, args.backend, name, seed, runs, False)
        self.clean_dir = runs / f"{self.tag}_{args.backend}_clean_s{seed}"
        self.folder = runs / f"{self.tag}_{args.backend}_{attack}_s{seed}"
        self.trigger, self.record = load_attack(self.folder)
        self.target = self.record["target_class"]
        self.evaluator = ZeroShotEvaluator(self.test, self.trigger, self.target)

    def load(self, folder: Path | None = None):
        from bibau_hf.models import load_adapter

        return load_adapter(folder or self.folder, device=self.args.device)

    def retuned_asr(self, model) -> float:
        """Mean ASR after the retuning attack over RETUNE_SEEDS draws of its poisoned pairs: one draw is too noisy
        (the same purified model gave 3 % to 26 % over four draws; docs/METHOD_NOTES.md §8)."""
        from bibau_hf.attacks.retune import retuning_attack

        values = []
        for draw in range(RETUNE_SEEDS):
            attacked = retuning_attack(model, self.train, self.trigger, self.target, self.test.templates,
                                       seed=1000 * self.seed + draw, **RETUNE)
            values.append(primary_asr(self.evaluator(attacked)))
        return sum(values) / len(values)

    def config(self, output_dir: str):
        """BI-BAU's config for this cell: the library defaults, plus --epochs where given."""
        from bibau_hf.bibau_config import BIBAUConfig

        overrides = dict(self.args.config_overrides)
        return BIBAUConfig(
            output_dir=output_dir, overwrite_output_dir=True, concept_names=list(self.test.class_names),
            seed=self.seed, disable_tqdm=True, logging_steps=1000, use_cpu=not self.args.device.startswith("cuda"),
            **overrides,
        )


def defend(ctx: Context, method: str, model, work: str) -> dict[str, Any]:
    """Run one defense on ``model`` in place; returns what the method reports about itself (not timed here)."""
    import baselines

    config = ctx.config(work)
    budget = baselines.Budget.from_config(config, len(ctx.clean_set))
    if method == "clean_finetune":
        baselines.clean_finetune(model, ctx.clean_set, config)
        return {"budget": budget.__dict__}
    if method == "cleanclip":
        history = baselines.cleanclip(model, ctx.clean_set, budget)
        return {"budget": budget.__dict__, "first_epoch": history[0], "last_epoch": history[-1]}
    if method == "ibau":
        result = baselines.ibau(model, ctx.clean_set, budget, ctx.test.class_names, ctx.test.templates,
                                epsilon=config.additive_epsilon)
        return {"budget": budget.__dict__, "epsilon": config.additive_epsilon, "first_epoch": result.history[0],
                "last_epoch": result.history[-1], "perturbation_linf": float(result.perturbation.abs().max())}
    if method in baselines.VARIANTS:
        variant = baselines.variant_config(config, method, work)
        info = baselines.run_bibau(model, ctx.clean_set, variant, base_model_name=str(ctx.folder))
        info["budget"] = baselines.Budget.from_config(variant, len(ctx.clean_set)).__dict__
        return info
    raise KeyError(f"unknown method {method!r}")


def library_defaults(config_class: type | None = None, budget_only: bool = False) -> str:
    """A fingerprint of the defaults BIBAUConfig sets (its own fields, and TrainingArguments' fields whose default it
    changes). Every method's budget and BI-BAU's behaviour come from them, so a cached cell computed before a default
    changed must not be reused after. With ``budget_only``, of the TrainingArguments fields alone: the baselines read
    nothing else of the config (:class:`baselines.Budget`), so a change to BI-BAU's method leaves their cells valid."""
    from transformers import TrainingArguments

    from bibau_hf.bibau_config import BIBAUConfig

    def default(f: dataclasses.Field) -> Any:
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return None if f.default is dataclasses.MISSING else f.default

    inherited = {f.name: default(f) for f in dataclasses.fields(TrainingArguments)}
    defaults = {}
    for f in dataclasses.fields(config_class or BIBAUConfig):
        value = default(f)
        if budget_only and f.name not in inherited:
            continue
        if f.name not in inherited or inherited[f.name] != value:
            defaults[f.name] = value
    return hashlib.sha256(json.dumps(defaults, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_settings(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """Everything that changes a cell's numbers: a cached cell is reused only when these are equal."""
    import baselines

    settings = {"fraction": args.fraction, "config": dict(sorted(args.config_overrides.items())),
                "defaults": library_defaults(budget_only=method not in baselines.VARIANTS),
                "retune": {**RETUNE, "draws": RETUNE_SEEDS}, "device": args.device, "backend": args.backend}
    if method in baselines.VARIANTS:
        settings["variant"] = baselines.VARIANTS[method]
    return settings


def run_cell(ctx: Context, method: str, before: dict[str, float] | None, reference: dict | None) -> dict[str, Any]:
    """Measure one method on one (dataset, attack, seed)."""
    from bibau_hf.evaluation import defense_effectiveness_rate

    args = ctx.args
    model = ctx.load(ctx.clean_dir if method == REFERENCE else None)
    info: dict[str, Any] = {}
    seconds, peak_mb, memory_kind = None, None, None
    if method not in (REFERENCE, "no_defense"):
        work = tempfile.mkdtemp(prefix=f"{ctx.tag}_{ctx.attack}_s{ctx.seed}_{method}_", dir=args.work_dir)
        with PeakMemory(args.device) as memory:
            started = time.perf_counter()
            info = defend(ctx, method, model, work)
            seconds = time.perf_counter() - started
        peak_mb, memory_kind = memory.peak_mb, memory.kind
        # A LoRA run leaves the merged base weights frozen (peft froze them to train the adapter). The user receives
        # the saved model, whose weights are all trainable again when loaded: the retuning attacker gets that.
        model.requires_grad_(True)
    metrics = ctx.evaluator(model)
    asr = primary_asr(metrics)
    der = None
    if before is not None:
        der = defense_effectiveness_rate(ca_before=before["clean_accuracy"], ca_after=metrics["clean_accuracy"],
                                         asr_before=primary_asr(before), asr_after=asr)
    return {
        "dataset": ctx.tag, "attack": ctx.attack, "method": method, "seed": ctx.seed,
        "target": ctx.record["target_name"], "settings": cell_settings(args, method),
        "metrics": {
            "ca": metrics["clean_accuracy"], "asr": asr, "ra": metrics.get("robust_accuracy"),
            "text_asr": metrics.get("text_attack_success_rate"), "der": der,
            "retuned_asr": ctx.retuned_asr(model),
            "reference_retuned_asr": None if reference is None else reference["metrics"]["retuned_asr"],
        },
        "cost": {"seconds": None if seconds is None else round(seconds, 2),
                 # BI-BAU also measures the model for its own report (final scan, per-round evaluation): the time
                 # of the purification alone is what compares with a baseline's training. Baselines: all of it.
                 "purification_seconds": info.get("purification_seconds",
                                                  None if seconds is None else round(seconds, 2)),
                 "peak_memory_mb": peak_mb,
                 "memory_measure": memory_kind, "torch_threads": __import__("torch").get_num_threads()},
        "info": info,
        "commit": git_commit(),
    }


# ------------------------------------------------------------------------------------------------- aggregation
METRICS = ("ca", "asr", "ra", "text_asr", "der", "retuned_asr", "reference_retuned_asr")
COSTS = ("seconds", "peak_memory_mb")


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (None with a single seed: one run has no spread to report)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": round(statistics.fmean(values), 4), "std": None if std is None else round(std, 4),
            "n": len(values), "values": values}


def aggregate(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds for every (dataset, attack, method)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["dataset"], cell["attack"], cell["method"]), []).append(cell)
    rows = []
    for (dataset, attack, method), group in groups.items():
        row = {"dataset": dataset, "attack": attack, "method": method, "seeds": sorted(c["seed"] for c in group)}
        for key in METRICS:
            row[key] = mean_std([c["metrics"][key] for c in group])
        for key in COSTS:
            row[key] = mean_std([c["cost"][key] for c in group])
        rows.append(row)
    return rows


def summarise(cells: list[dict[str, Any]], aggregates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and method: means over attacks (of the per-attack means over seeds), and cost relative to clean
    fine-tuning and CleanCLIP over the very same cells."""
    seconds = {(c["dataset"], c["attack"], c["seed"], c["method"]): c["cost"]["seconds"] for c in cells}
    purification = {(c["dataset"], c["attack"], c["seed"], c["method"]): c["cost"].get("purification_seconds")
                    for c in cells}

    def relative(dataset: str, method: str, baseline: str, own: dict = seconds) -> float | None:
        pairs = [(s, seconds.get((d, a, seed, baseline))) for (d, a, seed, m), s in own.items()
                 if d == dataset and m == method and s is not None]
        pairs = [(s, b) for s, b in pairs if b]
        return round(sum(s for s, _ in pairs) / sum(b for _, b in pairs), 2) if pairs else None

    out = []
    for dataset in dict.fromkeys(a["dataset"] for a in aggregates):
        for method in dict.fromkeys(a["method"] for a in aggregates if a["dataset"] == dataset):
            rows = [a for a in aggregates if a["dataset"] == dataset and a["method"] == method]

            def over_attacks(key: str, rows: list[dict] = rows) -> float | None:
                values = [r[key]["mean"] for r in rows if r[key]["mean"] is not None]
                return round(statistics.fmean(values), 4) if values else None

            out.append({
                "dataset": dataset, "method": method, "attacks": [r["attack"] for r in rows],
                "mean_asr": over_attacks("asr"), "mean_ca": over_attacks("ca"), "mean_der": over_attacks("der"),
                "mean_retuned_asr": over_attacks("retuned_asr"),
                "mean_reference_retuned_asr": over_attacks("reference_retuned_asr"),
                "mean_seconds": over_attacks("seconds"), "mean_peak_memory_mb": over_attacks("peak_memory_mb"),
                "time_vs_clean_finetune": relative(dataset, method, "clean_finetune"),
                "purification_vs_clean_finetune": relative(dataset, method, "clean_finetune", purification),
                "time_vs_cleanclip": relative(dataset, method, "cleanclip"),
            })
    return out


# ---------------------------------------------------------------------------------------------------------- main
def parse_overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs as config overrides: VALUE is read as JSON (numbers, booleans, lists), else a string."""
    from bibau_hf.bibau_config import BIBAUConfig

    fields = {f.name for f in dataclasses.fields(BIBAUConfig)}
    overrides = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in fields:
            parser.error(f"--set {item!r}: expected FIELD=VALUE with FIELD a BIBAUConfig field")
        try:
            overrides[name] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[name] = raw
    return overrides


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="digits, cifar10_subset (../shared/data/cifar10_subset.npz) or .npz paths")
    parser.add_argument("--attacks", nargs="+", default=None, choices=ATTACKS)
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS + ABLATIONS,
                        help="defenses to run (the clean reference and no defense are always measured)")
    parser.add_argument("--ablations", action="store_true", help="add the BI-BAU ablations to the methods")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2")
    parser.add_argument("--quick", action="store_true",
                        help="digits, BadNets, seed 0, every method but BI-BAU LoRA (other flags' defaults)")
    parser.add_argument("--resume", action="store_true", help="reuse cached cells computed with the same settings")
    parser.add_argument("--fraction", type=float, default=DEFENDER_FRACTION,
                        help="defender's share of the training pairs")
    parser.add_argument("--epochs", type=float, default=None,
                        help="epochs of every method, instead of BIBAUConfig's max_steps budget")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--backend", default="hf", choices=["hf", "open_clip"], help="the planted models' format")
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "lab"), help="the lab's model cache")
    parser.add_argument("--cells", default=None, help="cell cache (default benchmarks/runs/bench)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/benchmark[_quick].json)")
    parser.add_argument("--no-render", action="store_true", help="do not rewrite RESULTS.md")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override BIBAUConfig fields for every method (JSON values), e.g. unlearn_threshold=0")
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else {}
    args.datasets = [dataset_path(d) for d in (args.datasets or quick.get("datasets") or DEFAULT_DATASETS)]
    args.attacks = args.attacks or quick.get("attacks") or list(ATTACKS)
    args.seeds = args.seeds if args.seeds is not None else quick.get("seeds", [0, 1, 2])
    methods = args.methods or quick.get("methods") or list(METHODS)
    if args.ablations:
        methods += [m for m in ABLATIONS if m not in methods]
    args.methods = ["no_defense", *[m for m in methods if m != "no_defense"]]
    args.config_overrides = dict(quick.get("config", {}))
    if args.epochs is not None:
        args.config_overrides.update(num_train_epochs=args.epochs, max_steps=-1)
    args.config_overrides.update(parse_overrides(parser, args.set))
    suffix = ("_open_clip" if args.backend == "open_clip" else "") + ("_quick" if args.quick else "")
    results = ROOT / "benchmarks" / "results"
    args.out = Path(args.out or results / f"benchmark{suffix}.json")
    args.cells = Path(args.cells or ROOT / "benchmarks" / "runs" / "bench")
    args.work_dir = str(args.cells / "_work")
    # RESULTS.md shows every benchmarks/results/benchmark*.json but the quick ones.
    args.render = not args.quick and not args.no_render and args.out.parent == results
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import baselines

    from bibau_hf.bibau_trainer import library_versions

    if any(baselines.VARIANTS.get(m, {}).get("use_lora") for m in args.methods):
        # Import before any cell is measured: a first import (peft alone takes seconds and tens of MB) would be
        # charged to whichever cell happens to come first.
        import peft  # noqa: F401

    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    computed: dict[Path, dict[str, Any]] = {}
    data_cache: dict = {}
    log: Callable[[str], None] = lambda text: print(f"[bench {time.time() - started:7.1f}s] {text}", flush=True)  # noqa: E731
    for dataset in args.datasets:
        for attack in args.attacks:
            for seed in args.seeds:
                ctx: Context | None = None
                before, reference = None, None
                for method in [REFERENCE, *args.methods]:
                    source = baselines.ALIASES.get(method, method)
                    path = args.cells / f"{dataset_tag(dataset)}_{args.backend}_{attack}_s{seed}" / f"{source}.json"
                    cell = computed.get(path)
                    if cell is None and args.resume and path.is_file():
                        cached = json.loads(path.read_text())
                        if cached.get("settings") == json.loads(json.dumps(cell_settings(args, source))):
                            cell = cached
                    if cell is None:
                        ctx = ctx or Context(args, dataset, attack, seed, data_cache)
                        log(f"{ctx.tag} {attack} seed {seed}: {method} ...")
                        cell = run_cell(ctx, source, before, reference)
                        write_json(path, cell)
                    computed[path] = cell
                    cell = json.loads(json.dumps(dict(cell, method=method)))  # a copy: aliases share a cell
                    if method == REFERENCE:
                        reference = cell
                    else:  # the reference's retuned ASR is the bar every other row is read against
                        cell["metrics"]["reference_retuned_asr"] = reference["metrics"]["retuned_asr"]
                    if method == "no_defense":
                        m = cell["metrics"]
                        before = {"clean_accuracy": m["ca"], "attack_success_rate": m["asr"]}
                    cells.append(cell)
                    m, c = cell["metrics"], cell["cost"]
                    log(f"{cell['dataset']} {attack} s{seed} {method}: CA {m['ca']:.3f} ASR {m['asr']:.3f} "
                        f"retuned {m['retuned_asr']:.3f} DER {m['der'] if m['der'] is None else round(m['der'], 3)} "
                        f"{c['seconds']} s {c['peak_memory_mb']} MB")
    aggregates = aggregate(cells)
    result = {
        "command": "python benchmarks/run_benchmark.py " + " ".join(argv),
        "profile": "quick" if args.quick else "full",
        "datasets": [dataset_tag(d) for d in args.datasets], "attacks": args.attacks, "methods": args.methods,
        "seeds": args.seeds, "defender_fraction": args.fraction, "config_overrides": args.config_overrides,
        "retuning_attack": RETUNE, "labels": LABELS,
        "memory_measure": PeakMemory(args.device).kind, "versions": library_versions(), "commit": git_commit(),
        "machine": machine_info(args.device),
        "wall_seconds": round(time.time() - started, 1),
        "summary": summarise(cells, aggregates), "aggregates": aggregates, "cells": cells,
    }
    write_json(args.out, result)
    import render_results

    plot = render_results.plot_path(args.out)
    render_results.plot_asr_vs_ca(result, plot)
    print("\n".join(render_results.benchmark_tables(result)))
    if args.render:
        render_results.main()
    log(f"done: {args.out}, {plot}" + (", benchmarks/RESULTS.md" if args.render else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
