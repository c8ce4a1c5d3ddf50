"""BI-BAU and its ablations, as overrides of one :class:`~bibau_hf.BIBAUConfig` (the method runs through
:class:`~bibau_hf.BIBAUTrainer`, exactly as a user would run it).

Each variant switches off one part of the method (DESIGN §3):

- ``bibau_no_text``: ``invert_towers="image"``: no soft-token text trigger, no text-branch unlearning term.
- ``bibau_no_target``: ``target_posterior=False``: no estimate of the latent target; every round unlearns the
  inverted triggers toward every candidate concept alike (a uniform posterior), with no push and no gating.
- ``bibau_no_prior``: ``prior_type="none"``: no distillation to the suspect model's clean embeddings.
- ``bibau_mask_only``: ``trigger_families=["mask"]``: the mask-and-pattern family alone (the default adds the warp).
- ``bibau_additive``: ``trigger_families=["additive"]``: the L∞ additive family alone.
- ``bibau_all_families``: ``trigger_families=["mask", "warp", "additive"]``: the additive family as well (not an
  ablation but an extension: it expresses global signals such as SIG).
- ``bibau_no_extrapolation``: ``path_extrapolation=1``: rounds start where the last one ended, with no step further
  from the suspect model.
- ``bibau_no_patch``: ``patch_completion=False``: a mask trigger that a few touching ViT cells hold is unlearned as
  re-inverted every round, not as completed cells (the default until the thirteenth session; docs/METHOD_NOTES.md
  §21, §23, §27).
- ``bibau_wide_warp``: ``warp_max_shift=0.25``: the warp family may move pixels twice as far, and its prior (relative
  to that bound) costs half as much per pixel (an extension, off by default; docs/METHOD_NOTES.md §24).
- ``bibau_periodic``: ``trigger_families=["mask", "warp", "periodic"]``: the dictionary of sinusoids as well (SIG on
  natural images; docs/METHOD_NOTES.md §25).
- ``bibau_uniform_ungated``: ``ungated_families="uniform"``: a family under its gates is unlearned toward its
  ``ungated_concepts`` likeliest concepts (a uniform posterior over them) instead of not at all; the families that
  pass are unlearned toward their target as by default (docs/METHOD_NOTES.md §28, §29).
- ``bibau_uniform_ungated_half``: the same at ``ungated_weight=0.5``: half the rows (text: half the loss weight) of
  a targeted family for each family under its gates (§29).
- ``bibau_uniform_if_none``: ``ungated_families="uniform_if_none_pass"``: the same hedge for every family, but only
  when no family passed its gates (the scan found nothing); otherwise as by default (§30).
- ``bibau_relearn_lookahead``: ``relearn_lookahead=0.05``: the unlearning terms' gradient is taken after a small
  weight step toward relearning the suspected backdoor (an extension, off by default; docs/METHOD_NOTES.md §33).

``bibau_lora`` trains LoRA adapters only, at learning rate 1e-3 (a rank-8
adapter at the full model's 1e-4 barely moves in 60 steps).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from bibau_hf.bibau_config import BIBAUConfig
from bibau_hf.bibau_trainer import BIBAUTrainer
from bibau_hf.data import ImageTextDataset
from bibau_hf.models import ContrastiveAdapter

VARIANTS: dict[str, dict[str, Any]] = {
    "bibau": {},
    "bibau_lora": {"use_lora": True, "learning_rate": 1e-3},
    "bibau_no_text": {"invert_towers": "image"},
    "bibau_no_target": {"target_posterior": False},
    "bibau_no_prior": {"prior_type": "none"},
    "bibau_mask_only": {"trigger_families": ["mask"]},
    "bibau_additive": {"trigger_families": ["additive"]},
    "bibau_no_extrapolation": {"path_extrapolation": 1.0},
    "bibau_all_families": {"trigger_families": ["mask", "warp", "additive"]},
    "bibau_no_patch": {"patch_completion": False},
    "bibau_wide_warp": {"warp_max_shift": 0.25},
    "bibau_periodic": {"trigger_families": ["mask", "warp", "periodic"]},
    "bibau_uniform_ungated": {"ungated_families": "uniform"},
    "bibau_uniform_ungated_half": {"ungated_families": "uniform", "ungated_weight": 0.5},
    "bibau_uniform_if_none": {"ungated_families": "uniform_if_none_pass"},
    "bibau_relearn_lookahead": {"relearn_lookahead": 0.05},
}
"""BIBAUConfig overrides per variant (on top of the benchmark's shared config)."""

ALIASES: dict[str, str] = {}
"""Variants that are the same run as another (their cell is computed once). None since the warp family joined the
default families: the mask-only row is now its own ablation."""


def variant_config(base: BIBAUConfig, variant: str, output_dir: str) -> BIBAUConfig:
    """A copy of ``base`` with the variant's overrides and its own output folder.

    Raises:
        KeyError: on an unknown variant.
    """
    if variant not in VARIANTS:
        raise KeyError(f"unknown BI-BAU variant {variant!r}; choose from {sorted(VARIANTS)}")
    # dataclasses.replace goes through __init__, so the variant is validated like any user config.
    return dataclasses.replace(base, **VARIANTS[variant], output_dir=output_dir)


def run_bibau(
    adapter: ContrastiveAdapter, data: ImageTextDataset, config: BIBAUConfig, base_model_name: str | None = None
) -> dict[str, Any]:
    """Purify ``adapter`` in place with BIBAUTrainer; returns the parts of its report the benchmark keeps."""
    started = time.time()
    trainer = BIBAUTrainer(adapter, config, data, base_model_name=base_model_name)
    trainer.train()
    report = trainer.report
    return {
        "seconds": time.time() - started,
        "e_step_seconds": report["timing"]["e_step_seconds"],
        "purification_seconds": report["timing"]["purification_seconds"],
        "mode": report["mode"],
        "suspected_target": report["suspected_target"],
        "score_before": report["metrics_before"].get("backdoor_score"),
        "score_after": report["metrics_after"].get("backdoor_score"),
        "steps": report["steps"],
        "stopped_early": report["stopped_early"],
        # What each round unlearned, and whether patch completion replaced a family's trigger: the cell's numbers
        # alone cannot tell a default-identical run from one where a decision changed.
        "rounds": [{"unlearned_targets": entry.get("unlearned_targets", {}),
                    "uniform_families": entry.get("uniform_families", []),
                    "hedged_concepts": entry.get("hedged_concepts", {}),
                    "patch_completed": {key: bool(info.get("completed"))
                                        for key, info in entry.get("patch_completion", {}).items()}}
                   for entry in report["rounds"]],
    }
