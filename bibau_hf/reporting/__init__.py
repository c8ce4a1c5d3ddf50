"""What a purified model ships with: inverted triggers, plots, and its model card (DESIGN §5, report out)."""

from .artifacts import save_trigger_artifacts
from .attach import attach_report
from .model_card import render_model_card, write_model_card
from .plots import write_plots

__all__ = ["attach_report", "render_model_card", "save_trigger_artifacts", "write_model_card", "write_plots"]
