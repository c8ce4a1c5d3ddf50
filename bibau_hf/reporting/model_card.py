"""The model card (``README.md``) of a purified model, rendered from its unlearning report.

The YAML header carries Hub metadata and a ``model-index`` with one result per metric and phase: metric types are
``{metric}_before`` and ``{metric}_after`` (e.g. ``clean_accuracy_after``), with the exact values of
``unlearning_report.json``, so :func:`huggingface_hub.metadata_load` gives the report's numbers back. The body says in
plain words what was done and shows the before/after table, the suspected target, the inverted triggers, the
per-round trace, the completeness test where run, the configuration and the command that reproduces the run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..inversion.blind_inversion import IMAGE_THRESHOLD, TEXT_THRESHOLD, family_key
from .plots import PLOTS_DIR, REPORT_FILE

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "templates" / "bibau_model_card.md"
CARD_FILE = "README.md"
TASK_TYPE = "zero-shot-image-classification"
TASK_NAME = "Zero-shot image classification"
BASE_TAGS = ["backdoor-removal", "bibau", "clip"]
PHASES = ("before", "after")
# Metrics that go into model-index, in display order: report key -> (label, is a rate in [0, 1]).
CARD_METRICS: dict[str, tuple[str, bool]] = {
    "clean_accuracy": ("Clean accuracy", True),
    "attack_success_rate": ("Attack success rate", True),
    "robust_accuracy": ("Robust accuracy", True),
    "text_attack_success_rate": ("Text attack success rate", True),
    "backdoor_score": ("Backdoor score", False),
}
# Every model-index metric type this module writes; attach_report replaces exactly these.
BIBAU_METRIC_TYPES = frozenset(f"{key}_{phase}" for key in CARD_METRICS for phase in PHASES)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# --------------------------------------------------------------------------------------------------- helpers
def hub_id(name: str | None) -> str | None:
    """``name`` as a Hub repo id if it looks like one (``owner/name``, not an existing local path), else ``None``."""
    if not name:
        return None
    name = str(name).removeprefix("hf-hub:")
    if not _HUB_ID.fullmatch(name) or Path(name).exists():
        return None
    return name


def library_name(report: dict[str, Any]) -> str:
    """The Hub library of the saved weights: the purified model keeps its input format."""
    return "open_clip" if report.get("backend") == "open_clip" else "transformers"


def model_name(report: dict[str, Any]) -> str:
    """A name for the purified model: the report's, else its output folder's, else the base model's + ``-bibau``."""
    if report.get("model_name"):
        return str(report["model_name"])
    output_dir = (report.get("config") or {}).get("output_dir")
    if output_dir:
        return Path(output_dir).name
    base = str(report.get("base_model") or "model").removeprefix("hf-hub:")
    return f"{Path(base).name}-bibau"


def card_tags(report: dict[str, Any]) -> list[str]:
    tags = [*BASE_TAGS, library_name(report)]
    if report.get("mode") == "lora":
        tags.append("lora")
    return tags


def scan_after(report: dict[str, Any]) -> dict[str, Any] | None:
    """The report's scan of the purified model, or ``None`` when it is the round-0 scan itself (one round and no
    final scan: nothing was searched after unlearning)."""
    after = report.get("scan_after")
    return None if not after or after == report.get("scan_before") else after


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def eval_results(report: dict[str, Any]) -> list[EvalResult]:
    """One :class:`EvalResult` per metric and phase, with the report's exact values."""
    dataset = report.get("dataset")
    dataset_type = hub_id(dataset) or (str(dataset) if dataset else "custom")
    dataset_name = str(dataset) if dataset else "clean image-caption pairs"
    results = []
    for key, (label, _) in CARD_METRICS.items():
        for phase in PHASES:
            value = (report.get(f"metrics_{phase}") or {}).get(key)
            if not _number(value):
                continue
            results.append(EvalResult(
                task_type=TASK_TYPE, task_name=TASK_NAME, dataset_type=dataset_type, dataset_name=dataset_name,
                metric_type=f"{key}_{phase}", metric_name=f"{label} ({phase} BI-BAU)", metric_value=value,
            ))
    return results


def card_data(report: dict[str, Any]) -> ModelCardData:
    """The YAML metadata of the card."""
    results = eval_results(report)
    dataset = hub_id(report.get("dataset"))
    return ModelCardData(
        base_model=hub_id(report.get("base_model")),
        datasets=[dataset] if dataset else None,
        library_name=library_name(report),
        pipeline_tag=TASK_TYPE,
        tags=card_tags(report),
        model_name=model_name(report) if results else None,
        eval_results=results or None,
    )


def _cell(value: Any) -> str:
    """A value made safe for one Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _rate(value: float) -> str:
    return f"{100 * value:.2f} %"


def _format(key: str, value: Any) -> str:
    if not _number(value):
        return "–" if value is None else _cell(value)
    return _rate(value) if CARD_METRICS.get(key, ("", True))[1] else f"{value:.3f}"


def _change(key: str, before: Any, after: Any) -> str:
    if not (_number(before) and _number(after)):
        return "–"
    if CARD_METRICS[key][1]:
        return f"{100 * (after - before):+.2f} pt"
    return f"{after - before:+.3f}"


def _code(text: Any) -> str:
    return f"`{text}`"


def _trigger_size(entry: dict[str, Any]) -> str:
    """A readable size of the round's strongest trigger (mask pixels, perturbation size, or token norm)."""
    family = entry.get("strongest_family") or ""
    found = next((t for t in entry.get("triggers", []) if f"{t.get('modality')}/{t.get('family')}" == family), {})
    if "mask_pixels" in found:
        return f"mask {found['mask_pixels']:.1f} px"
    if "mean_shift_pixels" in found:
        return f"warp {found['mean_shift_pixels']:.2f} px"
    if "mean_abs_delta" in found:
        return f"mean \\|δ\\| {found['mean_abs_delta']:.4f}"
    if "periods_x" in found:
        return f"sinusoid ({found['periods_x']}, {found['periods_y']}) periods, amplitude {found['amplitude']:g}"
    if "relative_norm" in found:
        count = found.get("num_tokens", 0)
        return f"{count} token{'' if count == 1 else 's'}, norm ×{found['relative_norm']:.2f}"
    return "–"


# ------------------------------------------------------------------------------------------------- sections
def _intro(report: dict[str, Any]) -> str:
    base = report.get("base_model")
    repo = hub_id(base)
    if repo:
        base_text = f"[`{repo}`](https://huggingface.co/{repo})"
    elif base:
        base_text = f"the local model `{base}`"
    else:
        base_text = "a CLIP-like model"
    fmt = "open_clip" if report.get("backend") == "open_clip" else "transformers"
    version = report.get("bibau_hf_version") or (report.get("versions") or {}).get("bibau_hf", "")
    return (
        f"This model is {base_text} after backdoor removal with **BI-BAU**, made with bibau_hf {version}. "
        f"It is saved in the same {fmt} format as the original and loads with the usual {fmt} code."
    ).replace("  ", " ")


def _searched(report: dict[str, Any]) -> str:
    families = {(t.get("modality"), t.get("family")) for t in (report.get("scan_before") or {}).get("triggers", [])}
    parts = []
    if ("image", "mask") in families:
        parts.append("a small patch stamped onto images (mask and pattern)")
    if ("image", "warp") in families:
        parts.append("a slight, smooth warp of the image geometry")
    if ("image", "additive") in families:
        parts.append("a faint pattern added over whole images")
    if any(modality == "text" for modality, _ in families):
        parts.append("a few words inserted into captions")
    if not parts:
        return "changes to images and captions"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", or " + parts[-1]


def _timing_text(report: dict[str, Any]) -> str:
    timing = report.get("timing") or {}
    text = f"Training took {report.get('steps', '?')} optimisation steps"
    purification = timing.get("purification_seconds", timing.get("total_seconds"))
    if purification is not None:
        text += f" and {purification:.1f} s"
        if "e_step_seconds" in timing:
            text += f", of which {timing['e_step_seconds']:.1f} s went into the trigger search"
    text += "."
    if "total_seconds" in timing and "purification_seconds" in timing:
        text += (f" Measuring the model for this report (evaluation each round and the final scan) took "
                 f"{timing['total_seconds'] - timing['purification_seconds']:.1f} s more.")
    if "clean_finetune_seconds" in timing:
        text += (f" For comparison, plain fine-tuning on the same data and epochs took "
                 f"{timing['clean_finetune_seconds']:.1f} s.")
    if report.get("stopped_early"):
        text += " It stopped early, once the backdoor score had fallen to the level of natural variation."
    return text


def _results(report: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    before, after = report.get("metrics_before") or {}, report.get("metrics_after") or {}
    keys = [k for k in CARD_METRICS if k in before or k in after]
    rows = [[CARD_METRICS[k][0], _format(k, before.get(k)), _format(k, after.get(k)), _change(k, before.get(k),
                                                                                             after.get(k))]
            for k in keys]
    dataset = f" of `{report['dataset']}`" if report.get("dataset") else ""
    attack = f" (trigger from `{report['eval_attack']}`)" if report.get("eval_attack") else ""
    final = (report.get("config") or {}).get("final_scan")
    notes = {
        "clean_accuracy": f"**Clean accuracy**: zero-shot top-1 accuracy on clean test images{dataset}.",
        "attack_success_rate": (
            f"**Attack success rate**: among test images of other classes with the real trigger applied, the share "
            f"classified as the attacker's target{attack}. It can be measured here only because the backdoor was "
            "planted for the experiment; BI-BAU never saw the trigger."),
        "robust_accuracy": "**Robust accuracy**: among the same triggered images, the share still classified as "
                           "their true class.",
        "text_attack_success_rate": "**Text attack success rate**: among prompts of other classes with the real text "
                                    "trigger inserted, the share whose best-matching test image is of the target "
                                    "class.",
        "backdoor_score": "**Backdoor score**: the anomaly index of the trigger search (above about 2 is "
                          "suspicious); 'after' comes from " + (
                              "a last search on the purified model." if final else
                              "the last round's search." if scan_after(report) else
                              "the only search, made before unlearning (enable `final_scan` to measure the purified "
                              "model)."),
    }
    return rows, [notes[k] for k in keys]


def _target_text(report: dict[str, Any]) -> str:
    before, after = report.get("scan_before"), scan_after(report)
    if not before:
        return ""
    family = before.get("strongest_family") or "?"
    text = (f"Before unlearning, the search pointed at **{before['suspected_target']}**, with posterior "
            f"{before.get('suspected_target_posterior', 0):.3f} (strongest trigger: {family}, backdoor score "
            f"{before['backdoor_score']:.3f}).")
    strongest = next((t for t in before.get("triggers", []) if family_key(t["modality"], t["family"]) == family), None)
    others = {k: v for k, v in ((strongest or {}).get("posterior_top") or {}).items()
              if k != before["suspected_target"]}
    if others:
        text += " Next candidates: " + ", ".join(f"{k} ({v:.3f})" for k, v in others.items()) + "."
    if len(before.get("triggers", [])) > 1:
        text += " Per trigger family: " + "; ".join(_family_text(t, report) for t in before["triggers"]) + "."
    first = (report.get("rounds") or [{}])[0]
    if "unlearned_targets" in first and not first["unlearned_targets"] and first.get("uniform_families"):
        # Said explicitly: "nothing passed" reads as "no backdoor", and the run still changed the model.
        text += (" No family passed its gates, so the search named no target; as a hedge, every family was "
                 "unlearned toward its likeliest concepts (`ungated_families`).")
    if after:
        threshold = _tower_threshold(report, after.get("strongest_family") or "image/")
        level = "below" if after["backdoor_score"] < threshold else "still at or above"
        text += (f"\n\nAfter unlearning, the backdoor score is {after['backdoor_score']:.3f} ({level} the "
                 f"{after.get('strongest_family') or 'strongest'} family's unlearning threshold of {threshold:g}); "
                 f"the most anomalous concept is then {after['suspected_target']} (posterior "
                 f"{after.get('suspected_target_posterior', 0):.3f})")
        # Said explicitly: a reader would otherwise take a remaining score for the old backdoor.
        moved = after["suspected_target"] != before["suspected_target"]
        text += f", no longer {before['suspected_target']}." if moved else "."
    return text


def _family_text(trigger: dict[str, Any], report: dict[str, Any]) -> str:
    """One family's round-0 finding: target, score, confidence gap, and whether the run unlearned it."""
    key = family_key(trigger["modality"], trigger["family"])
    facts = [f"score {trigger['score']:.3f}"]
    if trigger.get("confidence_gap") is not None:
        facts.append(f"confidence gap {trigger['confidence_gap']:.3f}")
    rounds = report.get("rounds") or []
    if rounds and "unlearned_targets" in rounds[0]:
        if key in rounds[0]["unlearned_targets"]:
            facts.append("unlearned")
        elif key in rounds[0].get("uniform_families", []):
            concepts = (rounds[0].get("hedged_concepts") or {}).get(key)
            toward = f"its likeliest concepts ({', '.join(concepts)})" if concepts else "every concept"
            facts.append(f"under its gates: unlearned toward {toward}")
        elif key in rounds[0].get("text_vetoed", {}):
            facts.append(f"not unlearned: {rounds[0]['text_vetoed'][key]} names another target (`text_target_veto`)")
        else:
            facts.append("not unlearned")
    return f"{key} → {trigger['suspected_target']} ({', '.join(facts)})"


def _tower_threshold(report: dict[str, Any], family: str) -> float:
    """The unlearning threshold of ``family``'s tower (``"text/..."`` or an image family) in the run's config."""
    config = report.get("config") or {}
    if family.startswith("text/"):
        return float(config.get("text_unlearn_threshold", TEXT_THRESHOLD))
    return float(config.get("unlearn_threshold", IMAGE_THRESHOLD))


def _text_trigger_text(report: dict[str, Any]) -> str:
    lines = []
    for phase, scan in (("before", report.get("scan_before")), ("after", scan_after(report))):
        for trig in (scan or {}).get("triggers", []):
            tokens = trig.get("nearest_tokens")
            if trig.get("modality") != "text" or not tokens:
                continue
            words = " + ".join("/".join(_code(tok) for tok in row) for row in tokens)
            lines.append(f"- {phase} unlearning: toward **{trig['suspected_target']}** (score {trig['score']:.3f}), "
                         f"nearest vocabulary tokens {words}")
    for entry in report.get("rounds") or []:
        if entry.get("unlearned_trigger_words"):
            words = " ".join(_code(word) for word in entry["unlearned_trigger_words"])
            lines.append(f"- round {entry.get('round', '?')}: unlearned as the words {words}, inserted in captions")
    if not lines:
        return ""
    return "Text tower: the inverted caption trigger (a few inserted token vectors), shown by its nearest " \
           "vocabulary tokens:\n\n" + "\n".join(lines)


def _trace(report: dict[str, Any]) -> tuple[list[str], list[list[str]], bool]:
    rounds = list(report.get("rounds") or [])
    after = report.get("scan_after")
    final = (report.get("config") or {}).get("final_scan") and after
    metric_keys = [k for k in CARD_METRICS if k != "backdoor_score" and any(k in (r.get("metrics") or {})
                                                                           for r in rounds)]
    header = ["Round", "Step", "Backdoor score", "Suspected target", "Posterior", "Trigger size",
              *(CARD_METRICS[k][0] for k in metric_keys)]
    rows = []
    entries = [(str(r.get("round", i)), r.get("step"), r, r.get("metrics") or {}) for i, r in enumerate(rounds)]
    if final:
        metrics = {k: v for k, v in (report.get("metrics_after") or {}).items() if k != "backdoor_score"}
        entries.append(("end", report.get("steps"), after, metrics))
    for label, step, entry, metrics in entries:
        # A focused round re-inverts toward the round-0 target only: its score is that target's anomaly against
        # round 0's costs, and it has no posterior of its own.
        focused = any(t.get("focused") for t in entry.get("triggers") or [])
        posterior = "(fixed)" if focused else f"{entry.get('suspected_target_posterior', 0):.3f}"
        rows.append([
            label, "–" if step is None else str(step), f"{entry.get('backdoor_score', 0):.3f}",
            _cell(entry.get("suspected_target", "–")), posterior,
            _trigger_size(entry), *(_format(k, metrics.get(k)) for k in metric_keys),
        ])
    return header, rows, bool(metric_keys)


def _completeness(report: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """The retuning test (DESIGN §4), rendered from whatever numbers the report's ``completeness`` holds.

    Recognised keys: ``retuned_asr`` (ASR of the purified model after the retuning attack) and
    ``reference_retuned_asr`` (the same retuning on a model trained without poison); any others are listed too.
    """
    completeness = report.get("completeness")
    if not isinstance(completeness, dict) or not completeness:
        return "", []
    text = ("A backdoor that was only hidden comes back after a little poisoned fine-tuning. This test fine-tunes "
            "the purified model on a few poisoned pairs mixed with clean ones and measures the attack success rate "
            "afterwards, next to the same retuning of a model that never saw poison. Close values mean the removal "
            "is complete.")
    ours, ref = completeness.get("retuned_asr"), completeness.get("reference_retuned_asr")
    if _number(ours) and _number(ref):
        text += (f" Here: {_rate(ours)} for the purified model against {_rate(ref)} for the clean reference "
                 f"({100 * (ours - ref):+.2f} pt).")
    rows = []
    for key, value in completeness.items():
        rate = _number(value) and ("asr" in key or "accuracy" in key or "rate" in key)
        shown = _rate(value) if rate else (json.dumps(value) if isinstance(value, (dict, list)) else value)
        rows.append([_cell(key.replace("_", " ")), _cell(shown)])
    return text, rows


def _extrapolation_text(report: dict[str, Any]) -> str:
    alpha = (report.get("config") or {}).get("path_extrapolation", 1.0)
    if not alpha or alpha == 1 or len(report.get("rounds") or []) < 2:
        return ""
    return (
        f" Between rounds it moved the weights {alpha:g} times as far from the original along the path the unlearning "
        "had taken, and the next round restored the clean behaviour: unlearning that stays close to the original is "
        "undone by a few poisoned pairs."
    )


def _details(report: dict[str, Any]) -> list[list[str]]:
    config = report.get("config") or {}
    mode = report.get("mode")
    mode_text = f"LoRA (r={config.get('lora_r', '?')})" if mode == "lora" else "full fine-tuning"
    timing = report.get("timing") or {}
    rows = [
        ("Base model", _code(report.get("base_model"))),
        ("Backend", library_name(report)),
        ("Mode", mode_text),
        ("Seed", report.get("seed")),
        ("Clean pairs", report.get("num_clean_pairs")),
        ("Dataset", _code(report["dataset"]) if report.get("dataset") else None),
        ("EM rounds run / configured", f"{len(report.get('rounds') or [])} / {config.get('em_rounds', '?')}"),
        ("Optimisation steps", report.get("steps")),
        ("Processes", report.get("num_processes")),
        ("Stopped early", "yes" if report.get("stopped_early") else "no"),
        ("Final training loss", report.get("train_loss")),
        ("Wall time", f"{timing['total_seconds']:.1f} s" if "total_seconds" in timing else None),
        ("Purification time", f"{timing['purification_seconds']:.1f} s" if "purification_seconds" in timing
         else None),
        ("Trigger search time", f"{timing['e_step_seconds']:.1f} s" if "e_step_seconds" in timing else None),
        ("Unlearning time", f"{timing['m_step_seconds']:.1f} s" if "m_step_seconds" in timing else None),
    ]
    return [[name, _cell(value)] for name, value in rows if value is not None]


def _load_snippet(report: dict[str, Any], name: str) -> str:
    if report.get("backend") == "open_clip":
        return (
            "import open_clip\n\n"
            f'# "local-dir:{name}" for this folder, or "hf-hub:<repo id>" once it is on the Hub\n'
            f'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{name}")\n'
            f'tokenizer = open_clip.get_tokenizer("local-dir:{name}")'
        )
    return (
        "from transformers import CLIPModel, CLIPProcessor\n\n"
        f'model = CLIPModel.from_pretrained("{name}")  # this folder, or its Hub repo id\n'
        f'processor = CLIPProcessor.from_pretrained("{name}")'
    )


def _plot_links(plots: list[str] | None) -> dict[str, Any]:
    """Sort plot paths (relative to the card) into the card's places by their file names."""
    plots = [str(p).replace("\\", "/") for p in plots or []]
    image = [{"alt": f"Inverted image trigger ({Path(p).stem.removeprefix('trigger_image_')})", "path": p}
             for p in plots if Path(p).name.startswith("trigger_image_")]

    def named(file: str) -> str | None:
        return next((p for p in plots if Path(p).name == file), None)

    return {"image_plots": image, "text_plot": named("trigger_text.png"),
            "rounds_plot": named("rounds.png"), "similarity_plot": named("similarity_histograms.png")}


def _context(report: dict[str, Any], plots: list[str] | None, extra_command: str | None,
             section: bool) -> dict[str, Any]:
    name = model_name(report)
    rounds = len(report.get("rounds") or [])
    results_rows, metric_notes = _results(report)
    trace_header, trace_rows, trace_has_metrics = _trace(report)
    completeness_text, completeness_rows = _completeness(report)
    versions = report.get("versions") or {}
    return {
        "section": section,
        "h": "###" if section else "##",
        "title": f"{name}: backdoor removed with BI-BAU",
        "intro": _intro(report),
        "rounds_text": f"{rounds} round{'s' if rounds != 1 else ''}",
        "num_clean_pairs": report.get("num_clean_pairs", "?"),
        "dataset": report.get("dataset"),
        "searched": _searched(report),
        "mode_text": "through LoRA adapters, merged afterwards" if report.get("mode") == "lora" else "all weights",
        "extrapolation_text": _extrapolation_text(report),
        "timing_text": _timing_text(report),
        "results_rows": results_rows,
        "metric_notes": metric_notes,
        "target_text": _target_text(report),
        "text_trigger_text": _text_trigger_text(report),
        **_plot_links(plots),
        "trace_header": trace_header,
        "trace_rows": trace_rows,
        "trace_has_metrics": trace_has_metrics,
        "completeness_text": completeness_text,
        "completeness_rows": completeness_rows,
        "details_rows": _details(report),
        "versions_rows": [[_cell(k), _cell(v)] for k, v in versions.items()],
        "config_json": json.dumps(report.get("config") or {}, indent=2, default=str),
        "seed": report.get("seed"),
        "command": report.get("command"),
        "extra_command": extra_command,
        "library_text": "open_clip" if report.get("backend") == "open_clip" else "transformers",
        "load_snippet": _load_snippet(report, name),
    }


# ----------------------------------------------------------------------------------------------------- public
def render_model_card(
    report: dict[str, Any], plots: list[str] | None = None, extra_command: str | None = None
) -> ModelCard:
    """Render the model card of a purified model.

    Args:
        report: the unlearning report (``BIBAUTrainer.report`` or the parsed ``unlearning_report.json``).
        plots: PNG paths relative to the card (e.g. ``["plots/rounds.png"]``) to show in the card; each is placed by
            its file name, as written by :func:`~bibau_hf.reporting.write_plots`.
        extra_command: a second command shown after the reproduction command (e.g. how the model was pushed).

    Returns:
        The :class:`huggingface_hub.ModelCard`; ``card.save("README.md")`` writes it.
    """
    data = card_data(report)
    return ModelCard.from_template(data, template_path=str(TEMPLATE_PATH),
                                   **_context(report, plots, extra_command, section=False))


def render_report_section(
    report: dict[str, Any], plots: list[str] | None = None, extra_command: str | None = None
) -> str:
    """The card's body as one section (``## Backdoor removal with BI-BAU``), to insert into another card."""
    # Rendered with jinja2 directly (as ModelCard.from_template does): a header-less card would log a warning.
    import jinja2

    template = jinja2.Template(TEMPLATE_PATH.read_text(encoding="utf-8"))
    return template.render(**_context(report, plots, extra_command, section=True)).strip() + "\n"


def find_plots(output_dir: str | Path) -> list[str]:
    """The PNGs in ``output_dir/plots``, as card-relative paths, sorted."""
    folder = Path(output_dir) / PLOTS_DIR
    return [f"{PLOTS_DIR}/{p.name}" for p in sorted(folder.glob("*.png"))] if folder.is_dir() else []


def load_report(path: str | Path) -> dict[str, Any]:
    """A report from ``unlearning_report.json`` or from the folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no unlearning report at {path}")
    return json.loads(path.read_text())


def write_model_card(output_dir: str | Path, extra_command: str | None = None) -> Path:
    """Render ``README.md`` in ``output_dir`` from its ``unlearning_report.json`` and the plots found there.

    Args:
        output_dir: folder of the purified model.
        extra_command: see :func:`render_model_card`.

    Returns:
        The path of the written card.
    """
    output_dir = Path(output_dir)
    card = render_model_card(load_report(output_dir), find_plots(output_dir), extra_command)
    path = output_dir / CARD_FILE
    card.save(path)
    return path


__all__ = ["BIBAU_METRIC_TYPES", "CARD_FILE", "render_model_card", "render_report_section", "write_model_card"]
