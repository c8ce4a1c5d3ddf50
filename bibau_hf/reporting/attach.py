"""Merge an unlearning report into an existing model card (another tool's), keeping everything it already says.

The card keeps its YAML metadata (license, language, custom keys, other ``model-index`` results) and its body. BI-BAU
adds its tags (deduplicated), its ``model-index`` results (replacing earlier BI-BAU ones, recognised by their metric
types), and one body section between HTML comment markers, replaced in place on later runs. Attaching the same
report twice gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from .model_card import (
    BIBAU_METRIC_TYPES,
    card_tags,
    eval_results,
    find_plots,
    load_report,
    model_name,
    render_report_section,
)

START_MARKER = "<!-- bibau:report:start -->"
END_MARKER = "<!-- bibau:report:end -->"


def _card_file(card: str | Path | ModelCard) -> Path | None:
    """The file ``card`` names, if it names one (card text, with its newlines, is never taken for a path)."""
    if isinstance(card, Path):
        return card
    if isinstance(card, str) and "\n" not in card and Path(card).is_file():
        return Path(card)
    return None


def _load_card(card: str | Path | ModelCard) -> ModelCard:
    """A copy of ``card``: a ModelCard, a README path, card text, or a Hub repo id."""
    if isinstance(card, ModelCard):
        return ModelCard(card.content)
    path = _card_file(card)
    if path is not None:
        return ModelCard(path.read_text(encoding="utf-8"))
    if "\n" in card or card.startswith("---"):
        return ModelCard(card)
    return ModelCard.load(card)  # a Hub repo id: fetch its README.md


def _report_and_plots(report: dict[str, Any] | str | Path, card_dir: Path | None) -> tuple[dict[str, Any], list[str]]:
    """The report, and its plots when the card is written into the report's folder (links are card-relative)."""
    if isinstance(report, dict):
        return report, []
    path = Path(report)
    folder = path if path.is_dir() else path.parent
    plots = find_plots(folder) if card_dir is not None and card_dir.resolve() == folder.resolve() else []
    return load_report(path), plots


def replace_section(text: str, section: str) -> str:
    """``text`` with the marked BI-BAU section replaced by ``section``, or with it appended when there is none."""
    block = f"{START_MARKER}\n{section.strip()}\n{END_MARKER}"
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start != -1 and end > start:
        return text[:start] + block + text[end + len(END_MARKER):]
    return f"{text.rstrip()}\n\n{block}\n" if text.strip() else f"{block}\n"


def attach_report(
    card: str | Path | ModelCard,
    report: dict[str, Any] | str | Path,
    output_path: str | Path | None = None,
) -> ModelCard:
    """Add an unlearning report to an existing model card without losing any of its content or metadata.

    Args:
        card: the card: a :class:`huggingface_hub.ModelCard`, a path to its ``README.md``, its text, or a Hub repo
            id (fetched).
        report: the report dict, or the path of ``unlearning_report.json`` (or of its folder). With a path, and a card
            written into that same folder, the plots under ``plots/`` are linked from the section.
        output_path: where to write the merged card; ``None`` writes nothing.

    Returns:
        The merged card (the input card object is not modified).
    """
    merged = _load_card(card)
    source = _card_file(card)
    card_dir = Path(output_path).parent if output_path is not None else (source.parent if source else None)
    report, plots = _report_and_plots(report, card_dir)

    data = merged.data
    data.tags = list(dict.fromkeys([*(data.tags or []), *card_tags(report)]))
    ours = eval_results(report)
    kept = [r for r in data.eval_results or [] if r.metric_type not in BIBAU_METRIC_TYPES]
    if ours or kept:
        data.eval_results = kept + ours
        # model-index needs a name; an existing one (the card's own model) wins.
        data.model_name = data.model_name or model_name(report)
    else:
        data.eval_results = None
    merged.text = replace_section(merged.text, render_report_section(report, plots))
    if output_path is not None:
        merged.save(output_path)
    return merged


__all__ = ["END_MARKER", "START_MARKER", "attach_report", "replace_section"]
