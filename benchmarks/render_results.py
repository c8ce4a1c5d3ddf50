"""Render benchmarks/results/*.json into the tables of benchmarks/RESULTS.md (between the AUTO markers).

    python benchmarks/render_results.py

Also draws benchmarks/results/asr_vs_ca.png from benchmark.json (``run_benchmark.py`` calls the same functions).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- AUTO:BEGIN -->", "<!-- AUTO:END -->"


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def lab_table(data: dict) -> list[str]:
    lines = [f"### Attack lab (`{data['command']}`)", "",
             "| dataset | backend | attack | CA % | ASR % | CA drop vs clean (points) | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        drop = "-" if r["ca_drop_vs_clean"] is None else f"{100 * r['ca_drop_vs_clean']:+.1f}"
        lines.append(f"| {r['dataset']} | {r['backend']} | {r['attack']} | {pct(r['clean_accuracy'])} | "
                     f"{pct(r['asr'])} | {drop} | {r['train_seconds']} |")
    return lines


def pm(stat: dict[str, Any] | None, percent: bool = True, digits: int = 1) -> str:
    """``mean ± std`` of an aggregate (just the mean with one seed; ``-`` when undefined)."""
    if not stat or stat.get("mean") is None:
        return "-"
    scale = 100 if percent else 1
    text = f"{scale * stat['mean']:.{digits}f}"
    return text if stat.get("std") is None else text + f" ± {scale * stat['std']:.{digits}f}"


def num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def benchmark_tables(data: dict[str, Any]) -> list[str]:
    """The summary and per-attack tables of ``run_benchmark.py``'s JSON."""
    labels = data.get("labels", {})
    seeds = " ".join(map(str, data["seeds"]))
    retune = data["retuning_attack"]
    lines = [f"### Benchmark: BI-BAU vs baselines (`{data['command']}`)", "",
             f"Seeds {seeds}; mean ± sample std over seeds (a bare number: one seed). Percentages except DER, seconds "
             "and MB. ASR is the text ASR for the text trigger. *retuned*: ASR after the retuning attack "
             f"({retune['num_poison']} poisoned + {retune['num_clean']} clean pairs, "
             f"{retune['epochs']} epochs); *ref retuned*: the same attack on the clean reference. "
             "*s*: wall time of the defense alone; *purification*: BI-BAU's E- and M-steps without the final scan "
             "it runs for its report (baselines: all their time); *MB*: " + data["memory_measure"] + ".", ""]
    for dataset in data["datasets"]:
        rows = [r for r in data["summary"] if r["dataset"] == dataset]
        if not rows:
            continue
        lines += [f"#### {dataset}: summary over attacks ({', '.join(rows[0]['attacks'])})", "",
                  "| method | mean ASR | mean CA | mean DER | mean retuned ASR | ref retuned | s / defense | "
                  "× clean FT time | purification × clean FT | × CleanCLIP time | peak MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {labels.get(r['method'], r['method'])} | {pct(r['mean_asr'])} | {pct(r['mean_ca'])} | "
                f"{num(r['mean_der'], '{:.3f}')} | {pct(r['mean_retuned_asr'])} | "
                f"{pct(r['mean_reference_retuned_asr'])} | {num(r['mean_seconds'])} | "
                f"{num(r['time_vs_clean_finetune'], '{:.2f}')} | "
                f"{num(r.get('purification_vs_clean_finetune'), '{:.2f}')} | "
                f"{num(r['time_vs_cleanclip'], '{:.2f}')} | "
                f"{num(r['mean_peak_memory_mb'])} |")
        lines += ["", f"#### {dataset}: per attack", "",
                  "| attack | method | CA | ASR | RA | retuned ASR | ref retuned | DER | s | peak MB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for attack in data["attacks"]:
            for r in (a for a in data["aggregates"] if a["dataset"] == dataset and a["attack"] == attack):
                lines.append(
                    f"| {attack} | {labels.get(r['method'], r['method'])} | {pm(r['ca'])} | {pm(r['asr'])} | "
                    f"{pm(r['ra'])} | {pm(r['retuned_asr'])} | {pm(r['reference_retuned_asr'])} | "
                    f"{pm(r['der'], percent=False, digits=3)} | {pm(r['seconds'], percent=False)} | "
                    f"{pm(r['peak_memory_mb'], percent=False)} |")
        lines.append("")
    machine = data.get("machine", {})
    lines += [f"Machine: {machine.get('platform')}, {machine.get('cpus')} CPUs, torch threads "
              f"{machine.get('torch_threads')}, device {machine.get('device')}, load average at start "
              f"{machine.get('load_average_at_start')}; whole run {data['wall_seconds']} s; "
              f"commit {data.get('commit')}; "
              "versions: " + ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())]
    return lines


def plot_path(json_path: Path) -> Path:
    """benchmark.json -> asr_vs_ca.png, benchmark_quick.json -> asr_vs_ca_quick.png, x.json -> asr_vs_ca_x.png."""
    stem = json_path.stem
    suffix = stem[len("benchmark") :] if stem.startswith("benchmark") else f"_{stem}"
    return json_path.with_name(f"asr_vs_ca{suffix}.png")


def plot_asr_vs_ca(data: dict[str, Any], path: str | Path) -> None:
    """Mean ASR (over attacks and seeds) against mean CA, one point per method, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = data.get("labels", {})
    datasets = [d for d in data["datasets"] if any(r["dataset"] == d for r in data["summary"])]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for i, r in enumerate(r for r in data["summary"] if r["dataset"] == dataset):
            if r["mean_ca"] is None or r["mean_asr"] is None:
                continue
            marker = "*" if r["method"] == "clean_reference" else "o"
            ax.scatter(100 * r["mean_ca"], 100 * r["mean_asr"], s=140 if marker == "*" else 60, marker=marker,
                       color=f"C{i % 10}", label=labels.get(r["method"], r["method"]), zorder=3)
        ax.set_xlabel("mean clean accuracy (%)")
        ax.set_ylabel("mean attack success rate (%)")
        ax.set_title(f"{dataset}: attacks {', '.join(data['attacks'])}; seeds {' '.join(map(str, data['seeds']))}",
                     fontsize=9)
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Better is down and to the right: low ASR, high CA", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    blocks: list[str] = []
    lab = RESULTS / "lab.json"
    if lab.is_file():
        blocks += lab_table(json.loads(lab.read_text())) + [""]
    # benchmark.json first, then other runs (e.g. ablations); quick runs are smoke tests, not results to publish.
    for path in sorted(RESULTS.glob("benchmark*.json"), key=lambda p: (p.stem != "benchmark", p.name)):
        if path.stem.endswith("_quick"):
            continue
        data = json.loads(path.read_text())
        blocks += benchmark_tables(data) + [""]
        plot_asr_vs_ca(data, plot_path(path))
    page = PAGE.read_text()
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    PAGE.write_text(head + BEGIN + "\n" + "\n".join(blocks) + END + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
