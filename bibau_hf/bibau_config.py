"""Configuration of BI-BAU: a ``transformers.TrainingArguments`` subclass with every knob of the method."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .errors import BIBAUError
from .inversion import (
    CONFIDENCE_GAP_THRESHOLD,
    IMAGE_FAMILIES,
    IMAGE_THRESHOLD,
    PERIODIC_AMPLITUDE,
    PERIODIC_MAX_FREQUENCY,
    PERIODIC_THRESHOLD,
    TEXT_THRESHOLD,
    WARP_MAX_SHIFT,
    InversionConfig,
)

TOWERS = ("both", "image", "text")
PRIORS = ("distill", "l2", "none")
UNGATED = ("skip", "uniform", "uniform_if_none_pass")

logger = logging.getLogger(__name__)


def _launched_multi_process() -> bool:
    """Whether a launcher (accelerate launch, torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6; older ones: CUDA is what Accelerate checks
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


@dataclass
class BIBAUConfig(TrainingArguments):
    """Arguments of :class:`~bibau_hf.BIBAUTrainer` (DESIGN §3): EM rounds, inversion (E-step), unlearning
    (M-step), LoRA, plus everything ``TrainingArguments`` has.

    The defaults work on the demo and on the benchmark attacks without per-attack tuning.
    """

    # ----------------------------------------------------------------------------------------------- EM loop
    em_rounds: int = field(
        default=3, metadata={"help": "EM rounds: each starts with an E-step (inversion) and then unlearns."}
    )
    path_extrapolation: float = field(
        default=1.5,
        metadata={
            "help": "α: as each EM round after the first begins, θ ← θ_bd + α (θ − θ_bd), a step further along the "
            "path the unlearning took away from the suspect model; the round's M-step then repairs the clean task. "
            "A purified model that stays near the suspect one relearns the backdoor from a few poisoned pairs (the "
            "retuning attack). Free in time. 1 turns it off. On the digits lab (three seeds) 1.5 brought the retuned "
            "ASR (in percent) from 13.5 to 1.5 on BadNets and from 81 to 5.6 on the text trigger, for 0.5 CA points "
            "on average (docs/METHOD_NOTES.md §14)."
        },
    )
    relearn_lookahead: float = field(
        default=0.0,
        metadata={
            "help": "ρ: the unlearning terms' gradient is taken after a weight step of length ρ (L2 over the "
            "trainable weights) toward relearning the backdoor (the targeted triggers' images to their suspected "
            "targets), the clean and prior terms' at the weights themselves: sharpness-aware minimisation whose "
            "adversary is the retuning attacker, so that the unlearning holds a short way along the direction a few "
            "poisoned pairs would move the weights. 0 (the default) turns it off. On the digits lab (seeds 0-2) 0.05 "
            "brought WaNet's retuned ASR (in percent) from 37.7 to 21.6 and the five attacks' mean from 14.4 to 10.6, "
            "for 1.0 CA point on average (Blended 2.5) and about 1.4x the purification time (docs/METHOD_NOTES.md "
            "§33)."
        },
    )
    stop_score: float = field(
        default=0.0,
        metadata={
            "help": "Early stop when the tracked target's anomaly score falls below this level after a round (0: run "
            "every round). Off by default: after one round the score drops below the usual outlier level (~2) while "
            "most of the backdoor is still there (see docs/METHOD_NOTES.md)."
        },
    )
    unlearn_threshold: float = field(
        default=IMAGE_THRESHOLD,
        metadata={
            "help": "Unlearn the image tower's inverted trigger only if its anomaly score reaches this level (and "
            "its confidence gap passes confidence_gap_threshold): a clean tower's triggers are natural shortcuts, "
            "and unlearning one cost up to 2.2 points of accuracy. Set below the usual outlier level of 2 because a "
            "missed backdoor costs more than that (docs/METHOD_NOTES.md). 0 always unlearns."
        },
    )
    text_unlearn_threshold: float = field(
        default=TEXT_THRESHOLD,
        metadata={
            "help": "The same gate for the text tower. Its score comes from an exact search over real tokens and is "
            "on another scale: rare-word backdoors scored 26.7-36.5, other text towers 0.8-4.2. 0 always unlearns."
        },
    )
    periodic_unlearn_threshold: float = field(
        default=PERIODIC_THRESHOLD,
        metadata={
            "help": "The unlearning gate of the periodic image family, whose score (an exhaustive search over a fixed "
            "dictionary) is on its own scale: the CIFAR-10 lab's SIG backdoors scored 17.9-32.8, its other models at "
            "most 4.0; on digits a natural stripe reached 27 (docs/METHOD_NOTES.md §25). 0 always unlearns."
        },
    )
    confidence_gap_threshold: float = field(
        default=CONFIDENCE_GAP_THRESHOLD,
        metadata={
            "help": "A second gate for image families: unlearn only if the inverted trigger's images match the "
            "target concept within this much cosine of the target's own clean images. Planted triggers came within "
            "0.105; the warp family's natural shortcuts mostly stayed 0.15 or more short (docs/METHOD_NOTES.md). 2 "
            "turns the gate off."
        },
    )
    text_target_veto: bool = field(
        default=True,
        metadata={
            "help": "When the text family passes its gate, an image family that passes toward another concept is "
            "not unlearned: an attacker plants one target, and the text search separates planted from clean towers "
            "far more widely than the image scores, so the image family's concept is a natural shortcut. On the "
            "digits lab the mask family passed toward another concept on 5 of 9 text-backdoored models and never "
            "named the text target (docs/METHOD_NOTES.md §32). A text_unlearn_threshold of 0 passes every text "
            "family, which is no evidence, so it vetoes nothing."
        },
    )
    target_posterior: bool = field(
        default=True,
        metadata={
            "help": "Estimate the latent target (the posterior's mode on the suspect model) and unlearn the trigger "
            "toward it, gated by unlearn_threshold. False is the ablation with a uniform posterior: every round "
            "unlearns the inverted triggers toward every candidate concept alike, with no push."
        },
    )
    ungated_families: str = field(
        default="uniform_if_none_pass",
        metadata={
            "help": "What the M-step does with a trigger family whose round-0 score stays under its gate: skip "
            "(nothing to unlearn there: the rounds fine-tune on clean data under the prior), uniform (unlearn its "
            "inverted triggers toward its ungated_concepts likeliest concepts, a uniform posterior over them, "
            "re-inverted toward them every round; no push), or uniform_if_none_pass (uniform for every family, but "
            "only when no family of either tower passed its gates, i.e. when the scan found nothing). Families that "
            "pass their gates are unlearned toward their target either way. The default hedges only where the scan "
            "found nothing: on the digits lab's 30 backdoored models (seeds 0-5) it takes the 6 backdoors that no "
            "family caught from 66-100 to 4-14 percent ASR, for 0.5 points of mean clean accuracy; uniform also "
            "catches 2 mistaken targets, for 0.7 more points (docs/METHOD_NOTES.md §28, §29, §30)."
        },
    )
    ungated_concepts: int = field(
        default=3,
        metadata={
            "help": "When ungated_families hedges (uniform, or uniform_if_none_pass where nothing passes): how many "
            "concepts a family under its gates is unlearned toward, the ones its round-0 sweep found most anomalous "
            "(a uniform posterior over the likeliest targets; 0: every candidate concept). Where the gates missed the "
            "planted target or flagged another concept (9 of the digits lab's 30 models, seeds 0-5), it ranked first "
            "or second in a family under its gates on 8 (docs/METHOD_NOTES.md §29). Fewer concepts give each "
            "concept's trigger more of the triggered rows."
        },
    )
    ungated_weight: float = field(
        default=1.0,
        metadata={
            "help": "When ungated_families hedges: how much unlearning a family under its gates gets against a "
            "family unlearned toward its target (an image family: its share of the triggered rows; the text family: "
            "its loss weight). 1: as much. Under 1, where no image family is targeted, only this fraction of the "
            "batch is triggered. Needs batch_per_trigger=False."
        },
    )
    final_scan: bool = field(default=True, metadata={"help": "Run one more E-step after training, for the report."})
    # ------------------------------------------------------------------------------------------------ E-step
    invert_towers: str = field(
        default="both", metadata={"help": "Which encoders to invert triggers on: both, image or text."}
    )
    trigger_families: list[str] = field(
        default_factory=lambda: ["mask", "warp"],
        metadata={
            "help": "Image trigger families to invert: mask (mask-and-pattern: patches, blends), warp (smooth "
            "displacement fields: WaNet-like), additive (L-inf) and/or periodic (a dictionary of sinusoids: "
            "SIG-like). additive is off by default: it finds universal adversarial noise toward every concept "
            "alike, so its score does not separate (docs/METHOD_NOTES.md §19); periodic removes SIG on CIFAR-10 and "
            "is off by default, for natural images only (§25)."
        },
    )
    inversion_steps: int = field(default=20, metadata={"help": "Optimisation steps of each untargeted inversion."})
    inversion_learning_rate: float = field(default=0.2, metadata={"help": "Adam learning rate of the inversion."})
    inversion_batch_size: int = field(default=16, metadata={"help": "Clean pairs per inversion step."})
    inversion_restarts: int = field(
        default=2, metadata={"help": "Random restarts per family, optimised together; the best is kept."}
    )
    score_steps: int = field(
        default=100,
        metadata={"help": "Steps of the per-concept targeted inversion (the score's sweep); half when warm-started."},
    )
    max_candidates: int = field(
        default=16, metadata={"help": "Most candidate concepts in the score's targeted inversion."}
    )
    refine_concepts: int = field(
        default=3,
        metadata={
            "help": "Image families: after the round-0 sweep, this many of the most anomalous concepts' triggers are "
            "optimised score_steps further, and the family's trigger and suspected target become the cheapest of "
            "them on four clean batches (the sweep's costs are noisy: a planted patch can rank second behind a "
            "natural shortcut). The score, posterior and confidence gap stay the sweep's. 0 or 1: off "
            "(docs/METHOD_NOTES.md §31)."
        },
    )
    mask_l1_weight: float = field(
        default=20.0, metadata={"help": "Weight of the mask prior (mean mask value): small triggers are likely."}
    )
    additive_epsilon: float = field(
        default=16 / 255, metadata={"help": "L-inf bound of the additive trigger (images in [0, 1])."}
    )
    additive_weight: float = field(
        default=0.1, metadata={"help": "Weight of the additive trigger's mean-magnitude prior."}
    )
    warp_weight: float = field(
        default=20.0,
        metadata={"help": "Weight of the warp trigger's prior (mean displacement relative to warp_max_shift)."},
    )
    warp_max_shift: float = field(
        default=WARP_MAX_SHIFT,
        metadata={"help": "Largest displacement of the warp family at a control point, as a fraction of the image "
                  "side (tanh-bounded)."},
    )
    periodic_amplitude: float = field(
        default=PERIODIC_AMPLITUDE,
        metadata={
            "help": "Amplitude (image units, [0, 1]) of the periodic family's sinusoids. A SIG backdoor answers only "
            "near its own amplitude (at half of it, 15 percent of images on the CIFAR-10 lab model), while a clean "
            "model is dragged to its easiest concept by stripes of twice this amplitude (docs/METHOD_NOTES.md §25)."
        },
    )
    periodic_max_frequency: int = field(
        default=PERIODIC_MAX_FREQUENCY,
        metadata={"help": "Highest number of periods across the image, along either axis, in the periodic family's "
                  "dictionary (2 phases x every direction: 288 sinusoids at 8)."},
    )
    num_soft_tokens: int = field(
        default=2,
        metadata={
            "help": "Soft tokens of a continuous text inversion; with the token search, the most words of the "
            "unlearned trigger phrase."
        },
    )
    soft_token_position: int = field(
        default=1, metadata={"help": "Where the soft tokens go in the token sequence (1 = right after BOS)."}
    )
    soft_token_norm_weight: float = field(
        default=1.0, metadata={"help": "Weight of the soft tokens' norm prior (relative to real token norms)."}
    )
    own_pair_weight: float = field(
        default=1.0, metadata={"help": "Weight pushing triggered inputs away from their own pair in the inversion."}
    )
    posterior_temperature: float = field(
        default=50.0, metadata={"help": "β of the target posterior q(z) ∝ exp(β · mean cosine to z)."}
    )
    concept_names: list[str] = field(
        default_factory=list,
        metadata={"help": "Candidate target concepts (e.g. class names). Default: the clean set's captions."},
    )
    # ------------------------------------------------------------------------------------------------ M-step
    clean_weight: float = field(default=1.0, metadata={"help": "Weight of the clean contrastive loss."})
    trigger_image_weight: float = field(
        default=1.0, metadata={"help": "α: triggered images must still match their own captions."}
    )
    trigger_text_weight: float = field(
        default=1.0, metadata={"help": "α_t: triggered captions must still match their own images."}
    )
    text_trigger_as_word: bool = field(
        default=True,
        metadata={
            "help": "When the text trigger is a vocabulary token (the token search's result), the M-step inserts it "
            "through the token-embedding layer, so the unlearning also reaches that word's embedding. False: a "
            "fixed copy of its vector (the word's own embedding is then never unlearned)."
        },
    )
    trigger_shift: bool = field(
        default=True,
        metadata={"help": "Also apply inverted mask and additive triggers at random offsets in the M-step (a warp "
                  "varies in strength instead, see warp_strength)."},
    )
    patch_completion: bool | None = field(
        default=None,
        metadata={
            "help": "Unlearn a mask trigger that a few touching cells of the vision tower hold (at round 0) as those "
            "whole cells, with the found pixels kept and the rest filled by the pattern that drives images to the "
            "target hardest; every round's re-inversion that is still such a patch adds one, and all are unlearned in "
            "place of the re-inverted trigger, which drifts onto the target's natural features once the patch no "
            "longer fires. Default (unset): on for full fine-tuning, off with use_lora. Full model, digits BadNets "
            "seeds 0-2: CA 94.2 -> 96.2 percent at the same ASR and retuned ASR; with LoRA it bought 0.9 CA points "
            "but the retuning attack brought 30 instead of 10 percent back (docs/METHOD_NOTES.md §21, §23, §27). A "
            "tower without a cell grid (a ResNet) skips it."
        },
    )
    patch_max_cells: int = field(
        default=4,
        metadata={"help": "Most vision-tower cells a completed patch may cover (see patch_completion)."},
    )
    patch_completion_steps: int = field(
        default=100,
        metadata={"help": "Optimisation steps of each of patch completion's two stages (refining the round's mask "
                  "toward the target on the current model, then fitting the pattern of the chosen cells)."},
    )
    warp_strength: float = field(
        default=1.5,
        metadata={
            "help": "In the M-step an inverted warp is applied at a random strength between 1 and this many times its "
            "own displacement: the inversion finds the weakest warp that fires, the attacker's may be stronger "
            "(the warp's analogue of trigger_shift). 1 applies it as inverted. On the digits WaNet models 1.5 more "
            "than halved the ASR left after purification (docs/METHOD_NOTES.md §13)."
        },
    )
    additive_strength: float = field(
        default=2.0,
        metadata={
            "help": "In the M-step an inverted additive or periodic trigger is applied at a random amplitude between "
            "1 and this many times its own (the inversion bounds it so that its score means something; the attacker's "
            "signal may be stronger). On the CIFAR-10 SIG model (mask, warp and additive families, one run) it took "
            "the ASR left from 62 (1) to 24 (1.5) and 4.8 (2) percent (docs/METHOD_NOTES.md §15, §19); with the "
            "periodic family, the ASR after retuning from 18.1 (1) to 9.1 percent (2) (§25)."
        },
    )
    batch_per_trigger: bool = field(
        default=False,
        metadata={
            "help": "Every unlearned image trigger acts on a whole copy of the batch (one more image forward per "
            "trigger, a fifth more purification time with two families). False: the triggers take turns over one "
            "copy's rows. No measurable completeness gain on the digits lab (METHOD_NOTES §12). A family "
            "hedged by ungated_families counts as one trigger: its concepts' triggers take turns."
        },
    )
    invariance_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of representation invariance: after every vision block, a triggered image's class token "
            "is pulled onto the suspect model's class token for the clean image (removes the trigger's features, "
            "not only their mapping; what makes the unlearning survive the retuning attack). 0 turns it off."
        },
    )
    push_weight: float = field(
        default=1.0,
        metadata={"help": "β: push triggered images away from the suspected target (relative to their own caption)."},
    )
    prior_weight: float = field(
        default=30.0, metadata={"help": "γ: weight of the prior that keeps the model near the suspect model."}
    )
    prior_type: str = field(
        default="distill",
        metadata={"help": "distill (match the suspect model's clean embeddings), l2 (L2 to its weights) or none."},
    )
    cache_reference_outputs: bool = field(
        default=True,
        metadata={
            "help": "Compute the suspect model's outputs on each clean pair once and reuse them every step (the "
            "pairs are not augmented and the suspect model is frozen): saves one image and text forward per step "
            "for memory of pairs x (2 embeddings + one class token per vision block)."
        },
    )
    # -------------------------------------------------------------------------------------------------- LoRA
    use_lora: bool = field(default=False, metadata={"help": "Unlearn through LoRA adapters (peft) only."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Modules to adapt; default per backend (HF: every linear layer of attention and MLP; open_clip: "
            "c_fc, c_proj). Adding token_embedding (a trigger word's row) or patch_embedding (HF; a patch's cell) "
            "makes LoRA purification more complete against that kind of trigger (docs/METHOD_NOTES.md §26)."
        },
    )
    keep_lora_adapter: bool = field(
        default=False, metadata={"help": "Also save the LoRA adapter (lora_adapter/) next to the merged model."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into a non-empty output folder."}
    )
    # ---------------------------------------------------------------------- TrainingArguments defaults we change
    output_dir: str | None = field(default="outputs/bibau_clean", metadata={"help": "Where the purified model goes."})
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the M-step. Default 1e-4, or 1e-3 with use_lora (a rank-8 adapter at 1e-4 "
            "barely moves in the step budget)."
        },
    )
    max_steps: int = field(
        default=300,
        metadata={
            "help": "M-step optimisation steps over all EM rounds: a budget that does not grow with the clean set "
            "(60 steps left a backdoor that the retuning attack re-linked; see docs/METHOD_NOTES.md). -1 uses "
            "num_train_epochs instead."
        },
    )
    num_train_epochs: float = field(
        default=60.0, metadata={"help": "Epochs over the clean set (all rounds); used only when max_steps is -1."}
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Clean pairs per device and step."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing (the final model is always saved)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep all dataset columns (needed)."})
    report_to: str = field(default="none", metadata={"help": "Experiment trackers to report to."})
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "Drop the last partial batch (contrastive batches must be full)."}
    )

    def __post_init__(self) -> None:
        if not self.use_cpu and _launched_multi_process() and not _has_accelerator():
            # Accelerate only picks gloo on a GPU-less machine when told it runs on the CPU; without this, each
            # process of `accelerate launch --multi_gpu --num_processes 2` would silently train alone.
            logger.info("several processes and no accelerator: running on the CPU over gloo (use_cpu=True)")
            self.use_cpu = True
        if self.learning_rate is None:
            self.learning_rate = 1e-3 if self.use_lora else 1e-4
        super().__post_init__()
        if self.em_rounds < 1:
            raise BIBAUError(f"em_rounds must be >= 1, got {self.em_rounds}")
        if self.invert_towers not in TOWERS:
            raise BIBAUError(f"invert_towers must be one of {TOWERS}, got {self.invert_towers!r}")
        unknown = [f for f in self.trigger_families if f not in IMAGE_FAMILIES]
        if unknown:
            raise BIBAUError(f"unknown trigger families {unknown}; choose from {IMAGE_FAMILIES}")
        if self.invert_towers in ("both", "image") and not self.trigger_families:
            raise BIBAUError("inverting the image tower needs at least one trigger family")
        if self.ungated_families not in UNGATED:
            raise BIBAUError(f"ungated_families must be one of {UNGATED}, got {self.ungated_families!r}")
        if not 0 < self.ungated_weight <= 1:
            raise BIBAUError(f"ungated_weight must be in (0, 1], got {self.ungated_weight}")
        if self.ungated_weight != 1 and self.batch_per_trigger:
            raise BIBAUError("ungated_weight < 1 shares the triggered rows by weight: set batch_per_trigger=False")
        if self.refine_concepts < 0:
            raise BIBAUError(f"refine_concepts must be >= 0 (0 or 1: off), got {self.refine_concepts}")
        if self.ungated_concepts < 0:
            raise BIBAUError(f"ungated_concepts must be >= 0 (0: every concept), got {self.ungated_concepts}")
        if self.prior_type not in PRIORS:
            raise BIBAUError(f"prior_type must be one of {PRIORS}, got {self.prior_type!r}")
        for name in ("inversion_steps", "inversion_batch_size", "inversion_restarts", "num_soft_tokens",
                     "patch_max_cells", "patch_completion_steps"):
            if getattr(self, name) < 1:
                raise BIBAUError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.inversion_batch_size < 2:
            raise BIBAUError("inversion_batch_size must be >= 2 (collapse is measured between images)")
        if not 0 < self.additive_epsilon <= 1:
            raise BIBAUError(f"additive_epsilon must be in (0, 1], got {self.additive_epsilon}")
        if not 0 < self.warp_max_shift <= 0.5:
            raise BIBAUError(f"warp_max_shift must be in (0, 0.5] (a fraction of the image side), got "
                             f"{self.warp_max_shift}")
        for name in ("unlearn_threshold", "text_unlearn_threshold", "periodic_unlearn_threshold",
                     "confidence_gap_threshold", "mask_l1_weight",
                     "warp_weight", "clean_weight", "trigger_image_weight", "trigger_text_weight", "invariance_weight",
                     "push_weight", "prior_weight", "posterior_temperature", "soft_token_norm_weight"):
            if getattr(self, name) < 0:
                raise BIBAUError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.path_extrapolation < 1:
            raise BIBAUError(
                f"path_extrapolation must be >= 1 (1 is off; below 1 would step back toward the suspect model), got "
                f"{self.path_extrapolation}"
            )
        if not 0 < self.periodic_amplitude <= 0.5:
            raise BIBAUError(f"periodic_amplitude must be in (0, 0.5] (image units), got {self.periodic_amplitude}")
        if self.periodic_max_frequency < 1:
            raise BIBAUError(f"periodic_max_frequency must be >= 1, got {self.periodic_max_frequency}")
        if self.additive_strength < 1:
            raise BIBAUError(
                f"additive_strength must be >= 1 (a multiple of the inverted amplitude), got {self.additive_strength}"
            )
        if self.relearn_lookahead < 0:
            raise BIBAUError(f"relearn_lookahead must be >= 0 (0 is off), got {self.relearn_lookahead}")
        if self.warp_strength < 1:
            raise BIBAUError(f"warp_strength must be >= 1 (a multiple of the inverted warp), got {self.warp_strength}")
        if self.per_device_train_batch_size < 2:
            raise BIBAUError("per_device_train_batch_size must be >= 2 for a contrastive loss")
        if self.use_lora and self.lora_r < 1:
            raise BIBAUError(f"lora_r must be >= 1, got {self.lora_r}")

    @property
    def completes_patches(self) -> bool:
        """Whether patch completion runs: ``patch_completion`` where set, else on for full fine-tuning only."""
        return self.patch_completion if self.patch_completion is not None else not self.use_lora

    @property
    def invert_image(self) -> bool:
        return self.invert_towers in ("both", "image")

    @property
    def invert_text(self) -> bool:
        return self.invert_towers in ("both", "text")

    def inversion_config(self, progress: bool = True) -> InversionConfig:
        """The E-step settings as an :class:`~bibau_hf.inversion.InversionConfig`."""
        return InversionConfig(
            steps=self.inversion_steps,
            learning_rate=self.inversion_learning_rate,
            batch_size=self.inversion_batch_size,
            restarts=self.inversion_restarts,
            image_families=tuple(self.trigger_families),
            invert_image=self.invert_image,
            invert_text=self.invert_text,
            mask_l1_weight=self.mask_l1_weight,
            additive_epsilon=self.additive_epsilon,
            additive_weight=self.additive_weight,
            warp_weight=self.warp_weight,
            warp_max_shift=self.warp_max_shift,
            periodic_amplitude=self.periodic_amplitude,
            periodic_max_frequency=self.periodic_max_frequency,
            num_soft_tokens=self.num_soft_tokens,
            soft_token_position=self.soft_token_position,
            soft_token_norm_weight=self.soft_token_norm_weight,
            own_pair_weight=self.own_pair_weight,
            posterior_temperature=self.posterior_temperature,
            score_steps=self.score_steps,
            max_candidates=self.max_candidates,
            refine_concepts=self.refine_concepts,
            seed=self.seed,
            progress=progress and not self.disable_tqdm,
        )
