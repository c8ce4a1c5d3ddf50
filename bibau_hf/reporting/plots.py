"""PNG figures of an unlearning run, drawn from the files saved beside the purified model.

Each figure is skipped when the run has nothing to show for it (no image tower inverted, no evaluator metrics, no
similarity diagnostics...). Figures are drawn on bare :class:`matplotlib.figure.Figure` objects rather than through
``pyplot``: no display is needed and the caller's matplotlib backend and global state are left alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from safetensors import safe_open

from .artifacts import METADATA_KEY, TRIGGERS_FILE

PLOTS_DIR = "plots"
REPORT_FILE = "unlearning_report.json"  # the trainer's name; repeated here so plotting never imports the trainer
PHASE_TITLES = {"before": "before unlearning", "after": "after unlearning"}
RATE_METRICS = {
    "clean_accuracy": "clean accuracy (CA)",
    "attack_success_rate": "attack success rate (ASR)",
    "robust_accuracy": "robust accuracy (RA)",
    "text_attack_success_rate": "text ASR",
}
DPI = 100


def _load_triggers(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and summary of ``inverted_triggers.safetensors`` (empty when the file is absent)."""
    path = folder / TRIGGERS_FILE
    if not path.is_file():
        return {}, {}
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata() or {}
    summary = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
    return tensors, summary


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _show(ax, image: torch.Tensor, title: str, **kwargs: Any) -> None:
    """Draw a ``[3, H, W]`` colour or ``[H, W]`` grey image in [0, 1]."""
    if image.dim() == 3:
        image = image.permute(1, 2, 0)
    ax.imshow(image.clamp(0, 1).numpy(), interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _image_panels(
    tensors: dict[str, torch.Tensor], family: str, prefix: str, epsilon: float
) -> list[tuple[torch.Tensor, str, dict[str, Any]]]:
    """The images that explain one image trigger: what it changes, and a clean example before and after it."""
    panels: list[tuple[torch.Tensor, str, dict[str, Any]]] = []
    if family == "mask":
        mask, pattern = tensors[f"{prefix}/mask"], tensors[f"{prefix}/pattern"]
        panels.append((mask, f"mask ({float(mask.sum()):.1f} px)", {"cmap": "gray", "vmin": 0, "vmax": 1}))
        panels.append((pattern, "pattern", {}))
        # The pattern only matters where the mask is on: this is what the trigger stamps onto an image.
        panels.append((mask.unsqueeze(0) * pattern, "mask × pattern", {}))
    elif family == "warp":
        shift = tensors[f"{prefix}/displacement_pixels"].norm(dim=0)
        peak = max(float(shift.max()), 1e-8)
        panels.append((shift / peak, f"displacement (max {peak:.2f} px)", {"cmap": "magma", "vmin": 0, "vmax": 1}))
    elif family in ("additive", "periodic"):
        delta = tensors[f"{prefix}/delta"]
        scale = max(epsilon, float(delta.abs().max()), 1e-8)
        panels.append((0.5 + delta / (2 * scale), f"perturbation (±{scale:.3f}, grey = 0)", {}))
    if "example/clean" in tensors and f"{prefix}/example_triggered" in tensors:
        panels.append((tensors["example/clean"], "clean example", {}))
        panels.append((tensors[f"{prefix}/example_triggered"], "with the trigger", {}))
    return panels


def plot_image_triggers(tensors: dict[str, torch.Tensor], summary: dict[str, Any], plots_dir: Path) -> list[Path]:
    """One figure per image trigger family: a row per phase (before / after unlearning)."""
    entries = [e for e in summary.get("triggers", []) if e["modality"] == "image"]
    paths = []
    for family in dict.fromkeys(e["family"] for e in entries):
        rows = []
        for entry in (e for e in entries if e["family"] == family):
            prefix = f"{entry['phase']}/image/{family}"
            panels = _image_panels(tensors, family, prefix, entry.get("epsilon", 0.0))
            if panels:
                rows.append((entry, panels))
        if not rows:
            continue
        columns = max(len(panels) for _, panels in rows)
        fig = Figure(figsize=(2.2 * columns, 2.5 * len(rows)))
        axes = fig.subplots(len(rows), columns, squeeze=False)
        for r, (entry, panels) in enumerate(rows):
            for c, ax in enumerate(axes[r]):
                if c < len(panels):
                    image, title, kwargs = panels[c]
                    _show(ax, image, title, **kwargs)
                else:
                    ax.axis("off")
            axes[r][0].set_ylabel(f"{PHASE_TITLES[entry['phase']]}\ntarget {entry['suspected_target']!r}\n"
                                  f"score {entry['score']:.2f}", fontsize=9)
        fig.suptitle(f"Inverted image trigger ({family})", fontsize=11)
        paths.append(_save(fig, plots_dir / f"trigger_image_{family}.png"))
    return paths


def _text_trigger(scan: dict[str, Any] | None) -> dict[str, Any] | None:
    if not scan:
        return None
    return next((t for t in scan.get("triggers", []) if t.get("modality") == "text" and t.get("objectives")), None)


def _token_label(tokens: list[list[str]] | None) -> str:
    """``took / oni + championships / mb``: each soft token's nearest vocabulary tokens, best first."""
    if not tokens:
        return ""
    return " + ".join(" / ".join(row) for row in tokens)


def plot_text_trigger(report: dict[str, Any], plots_dir: Path) -> list[Path]:
    """Per-concept cost of the text-trigger search (lower = the captions are dragged there more cheaply), with the
    nearest vocabulary tokens of the trigger found for the suspected target."""
    # An "after" scan equal to the "before" one was not searched after unlearning (one round, no final scan).
    after = report.get("scan_after") if report.get("scan_after") != report.get("scan_before") else None
    phases = [("before", _text_trigger(report.get("scan_before"))), ("after", _text_trigger(after))]
    phases = [(phase, trig) for phase, trig in phases if trig is not None]
    if not phases:
        return []
    fig = Figure(figsize=(7, 2.8 * len(phases)))
    axes = fig.subplots(len(phases), 1, squeeze=False)[:, 0]
    for ax, (phase, trig) in zip(axes, phases):
        names = list(trig["objectives"])
        values = [trig["objectives"][n] for n in names]
        colors = ["tab:red" if n == trig["suspected_target"] else "tab:gray" for n in names]
        ax.bar(range(len(names)), values, color=colors)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("search cost J", fontsize=9)
        tokens = _token_label(trig.get("nearest_tokens"))
        ax.set_title(f"{PHASE_TITLES[phase]}: target {trig['suspected_target']!r}, score {trig['score']:.2f}"
                     + (f"\nnearest tokens: {tokens}" if tokens else ""), fontsize=9)
    fig.suptitle("Inverted text trigger: cost per candidate concept (red = suspected target)", fontsize=10)
    fig.tight_layout()
    return [_save(fig, plots_dir / "trigger_text.png")]


def plot_rounds(report: dict[str, Any], plots_dir: Path) -> list[Path]:
    """Backdoor score per EM round (and after training), plus the evaluator's rates where they were measured."""
    rounds = report.get("rounds") or []
    if not rounds:
        return []
    labels = [str(r["round"]) for r in rounds]
    scores = [r.get("backdoor_score") for r in rounds]
    metrics = [dict(r.get("metrics") or {}) for r in rounds]
    after = report.get("metrics_after") or {}
    if after:
        labels.append("end")
        # Only a final scan measures the score after training; otherwise "after" repeats the last round's score.
        final = (report.get("config") or {}).get("final_scan")
        scores.append(after.get("backdoor_score") if final else None)
        metrics.append({k: v for k, v in after.items() if k != "backdoor_score"})
    rate_names = [k for k in RATE_METRICS if any(k in m for m in metrics)]
    fig = Figure(figsize=(7, 2.8 * (2 if rate_names else 1)))
    axes = fig.subplots(2 if rate_names else 1, 1, squeeze=False)[:, 0]
    x = list(range(len(labels)))
    known = [(i, s) for i, s in zip(x, scores) if s is not None]
    axes[0].plot([i for i, _ in known], [s for _, s in known], marker="o", color="tab:red")
    axes[0].set_ylabel("backdoor score", fontsize=9)
    axes[0].set_title("Backdoor score per round (E-step at the start of each round; 'end' = after training)",
                      fontsize=9)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.grid(alpha=0.3)
    if rate_names:
        for name in rate_names:
            points = [(i, m[name]) for i, m in zip(x, metrics) if name in m]
            axes[1].plot([i for i, _ in points], [v for _, v in points], marker="o", label=RATE_METRICS[name])
        axes[1].set_ylim(-0.02, 1.02)
        axes[1].set_ylabel("rate", fontsize=9)
        axes[1].set_xlabel("round", fontsize=9)
        axes[1].legend(fontsize=8)
    else:
        axes[0].set_xlabel("round", fontsize=9)
    fig.tight_layout()
    return [_save(fig, plots_dir / "rounds.png")]


def plot_similarity(report: dict[str, Any], plots_dir: Path) -> list[Path]:
    """Histograms of the cosine to the suspected target: clean vs triggered images, before and after unlearning."""
    similarity = (report.get("diagnostics") or {}).get("similarity") or {}
    phases = [p for p in ("before", "after") if (similarity.get(p) or {}).get("clean")]
    if not phases:
        return []
    fig = Figure(figsize=(4 * len(phases), 3))
    axes = fig.subplots(1, len(phases), squeeze=False, sharey=True)[0]
    values = [v for p in phases for k in ("clean", "triggered") for v in similarity[p].get(k, [])]
    bins = torch.linspace(min(values), max(values) + 1e-6, 31).tolist()
    for ax, phase in zip(axes, phases):
        data = similarity[phase]
        ax.hist(data["clean"], bins=bins, alpha=0.6, label="clean", color="tab:blue")
        if data.get("triggered"):
            ax.hist(data["triggered"], bins=bins, alpha=0.6, label="with inverted trigger", color="tab:red")
        ax.set_title(PHASE_TITLES[phase], fontsize=9)
        ax.set_xlabel(f"cosine to {similarity.get('target', 'target')!r}", fontsize=9)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("images", fontsize=9)
    family = f" ({similarity['family']} trigger)" if similarity.get("family") else ""
    fig.suptitle(f"Similarity to the suspected target{family}", fontsize=10)
    fig.tight_layout()
    return [_save(fig, plots_dir / "similarity_histograms.png")]


def write_plots(output_dir: str | Path) -> list[Path]:
    """Draw every figure the run supports into ``output_dir/plots/``.

    Args:
        output_dir: a folder holding ``unlearning_report.json`` (and, optionally, ``inverted_triggers.safetensors``).

    Returns:
        The written PNG paths, in a fixed order: image triggers, text trigger, rounds, similarity histograms.

    Raises:
        FileNotFoundError: if the folder has no ``unlearning_report.json``.
    """
    folder = Path(output_dir)
    report_path = folder / REPORT_FILE
    if not report_path.is_file():
        raise FileNotFoundError(f"no {REPORT_FILE} in {folder}: train with BIBAUTrainer and save the model first")
    report = json.loads(report_path.read_text())
    tensors, summary = _load_triggers(folder)
    plots_dir = folder / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    return [
        *plot_image_triggers(tensors, summary, plots_dir),
        *plot_text_trigger(report, plots_dir),
        *plot_rounds(report, plots_dir),
        *plot_similarity(report, plots_dir),
    ]


__all__ = ["PLOTS_DIR", "write_plots"]
