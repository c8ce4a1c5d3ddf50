"""The E-step: blind inversion of image and text triggers, the latent-target posterior, and the backdoor score.

Nothing here knows the attack: it sees the suspect model, clean image-caption pairs and candidate target concepts
(class names when the defender has them, else the distinct captions). For each trigger family (image
mask-and-pattern, warp and additive, text soft tokens):

1. *Untargeted inversion* (several restarts at once): find T that makes triggered embeddings agree with each other
   (collapse, which needs no target) and leave their own pair, under the trigger prior. Its collapse posterior
   q₀(z) ∝ exp(β · mean_i cos(f(T(x_i)), e(z))) ranks the candidates when there are too many to sweep.
2. *Targeted sweep* (one trigger per candidate concept, optimised together): the objective reached for concept k,
   J_k = CE(T(x) → k) + λ · prior, measures how cheaply the model is dragged to k within the prior's budget.
3. *Score and posterior*: a backdoor target is an outlier among the concepts' costs; the score is the anomaly index
   (median − min) / (1.4826 · MAD) of log J (Neural Cleanse's statistic, Wang et al. 2019, on log costs), so it is
   calibrated by the model's own natural variation across concepts. The posterior is q(z_k) ∝ exp(anomaly_k); its
   mode is the suspected target, and the sweep's trigger for it is the inverted trigger used for unlearning.
4. *Refinement* (image families): the likeliest few concepts' triggers are optimised further and the cheapest names
   the target instead of the mode (the sweep's costs are noisy); the score and posterior stay the sweep's.

The periodic image family (a fixed dictionary of sinusoids, :mod:`.periodic_trigger`) has nothing to optimise: its
sweep tries every pattern, and J_k is the cheapest pattern's cross-entropy toward k.

Why the sweep and not only the collapse trigger: on planted models the collapse optimum is often a natural
adversarial patch toward some other concept (and a clean model collapses just as confidently), so the collapse
posterior alone neither finds the target nor detects a backdoor; the per-concept cost comparison does both.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..contrastive import tokenize_all
from ..evaluation.zero_shot import zero_shot_classifier
from ..models.base import ContrastiveAdapter
from .distributed import all_reduce_gradients
from .image_trigger import WARP_MAX_SHIFT, MaskPatternTrigger, build_image_trigger
from .patch_completion import complete_patch
from .periodic_trigger import PERIODIC_AMPLITUDE, PERIODIC_MAX_FREQUENCY, PeriodicTrigger
from .text_trigger import SoftTokenTrigger, nearest_vocabulary_ids

TEXT_SWEEP_BATCH = 64
# Per-tower anomaly levels at which a family counts as backdoored (BI-BAU's unlearning gates, the scan's verdict),
# fitted on the digits lab's 18 models (docs/METHOD_NOTES.md §7): the text score (an exact search over real tokens)
# separates by a wide margin, the image score does not, and a missed image backdoor costs more than a false alarm.
IMAGE_THRESHOLD = 1.5
TEXT_THRESHOLD = 10.0
# The periodic family's score comes from an exhaustive search over a fixed dictionary and is on its own scale: the
# CIFAR-10 lab's SIG backdoors scored 17.9-32.8, its other models at most 4.0 (docs/METHOD_NOTES.md §25). On digits a
# natural stripe (a bar read as "seven") reached 27: the family is meant for natural images.
PERIODIC_THRESHOLD = 8.0
# An image family is unlearned only if its trigger's images match the target concept nearly as closely as the
# concept's own clean images do (docs/METHOD_NOTES.md §18). Over 36 scans of the digits lab the planted triggers
# came within 0.105 of cosine; the warp family's natural shortcuts (a squeezed digit read as "one") mostly stayed
# 0.15 or more short of it.
CONFIDENCE_GAP_THRESHOLD = 0.12
CONFIDENCE_IMAGES = 512
# A word joins a text trigger phrase only if it cuts the remaining loss toward the target at least by this factor.
WORD_GAIN = 0.5
# Seed offset of the clean batches that patch completion draws (apart from the families' own).
PATCH_COMPLETION_OFFSET = 9000
# Seed offset of the periodic family's clean batches (the others' are 100, 200, ... by position).
PERIODIC_OFFSET = 8000
# Triggered images per forward pass of the periodic family's dictionary sweep (atoms × clean images).
DICTIONARY_IMAGES_PER_PASS = 512
# Clean batches the periodic family's dictionary is scored on: at round 0, where the score decides, 8 (128 images);
# the natural scores on 14 lab models fell from up to 9.0 with 2 batches to at most 6.4, while CIFAR-10's SIG stayed
# at 19.7 and 24.2 (docs/METHOD_NOTES.md §25). A later round's re-inversion toward a known target needs fewer.
DICTIONARY_SCORE_BATCHES = 8
DICTIONARY_FOCUS_BATCHES = 2
# Clean batches a refined family's costs are measured on (one for the sweep's): the refined concepts' costs lie
# close together, and on one batch of 16 the choice between a plant and a shortcut was a coin toss (METHOD_NOTES §31).
REFINE_COST_BATCHES = 4
DEFAULT_CONCEPT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "an image of a {}.", "{}")


@dataclass
class InversionConfig:
    """Knobs of the E-step (mirrored by :class:`~bibau_hf.BIBAUConfig`)."""

    steps: int = 20
    score_steps: int = 100
    learning_rate: float = 0.2
    batch_size: int = 16
    restarts: int = 2
    image_families: tuple[str, ...] = ("mask", "warp")
    invert_image: bool = True
    invert_text: bool = True
    mask_l1_weight: float = 20.0
    additive_epsilon: float = 16 / 255
    additive_weight: float = 0.1
    warp_weight: float = 20.0
    warp_max_shift: float = WARP_MAX_SHIFT
    periodic_amplitude: float = PERIODIC_AMPLITUDE
    periodic_max_frequency: int = PERIODIC_MAX_FREQUENCY
    num_soft_tokens: int = 2
    soft_token_position: int = 1
    text_search: str = "tokens"
    token_candidates: int = 64
    soft_token_norm_weight: float = 1.0
    own_pair_weight: float = 1.0
    posterior_temperature: float = 50.0
    max_candidates: int = 16
    refine_concepts: int = 3
    seed: int = 0
    progress: bool = True


def family_key(modality: str, family: str) -> str:
    """``"modality/family"``, e.g. ``"image/warp"``: how targets, gates and reports name a trigger family."""
    return f"{modality}/{family}"


def gate_threshold(
    modality: str, family: str, *, threshold: float, text_threshold: float, periodic_threshold: float
) -> float:
    """The score level a family must reach: its tower's, or the periodic family's own (its score is on another
    scale)."""
    if modality == "text":
        return text_threshold
    return periodic_threshold if family == "periodic" else threshold


def passes_gates(
    modality: str, score: float, confidence_gap: float, *, threshold: float, text_threshold: float,
    max_confidence_gap: float, family: str = "", periodic_threshold: float = PERIODIC_THRESHOLD,
) -> bool:
    """Whether a family counts as backdoored (BI-BAU unlearns it, the scan flags it): its score reaches its level
    (:func:`gate_threshold`) and, for an image family, its confidence gap is at most ``max_confidence_gap``. A NaN gap
    (no clean image of the target to compare with) does not veto."""
    level = gate_threshold(modality, family, threshold=threshold, text_threshold=text_threshold,
                           periodic_threshold=periodic_threshold)
    if modality == "text":
        return score >= level
    return score >= level and not confidence_gap > max_confidence_gap


def text_vetoed_families(passing_targets: Mapping[str, str | None], *, text_threshold: float) -> dict[str, str]:
    """The image families a passing text family overrules: those that pass their gates toward another concept.

    An attacker plants one target, and the text family's exhaustive token search separates planted from clean towers
    far more widely than any image family's score does (METHOD_NOTES §32). An image family that names another concept
    next to it is a natural shortcut of the image tower, and unlearning one costs clean accuracy.

    Args:
        passing_targets: per family key (``"modality/family"``), its target if it passes its gates, else ``None``.
        text_threshold: the text family's gate. A gate of 0 passes every text family, which is no evidence, so it
            vetoes nothing.

    Returns:
        Per overruled image family key, the text family's key that overrules it (empty where no text family passes).
    """
    if text_threshold <= 0:
        return {}
    text = [(key, target) for key, target in passing_targets.items() if key.startswith("text/") and target]
    if not text:
        return {}
    text_key, text_target = text[0]
    return {key: text_key for key, target in passing_targets.items()
            if key.startswith("image/") and target is not None and target != text_target}


@dataclass
class InvertedTrigger:
    """One family's E-step outcome: the inverted trigger for the suspected target, and its statistics."""

    modality: str
    family: str
    trigger: Any
    score: float
    suspected_target: str
    posterior: dict[str, float]
    posterior_entropy: float
    objectives: dict[str, float]
    anomaly: dict[str, float]
    collapse: float
    collapse_target: str
    details: dict[str, Any]
    log_cost_median: float = 0.0
    log_cost_mad: float = 1.0
    confidence_gap: float = float("nan")
    focused: bool = False
    sweep: Any = field(default=None, repr=False)
    sweep_candidates: list[int] = field(default_factory=list, repr=False)
    candidates_names: list[str] = field(default_factory=list, repr=False)
    _adapter: Any = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """This trigger's family name (:func:`family_key`)."""
        return family_key(self.modality, self.family)

    @property
    def likeliest(self) -> list[str]:
        """The swept concepts, most anomalous first (the sweep's ranking of the latent target)."""
        return sorted(self.anomaly, key=lambda concept: -self.anomaly[concept])

    def trigger_for(self, concept: str):
        """The sweep's trigger toward ``concept`` (a single-candidate family), or ``None`` if it was not swept."""
        return self.triggers_for([concept])

    def triggers_for(self, concepts: Sequence[str]):
        """The sweep's triggers toward ``concepts``, one candidate each in that order, or ``None`` unless every one
        of them was swept."""
        rows = self.sweep_rows(concepts)
        if self.sweep is None or not concepts or len(rows) < len(concepts):
            return None
        return self.sweep.select(rows, self._adapter) if self.modality == "text" else self.sweep.select(rows)

    def sweep_rows(self, concepts: Sequence[str] | None = None) -> list[int]:
        """The rows of the sweep that invert toward ``concepts``, in that order (every row for ``None``; a concept
        the sweep skipped has none)."""
        if concepts is None:
            return list(range(len(self.sweep_candidates)))
        names = [self.candidates_names[i] for i in self.sweep_candidates] if self.candidates_names else []
        return [names.index(concept) for concept in concepts if concept in names]

    def summary(self) -> dict[str, Any]:
        top = sorted(self.posterior.items(), key=lambda kv: -kv[1])[:5]
        return {
            "modality": self.modality,
            "family": self.family,
            "score": round(self.score, 3),
            "suspected_target": self.suspected_target,
            "posterior_top": {k: round(v, 4) for k, v in top},
            "posterior_entropy": round(self.posterior_entropy, 4),
            "objectives": self.objectives,
            "focused": self.focused,
            "collapse": None if math.isnan(self.collapse) else round(self.collapse, 4),
            "collapse_target": self.collapse_target,
            "confidence_gap": None if math.isnan(self.confidence_gap) else round(self.confidence_gap, 4),
            **self.details,
        }


@dataclass
class ScanResult:
    """What the E-step found: per-family triggers, the overall backdoor score and the suspected target."""

    triggers: list[InvertedTrigger]
    candidates: list[str]
    natural_similarity: float
    seconds: float = 0.0

    @property
    def strongest(self) -> InvertedTrigger | None:
        return max(self.triggers, key=lambda t: t.score) if self.triggers else None

    @property
    def backdoor_score(self) -> float:
        return self.strongest.score if self.triggers else 0.0

    @property
    def suspected_target(self) -> str:
        return self.strongest.suspected_target if self.triggers else ""

    @property
    def posterior(self) -> dict[str, float]:
        return self.strongest.posterior if self.triggers else {}

    def image_triggers(self) -> list[InvertedTrigger]:
        return [t for t in self.triggers if t.modality == "image"]

    def text_triggers(self) -> list[InvertedTrigger]:
        return [t for t in self.triggers if t.modality == "text"]

    def to_dict(self) -> dict[str, Any]:
        strongest = self.strongest
        return {
            "backdoor_score": round(self.backdoor_score, 3),
            "suspected_target": self.suspected_target,
            "suspected_target_posterior": round(self.posterior.get(self.suspected_target, 0.0), 4),
            "strongest_family": strongest.key if strongest else None,
            "natural_similarity": round(self.natural_similarity, 4),
            "triggers": [t.summary() for t in self.triggers],
            "seconds": round(self.seconds, 2),
        }


# --------------------------------------------------------------------------------------------------- helpers
def pairwise_agreement(emb: torch.Tensor) -> torch.Tensor:
    """Mean cosine between distinct rows of normalised ``[..., B, D]`` embeddings (1 = total collapse)."""
    b = emb.shape[-2]
    total = emb.sum(-2)
    return ((total * total).sum(-1) - b) / (b * (b - 1))


def log_costs(objectives: torch.Tensor) -> torch.Tensor:
    return torch.log(objectives.clamp_min(0) + 1e-4)


def log_cost_statistics(objectives: torch.Tensor) -> tuple[float, float]:
    """Median and scaled MAD (1.4826 · MAD) of log J over the candidates."""
    values = log_costs(objectives)
    median = values.median()
    return float(median), float((values - median).abs().median() * 1.4826)


def anomaly_scores(objectives: torch.Tensor, statistics: tuple[float, float] | None = None) -> torch.Tensor:
    """(median − log J_k) / (1.4826 · MAD) over log J, for every candidate k (positive = cheaper than typical).

    On a log scale because J is dominated by a cross-entropy, itself −log p: a backdoor reaches p ≈ 1 (J → 0) while
    natural shortcuts level off at J ~ 1, and that difference is a ratio, not a gap. ``statistics`` (median, scaled
    MAD) of another sweep measure the costs against that sweep's concepts instead of their own.
    """
    median, mad = statistics if statistics is not None else log_cost_statistics(objectives)
    return (median - log_costs(objectives)) / (mad + 1e-6)


def entropy(probs: torch.Tensor) -> float:
    return float(-(probs * probs.clamp_min(1e-12).log()).sum())


@torch.no_grad()
def concept_embeddings(
    adapter: ContrastiveAdapter, concepts: Sequence[str], templates: Sequence[str] | None
) -> torch.Tensor:
    """Normalised text embedding per concept: the zero-shot class embedding (templates), or the concept text itself."""
    if not templates:
        return adapter.encode_text(tokenize_all(adapter, list(concepts)).to(adapter.device))
    return zero_shot_classifier(adapter, list(concepts), list(templates)).to(adapter.device)


class BatchSampler:
    """Seeded random batches of (images in [0,1], token ids) from in-memory clean pairs."""

    def __init__(self, images: torch.Tensor, token_ids: torch.Tensor, batch_size: int, seed: int) -> None:
        self.images, self.token_ids = images, token_ids
        self.batch_size = min(batch_size, len(images))
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(len(self.images), generator=self.generator)[: self.batch_size]
        return self.images[idx].float() / 255.0, self.token_ids[idx]


class _Side:
    """What differs between inverting the image tower and the text tower."""

    def __init__(self, inverter: BlindInverter, modality: str, family: str) -> None:
        self.inv, self.modality, self.family = inverter, modality, family
        self.key = family_key(modality, family)
        cfg = inverter.config
        if modality == "image":
            weights = {"mask": cfg.mask_l1_weight, "warp": cfg.warp_weight, "periodic": 0.0}
            self.weight = weights.get(family, cfg.additive_weight)
        else:
            self.weight = cfg.soft_token_norm_weight

    def make(self, n: int, generator: torch.Generator):
        cfg, adapter = self.inv.config, self.inv.adapter
        if self.modality == "image":
            size = tuple(self.inv.images.shape[-2:])
            trigger = build_image_trigger(
                self.family, n, size, cfg.additive_epsilon, generator, warp_max_shift=cfg.warp_max_shift
            )
        else:
            trigger = SoftTokenTrigger(adapter, n, cfg.num_soft_tokens, cfg.soft_token_position, generator)
        return trigger.to(adapter.device)

    def embed(self, trigger, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Triggered embeddings ``[C, B, D]``."""
        adapter = self.inv.adapter
        if self.modality == "text":
            return trigger.embed(adapter, ids.to(adapter.device))
        triggered = trigger(images.to(adapter.device))
        c, b = triggered.shape[:2]
        return adapter.encode_image(triggered.flatten(0, 1)).view(c, b, -1)

    @torch.no_grad()
    def partner(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of each triggered input's own pair (captions for images, images for captions)."""
        adapter = self.inv.adapter
        return adapter.encode_text(ids) if self.modality == "image" else adapter.encode_image(images)

    def select(self, trigger, index: int):
        return trigger.select([index], self.inv.adapter) if self.modality == "text" else trigger.select([index])


# ------------------------------------------------------------------------------------------------ inverter
class BlindInverter:
    """Runs the E-step on a model (which it never changes) over clean pairs.

    Args:
        adapter: the model under inspection.
        images: uint8 ``[N, 3, H, W]`` clean images.
        captions: their captions.
        config: inversion settings.
        concepts: candidate target concepts (e.g. class names); default: the distinct captions.
        concept_templates: templates used to embed concepts (ignored when concepts are the captions).
    """

    def __init__(
        self,
        adapter: ContrastiveAdapter,
        images: torch.Tensor,
        captions: Sequence[str],
        config: InversionConfig | None = None,
        concepts: Sequence[str] | None = None,
        concept_templates: Sequence[str] | None = DEFAULT_CONCEPT_TEMPLATES,
    ) -> None:
        if len(images) < 2:
            raise ValueError("blind inversion needs at least 2 clean image-caption pairs")
        self.adapter = adapter
        self.config = config or InversionConfig()
        self.images = images
        self.token_ids = tokenize_all(adapter, captions)
        if concepts:
            self.candidates = list(dict.fromkeys(concepts))
            self.templates = concept_templates
        else:
            self.candidates = list(dict.fromkeys(captions))[:512]
            self.templates = None
        self.concept_emb: torch.Tensor | None = None
        self.text_targets: torch.Tensor | None = None  # what text triggers drag captions to (image prototypes)

    def _sampler(self, offset: int) -> BatchSampler:
        return BatchSampler(self.images, self.token_ids, self.config.batch_size, self.config.seed + offset)

    def run(
        self, previous: list[InvertedTrigger] | None = None, focus: Mapping[str, str | Sequence[str]] | None = None
    ) -> ScanResult:
        """Invert every enabled family; ``previous`` triggers warm-start the sweep (a moved backdoor is tracked).

        With ``focus`` (``"modality/family"`` → a concept or a list of concepts), only those families are inverted,
        each toward its concepts only, warm started from ``previous``; the score is the concepts' anomaly against the
        previous sweep's cost statistics (how far the model still is from its natural costs). It is the cheap E-step
        of the later EM rounds, once the latent target (or, for a family under its gates, the likeliest few) has
        been estimated on the unmodified model.
        """
        started = time.time()
        cfg = self.config
        if focus is not None:
            focus = {key: [value] if isinstance(value, str) else list(value) for key, value in focus.items()}
        with self._frozen_model():
            self.concept_emb = concept_embeddings(self.adapter, self.candidates, self.templates)
            image_targets = self.concept_emb
            natural = self._natural_similarity()
            previous_by_family = {t.key: t for t in previous or []}
            sides = [(_Side(self, "image", f), image_targets) for f in cfg.image_families if cfg.invert_image]
            if cfg.invert_text:
                self.text_targets = self._image_prototypes()
                sides.append((_Side(self, "text", "soft_tokens"), self.text_targets))
            # Each family draws its batches from its own seed offset, by position; the periodic family has a fixed
            # one, so that adding it leaves every other family's draws (and results) as they were without it.
            positions = [side for side, _ in sides if side.family != "periodic"]
            results = []
            clean_sample = None  # embedded once per scan, shared by the image families' confidence gaps
            for side, targets in sides:
                offset = PERIODIC_OFFSET if side.family == "periodic" else 100 * (positions.index(side) + 1)
                before = previous_by_family.get(side.key)
                if focus is not None:
                    if side.key in focus:
                        results.append(self._invert_toward(side, targets, offset, before, focus[side.key]))
                    continue
                if side.modality == "image" and clean_sample is None:
                    clean_sample = self._confidence_sample()
                results.append(self._invert(side, targets, offset, before, clean_sample))
        return ScanResult(results, self.candidates, natural, time.time() - started)

    @contextlib.contextmanager
    def _frozen_model(self) -> Iterator[None]:
        """Eval mode and no parameter gradients: the E-step's gradients must reach the trigger only, never
        accumulate in θ; the model's modes are restored after."""
        was_training = self.adapter.training
        requires = [p.requires_grad for p in self.adapter.parameters()]
        self.adapter.eval()
        self.adapter.requires_grad_(False)
        try:
            yield
        finally:
            for p, r in zip(self.adapter.parameters(), requires):
                p.requires_grad_(r)
            self.adapter.train(was_training)

    def complete_patch(
        self, trigger: MaskPatternTrigger, concept: str, *, max_cells: int, steps: int
    ) -> tuple[MaskPatternTrigger | None, dict[str, Any]]:
        """:func:`~bibau_hf.inversion.patch_completion.complete_patch` on this inverter's model and clean images.

        Uses the concept embeddings of this inverter's last :meth:`run` (call it on the model that run saw).
        Returns ``(None, info)`` where the tower has no cell grid to complete (a ResNet, or cells of one pixel).
        """
        cell = round(self.adapter.patch_size * self.images.shape[-2] / self.adapter.image_size)
        if cell <= 1 or self.concept_emb is None:
            return None, {"completed": False, "cell_pixels": cell}
        sampler = self._sampler(PATCH_COMPLETION_OFFSET)
        device = self.adapter.device
        with self._frozen_model():
            return complete_patch(
                self.adapter.encode_image, self.adapter.logit_scale().detach(), trigger, self.concept_emb,
                self.candidates.index(concept), lambda: sampler()[0].to(device), cell=cell, max_cells=max_cells,
                steps=steps, mask_l1_weight=self.config.mask_l1_weight, learning_rate=self.config.learning_rate,
            )

    @torch.no_grad()
    def _natural_similarity(self) -> float:
        images, _ = self._sampler(0)()
        return float(pairwise_agreement(self.adapter.encode_image(images)))

    @torch.no_grad()
    def _image_prototypes(self) -> torch.Tensor:
        """Per concept, the mean embedding of the clean images zero-shot assigned to it (the concept's text
        embedding where none is): what a text trigger's captions are dragged toward."""
        emb = torch.cat([
            self.adapter.encode_image(self.images[i : i + 256].float() / 255) for i in range(0, len(self.images), 256)
        ])
        assign = (emb @ self.concept_emb.t()).argmax(-1)
        protos = self.concept_emb.clone()
        for k in range(len(protos)):
            members = emb[assign == k]
            if len(members):
                protos[k] = F.normalize(members.mean(0), dim=-1)
        return protos

    def _optimise(self, params, loss_fn, steps: int, desc: str) -> None:
        optimizer = torch.optim.Adam(params, lr=self.config.learning_rate)
        for _ in tqdm(range(steps), desc=desc, disable=not self.config.progress, leave=False):
            loss = loss_fn()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            all_reduce_gradients(params)
            optimizer.step()

    def _candidate_subset(self, collapse_posterior: torch.Tensor) -> list[int]:
        """All candidates if few; else the collapse posterior's top half plus a fixed random rest (for the MAD)."""
        k = min(self.config.max_candidates, len(self.candidates))
        if k == len(self.candidates):
            return list(range(k))
        top = collapse_posterior.topk(k // 2).indices.tolist()
        order = torch.randperm(len(self.candidates), generator=torch.Generator().manual_seed(0)).tolist()
        return top + [i for i in order if i not in top][: k - len(top)]

    def _invert(
        self, side: _Side, targets: torch.Tensor, offset: int, previous: InvertedTrigger | None,
        clean_sample: tuple[torch.Tensor, torch.Tensor] | None,
    ):
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed + offset)
        sampler = self._sampler(offset)
        if side.family == "periodic":
            # Nothing to optimise, and every concept costs the same dictionary pass: no collapse step, no subset.
            subset = list(range(len(self.candidates)))
            sweep, objectives = self._dictionary_sweep(side, targets, subset, sampler, DICTIONARY_SCORE_BATCHES)
            result = self._result(side, sweep, subset, objectives, float("nan"), None)
            result.confidence_gap = self._confidence_gap(result, clean_sample)
            return result

        # 1. untargeted collapse
        trigger = side.make(cfg.restarts, generator)

        def collapse_objective(images, ids) -> torch.Tensor:
            emb = side.embed(trigger, images, ids)
            own = (emb * side.partner(images, ids).unsqueeze(0)).sum(-1).mean(-1)
            return -pairwise_agreement(emb) + cfg.own_pair_weight * own + side.weight * trigger.prior_cost()

        self._optimise(list(trigger.parameters()), lambda: collapse_objective(*sampler()).sum(), cfg.steps,
                       f"invert {side.key}")
        with torch.no_grad():
            images, ids = sampler()
            best = int(collapse_objective(images, ids).argmin())
            emb = side.embed(trigger, images, ids)[best]
            collapse = float(pairwise_agreement(emb))
            collapse_posterior = torch.softmax(cfg.posterior_temperature * (emb @ targets.t()).mean(0), dim=0).cpu()

        # 2. targeted sweep, one trigger per candidate concept
        subset = self._candidate_subset(collapse_posterior)
        if side.modality == "text" and cfg.text_search == "tokens":
            sweep, objectives = self._token_sweep(targets, subset, sampler)
        else:
            sweep, objectives = self._continuous_sweep(side, targets, subset, sampler, generator, previous)
        result = self._result(side, sweep, subset, objectives, collapse, collapse_posterior)
        if side.modality == "image":
            result.confidence_gap = self._confidence_gap(result, clean_sample)
            if cfg.refine_concepts > 1:
                self._refine_target(side, targets, result, sampler, generator)
        return result

    def _refine_target(
        self, side: _Side, targets: torch.Tensor, result: InvertedTrigger, sampler: BatchSampler,
        generator: torch.Generator,
    ) -> None:
        """Re-rank the family's most anomalous concepts by their cost after more optimisation (METHOD_NOTES §31).

        The sweep's costs are noisy, mostly in the optimisation (§17): a planted patch that the sweep found late
        ranks second behind a natural shortcut. The ``refine_concepts`` most anomalous concepts' triggers are
        optimised as many steps again, warm started, and written back into the sweep; their costs are measured on
        ``REFINE_COST_BATCHES`` clean batches (refined costs are close, and one batch decided BadNets seed 7 either
        way), and the family's trigger and suspected target become the cheapest of them. The score, posterior and
        confidence gap stay the sweep's: the gates were fitted on them, and more steps make every refined concept look
        more anomalous against the others.
        """
        concepts = result.likeliest[: self.config.refine_concepts]
        rows = result.sweep_rows(concepts)
        subset = [result.sweep_candidates[row] for row in rows]
        refined, costs = self._continuous_sweep(side, targets, subset, sampler, generator, None,
                                                result.sweep.select(rows), steps=self.config.score_steps,
                                                cost_batches=REFINE_COST_BATCHES)
        result.sweep.assign(rows, refined)
        best = int(costs.argmin())
        result.trigger = side.select(result.sweep, rows[best])
        result.suspected_target = concepts[best]
        result.details = {**result.trigger.describe(0),
                          "refined_costs": {c: round(float(v), 4) for c, v in zip(concepts, costs)}}

    @torch.no_grad()
    def _confidence_sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """At most ``CONFIDENCE_IMAGES`` clean images (a seeded draw) and their embeddings on the current model."""
        generator = torch.Generator().manual_seed(self.config.seed)
        rows = torch.randperm(len(self.images), generator=generator)[:CONFIDENCE_IMAGES]
        images = self.images[rows].float().to(self.adapter.device) / 255
        return images, torch.cat([self.adapter.encode_image(chunk) for chunk in images.split(256)])

    @torch.no_grad()
    def _confidence_gap(self, inverted: InvertedTrigger, clean_sample: tuple[torch.Tensor, torch.Tensor]) -> float:
        """How much less closely the trigger's images match the suspected target than the target's own images do.

        Mean cosine to the target concept of the clean images zero-shot assigned to it, minus that of the other
        images with the trigger applied. A backdoor maps triggered images onto its target as firmly as the
        target's natural images (the gap is near 0); a natural shortcut reaches the target only at its border. NaN
        when no clean image, or every one, is assigned to the target (nothing to compare with).
        """
        k = self.candidates.index(inverted.suspected_target)
        images, emb = clean_sample
        own = (emb @ self.concept_emb.t()).argmax(-1) == k
        if not own.any() or own.all():
            return float("nan")
        triggered = torch.cat([self.adapter.encode_image(inverted.trigger.apply_one(chunk, 0))
                               for chunk in images[~own].split(256)])
        target = self.concept_emb[k]
        return float((emb[own] @ target).mean() - (triggered @ target).mean())

    def _invert_toward(
        self, side: _Side, targets: torch.Tensor, offset: int, previous: InvertedTrigger | None,
        concepts: Sequence[str],
    ) -> InvertedTrigger:
        """Re-invert one family toward ``concepts`` only (warm-started), scored against ``previous``'s statistics."""
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed + offset)
        sampler = self._sampler(offset)
        subset = [self.candidates.index(concept) for concept in concepts]
        if side.modality == "text" and cfg.text_search == "tokens":
            sweep, objectives = self._token_sweep(targets, subset, sampler)
        elif side.family == "periodic":
            sweep, objectives = self._dictionary_sweep(side, targets, subset, sampler, DICTIONARY_FOCUS_BATCHES)
        else:
            start = previous.triggers_for(concepts) if previous is not None else None
            sweep, objectives = self._continuous_sweep(side, targets, subset, sampler, generator, None, start)
        statistics = (previous.log_cost_median, previous.log_cost_mad) if previous is not None else None
        result = self._result(side, sweep, subset, objectives, float("nan"), None, statistics)
        result.focused = True
        return result

    def _continuous_sweep(
        self, side: _Side, targets, subset, sampler, generator, previous, start=None, steps: int | None = None,
        cost_batches: int = 1,
    ):
        """Optimise one continuous trigger per candidate (under the family's prior); returns it and J_k.

        ``steps`` defaults to ``score_steps``, half that when warm started; J_k is measured on ``cost_batches``
        clean batches."""
        cfg = self.config
        sweep = side.make(len(subset), generator)
        if start is None and previous is not None and previous.sweep_candidates == subset:
            start = previous.sweep
        if steps is None:
            # Continuing last round's triggers: they start near their optimum, so half the steps suffice.
            steps = cfg.score_steps if start is None else max(1, cfg.score_steps // 2)
        if start is not None:
            sweep.load_state_dict(start.state_dict())
        labels = torch.tensor(subset, device=targets.device)
        scale = self.adapter.logit_scale().detach()

        def sweep_objective(images, ids) -> torch.Tensor:
            emb = side.embed(sweep, images, ids)  # [K, B, D]
            logits = scale * emb @ targets.t()
            ce = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(emb.shape[1]), reduction="none")
            return ce.view(len(subset), -1).mean(-1) + side.weight * sweep.prior_cost()

        self._optimise(list(sweep.parameters()), lambda: sweep_objective(*sampler()).sum(), steps,
                       f"score {side.key}")
        with torch.no_grad():
            objectives = torch.stack([sweep_objective(*sampler()) for _ in range(cost_batches)]).mean(0).cpu()
        return sweep, objectives

    @torch.no_grad()
    def _dictionary_sweep(
        self, side: _Side, targets: torch.Tensor, subset: list[int], sampler: BatchSampler, batches: int
    ):
        """The periodic family's sweep: every atom of the dictionary on the same ``batches`` clean batches; per
        candidate, the cheapest atom and its cross-entropy toward the candidate (J_k, with no prior: the amplitude is
        fixed)."""
        cfg = self.config
        dictionary = PeriodicTrigger.dictionary(
            tuple(self.images.shape[-2:]), cfg.periodic_amplitude, cfg.periodic_max_frequency
        ).to(self.adapter.device)
        images = torch.cat([sampler()[0] for _ in range(batches)])
        scale = self.adapter.logit_scale().detach()
        chunk = max(1, DICTIONARY_IMAGES_PER_PASS // len(images))
        costs = []
        for start in tqdm(range(0, dictionary.num_candidates, chunk), desc="score image/periodic",
                          disable=not cfg.progress, leave=False):
            atoms = list(range(start, min(start + chunk, dictionary.num_candidates)))
            emb = side.embed(dictionary.select(atoms), images, None)  # [atoms, B, D]
            log_probs = torch.log_softmax(scale * emb @ targets.t(), dim=-1)  # [atoms, B, concepts]
            costs.append(-log_probs[..., subset].mean(1))
        costs = torch.cat(costs)  # [atoms, len(subset)]
        objectives, best = costs.min(0)
        return dictionary.select(best.tolist()), objectives.cpu()

    def _token_sweep(self, targets: torch.Tensor, subset: list[int], sampler: BatchSampler):
        """For each candidate, the vocabulary token whose insertion drags captions to it most cheaply.

        Continuous soft tokens reach every concept about equally easily (they are not words), so the text side
        searches real tokens: first-order scores (the gradient at a probe token, as in HotFlip) pick
        ``token_candidates`` tokens per concept, which are then evaluated exactly. J_k is the best token's loss.
        """
        # Text forwards are cheap next to the image sweep; a larger caption batch keeps a clean text tower's costs
        # from looking anomalous by chance (16 captions scored a BadNets model's clean text tower 3.2, 64 about 1).
        sampler = BatchSampler(self.images, self.token_ids, TEXT_SWEEP_BATCH, sampler.generator.initial_seed())
        weight = self.adapter.token_embedding_weight()
        candidates = self._word_candidates(sampler()[1], None, targets, subset)
        _, ids = sampler()
        best_tokens, objectives = [], []
        for row, k in enumerate(subset):
            costs = self._word_costs(ids, None, candidates[row], targets, k)
            best = int(costs.argmin())
            best_tokens.append(int(candidates[row, best]))
            objectives.append(float(costs[best]))
        sweep = SoftTokenTrigger(self.adapter, len(subset), 1, self.config.soft_token_position).to(self.adapter.device)
        with torch.no_grad():
            sweep.tokens.copy_(weight[best_tokens].unsqueeze(1))
        return sweep, torch.tensor(objectives)

    def _word_candidates(
        self, ids: torch.Tensor, prefix: torch.Tensor | None, targets: torch.Tensor, subset: list[int]
    ) -> torch.Tensor:
        """Per concept of ``subset``, the ``token_candidates`` vocabulary tokens whose insertion after ``prefix``
        (``[P, width]`` words already in place, or none) lowers the loss toward it most, to first order."""
        adapter, position = self.adapter, self.config.soft_token_position
        weight = adapter.token_embedding_weight()
        ids = ids.to(adapter.device)
        probe = weight.mean(0, keepdim=True).clone().requires_grad_(True)
        tokens = probe if prefix is None else torch.cat([prefix, probe])
        scale = adapter.logit_scale().detach()
        log_p = torch.log_softmax(scale * adapter.encode_text(ids, soft_tokens=tokens, soft_position=position)
                                  @ targets.t(), dim=-1)
        grads = torch.stack([
            torch.autograd.grad(-log_p[:, k].mean(), probe, retain_graph=True)[0][0] for k in subset
        ])
        scores = -(grads @ weight.t())  # first-order decrease of each concept's loss, per vocabulary token
        banned = [adapter.placeholder_token_id, adapter.eos_token_id, adapter.pad_token_id]
        scores[:, banned] = float("-inf")
        # A concept's name is a natural shortcut, not a trigger: "seven" inserted in a caption is about seven. With
        # named concepts (class names) every concept's name is excluded for every concept: the task's own words
        # move captions between its classes by meaning (a clean digits model sent captions with "two" inserted to
        # "three", an anomaly of 6.3), while a trigger word is one outside that vocabulary.
        if self.templates is not None:
            scores[:, adapter.tokenize(self.candidates).flatten().unique()] = float("-inf")
        else:
            for row, k in enumerate(subset):
                scores[row, adapter.tokenize([self.candidates[k]])[0]] = float("-inf")
        return scores.topk(min(self.config.token_candidates, weight.shape[0] - len(banned)), dim=1).indices

    @torch.no_grad()
    def _word_costs(
        self, ids: torch.Tensor, prefix: torch.Tensor | None, tokens: torch.Tensor, targets: torch.Tensor, k: int
    ) -> torch.Tensor:
        """Mean cross-entropy toward concept ``k`` of the captions ``ids`` with ``prefix`` and then each of
        ``tokens`` (vocabulary ids) inserted; one value per token."""
        adapter = self.adapter
        weight = adapter.token_embedding_weight()
        ids = ids.to(adapter.device)
        batch = ids.shape[0]
        words = weight[tokens].unsqueeze(1)  # [M, 1, width]
        if prefix is not None:
            words = torch.cat([prefix.unsqueeze(0).expand(len(tokens), -1, -1), words], dim=1)
        emb = adapter.encode_text(ids.repeat(len(tokens), 1), soft_tokens=words.repeat_interleave(batch, dim=0),
                                  soft_position=self.config.soft_token_position)
        logits = adapter.logit_scale() * emb @ targets.t()
        ce = F.cross_entropy(logits, torch.full((len(logits),), k, device=logits.device), reduction="none")
        return ce.view(len(tokens), batch).mean(1)

    def extend_trigger_words(self, words: torch.Tensor, concept: str, max_words: int) -> torch.Tensor:
        """Grow a text trigger made of vocabulary tokens (``[P, width]`` embeddings) word by word toward ``concept``.

        The token search scores concepts with one word, but the tokenizer may split a trigger word into pieces ("cf"
        is "c" + "f"), and unlearning one piece leaves the rest active. Another word is appended while it at least
        halves the loss toward the concept (``WORD_GAIN``; any word lowers it a little), up to ``max_words``.
        """
        if self.text_targets is None:
            raise RuntimeError("extend_trigger_words needs a text-side inversion first (run())")
        with self._frozen_model():
            k = self.candidates.index(concept)
            sampler = BatchSampler(self.images, self.token_ids, TEXT_SWEEP_BATCH, self.config.seed + 7919)
            weight = self.adapter.token_embedding_weight()
            words = words.to(weight.device, weight.dtype)
            while len(words) < max_words:
                candidates = self._word_candidates(sampler()[1], words, self.text_targets, [k])[0]
                _, ids = sampler()
                last, _ = nearest_vocabulary_ids(self.adapter, words[-1:])
                current = float(self._word_costs(ids, words[:-1] if len(words) > 1 else None, last,
                                                 self.text_targets, k)[0])
                costs = self._word_costs(ids, words, candidates, self.text_targets, k)
                best = int(costs.argmin())
                if float(costs[best]) > WORD_GAIN * current:
                    break
                words = torch.cat([words, weight[candidates[best]].unsqueeze(0)])
        return words

    def _result(
        self, side: _Side, sweep, subset, objectives, collapse, collapse_posterior, statistics=None
    ) -> InvertedTrigger:
        """Score and posterior from the concepts' costs; the trigger toward the most anomalous one."""
        statistics = statistics or log_cost_statistics(objectives)
        anomaly = anomaly_scores(objectives, statistics)
        best_k = int(anomaly.argmax())
        posterior = torch.zeros(len(self.candidates))
        posterior[subset] = torch.softmax(anomaly, dim=0)
        chosen = side.select(sweep, best_k)
        details = chosen.describe(0)
        if side.modality == "text":
            details["nearest_tokens"] = chosen.nearest_tokens(self.adapter, 0, k=3)
        return InvertedTrigger(
            modality=side.modality, family=side.family, trigger=chosen, score=max(0.0, float(anomaly[best_k])),
            suspected_target=self.candidates[subset[best_k]],
            posterior={c: float(p) for c, p in zip(self.candidates, posterior) if p > 0},
            posterior_entropy=entropy(posterior[subset]),
            objectives={self.candidates[i]: round(float(v), 4) for i, v in zip(subset, objectives)},
            anomaly={self.candidates[i]: round(float(v), 4) for i, v in zip(subset, anomaly)},
            collapse=collapse,
            collapse_target="" if collapse_posterior is None else self.candidates[int(collapse_posterior.argmax())],
            details=details, log_cost_median=statistics[0], log_cost_mad=statistics[1], sweep=sweep,
            sweep_candidates=subset, candidates_names=self.candidates, _adapter=self.adapter,
        )


def scan(
    adapter: ContrastiveAdapter,
    images: torch.Tensor,
    captions: Sequence[str],
    concepts: Sequence[str] | None = None,
    config: InversionConfig | None = None,
    concept_templates: Sequence[str] | None = DEFAULT_CONCEPT_TEMPLATES,
) -> ScanResult:
    """Is this model backdoored, and toward what? The E-step alone; the model is left unchanged.

    Args:
        adapter: the suspect model (see :func:`bibau_hf.models.load_adapter`).
        images: uint8 ``[N, 3, H, W]`` clean images (a few hundred suffice).
        captions: their captions.
        concepts: candidate target concepts, e.g. class names; default: the distinct captions.
        config: inversion settings.
        concept_templates: prompt templates for embedding concepts.

    Returns:
        A :class:`ScanResult`: ``backdoor_score`` (an anomaly index; compare each family's score with its tower's
        threshold, ``IMAGE_THRESHOLD`` or ``TEXT_THRESHOLD``), ``suspected_target``
        and its ``posterior``, and the inverted triggers.
    """
    return BlindInverter(adapter, images, captions, config, concepts, concept_templates).run()
