"""The benchmark's baselines (benchmarks/baselines): CleanCLIP, I-BAU, the shared budget, BI-BAU variants, and the
benchmark's own measurement and aggregation helpers. Tiny models, a few steps each: seconds."""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# benchmarks/ is not an installed package; the benchmark scripts put it on the path the same way.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import baselines  # noqa: E402
from baselines.cleanclip import augment_caption, cleanclip_loss  # noqa: E402
from baselines.ibau import zero_shot_loss  # noqa: E402

from bibau_hf.bibau_config import BIBAUConfig  # noqa: E402
from bibau_hf.contrastive import make_lr_scheduler  # noqa: E402
from bibau_hf.evaluation import zero_shot_classifier  # noqa: E402


def small_set(digits_data, n=32):
    train, _ = digits_data
    return train.take(n, seed=0)


def params_of(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def make_batch(data, model, seed=0) -> baselines.Batch:
    return baselines.Batch(
        images=data.images.float() / 255, input_ids=model.tokenize(data.captions), captions=list(data.captions),
        labels=data.labels, generator=torch.Generator().manual_seed(seed),
    )


BUDGET = baselines.Budget(epochs=2, batch_size=16, learning_rate=1e-3, lr_schedule="constant", seed=0)


# ------------------------------------------------------------------------------------------------ shared budget
def test_budget_is_read_from_bibau_config(tmp_path):
    config = BIBAUConfig(output_dir=str(tmp_path), num_train_epochs=7, max_steps=-1, per_device_train_batch_size=8,
                         learning_rate=3e-4, seed=5)
    budget = baselines.Budget.from_config(config, 64)
    assert budget == baselines.Budget(epochs=7, batch_size=8, learning_rate=3e-4, lr_schedule="constant",
                                      weight_decay=0.0, seed=5)
    cosine = BIBAUConfig(output_dir=str(tmp_path), lr_scheduler_type="cosine")
    assert baselines.Budget.from_config(cosine, 64).lr_schedule == "cosine"


def test_budget_turns_bibau_step_budget_into_as_many_steps(tmp_path):
    # 300 steps of 32 pairs: 63 pairs give one full batch per epoch, 200 pairs give six.
    config = BIBAUConfig(output_dir=str(tmp_path), max_steps=300, per_device_train_batch_size=32)
    assert baselines.Budget.from_config(config, 63).epochs == 300
    assert baselines.Budget.from_config(config, 200).epochs == 50


def test_lr_schedules():
    def rates(schedule):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_lr_scheduler(opt, total_steps=10, schedule=schedule)
        out = []
        for _ in range(10):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert rates("constant") == [1.0] * 10
    cosine = rates("cosine")
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine[1:], cosine[2:])) and cosine[-1] < 0.05
    with pytest.raises(ValueError, match="schedule"):
        rates("exponential")


def test_train_with_budget_takes_the_budgeted_steps_and_trains(tiny_model, digits_data):
    data = small_set(digits_data, 40)  # 40 // 16 = 2 full batches per epoch, the remainder dropped
    before = params_of(tiny_model)
    sizes = []

    def step(batch):
        sizes.append(batch.images.shape[0])
        out = tiny_model(batch.images, batch.input_ids)
        from bibau_hf.contrastive import clip_loss

        return clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"]), {}

    history = baselines.train_with_budget(tiny_model, data, BUDGET, step)
    assert sizes == [16] * (BUDGET.epochs * 2)
    assert len(history) == BUDGET.epochs and set(history[0]) == {"loss"}
    assert not torch.equal(before, params_of(tiny_model))
    assert not tiny_model.training


def test_library_clean_finetune_follows_the_config_schedule(tiny_model, digits_data, tmp_path, monkeypatch):
    import bibau_hf.clean_pipeline as pipeline

    seen = {}
    real = pipeline.train_contrastive

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_contrastive", spy)
    config = BIBAUConfig(output_dir=str(tmp_path), num_train_epochs=2, max_steps=-1,
                         per_device_train_batch_size=16)
    before = params_of(tiny_model)
    baselines.clean_finetune(tiny_model, small_set(digits_data), config)
    assert seen["lr_schedule"] == "constant" and seen["epochs"] == 2 and seen["batch_size"] == 16
    assert not torch.equal(before, params_of(tiny_model))


# ----------------------------------------------------------------------------------------------------- CleanCLIP
def test_image_augmentation_keeps_shape_range_and_is_seeded():
    images = torch.rand(6, 3, 32, 32)
    a = baselines.augment_images(images, torch.Generator().manual_seed(0))
    b = baselines.augment_images(images, torch.Generator().manual_seed(0))
    c = baselines.augment_images(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and a.dtype == images.dtype
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - images).abs().mean() > 0.02  # it really changes the images


def test_image_augmentation_geometry_is_exact():
    images = torch.rand(8, 3, 16, 16)
    exact = dict(crop_scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0)
    # Full-size square crop, no flip, no jitter: the resampling grid hits the pixel centres, the image comes back.
    same = baselines.augment_images(images, torch.Generator().manual_seed(0), flip=False, **exact)
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    flipped = baselines.augment_images(images, torch.Generator().manual_seed(0), flip=True, **exact)
    kinds = []
    for i in range(len(images)):
        if torch.allclose(flipped[i], images[i], atol=1e-5):
            kinds.append("same")
        else:
            torch.testing.assert_close(flipped[i], images[i].flip(-1), atol=1e-5, rtol=0)
            kinds.append("flipped")
    assert set(kinds) == {"same", "flipped"}
    # A crop zooms in: fewer distinct values along a row than the source has (interpolated from fewer pixels),
    # and never outside the source's range.
    zoom = baselines.augment_images(images, torch.Generator().manual_seed(0), crop_scale=(0.25, 0.25), flip=False,
                                    jitter=0.0)
    assert float(zoom.min()) >= float(images.min()) - 1e-6 and float(zoom.max()) <= float(images.max()) + 1e-6
    assert not torch.allclose(zoom, images, atol=1e-3)


def test_caption_augmentation_only_reorders_drops_or_repeats_words():
    rng = random.Random(0)
    caption = "a low resolution image of the digit seven."
    outputs = [augment_caption(caption, rng) for _ in range(200)]
    source = Counter(caption.split())
    for text in outputs:
        words = text.split()
        assert words, "a caption never becomes empty"
        assert set(words) <= set(source), "no new words (no synonyms)"
    assert len(set(outputs)) > 10  # deletion, swap and insertion all happen
    assert any(len(t.split()) < len(source) for t in outputs)
    assert any(len(t.split()) > sum(source.values()) for t in outputs)
    assert all(set(augment_caption("seven", random.Random(s)).split()) == {"seven"} for s in range(20))
    assert baselines.augment_captions([caption] * 3, torch.Generator().manual_seed(0)) == baselines.augment_captions(
        [caption] * 3, torch.Generator().manual_seed(0))


def test_in_modal_loss_is_infonce_within_a_modality():
    torch.manual_seed(0)
    view = F.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(10.0)
    aligned = baselines.in_modal_loss(view, view, scale)
    shuffled = baselines.in_modal_loss(view, view[torch.randperm(8)], scale)
    expected = F.cross_entropy(scale * view @ view.t(), torch.arange(8))
    torch.testing.assert_close(aligned, expected)
    assert aligned < shuffled


def test_cleanclip_inmodal_terms_reach_both_towers(tiny_model, digits_data):
    data = small_set(digits_data, 16)
    batch = make_batch(data, tiny_model)
    loss, terms = cleanclip_loss(tiny_model, batch, lambda_multimodal=0.0, lambda_inmodal=1.0)
    loss.backward()
    assert set(terms) == {"multimodal", "inmodal_image", "inmodal_text"}
    assert terms["inmodal_image"] > 0 and terms["inmodal_text"] > 0
    grads = {name: p.grad.abs().sum().item() for name, p in tiny_model.named_parameters() if p.grad is not None}
    image = {k for k in grads if "vision" in k or "visual" in k}
    text = set(grads) - image - {"model.logit_scale"}  # HF text_model/text_projection; open_clip the rest
    assert text and sum(grads[k] for k in image) > 0 and sum(grads[k] for k in text) > 0


def test_cleanclip_trains_and_every_term_decreases(tiny_model, digits_data):
    data = small_set(digits_data, 32)
    # A randomly initialised tiny ViT cannot tell 32 near-identical digits apart under the default (strong) crops in
    # a few steps; mild augmentation makes the in-modal task learnable here (on a trained model the default is).
    aug = dict(crop_scale=(0.8, 1.0), jitter=0.1, flip=False)

    def probe():  # all terms on one fixed batch and one fixed augmentation draw
        with torch.no_grad():
            return cleanclip_loss(tiny_model, make_batch(data, tiny_model, seed=123), **aug)[1]

    before, start = params_of(tiny_model), probe()
    history = baselines.cleanclip(tiny_model, data, baselines.Budget(epochs=10, batch_size=16, learning_rate=2e-3),
                                  **aug)
    end = probe()
    assert len(history) == 10
    for term in ("multimodal", "inmodal_image", "inmodal_text"):
        assert end[term] < 0.85 * start[term], (term, start, end)
    first = history[0]
    torch.testing.assert_close(torch.tensor(first["loss"]), torch.tensor(
        first["multimodal"] + (first["inmodal_image"] + first["inmodal_text"]) / 2), rtol=1e-5, atol=1e-5)
    assert not torch.equal(before, params_of(tiny_model))


# --------------------------------------------------------------------------------------------------------- I-BAU
def test_class_embeddings_match_the_zero_shot_classifier(tiny_model, digits_data):
    _, test = digits_data
    ours = baselines.class_embeddings(tiny_model, test.class_names, test.templates)
    assert ours.requires_grad
    reference = zero_shot_classifier(tiny_model, test.class_names, test.templates)
    torch.testing.assert_close(ours.detach().cpu(), reference, atol=1e-5, rtol=1e-4)


def test_universal_pgd_respects_epsilon_and_raises_the_loss(tiny_model, digits_data):
    data = small_set(digits_data, 16)
    _, test = digits_data
    images, labels = data.images.float() / 255, data.labels
    with torch.no_grad():
        classifier = baselines.class_embeddings(tiny_model, test.class_names, test.templates)
        scale = tiny_model.logit_scale()
    eps = 8 / 255
    delta = baselines.universal_pgd(tiny_model, images, labels, torch.zeros(1, 3, 32, 32), classifier, scale, eps,
                                    steps=5, step_size=eps / 2)
    assert delta.shape == (1, 3, 32, 32) and not delta.requires_grad
    assert float(delta.abs().max()) <= eps + 1e-7
    assert float(delta.abs().max()) > eps / 2  # it moved to the boundary somewhere
    with torch.no_grad():
        clean = zero_shot_loss(tiny_model, images, labels, classifier, scale)
        attacked = zero_shot_loss(tiny_model, (images + delta).clamp(0, 1), labels, classifier, scale)
    assert attacked > clean
    # A warm start outside the ball is projected back.
    far = baselines.universal_pgd(tiny_model, images, labels, torch.ones(1, 3, 32, 32), classifier, scale, eps,
                                  steps=1, step_size=eps / 2)
    assert float(far.abs().max()) <= eps + 1e-7
    # No parameter gradient is accumulated by the inner maximisation.
    assert all(p.grad is None for p in tiny_model.parameters())


def test_ibau_trains_within_epsilon(tiny_model, digits_data):
    data = small_set(digits_data, 32)
    _, test = digits_data
    before = params_of(tiny_model)
    eps = 16 / 255
    # Two templates instead of eight: the classifier is re-embedded at every step, and the test only needs its shape.
    result = baselines.ibau(tiny_model, data, BUDGET, test.class_names, test.templates[:2], epsilon=eps,
                            inner_steps=2)
    assert isinstance(result, baselines.IBAUResult)
    assert len(result.history) == BUDGET.epochs
    assert set(result.history[0]) == {"loss", "adversarial", "clip", "fooled_before_step"}
    assert float(result.perturbation.abs().max()) <= eps + 1e-7 and float(result.perturbation.abs().max()) > 0
    assert not torch.equal(before, params_of(tiny_model))


def test_ibau_needs_labels_and_a_valid_epsilon(tiny_model, digits_data):
    from bibau_hf.data import ImageTextDataset

    data = small_set(digits_data, 16)
    _, test = digits_data
    unlabelled = ImageTextDataset(data.images, data.captions)
    with pytest.raises(ValueError, match="labels"):
        baselines.ibau(tiny_model, unlabelled, BUDGET, test.class_names, test.templates)
    with pytest.raises(ValueError, match="epsilon"):
        baselines.ibau(tiny_model, data, BUDGET, test.class_names, test.templates, epsilon=0)


# ---------------------------------------------------------------------------------------------- BI-BAU variants
def test_variants_change_exactly_their_knob(tmp_path):
    base = BIBAUConfig(output_dir=str(tmp_path / "base"), seed=3, num_train_epochs=11)
    expected = {
        "bibau": {}, "bibau_lora": {"use_lora": True, "learning_rate": 1e-3},
        "bibau_no_text": {"invert_towers": "image"}, "bibau_no_target": {"target_posterior": False},
        "bibau_no_prior": {"prior_type": "none"}, "bibau_additive": {"trigger_families": ["additive"]},
        "bibau_mask_only": {"trigger_families": ["mask"]}, "bibau_no_extrapolation": {"path_extrapolation": 1.0},
        "bibau_all_families": {"trigger_families": ["mask", "warp", "additive"]},
        "bibau_no_patch": {"patch_completion": False}, "bibau_wide_warp": {"warp_max_shift": 0.25},
        "bibau_periodic": {"trigger_families": ["mask", "warp", "periodic"]},
        "bibau_uniform_ungated": {"ungated_families": "uniform"},
        "bibau_uniform_ungated_half": {"ungated_families": "uniform", "ungated_weight": 0.5},
        "bibau_uniform_if_none": {"ungated_families": "uniform_if_none_pass"},
        "bibau_relearn_lookahead": {"relearn_lookahead": 0.05},
    }
    assert set(expected) == set(baselines.VARIANTS)
    for name, changes in expected.items():
        config = baselines.variant_config(base, name, str(tmp_path / name))
        assert config.output_dir == str(tmp_path / name)
        assert config.seed == 3 and config.num_train_epochs == 11
        for key in ("learning_rate", "use_lora", "invert_towers", "push_weight", "prior_type", "trigger_families",
                    "path_extrapolation", "patch_completion", "warp_max_shift", "ungated_families",
                    "relearn_lookahead"):
            assert getattr(config, key) == changes.get(key, getattr(base, key)), (name, key)
    # BI-BAU's default inverts the mask and warp families, so the mask-only row is an ablation of its own.
    assert base.trigger_families == ["mask", "warp"] and "bibau_mask_only" not in baselines.ALIASES
    with pytest.raises(KeyError):
        baselines.variant_config(base, "bibau_nothing", str(tmp_path))


def test_run_bibau_reports_what_the_benchmark_keeps(digits_data, tmp_path, _tiny_models):
    import copy

    model = copy.deepcopy(_tiny_models["hf"])
    config = BIBAUConfig(
        output_dir=str(tmp_path), max_steps=2, em_rounds=1, inversion_steps=3, score_steps=6, inversion_restarts=1,
        inversion_batch_size=16, per_device_train_batch_size=16, disable_tqdm=True, final_scan=False,
        logging_steps=1000, concept_names=digits_data[1].class_names, use_cpu=True,
    )
    before = params_of(model)
    info = baselines.run_bibau(model, small_set(digits_data), config)
    assert set(info) >= {"seconds", "e_step_seconds", "mode", "suspected_target", "score_before", "steps",
                         "stopped_early", "rounds"}
    assert info["steps"] == 2 and info["mode"] == "full" and info["suspected_target"] in digits_data[1].class_names
    # One E-step round: what it unlearned, and per completed-or-not mask family whether patch completion replaced it.
    (round_info,) = info["rounds"]
    assert set(round_info) == {"unlearned_targets", "uniform_families", "hedged_concepts", "patch_completed"}
    assert round_info["uniform_families"] == [] and round_info["hedged_concepts"] == {}  # the default skips them
    assert all(isinstance(done, bool) for done in round_info["patch_completed"].values())
    assert not torch.equal(before, params_of(model))


# ------------------------------------------------------------------------------------- benchmark helpers
def test_peak_memory_sees_an_allocation():
    import run_benchmark

    with run_benchmark.PeakMemory("cpu") as idle:
        pass
    with run_benchmark.PeakMemory("cpu") as busy:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block += 1
        # Keep it alive for many sampling intervals: a block freed within one interval is only seen when it sets a
        # new lifetime maximum of the process, which an earlier test may already have set.
        time.sleep(0.3)
        del block
    assert busy.peak_mb >= 48, busy.peak_mb
    assert idle.peak_mb < 16, idle.peak_mb


def test_cached_cells_are_not_reused_once_a_default_they_read_changes():
    import dataclasses

    import run_benchmark

    @dataclasses.dataclass
    class SameDefaults(BIBAUConfig):
        pass

    @dataclasses.dataclass
    class CompletionOff(BIBAUConfig):
        patch_completion: bool = False

    @dataclasses.dataclass
    class OtherBudget(BIBAUConfig):
        max_steps: int = 301

    current = run_benchmark.library_defaults()
    assert run_benchmark.library_defaults(SameDefaults) == current
    assert run_benchmark.library_defaults(CompletionOff) != current
    assert run_benchmark.library_defaults(OtherBudget) != current  # a TrainingArguments field BIBAUConfig sets
    args = run_benchmark.parse_args(["--datasets", "digits", "--no-render"])
    assert run_benchmark.cell_settings(args, "bibau")["defaults"] == current
    # The baselines read only the training budget: a change to BI-BAU's method keeps their cells, a budget's does not.
    budget = run_benchmark.library_defaults(budget_only=True)
    assert run_benchmark.library_defaults(CompletionOff, budget_only=True) == budget
    assert run_benchmark.library_defaults(OtherBudget, budget_only=True) != budget
    assert run_benchmark.cell_settings(args, "cleanclip")["defaults"] == budget


def test_aggregation_over_seeds_and_summary():
    import run_benchmark

    def cell(method, seed, asr, ca, seconds):
        return {"dataset": "d", "attack": "a", "method": method, "seed": seed,
                "metrics": {"ca": ca, "asr": asr, "ra": None, "text_asr": None, "der": 0.5, "retuned_asr": asr,
                            "reference_retuned_asr": 0.0},
                "cost": {"seconds": seconds, "peak_memory_mb": 10.0}}

    cells = [cell("clean_finetune", 0, 1.0, 0.9, 2.0), cell("clean_finetune", 1, 0.8, 0.7, 2.0),
             cell("cleanclip", 0, 0.5, 0.9, 4.0), cell("cleanclip", 1, 0.5, 0.9, 4.0),
             cell("bibau", 0, 0.0, 0.9, 20.0), cell("bibau", 1, 0.2, 0.9, 20.0)]
    aggregates = run_benchmark.aggregate(cells)
    ft = next(a for a in aggregates if a["method"] == "clean_finetune")
    assert ft["asr"]["mean"] == pytest.approx(0.9) and ft["asr"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert ft["ra"]["mean"] is None and ft["seeds"] == [0, 1]
    summary = {r["method"]: r for r in run_benchmark.summarise(cells, aggregates)}
    assert summary["bibau"]["time_vs_clean_finetune"] == 10.0 and summary["bibau"]["time_vs_cleanclip"] == 5.0
    assert summary["bibau"]["mean_asr"] == pytest.approx(0.1)
    single = run_benchmark.mean_std([0.3])
    assert single["mean"] == 0.3 and single["std"] is None
