"""Render benchmarks/results/*.json into the tables of benchmarks/RESULTS.md (between the AUTO markers).

    python benchmarks/render_results.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def defense_table(name: str, data: dict) -> list[str]:
    lines = [f"### {name} (`{data['command']}`)", "",
             "Percentages; ASR is text ASR for the text trigger; *retuned* = ASR after the retuning attack "
             "(5 poisoned + 100 clean pairs, 5 epochs).", "",
             "| attack | clean ref CA / ASR / retuned | no defense CA / ASR | clean FT CA / ASR / retuned / DER | "
             "BI-BAU CA / ASR / retuned / DER | score: clean ref / before / after | BI-BAU s (clean FT s) |",
             "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        c, n, f, b = r["clean_reference"], r["no_defense"], r["clean_finetune"], r["bibau"]
        lines.append(
            f"| {r['attack']} | {pct(c['ca'])} / {pct(c['asr'])} / {pct(c['retuned_asr'])} | {pct(n['ca'])} / "
            f"{pct(n['asr'])} | {pct(f['ca'])} / {pct(f['asr'])} / {pct(f['retuned_asr'])} / {f['der']:.3f} | "
            f"{pct(b['ca'])} / {pct(b['asr'])} / {pct(b['retuned_asr'])} / {b['der']:.3f} | "
            f"{c['backdoor_score']} / {b['score_before']} / {b['score_after']} | {b['seconds']} ({f['seconds']}) |"
        )
    machine = data.get("machine", {})
    lines += ["", f"Machine: {machine.get('platform')}, {machine.get('cpus')} CPUs, torch threads "
              f"{machine.get('torch_threads')}; seed {data['seed']}; defender data {data['defender_fraction']:.0%} of "
              f"the training pairs; versions: " + ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())]
    return lines


def main() -> int:
    blocks: list[str] = []
    lab = RESULTS / "lab.json"
    if lab.is_file():
        blocks += lab_table(json.loads(lab.read_text())) + [""]
    for path in sorted(RESULTS.glob("defense_*.json")):
        blocks += defense_table(path.stem.replace("defense_", "BI-BAU vs baselines: "), json.loads(path.read_text()))
        blocks.append("")
    page = PAGE.read_text()
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    PAGE.write_text(head + BEGIN + "\n" + "\n".join(blocks) + END + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
