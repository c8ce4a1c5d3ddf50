"""BIBAUTrainer: BI-BAU's EM loop on top of ``transformers.Trainer`` (DESIGN §3).

Each of ``em_rounds`` rounds starts with an E-step (blind inversion of image and text triggers on the current
model, target posterior, backdoor score) and continues with M-steps (Trainer's own optimisation loop) on

    L = w_c · L_clip(x, c)                      clean retention
      + α   · L_clip(T(x), c)                   triggered images keep their own captions      (C1 + C2)
      + α_t · L_clip(x, T(c))                   triggered captions keep their own images
      + β   · [cos(f(T(x)), z_q) − cos(f(T(x)), f(c))]₊   away from the suspected target, relative to the own caption
      + γ   · R(θ, θ_bd)                        prior: distillation of clean embeddings, or L2 to the weights (C3)
      + λ_inv · Σ_blocks ‖h_cls(T(x)) − h_cls^bd(x)‖²   the trigger's features go, not only their mapping

Round 0's E-step searches every candidate concept on the suspect model and fixes the latent target; later rounds
re-invert the trigger toward it on the current model.

Nothing here knows the attack. An optional ``evaluator`` callable (the recipe builds one from a labelled set and,
where known, the real trigger) only *measures* the model before, between and after rounds.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import HubStrategy, SaveStrategy
from transformers.utils import PushInProgress

from . import __version__
from .bibau_config import BIBAUConfig
from .data.image_text import ImageTextDataset
from .errors import BIBAUError
from .hub import (
    MODEL_CARD,
    check_native_folder,
    collect_push_files,
    commit_files,
    create_repo,
    default_api,
    push_output_dir,
)
from .inversion import (
    AdditiveTrigger,
    BlindInverter,
    InvertedTrigger,
    MaskPatternTrigger,
    PeriodicTrigger,
    ScanResult,
    WarpTrigger,
    passes_gates,
    text_vetoed_families,
)
from .inversion.blind_inversion import concept_embeddings
from .inversion.distributed import (
    all_gather_with_grad,
    average_over_ranks,
    broadcast_from_main,
    is_distributed,
    mean_over_ranks,
)
from .inversion.text_trigger import decode_token_ids, nearest_vocabulary_ids
from .models.base import ContrastiveAdapter
from .reference_outputs import ReferenceOutputCache
from .reporting import save_trigger_artifacts, write_model_card, write_plots
from .reporting.artifacts import similarity_sample, trigger_similarities

logger = logging.getLogger(__name__)

REPORT_FILE = "unlearning_report.json"
SIMILARITY_IMAGES = 256
TRAINER_STATE_FILE = "trainer_state.json"
# Every linear layer of attention and MLP on HF: with q and v only, a rank-8 adapter left WaNet at 12 % and SIG at
# 15 %, and the retuning attack re-linked BadNets at 64 % (docs/METHOD_NOTES.md §16). open_clip's attention is
# torch's nn.MultiheadAttention, whose forward reads its projection weights directly rather than calling them as
# layers, so a LoRA layer wrapped around them would not act; only its MLP is adapted.
DEFAULT_LORA_TARGETS = {
    "hf": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "open_clip": ["c_fc", "c_proj"],
}
Evaluator = Callable[[ContrastiveAdapter], dict[str, float]]


# The M-step's terms that unlearn (taken at the relearning-shifted weights with ``relearn_lookahead``) and those that
# keep the clean task.
UNLEARNING_TERMS = frozenset({"trigger_image", "push", "trigger_text", "invariance"})
KEEPING_TERMS = frozenset({"clean", "prior"})


def distributed_clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor):
    """CLIP loss whose negatives come from every rank (embeddings gathered with gradients, open_clip style).

    With one process it is the plain symmetric InfoNCE; with W processes of batch B it equals the one-process loss
    on the W·B batch once DDP averages the gradients.
    """
    all_images = all_gather_with_grad(image_embeds)
    all_texts = all_gather_with_grad(text_embeds)
    offset = 0
    if is_distributed():
        offset = torch.distributed.get_rank() * image_embeds.shape[0]
    targets = torch.arange(image_embeds.shape[0], device=image_embeds.device) + offset
    logits_per_image = logit_scale * image_embeds @ all_texts.t()
    logits_per_text = logit_scale * text_embeds @ all_images.t()
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


class ContrastiveCollator:
    """Batches ``ImageTextDataset`` items: float images in [0, 1] and padded token ids (on CPU)."""

    def __init__(self, adapter: ContrastiveAdapter) -> None:
        self.adapter = adapter

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixel_values = torch.stack([f["pixel_values"] for f in features]).float() / 255.0
        input_ids = self.adapter.tokenize([f["caption"] for f in features]).cpu()
        batch = {"pixel_values": pixel_values, "input_ids": input_ids}
        if all("index" in f for f in features):
            batch["index"] = torch.tensor([f["index"] for f in features])
        return batch


class _StopWhenCleanCallback(TrainerCallback):
    """Ends training once an E-step finds the backdoor score below ``stop_score``."""

    def __init__(self, trainer: BIBAUTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.stop_requested:
            control.should_training_stop = True
        return control


def _roll_rows(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``torch.roll`` of each image ``[n, C, H, W]`` by its own ``(dy, dx)`` (``shifts`` ``[n, 2]``).

    A loop of rolls: on CPU it is an order of magnitude faster than one gather with per-row indices."""
    return torch.stack([torch.roll(image, (dy, dx), (1, 2)) for image, (dy, dx) in zip(images, shifts.tolist())])


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the result."""
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "bibau_hf": __version__}
    for name in ("torch", "transformers", "open_clip_torch", "peft", "accelerate", "datasets", "huggingface_hub"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _log_push_failure(job) -> None:
    """Background pushes have no caller to raise to: say when one failed."""
    if not job.cancelled() and job.exception() is not None:
        logger.warning("a checkpoint push to the Hub failed: %s", job.exception())


class BIBAUTrainer(Trainer):
    """Removes backdoors from a CLIP-like model with BI-BAU.

    Args:
        model: the suspect model, wrapped in its adapter (:func:`bibau_hf.models.load_adapter`).
        args: a :class:`BIBAUConfig`.
        train_dataset: the defender's clean image-caption pairs.
        evaluator: optional ``adapter -> {metric: value}`` measured before training, after every round and at the end
            (e.g. clean accuracy; ASR where the trigger is known). It never influences training.
        base_model_name: name or path of the suspect model, for the report.
        callbacks: extra Trainer callbacks.
        **kwargs: passed to ``transformers.Trainer``.
    """

    def __init__(
        self,
        model: ContrastiveAdapter,
        args: BIBAUConfig,
        train_dataset: ImageTextDataset,
        evaluator: Evaluator | None = None,
        base_model_name: str | None = None,
        callbacks: list[TrainerCallback] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, ContrastiveAdapter):
            raise BIBAUError(
                f"BIBAUTrainer needs a ContrastiveAdapter (use bibau_hf.models.load_adapter), got {type(model)}"
            )
        if not isinstance(args, BIBAUConfig):
            raise BIBAUError("args must be a BIBAUConfig")
        if not isinstance(train_dataset, ImageTextDataset):
            raise BIBAUError("train_dataset must be an ImageTextDataset of clean image-caption pairs")
        world = max(1, args.world_size)
        if len(train_dataset) < args.per_device_train_batch_size * world:
            raise BIBAUError(
                f"{len(train_dataset)} clean pairs are too few for one batch of {args.per_device_train_batch_size} "
                f"per device on {world} device(s); give more clean data or lower --per_device_train_batch_size"
            )
        if args.invariance_weight > 0 and args.invert_image and not model.vision_blocks:
            raise BIBAUError(
                f"invariance_weight > 0 needs a transformer vision tower, and this {model.backend} model has none "
                "(e.g. a ResNet tower); pass --invariance_weight 0"
            )
        self.adapter = model
        self.evaluator = evaluator
        self.base_model_name = base_model_name
        self.stop_requested = False
        self._lora = False
        if args.use_lora:
            self._attach_lora(model, args)
        self.reference: ContrastiveAdapter | None = None
        self._anchor: dict[str, torch.Tensor] = {}
        if args.prior_type == "distill" and not args.use_lora:
            # Full fine-tuning needs a frozen copy of the suspect model; with LoRA the base with the adapter
            # disabled is that copy, for free.
            self.reference = copy.deepcopy(model).eval()
            self.reference.requires_grad_(False)
        elif (args.prior_type == "l2" or args.path_extrapolation != 1) and not args.use_lora:
            self._anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        super().__init__(
            model=model, args=args, train_dataset=train_dataset, data_collator=ContrastiveCollator(model),
            callbacks=callbacks, **kwargs,
        )
        self.add_callback(_StopWhenCleanCallback(self))
        if self.reference is not None:
            self.reference.to(self.args.device)
        self._reference_cache: ReferenceOutputCache | None = None
        if args.cache_reference_outputs and (self.reference is not None or self._lora):
            self._reference_cache = ReferenceOutputCache(
                len(train_dataset), lambda pixels, ids: self._suspect_outputs(pixels, ids, self._wants_class_states)
            )
        self._anchor = {n: t.to(self.args.device) for n, t in self._anchor.items()}
        inversion = args.inversion_config(progress=self.is_world_process_zero())
        # Ranks draw different inversion batches; averaged gradients keep the trigger identical on all of them.
        inversion.seed = args.seed + 9973 * self.args.process_index
        self.inverter = BlindInverter(
            model, train_dataset.images, train_dataset.captions, inversion, args.concept_names or None
        )
        self.scans: list[ScanResult] = []
        self.final_scan: ScanResult | None = None
        self.trace: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {}
        self._round = -1
        # "modality/family" -> (round-0 score, its target, its confidence gap)
        self._targets: dict[str, tuple[float, str, float]] = {}
        self._likeliest: dict[str, list[str]] = {}  # per family, its round-0 concepts by anomaly, likeliest first
        self._image_triggers: list = []
        self._soft_tokens: torch.Tensor | None = None
        self._trigger_word_ids: torch.Tensor | None = None  # the soft tokens' vocabulary ids, when they are words
        self._target_directions: torch.Tensor | None = None
        self._pushed: torch.Tensor | None = None  # which image triggers the push term applies to (targeted ones)
        self._loss_terms: frozenset[str] | None = None  # the terms compute_loss sums (None: all)
        self._trigger_slots: list[list[int]] | None = None  # triggers sharing one slot of rows (_trigger_owner)
        self._slot_weights: list[float] | None = None  # the slots' shares of the rows, where they differ
        self._text_weight = 1.0  # the text trigger's loss weight relative to trigger_text_weight
        # "modality/family" -> the patches completed so far, and what this round's completion found
        self._patches: dict[str, list[MaskPatternTrigger]] = {}
        self._patch_info: dict[str, dict[str, Any]] = {}
        self._metrics: dict[str, list[float]] = defaultdict(list)
        # Purification (E- and M-steps) is timed apart from what only the report needs (per-round evaluation,
        # histograms, the final scan), so that its cost compares with plain fine-tuning's.
        self._timing = {"e_step_seconds": 0.0, "report_seconds": 0.0}
        self._similarity: dict[str, Any] = {}
        self._similarity_trigger: InvertedTrigger | None = None

    # ------------------------------------------------------------------------------------------------- LoRA
    def _attach_lora(self, adapter: ContrastiveAdapter, args: BIBAUConfig) -> None:
        from peft import LoraConfig, get_peft_model

        targets = args.lora_target_modules or DEFAULT_LORA_TARGETS[adapter.backend]
        config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                            target_modules=targets)
        try:
            # The adapter's initialisation draws from the RNG before Trainer.__init__ seeds it: seed it from
            # args.seed here, or a LoRA run depends on whatever drew random numbers before it.
            with torch.random.fork_rng():
                torch.manual_seed(args.seed)
                adapter.model = get_peft_model(adapter.model, config)
        except ValueError as err:
            raise BIBAUError(f"could not attach LoRA to modules {targets}: {err}") from err
        self._lora = True

    @property
    def _wants_class_states(self) -> bool:
        return self.args.invariance_weight > 0 and self.args.invert_image

    def _reference_outputs(
        self, inputs: dict[str, torch.Tensor], class_token_states: bool = False
    ) -> dict[str, torch.Tensor] | None:
        """The suspect model's outputs on the batch's clean pairs: from the per-pair cache where there is one (the
        clean inputs and the suspect model never change), else computed now."""
        if self._reference_cache is not None and "index" in inputs:
            return self._reference_cache(inputs["index"], inputs["pixel_values"], inputs["input_ids"])
        return self._suspect_outputs(inputs["pixel_values"], inputs["input_ids"], class_token_states)

    def _suspect_outputs(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, class_token_states: bool = False
    ) -> dict[str, torch.Tensor] | None:
        """The suspect model's outputs on clean inputs (the base with LoRA disabled, or the frozen copy); ``None``
        when the run keeps no reference (full fine-tuning with an ``l2``/``none`` prior)."""
        with torch.no_grad():
            if self._lora:
                with self.adapter.model.disable_adapter():
                    return self.adapter(pixel_values, input_ids, class_token_states=class_token_states)
            if self.reference is None:
                return None
            return self.reference(pixel_values, input_ids, class_token_states=class_token_states)

    # ----------------------------------------------------------------------------------------------- E-step
    def _rounds_length(self) -> int:
        return max(1, math.ceil(self.state.max_steps / self.args.em_rounds))

    def _e_step(self, round_index: int) -> None:
        started = time.time()
        previous = self.scans[-1].triggers if self.scans else None
        if not self.scans:
            result = self.inverter.run()
            self._set_targets(result)
        elif not self.args.target_posterior:
            result = self.inverter.run(previous=previous)
        else:
            # The latent target was estimated on the unmodified model; later rounds only re-invert the trigger
            # toward it on the current model (its anomalies there are partly our own unlearning's doing), and a
            # family under its gates toward the concepts it is unlearned toward.
            focus = {key: [t] for key in self._targets if (t := self._unlearning_target(key)) is not None}
            focus.update({key: self._hedged_concepts(key) or self._likeliest[key] for key in self._uniform_families()})
            result = self.inverter.run(previous=previous, focus=focus)
        self._timing["e_step_seconds"] += time.time() - started
        self.scans.append(result)
        if self.args.target_posterior:
            self._unlearn_toward_targets(result)
        else:
            self._unlearn_every_concept(result)
        self._share_unlearning_state()
        self._trigger_word_ids = self._vocabulary_ids(self._soft_tokens) if self.args.text_trigger_as_word else None
        tracked = self._tracked_score(result)
        entry = {"round": round_index, "step": self.state.global_step, **result.to_dict(),
                 "tracked_targets": {key: t for key, (_, t, _) in self._targets.items()},
                 "unlearned_targets": {key: t for key in self._targets if (t := self._unlearning_target(key))},
                 "text_vetoed": self._text_vetoed(),
                 "uniform_families": self._uniform_families(),
                 "hedged_concepts": {key: self._hedged_concepts(key) for key in self._uniform_families()},
                 "tracked_score": round(tracked, 3)}
        if self._patch_info:
            entry["patch_completion"] = dict(self._patch_info)
        if self._trigger_word_ids is not None:
            entry["unlearned_trigger_words"] = decode_token_ids(self.adapter, [self._trigger_word_ids.tolist()])[0]
        started = time.time()
        if self.evaluator is not None:
            entry["metrics"] = self.evaluator(self.adapter)
        self.trace.append(entry)
        if round_index == 0:
            self._record_similarity("before", result, "inverted before unlearning")
        self._timing["report_seconds"] += time.time() - started
        if self.args.stop_score > 0 and round_index >= 1 and tracked < self.args.stop_score:
            self.stop_requested = True

    def _record_similarity(self, phase: str, result: ScanResult | None, source: str) -> None:
        """Cosines of clean vs triggered images to the suspected image target, for the report's histograms.

        ``before`` (round 0) uses the strongest image trigger and fixes the target and family. ``after`` uses the
        trigger of that family re-inverted toward that same target by ``result`` (a later scan) where it was swept,
        else the round-0 trigger, so both histograms answer the same question. One no-grad pass over a fixed seeded
        sample; process 0 only.
        """
        if not self.is_world_process_zero():
            return
        if phase == "before":
            image = result.image_triggers() if result is not None else []
            if not image:
                return
            best = max(image, key=lambda t: t.score)
            self._similarity_trigger = best
            self._similarity = {"target": best.suspected_target, "family": best.family}
            trigger = best.trigger
            embedding = self.inverter.concept_emb[result.candidates.index(best.suspected_target)]
        else:
            first = self._similarity_trigger
            if first is None:
                return
            same = next((t for t in result.image_triggers() if t.family == first.family), None) if result else None
            renewed = same.trigger_for(first.suspected_target) if same is not None else None
            trigger = renewed or first.trigger
            if renewed is None:
                source = "inverted before unlearning"
            # The inverter's concept embeddings may predate the last optimisation steps: embed the target afresh.
            embedding = concept_embeddings(self.adapter, [first.suspected_target], self.inverter.templates)[0]
        images = similarity_sample(self.train_dataset.images, SIMILARITY_IMAGES, self.args.seed)
        self._similarity[phase] = {"trigger": source, **trigger_similarities(self.adapter, images, trigger, embedding)}

    def _uniform_families(self) -> list[str]:
        """The families unlearned under a uniform target posterior: with ``ungated_families="uniform"``, those whose
        round-0 score stayed under their gates; with ``"uniform_if_none_pass"``, every family, but only when none
        passed its gates (none without ``target_posterior``: then every family is)."""
        if self.args.ungated_families == "skip" or not self.args.target_posterior:
            return []
        ungated = [key for key in self._targets if self._unlearning_target(key) is None]
        if self.args.ungated_families == "uniform_if_none_pass" and len(ungated) < len(self._targets):
            return []
        return ungated

    def _unlearn_toward_targets(self, result: ScanResult) -> None:
        """The M-step's triggers: each family's inverted trigger toward that family's round-0 target (none from a
        family below its tower's unlearning threshold), and each image trigger's target direction for the push.

        Families keep their own targets: on WaNet the mask family's cheapest concept is a natural shortcut ("two")
        while the warp family finds the real target, and one target per tower chosen by the higher score followed
        whichever family the noise favoured. A family that ``ungated_families`` hedges (:meth:`_uniform_families`)
        is unlearned toward its ``ungated_concepts`` likeliest concepts instead (its sweep's triggers for them,
        re-inverted toward them each round), with no push: a missed target estimate then still leaves the M-step
        data that activates the backdoor, as long as the target is among those concepts.
        """
        self._image_triggers, directions, pushed, slots, hedged = [], [], [], [], []
        self._patch_info = {}
        uniform = set(self._uniform_families())
        for trig in result.image_triggers():
            target = self._unlearning_target(trig.key)
            if target is not None:
                triggers = [trig.trigger_for(target) or trig.trigger]
                if self.args.completes_patches and isinstance(triggers[0], MaskPatternTrigger):
                    triggers = self._completed_patches(trig.key, triggers[0], target) or triggers
                direction = self.inverter.concept_emb[result.candidates.index(target)]
                push = True
            elif trig.key in uniform:
                triggers = self._every_concepts_trigger(trig, self._hedged_concepts(trig.key))
                direction, push = torch.zeros_like(self.inverter.concept_emb[0]), False
            else:
                continue
            first = len(self._image_triggers)
            indices = list(range(first, first + len(triggers)))
            slots.extend([indices] if trig.key in uniform else [[k] for k in indices])
            hedged.extend([True] if trig.key in uniform else [False] * len(indices))
            self._image_triggers.extend(triggers)
            directions.extend([direction] * len(triggers))
            pushed.extend([push] * len(triggers))
        self._trigger_slots = slots if any(len(slot) > 1 for slot in slots) else None
        # A family under its gates probably holds no backdoor: ungated_weight is its share of the rows against a
        # targeted family's (their own triggers' share of the batch when no family is targeted; the rest stay clean).
        self._slot_weights = None
        if any(hedged) and self.args.ungated_weight != 1:
            self._trigger_slots = slots
            self._slot_weights = [self.args.ungated_weight if h else 1.0 for h in hedged]
        self._target_directions, self._pushed = None, None
        if any(pushed) and self.args.push_weight > 0:
            self._target_directions = torch.stack(directions).to(self.args.device)
            self._pushed = torch.tensor(pushed, device=self.args.device)
        text = result.text_triggers()
        self._soft_tokens, self._text_weight = None, 1.0
        target = self._unlearning_target(text[0].key) if text else None
        if text and text[0].key in uniform:
            self._text_weight = self.args.ungated_weight
            rows = text[0].sweep_rows(self._hedged_concepts(text[0].key))
            self._soft_tokens = text[0].sweep.tokens[rows].detach().clone()  # one set per concept
        if target is not None:
            chosen = text[0].trigger_for(target) or text[0].trigger
            self._soft_tokens = chosen.tokens[0].detach().clone()
            if self.args.text_trigger_as_word and self._vocabulary_ids(self._soft_tokens) is not None:
                self._soft_tokens = self.inverter.extend_trigger_words(
                    self._soft_tokens, target, self.args.num_soft_tokens)

    def _completed_patches(self, key: str, trigger: MaskPatternTrigger, target: str) -> list[MaskPatternTrigger]:
        """The family's completed patches (METHOD_NOTES §21), unlearned in place of its re-inverted trigger.

        A family is a patch if its round-0 trigger is held by a few cells. Then every round's re-inverted trigger is
        completed on the current model where it still is a patch, and every patch completed so far is unlearned: once
        the patch no longer fires, re-inversion drifts onto the target's natural features, and the patches found
        before stay what is unlearned. A family that is not a patch at round 0 is never completed (a blend whose
        later re-inversion happened to shrink into a few cells needs that re-inversion unlearned). Empty then.
        """
        if self._patches.get(key) == []:
            return []
        started = time.time()
        patch, self._patch_info[key] = self.inverter.complete_patch(
            trigger, target, max_cells=self.args.patch_max_cells, steps=self.args.patch_completion_steps)
        self._timing["e_step_seconds"] += time.time() - started
        self._patches.setdefault(key, []).extend([patch] if patch is not None else [])
        return self._patches[key]

    def _unlearn_every_concept(self, result: ScanResult) -> None:
        """The no-posterior ablation: unlearn the sweep's trigger toward *every* candidate concept alike (a uniform
        posterior over the latent target), with no push and no gating by the score."""
        self._image_triggers = [t for trig in result.image_triggers() for t in self._every_concepts_trigger(trig)]
        text = result.text_triggers()
        self._soft_tokens = text[0].sweep.tokens.detach().clone() if text else None  # one set per concept
        self._target_directions, self._pushed, self._trigger_slots, self._slot_weights = None, None, None, None

    def _hedged_concepts(self, key: str) -> list[str] | None:
        """The concepts a family under its gates is unlearned toward: its ``ungated_concepts`` likeliest at round 0
        (``None``: every swept concept)."""
        k = self.args.ungated_concepts
        return self._likeliest[key][:k] if k and key in self._likeliest else None

    @staticmethod
    def _every_concepts_trigger(trig: InvertedTrigger, concepts: list[str] | None = None) -> list:
        """A family's sweep as one trigger per swept concept (the image side of a uniform target posterior), or
        per concept of ``concepts``."""
        return [trig.sweep.select([i]) for i in trig.sweep_rows(concepts)]

    def _share_unlearning_state(self) -> None:
        """Every rank unlearns process 0's triggers (ranks invert on different batches and from different starts,
        so theirs differ); they travel through the CPU."""
        if not is_distributed():
            return
        device = self.args.device
        triggers, soft, directions, pushed, self._trigger_slots, self._slot_weights = broadcast_from_main((
            [t.cpu() for t in self._image_triggers],
            None if self._soft_tokens is None else self._soft_tokens.cpu(),
            None if self._target_directions is None else self._target_directions.cpu(),
            None if self._pushed is None else self._pushed.cpu(),
            self._trigger_slots,
            self._slot_weights,
        ))
        self._image_triggers = [t.to(device) for t in triggers]
        self._soft_tokens = None if soft is None else soft.to(device)
        self._target_directions = None if directions is None else directions.to(device)
        self._pushed = None if pushed is None else pushed.to(device)

    def _vocabulary_ids(self, tokens: torch.Tensor | None) -> torch.Tensor | None:
        """The token ids whose current embeddings the soft tokens ``[k, width]`` are, or None if any is not one
        (a continuous inversion's vectors, or one set per concept)."""
        if tokens is None or tokens.dim() != 2:
            return None
        ids, distances = nearest_vocabulary_ids(self.adapter, tokens)
        exact = distances <= 1e-6 * self.adapter.token_embedding_weight().norm(dim=-1).median()
        return ids if bool(exact.all()) else None

    def _set_targets(self, result: ScanResult) -> None:
        """Per trigger family, the MAP latent target of the suspect model's scan and its anomaly score."""
        for trig in result.triggers:
            self._targets[trig.key] = (trig.score, trig.suspected_target, trig.confidence_gap)
            self._likeliest[trig.key] = trig.likeliest
        self._targets, self._likeliest = broadcast_from_main((self._targets, self._likeliest))

    def _unlearning_target(self, key: str) -> str | None:
        """The family's (``"modality/family"``) round-0 target, if it passed its gates (:meth:`_gated_target`) and,
        with ``text_target_veto``, no passing text family names another concept (else nothing to unlearn there:
        inverting a clean tower only finds natural shortcuts, and unlearning those costs accuracy)."""
        target = self._gated_target(key)
        return None if target is not None and key in self._text_vetoed() else target

    def _text_vetoed(self) -> dict[str, str]:
        """The image families a passing text family overrules (:func:`~bibau_hf.inversion.text_vetoed_families`);
        none without ``text_target_veto`` or with a text gate of 0, which every text family passes (no evidence)."""
        if not self.args.text_target_veto:
            return {}
        return text_vetoed_families({key: self._gated_target(key) for key in self._targets},
                                    text_threshold=self.args.text_unlearn_threshold)

    def _gated_target(self, key: str) -> str | None:
        """The family's round-0 target, if its anomaly reached its tower's unlearning threshold and, for an image
        family, its confidence gap passed ``confidence_gap_threshold``."""
        score, target, gap = self._targets.get(key, (0.0, None, math.nan))
        # An image trigger must also carry its images onto the target as firmly as the target's own images lie
        # there: a natural shortcut crosses the score gate too, but only reaches the target's border.
        modality, family = key.split("/", 1)
        passed = passes_gates(modality, score, gap, threshold=self.args.unlearn_threshold,
                              text_threshold=self.args.text_unlearn_threshold,
                              max_confidence_gap=self.args.confidence_gap_threshold, family=family,
                              periodic_threshold=self.args.periodic_unlearn_threshold)
        return target if passed else None

    def _tracked_score(self, result: ScanResult) -> float:
        """How anomalous the tracked targets still are on the current model (the early-stop criterion)."""
        uniform = self._uniform_families()  # re-swept for the M-step; their round-0 targets are not tracked
        scores = [t.anomaly.get(self._targets[key][1], 0.0) for t in result.triggers
                  if (key := t.key) in self._targets and key not in uniform]
        return max(scores, default=0.0)

    def _trigger_owner(self, batch: int) -> torch.Tensor:
        """Which inverted image trigger each triggered row carries: with ``batch_per_trigger`` each slot has a
        whole copy of the batch, else the slots take turns over the batch's rows (rotating across steps).

        A slot is one trigger, or a uniform family's triggers for its concepts (``_trigger_slots``), which take
        turns within the slot's rows: ten concepts' triggers must not take ten times the rows of a targeted one
        (they did, and a BadNets plant that the targeted trigger had removed kept 68 % ASR).

        With ``_slot_weights`` (``ungated_weight`` < 1) the slots' row counts follow their weights, and where the
        largest weight is under 1 only that fraction of the rows is triggered; the others are ``-1`` (left clean).
        """
        slots = self._trigger_slots or [[k] for k in range(len(self._image_triggers))]
        step = self.state.global_step
        if self.args.batch_per_trigger:
            return torch.tensor([slot[step % len(slot)] for slot in slots]).repeat_interleave(batch)
        if self._slot_weights is not None:
            return self._weighted_owner(slots, self._slot_weights, batch, step)
        rows = torch.arange(batch) + step
        slot_of, turn = rows % len(slots), rows // len(slots) + step
        return torch.tensor([slots[s][t % len(slots[s])] for s, t in zip(slot_of.tolist(), turn.tolist())])

    def _targeted_rows(self, batch: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_trigger_owner` on ``device``, and which triggered rows carry a targeted trigger: a uniform family's
        rows have no target (to push away from, or to relearn toward), and untriggered rows no trigger."""
        owner = self._trigger_owner(batch).to(device)
        keep = owner >= 0
        if self._pushed is not None:
            keep &= self._pushed[owner.clamp(min=0)]
        return owner, keep

    @staticmethod
    def _weighted_owner(slots: list[list[int]], weights: list[float], batch: int, step: int) -> torch.Tensor:
        """``_trigger_owner`` with weighted slots: ``max(weights) × batch`` rows are triggered, shared among the slots
        in proportion to their weights (largest remainders, ties rotating with ``step``); within a slot the triggers
        take turns, rotating with ``step``. Untriggered rows are ``-1``."""
        triggered = round(batch * max(weights))
        share = torch.tensor(weights, dtype=torch.float64) / sum(weights) * triggered
        counts = share.floor().long()
        order = sorted(range(len(slots)), key=lambda s: (-(share[s] - counts[s]).item(), (s - step) % len(slots)))
        for s in order[: triggered - int(counts.sum())]:
            counts[s] += 1
        owner = []
        for s, slot in enumerate(slots):
            owner.extend(slot[(t + step) % len(slot)] for t in range(int(counts[s])))
        return torch.tensor(owner + [-1] * (batch - len(owner)), dtype=torch.long)

    def training_step(self, model, inputs, num_items_in_batch=None):
        round_index = self.state.global_step // self._rounds_length()
        if round_index != self._round:
            # Only after a round this trainer ran (a run resumed mid-way was extrapolated before its checkpoint),
            # and only if that round unlearned something: else its path is clean fine-tuning drift, and stepping
            # further along it cost 2.6 CA points on a model whose families were all under their gates.
            unlearned = bool(self._image_triggers) or self._soft_tokens is not None
            if self._round >= 0 and self.args.path_extrapolation != 1 and unlearned:
                self._extrapolate(self.args.path_extrapolation)
            self._round = round_index
            self._e_step(round_index)
            model.train()
        if self.args.relearn_lookahead > 0 and self._target_directions is not None:
            shift = self._relearning_shift(inputs)
            if shift is not None:
                return self._lookahead_training_step(model, inputs, num_items_in_batch, *shift)
        return super().training_step(model, inputs, num_items_in_batch)

    def _lookahead_training_step(self, model, inputs, num_items_in_batch, params, delta):
        """One M-step whose unlearning terms' gradient is taken at θ + δ (``delta``, from :meth:`_relearning_shift`)
        and whose clean and prior terms' gradient is taken at θ; the two backward passes add up in ``.grad``.

        The clean and prior terms stay at θ because their gradient at θ + δ mostly undoes δ: a pull away from the
        relearning direction at every step, which cost 12-26 CA points on WaNet when every term was shifted
        (docs/METHOD_NOTES.md §33).
        """
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]  # restored exactly: (θ + δ) − δ would round
            torch._foreach_add_(params, delta)
        try:
            self._loss_terms = UNLEARNING_TERMS
            unlearning = super().training_step(model, inputs, num_items_in_batch)
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)
        try:
            self._loss_terms = KEEPING_TERMS
            return unlearning + super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._loss_terms = None

    def _relearning_shift(
        self, inputs: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The weight step of length ``relearn_lookahead`` that most helps a retuning attacker: the normalised
        descent direction of the loss that maps the targeted triggers' images to their suspected targets.

        The M-step's gradient is then taken at the shifted weights (sharpness-aware minimisation with the attacker
        as the adversary), so that the unlearning still holds after a small step toward relearning. Computed on the
        unwrapped model and averaged over ranks by hand, so that every rank shifts its weights identically.
        """
        triggered = self._triggered_images(inputs["pixel_values"])
        if triggered is None:
            return None
        owner, keep = self._targeted_rows(inputs["input_ids"].shape[0], self._target_directions.device)
        if not bool(keep.any()):
            return None
        params = [p for p in self.adapter.parameters() if p.requires_grad]
        trig = self.adapter.encode_image(triggered)[keep.to(triggered.device)]
        text_embeds = self.adapter.encode_text(inputs["input_ids"])
        target = self._target_directions[owner[keep]].to(trig.device)
        # The attacker's poisoned pairs: each triggered image captioned with its target, against the batch's captions.
        toward_target = (trig * target).sum(-1, keepdim=True)
        logits = self.adapter.logit_scale() * torch.cat([toward_target, trig @ text_embeds.T], dim=1)
        loss = F.cross_entropy(logits, torch.zeros(len(trig), dtype=torch.long, device=trig.device))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        average_over_ranks(grads)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if not torch.isfinite(norm) or norm == 0:
            return None
        scale = -self.args.relearn_lookahead / norm
        return params, [g * scale for g in grads]

    @torch.no_grad()
    def _extrapolate(self, alpha: float) -> None:
        """θ ← θ_bd + α (θ − θ_bd): further along the unlearning path, out of the backdoor's basin.

        Unlearning that ends close to the suspect model only hides the backdoor: a few poisoned pairs lead back
        to it. The next M-step repairs what the longer step costs the clean task. With LoRA the update θ − θ_bd
        is ``lora_B @ lora_A``, so scaling ``lora_B`` scales it.
        """
        if self._lora:
            for name, p in self.adapter.named_parameters():
                if p.requires_grad and "lora_B" in name:
                    p.mul_(alpha)
            return
        suspect = dict(self.reference.named_parameters()) if self.reference is not None else self._anchor
        for name, p in self.adapter.named_parameters():
            if name in suspect:
                base = suspect[name].to(p.device)
                p.copy_(base + alpha * (p - base))

    # ----------------------------------------------------------------------------------------------- M-step
    def _triggered_images(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """The triggered images: a copy of the batch per inverted trigger (``batch_per_trigger``), or one copy whose
        rows the triggers share.

        With ``trigger_shift`` a mask or additive trigger is also moved, for three rows in four, by a random whole
        number of the vision tower's patches: a ViT applies the same patch embedding everywhere, so a patch backdoor
        fires in other grid cells too, and the inversion finds it in whichever cell the optimiser reached first;
        unlearning it in every cell covers the cell the attacker used. A warp varies in strength instead, and an
        additive trigger in amplitude too (``warp_strength``, ``additive_strength``).
        """
        if not self._image_triggers or self.args.trigger_image_weight == 0:
            return None
        batch, _, h, w = pixel_values.shape
        # The data may be smaller or larger than the model input; move by patches measured in data pixels.
        step = max(1, round(self.adapter.patch_size * h / self.adapter.image_size))
        generator = torch.Generator().manual_seed(self.args.seed + self.state.global_step)
        owner = self._trigger_owner(batch)
        source = pixel_values[torch.arange(len(owner), device=pixel_values.device) % batch]
        out = source.clone()
        with torch.no_grad():
            for k, trigger in enumerate(self._image_triggers):
                rows = (owner == k).nonzero().flatten().to(pixel_values.device)
                if len(rows) == 0:  # more triggers than rows (the no-posterior ablation): this one waits its turn
                    continue
                x = source[rows]
                if isinstance(trigger, WarpTrigger):
                    # A warp has no position to move; its strength varies instead, up to warp_strength times the
                    # inverted one (which is the weakest warp that fires, and the attacker's may be stronger).
                    strength = 1 + (self.args.warp_strength - 1) * torch.rand(len(rows), generator=generator)
                    out[rows] = trigger.apply_one(x, 0, strength)
                    continue
                strength = None
                if isinstance(trigger, (AdditiveTrigger, PeriodicTrigger)) and self.args.additive_strength > 1:
                    # The same for an additive or periodic trigger's amplitude: the inversion's bound keeps the score
                    # meaningful, and the attacker's signal may be stronger than that bound.
                    strength = 1 + (self.args.additive_strength - 1) * torch.rand(len(rows), generator=generator)
                if self.args.trigger_shift:
                    # Every fourth row keeps the trigger where it was inverted; the others draw a cell, in row order.
                    moved = torch.arange(len(rows)) % 4 != 0
                    shifts = torch.zeros(len(rows), 2, dtype=torch.long)
                    for j in moved.nonzero().flatten().tolist():
                        shifts[j] = torch.randint(0, max(h, w) // step, (2,), generator=generator) * step
                    x = _roll_rows(self._apply_trigger(trigger, _roll_rows(x, -shifts), strength), shifts)
                else:
                    x = self._apply_trigger(trigger, x, strength)
                out[rows] = x
        return out

    @staticmethod
    def _apply_trigger(trigger, images: torch.Tensor, strength: torch.Tensor | None) -> torch.Tensor:
        return trigger.apply_one(images, 0) if strength is None else trigger.apply_one(images, 0, strength)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        pixel_values, input_ids = inputs["pixel_values"], inputs["input_ids"]
        unlearning = self._loss_terms is None or bool(self._loss_terms & UNLEARNING_TERMS)
        triggered = self._triggered_images(pixel_values) if unlearning else None
        soft = self._soft_tokens if args.trigger_text_weight > 0 and unlearning else None
        if soft is not None and self._trigger_word_ids is not None:
            # The trigger word itself, through the embedding layer (and a LoRA adapter on it, if any), so that the
            # gradient reaches its embedding row.
            soft = self.adapter.token_embedding(self._trigger_word_ids.to(self.args.device))
        if soft is not None and soft.dim() == 3:  # one soft-token set per concept: each owns a share of the rows
            rows = (torch.arange(pixel_values.shape[0]) + self.state.global_step) % soft.shape[0]
            soft = soft[rows.to(soft.device)]
        invariance = triggered is not None and args.invariance_weight > 0
        out = model(pixel_values, input_ids, triggered_pixel_values=triggered, soft_tokens=soft,
                    soft_position=args.soft_token_position, class_token_states=invariance)
        distill = args.prior_weight > 0 and args.prior_type == "distill"
        ref = self._reference_outputs(inputs, invariance) if distill or invariance else None
        scale = out["logit_scale"]
        images, texts = out["image_embeds"], out["text_embeds"]
        terms: dict[str, tuple[float, torch.Tensor]] = {
            "clean": (args.clean_weight, distributed_clip_loss(images, texts, scale))
        }
        if triggered is not None:
            trig = out["triggered_image_embeds"]
            copies = trig.shape[0] // texts.shape[0]  # one per trigger with batch_per_trigger, else one
            terms["trigger_image"] = (args.trigger_image_weight, sum(
                distributed_clip_loss(chunk, texts, scale) for chunk in trig.chunk(copies)) / copies)
            if self._target_directions is not None:
                owner, keep = self._targeted_rows(texts.shape[0], trig.device)
                own = (trig * texts.detach().repeat(copies, 1)).sum(-1)
                gap = (trig * self._target_directions[owner.clamp(min=0)]).sum(-1) - own
                gap = gap[keep]
                if gap.numel():
                    terms["push"] = (args.push_weight, torch.relu(gap).mean())
        if soft is not None:
            terms["trigger_text"] = (args.trigger_text_weight * self._text_weight,
                                     distributed_clip_loss(images, out["triggered_text_embeds"], scale))
        if args.prior_weight > 0 and args.prior_type != "none":
            terms["prior"] = (args.prior_weight, self._prior(images, texts, ref))
        if invariance:
            # Representation-level unlearning: after every vision block, a triggered image's class token must sit
            # where the suspect model puts the *clean* image's. Unlearning only the output mapping leaves the
            # trigger's features in place, and a few poisoned pairs re-link them (the retuning attack).
            states = out["image_class_states"]
            batch = pixel_values.shape[0]
            clean_states = ref["image_class_states"] if ref is not None else states[:, :batch].detach()
            copies = states.shape[1] // batch - 1
            terms["invariance"] = (args.invariance_weight,
                                   ((states[:, batch:] - clean_states.repeat(1, copies, 1)) ** 2).mean((1, 2)).sum())
        if self._loss_terms is not None:
            terms = {name: term for name, term in terms.items() if name in self._loss_terms}
        loss = sum(weight * value for weight, value in terms.values())
        for name, (_, value) in terms.items():
            self._metrics[name].append(float(value.detach()))
        return (loss, out) if return_outputs else loss

    def _prior(self, images: torch.Tensor, texts: torch.Tensor, ref: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if self.args.prior_type == "distill":
            return ((images - ref["image_embeds"]) ** 2).sum(-1).mean() + ((texts - ref["text_embeds"]) ** 2).sum(
                -1
            ).mean()
        if self._lora:  # θ_bd is the adapter-free base: the L2 distance is the norm of the LoRA weights
            return sum((p**2).sum() for p in self.adapter.parameters() if p.requires_grad)
        named = dict(self.adapter.named_parameters())
        return sum(((named[n] - anchor) ** 2).sum() for n, anchor in self._anchor.items())

    # -------------------------------------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for name, values in self._metrics.items():
            if values:
                logs[f"bibau/{name}"] = round(mean_over_ranks(sum(values) / len(values), self.args.device), 5)
        self._metrics.clear()
        if self.scans:
            logs["bibau/backdoor_score"] = round(self.scans[-1].backdoor_score, 3)
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------ Hub
    # Trainer's Hub methods assume a transformers model and pickled extras: its intermediate push copies
    # training_args.bin into the output folder and uploads whole checkpoint folders (optimizer, scheduler and RNG
    # states), and its final push uploads whatever the output folder holds. These overrides keep Trainer's arguments
    # (push_to_hub, hub_model_id, hub_private_repo, hub_strategy, hub_token, hub_revision, hub_always_push) and
    # publish through bibau_hf.hub, which uploads the native model and the report only, never a pickle.
    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create the Hub repo ``hub_model_id`` (default: the output folder's name) from the main process.

        Args:
            token: token with write access; default ``args.hub_token``.
            private: create it private; default ``args.hub_private_repo`` (no effect on an existing repo).
        """
        if not self.is_world_process_zero():
            return
        name = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        token = token if token is not None else self.args.hub_token
        private = private if private is not None else self.args.hub_private_repo
        self.hub_model_id = create_repo(name, private=private, token=token, api=default_api())
        self.push_in_progress = None

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ):
        """Save the purified model and push the output folder to ``args.hub_model_id``.

        Saving writes the model in its native format, the unlearning report and the model card; the push then uploads
        them with :func:`bibau_hf.hub.push_output_dir` (native files, card, report, triggers, plots; no pickles), so
        the repo loads with plain ``CLIPModel.from_pretrained`` or ``open_clip.create_model_and_transforms``.

        Args:
            commit_message: the commit's summary.
            blocking: wait for the upload; with ``False`` a ``Future`` of the commit URL is returned.
            token: token with write access; default ``args.hub_token``.
            revision: branch to push to; default ``args.hub_revision`` (``main``).
            private: create the repo private; default ``args.hub_private_repo``.
            **kwargs: Trainer's model-card fields; unused, since the card is rendered from the unlearning report.

        Returns:
            The commit URL (``blocking=True``), a ``Future`` of it (``blocking=False``), or ``None`` on processes
            other than the main one.
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        private = private if private is not None else self.args.hub_private_repo
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        # On every process: saving may need collective operations; only the main process writes.
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        if kwargs:
            logger.warning("push_to_hub ignores model-card fields %s: the card comes from the unlearning report",
                           sorted(kwargs))
        output_dir = Path(self.args.output_dir)
        self._ensure_model_card(output_dir)
        self._finish_current_push()
        api = default_api()
        revision = revision if revision is not None else self.args.hub_revision

        def push() -> str:
            return push_output_dir(output_dir, self.hub_model_id, private=private, token=token, revision=revision,
                                   commit_message=commit_message, api=api)

        return push() if blocking else api.run_as_future(push)

    def _ensure_model_card(self, output_dir: Path) -> None:
        """Render the card from the report if saving did not write one (the Hub page should never be blank)."""
        if (output_dir / MODEL_CARD).is_file() or not (output_dir / REPORT_FILE).is_file():
            return
        write_model_card(output_dir)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Intermediate push at each checkpoint (``hub_strategy`` other than ``end``), in the background.

        The checkpoint's native model goes to the repo root, so the repo loads at any time. With ``hub_strategy``
        ``checkpoint`` (``all_checkpoints``) its safe files, the model and ``trainer_state.json``, also go to
        ``last-checkpoint/`` (``checkpoint-N/``). The optimizer, scheduler and RNG states are pickles and stay local:
        ``resume_from_checkpoint`` needs the local checkpoint folder.
        """
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        # Like Trainer: skip this push while the previous one is still uploading, unless asked to queue it.
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        try:
            check_native_folder(checkpoint_folder)
        except BIBAUError as err:
            logger.warning("not pushing checkpoint %s: %s", checkpoint_folder, err)
            return
        # Checkpoints may be rotated away (save_total_limit) before a background upload reads them: upload from a
        # private staging copy (hard links where the file system allows, so no data is copied).
        staging = Path(tempfile.mkdtemp(prefix="bibau_hub_push_"))
        files = collect_push_files(checkpoint_folder)
        for rel in files:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(Path(checkpoint_folder) / rel, target)
            except OSError:
                shutil.copy2(Path(checkpoint_folder) / rel, target)
        root_files = [rel for rel in files if rel != TRAINER_STATE_FILE]
        extra: list[tuple[Path, str]] = []
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            prefix = "last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT else Path(
                checkpoint_folder).name
            extra = [(staging / rel, f"{prefix}/{rel}") for rel in files]
        if self.args.save_strategy == SaveStrategy.STEPS:
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch or 0)}"
        api = default_api()

        def push() -> str:
            try:
                return commit_files(staging, root_files, self.hub_model_id, extra=extra, token=self.args.hub_token,
                                    revision=self.args.hub_revision, commit_message=message, api=api)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

        job = api.run_as_future(push)
        job.add_done_callback(_log_push_failure)
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress([job])
        else:
            self.push_in_progress.jobs.append(job)

    # ---------------------------------------------------------------------------------------- train / save
    def train(self, *args: Any, **kwargs: Any):
        """Run the EM loop; afterwards ``self.report`` holds the unlearning report."""
        timing = self._timing
        started = time.time()
        output = super().train(*args, **kwargs)
        if self._lora:
            self._merge_lora()
        timing["purification_seconds"] = time.time() - started - timing["report_seconds"]
        timing["m_step_seconds"] = timing["purification_seconds"] - timing["e_step_seconds"]
        report_started = time.time()
        if self.args.final_scan:
            self.final_scan = self.inverter.run(previous=self.scans[-1].triggers if self.scans else None)
            timing["final_scan_seconds"] = time.time() - report_started
        if self.final_scan is not None:
            self._record_similarity("after", self.final_scan, "re-inverted after unlearning")
        elif len(self.scans) > 1:
            self._record_similarity("after", self.scans[-1], "re-inverted in the last round")
        else:
            self._record_similarity("after", None, "inverted before unlearning")
        timing["report_seconds"] += time.time() - report_started
        timing["total_seconds"] = time.time() - started
        self.report = self.build_report(output)
        return output

    def _merge_lora(self) -> None:
        peft_model = self.adapter.model
        if self.args.keep_lora_adapter:
            self._lora_state = copy.deepcopy(peft_model)
        self.adapter.model = peft_model.merge_and_unload()
        # peft froze the base for training; the merged model is a plain model again, trainable like the input was.
        self.adapter.requires_grad_(True)
        self.model = self.adapter
        self.model_wrapped = self.adapter
        self._lora = False

    def build_report(self, train_output=None) -> dict[str, Any]:
        """The unlearning report (DESIGN §5) as a JSON-ready dict."""
        before = self.scans[0] if self.scans else None
        after = self.final_scan or (self.scans[-1] if self.scans else None)
        metrics_before = dict(self.trace[0].get("metrics", {})) if self.trace else {}
        metrics_after = self.evaluator(self.adapter) if self.evaluator is not None else {}
        if before is not None:
            metrics_before.update(backdoor_score=round(before.backdoor_score, 3))
        if after is not None:
            metrics_after.update(backdoor_score=round(after.backdoor_score, 3))
        config = {k: v for k, v in self.args.to_dict().items() if not k.startswith(("hub_", "push_to_hub"))}
        return {
            "method": "BI-BAU",
            "mode": "lora" if self.args.use_lora else "full",
            "bibau_hf_version": __version__,
            "base_model": self.base_model_name,
            "backend": self.adapter.backend,
            "seed": self.args.seed,
            "num_clean_pairs": len(self.train_dataset),
            "num_processes": self.args.world_size,
            "versions": library_versions(),
            "metrics_before": metrics_before,
            "metrics_after": metrics_after,
            "scan_before": before.to_dict() if before else None,
            "scan_after": after.to_dict() if after else None,
            "suspected_target": before.suspected_target if before else None,
            "rounds": self.trace,
            "stopped_early": self.stop_requested,
            "steps": self.state.global_step,
            "train_loss": None if train_output is None else round(float(train_output.training_loss), 5),
            "timing": {k: round(v, 2) for k, v in self._timing.items()},
            "config": config,
            **({"diagnostics": {"similarity": self._similarity}} if self._similarity else {}),
        }

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the model in its native format (merged if LoRA is still attached) and, once trained, the report,
        the inverted triggers, the plots and the model card (``README.md``)."""
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        adapter = self.adapter
        if self._lora:  # a checkpoint mid-training: save a merged copy, keep training the adapter
            adapter = copy.deepcopy(self.adapter)
            adapter.model = adapter.model.merge_and_unload()
        adapter.save_native(output_dir)
        lora_state = getattr(self, "_lora_state", None)
        if lora_state is not None:
            lora_state.save_pretrained(output_dir / "lora_adapter")
        if self.report and self.is_world_process_zero():
            self._save_report(output_dir)

    def _save_report(self, output_dir: Path) -> None:
        """Inverted triggers, the report (which lists them), the plots (which read both), then the card."""
        before = self.scans[0] if self.scans else None
        after = self.final_scan or (self.scans[-1] if self.scans else None)
        artifacts = save_trigger_artifacts(output_dir, before, after, self.adapter, self.train_dataset.images[0])
        if artifacts:
            self.report["artifacts"] = artifacts
        (output_dir / REPORT_FILE).write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        write_plots(output_dir)
        # Last: peft's save_pretrained (lora_adapter/ above) writes a README of its own; the top-level card is ours.
        write_model_card(output_dir)

    def create_model_card(self, **kwargs: Any) -> None:
        """Write BI-BAU's model card into ``args.output_dir`` (what ``push_to_hub`` uploads).

        Trainer's default card cannot describe this model (it reads ``model.config``, which open_clip models lack,
        and drops zero-shot metrics), so the card is rendered from the unlearning report instead. Of Trainer's
        keyword arguments, ``tags``, ``language``, ``license`` and ``model_name`` are added to it; the others are
        already in the report.
        """
        if not self.is_world_process_zero():
            return
        folder = Path(self.args.output_dir)
        if not (folder / REPORT_FILE).is_file():
            if not self.report:
                logger.warning("no unlearning report yet (train first); model card not written")
                return
            folder.mkdir(parents=True, exist_ok=True)
            (folder / REPORT_FILE).write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        path = write_model_card(folder)
        extra = {k: kwargs.get(k) for k in ("tags", "language", "license", "model_name") if kwargs.get(k)}
        if extra:
            from huggingface_hub import ModelCard

            card = ModelCard.load(path)
            tags = [extra["tags"]] if isinstance(extra.get("tags"), str) else extra.get("tags", [])
            card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *tags]))
            for key in ("language", "license"):
                if key in extra:
                    card.data[key] = extra[key]
            if "model_name" in extra and card.data.eval_results:
                card.data.model_name = extra["model_name"]
            card.save(path)
