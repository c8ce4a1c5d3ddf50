"""BIBAUTrainer and BIBAUConfig: loss terms, EM rounds, LoRA, native save, bad inputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from bibau_hf.attacks.plant import load_attack
from bibau_hf.bibau_config import BIBAUConfig
from bibau_hf.bibau_trainer import DEFAULT_LORA_TARGETS, REPORT_FILE, BIBAUTrainer, distributed_clip_loss
from bibau_hf.contrastive import clip_loss
from bibau_hf.data import ImageTextDataset
from bibau_hf.errors import BIBAUError
from bibau_hf.evaluation import ZeroShotEvaluator
from bibau_hf.models import load_adapter

FAST = dict(
    inversion_steps=5, score_steps=40, inversion_batch_size=16, inversion_restarts=1, disable_tqdm=True,
    logging_steps=1000, report_to="none", seed=0, final_scan=False, unlearn_threshold=0.0,
    text_unlearn_threshold=0.0, confidence_gap_threshold=2.0, max_steps=-1, patch_completion_steps=5,
)


def make_config(tmp_path, **kwargs) -> BIBAUConfig:
    values = dict(FAST, output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=16)
    values.update(kwargs)
    return BIBAUConfig(**values)


def small_clean_set(digits_data, n=64) -> ImageTextDataset:
    train, _ = digits_data
    return train.take(n, seed=0)


def test_distributed_clip_loss_equals_clip_loss_in_one_process():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(10.0)
    torch.testing.assert_close(distributed_clip_loss(a, b, scale), clip_loss(a, b, scale))


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(BIBAUError, match="trigger families"):
        make_config(tmp_path, trigger_families=["swirl"])
    with pytest.raises(BIBAUError, match="invert_towers"):
        make_config(tmp_path, invert_towers="audio")
    with pytest.raises(BIBAUError, match="em_rounds"):
        make_config(tmp_path, em_rounds=0)
    with pytest.raises(BIBAUError, match="prior_type"):
        make_config(tmp_path, prior_type="kl")
    with pytest.raises(BIBAUError, match="warp_strength"):
        make_config(tmp_path, warp_strength=0.5)
    with pytest.raises(BIBAUError, match="path_extrapolation"):
        make_config(tmp_path, path_extrapolation=0.5)
    with pytest.raises(BIBAUError, match="relearn_lookahead"):
        make_config(tmp_path, relearn_lookahead=-0.1)
    with pytest.raises(BIBAUError, match="patch_max_cells"):
        make_config(tmp_path, patch_max_cells=0)
    for bound in (0.0, 0.6):
        with pytest.raises(BIBAUError, match="warp_max_shift"):
            make_config(tmp_path, warp_max_shift=bound)


def test_learning_rate_default_depends_on_lora(tmp_path):
    assert make_config(tmp_path).learning_rate == 1e-4
    assert make_config(tmp_path, use_lora=True).learning_rate == 1e-3
    assert make_config(tmp_path, use_lora=True, learning_rate=5e-4).learning_rate == 5e-4


def test_lora_default_targets_attention_and_mlp_on_hf_and_the_mlp_on_open_clip(tiny_model, digits_data, tmp_path):
    BIBAUTrainer(tiny_model, make_config(tmp_path, use_lora=True), small_clean_set(digits_data, 32))
    adapted = {n.split(".")[-1] for n, m in tiny_model.model.named_modules() if hasattr(m, "lora_A")}
    expected = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"} if tiny_model.backend == "hf" else {
        "c_fc", "c_proj"}
    assert adapted == expected


def test_lora_initialisation_follows_the_seed_not_the_global_random_state(tiny_model, digits_data, tmp_path):
    def adapter_weights(draws_before: int, seed: int) -> torch.Tensor:
        model = copy.deepcopy(tiny_model)
        torch.manual_seed(draws_before)  # whatever ran before the trainer was built
        BIBAUTrainer(model, make_config(tmp_path, use_lora=True, seed=seed), small_clean_set(digits_data, 32))
        return torch.cat([p.detach().flatten() for n, p in model.model.named_parameters() if "lora_A" in n])

    assert torch.equal(adapter_weights(1, seed=0), adapter_weights(2, seed=0))
    assert not torch.equal(adapter_weights(1, seed=0), adapter_weights(1, seed=1))


def test_every_loss_term_is_computed_and_logged(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 32)
    config = make_config(tmp_path, max_steps=1, em_rounds=1, concept_names=digits_data[1].class_names)
    trainer = BIBAUTrainer(tiny_model, config, data)
    trainer.train()
    assert set(trainer.trace[0]) >= {"backdoor_score", "suspected_target", "triggers"}
    logged = trainer.state.log_history[-1]
    for term in ("clean", "trigger_image", "trigger_text", "push", "prior", "invariance"):
        assert f"bibau/{term}" in logged, term
    assert logged["bibau/prior"] >= 0


def test_disabled_terms_are_not_computed(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 32)
    config = make_config(tmp_path, max_steps=1, em_rounds=1, invert_towers="image", trigger_families=["mask"],
                         push_weight=0, prior_type="none", invariance_weight=0)
    trainer = BIBAUTrainer(tiny_model, config, data)
    trainer.train()
    logged = trainer.state.log_history[-1]
    assert "bibau/trigger_image" in logged
    for term in ("trigger_text", "push", "prior", "invariance"):
        assert f"bibau/{term}" not in logged, term


def test_distillation_prior_is_zero_at_the_suspect_model(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 16)
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path, prior_type="distill"), data)
    batch = trainer.data_collator([data[i] for i in range(16)])
    out = tiny_model(batch["pixel_values"], batch["input_ids"])
    ref = trainer._reference_outputs(batch)
    prior = trainer._prior(out["image_embeds"], out["text_embeds"], ref)
    assert float(prior.detach()) == pytest.approx(0.0, abs=1e-8)


def test_cached_reference_outputs_equal_fresh_ones_and_each_pair_is_forwarded_once(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 24)
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path), data)
    cache = trainer._reference_cache
    assert cache is not None
    seen = set()
    for order in ([3, 0, 7, 12, 5, 9, 1, 2], [9, 3, 20, 21, 0, 15, 7, 23], [23, 22, 21, 20, 3, 9, 0, 1]):
        batch = trainer.data_collator([data[i] for i in order])
        cached = trainer._reference_outputs(batch, class_token_states=True)
        fresh = trainer._suspect_outputs(batch["pixel_values"], batch["input_ids"], class_token_states=True)
        for name in ("image_embeds", "text_embeds", "image_class_states"):
            torch.testing.assert_close(cached[name], fresh[name], atol=1e-5, rtol=1e-5)
        seen.update(order)
        assert cache.forwarded == len(seen)  # only pairs never seen before were forwarded


def test_reference_outputs_are_recomputed_when_the_cache_is_off(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 16)
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path, cache_reference_outputs=False), data)
    assert trainer._reference_cache is None
    batch = trainer.data_collator([data[i] for i in range(16)])
    ref = trainer._reference_outputs(batch)
    torch.testing.assert_close(ref["image_embeds"], trainer.reference.encode_image(batch["pixel_values"]))


class _PixelTrigger:
    """A stand-in inverted image trigger: ``fn`` applied to a batch."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def apply_one(self, images: torch.Tensor, index: int) -> torch.Tensor:
        return self.fn(images)


def _white_corner(images: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    out[..., -6:, -6:] = 1.0
    return out


def test_invariance_term_measures_how_far_triggered_class_tokens_move(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 16)
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path, invariance_weight=1.0), data)
    batch = trainer.data_collator([data[i] for i in range(16)])
    values = {}
    for name, fn in (("identity", lambda x: x), ("patch", _white_corner)):
        trainer._image_triggers = [_PixelTrigger(fn)]
        trainer._metrics.clear()
        trainer.compute_loss(tiny_model, batch)
        values[name] = trainer._metrics["invariance"][0]
    # A trigger that changes nothing leaves every class token where the suspect model puts the clean image's.
    assert values["identity"] == pytest.approx(0.0, abs=1e-10)
    assert values["patch"] > 1e-4
    states = tiny_model(batch["pixel_values"], batch["input_ids"], class_token_states=True)["image_class_states"]
    assert states.shape == (len(tiny_model.vision_blocks), 16, states.shape[-1])


def test_l2_prior_grows_when_weights_move(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 16)
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path, prior_type="l2"), data)
    assert float(trainer._prior(None, None, None)) == 0.0
    with torch.no_grad():
        next(p for p in tiny_model.parameters() if p.requires_grad).add_(0.1)
    assert float(trainer._prior(None, None, None)) > 0.0


@pytest.mark.parametrize("prior_type", ["distill", "none"])
def test_extrapolation_steps_further_along_the_path_from_the_suspect_model(tiny_model, digits_data, tmp_path,
                                                                          prior_type):
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path, prior_type=prior_type), small_clean_set(digits_data, 16))
    torch.manual_seed(0)
    suspect, moved = {}, {}
    with torch.no_grad():
        for name, p in tiny_model.named_parameters():
            suspect[name] = p.detach().clone()
            p.add_(0.01 * torch.randn_like(p))
            moved[name] = p.detach().clone()
    trainer._extrapolate(1.5)
    for name, p in tiny_model.named_parameters():
        torch.testing.assert_close(p, suspect[name] + 1.5 * (moved[name] - suspect[name]), msg=name)


def test_extrapolation_with_lora_scales_only_the_adapter_update(tiny_model, digits_data, tmp_path):
    config = make_config(tmp_path, use_lora=True, prior_type="distill")
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 16))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in tiny_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    trainer._extrapolate(2.0)
    scaled = [n for n in before if "lora_B" in n]
    assert scaled
    for name, p in tiny_model.named_parameters():
        # B A grows by α; A and the base stay.
        torch.testing.assert_close(p, 2.0 * before[name] if name in scaled else before[name], msg=name)


def test_extrapolation_happens_as_each_round_after_the_first_begins(tiny_model, digits_data, tmp_path):
    class CountingTrainer(BIBAUTrainer):
        def _extrapolate(self, alpha):
            calls.append((self.state.global_step, alpha))
            super()._extrapolate(alpha)

    calls = []
    data = small_clean_set(digits_data, 16)
    CountingTrainer(tiny_model, make_config(tmp_path, max_steps=3, em_rounds=3), data).train()
    assert calls == [(1, 1.5), (2, 1.5)]
    calls.clear()
    config = make_config(tmp_path, max_steps=3, em_rounds=3, path_extrapolation=1.0, overwrite_output_dir=True)
    CountingTrainer(tiny_model, config, data).train()
    assert calls == []
    # Nothing unlearned (every family under its gate): the path is plain clean fine-tuning, not extrapolated.
    config = make_config(tmp_path, max_steps=3, em_rounds=3, unlearn_threshold=1e9, text_unlearn_threshold=1e9,
                         ungated_families="skip", overwrite_output_dir=True)
    CountingTrainer(tiny_model, config, data).train()
    assert calls == []


def _relearning_setup(tiny_model, digits_data, tmp_path, **kwargs):
    data = small_clean_set(digits_data, 16)
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path, trigger_shift=False, **kwargs), data)
    batch = trainer.data_collator([data[i] for i in range(16)])
    trainer._image_triggers = [_PixelTrigger(_white_corner)]
    with torch.no_grad():
        target = tiny_model.encode_text(tiny_model.tokenize(["a photo of the number zero"]))[0]
    trainer._target_directions, trainer._pushed = target[None], torch.tensor([True])
    return trainer, batch, target


def test_relearning_shift_has_the_configured_length_and_moves_triggered_images_toward_the_target(
    tiny_model, digits_data, tmp_path
):
    trainer, batch, target = _relearning_setup(tiny_model, digits_data, tmp_path, relearn_lookahead=0.05)
    triggered = _white_corner(batch["pixel_values"])

    def toward_target() -> float:
        with torch.no_grad():
            return float((tiny_model.encode_image(triggered) @ target).mean())

    params, delta = trainer._relearning_shift(batch)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for d in delta]))
    torch.testing.assert_close(norm, torch.tensor(0.05))
    before = toward_target()
    with torch.no_grad():
        torch._foreach_add_(params, delta)
    assert toward_target() > before
    # Nothing to relearn without a targeted trigger (a hedged family has no target to push toward).
    trainer._pushed = torch.tensor([False])
    assert trainer._relearning_shift(batch) is None


def test_relearning_shift_with_lora_moves_only_the_adapter(tiny_model, digits_data, tmp_path):
    trainer, batch, _ = _relearning_setup(tiny_model, digits_data, tmp_path, relearn_lookahead=0.05, use_lora=True)
    params, delta = trainer._relearning_shift(batch)
    lora = {id(p) for n, p in tiny_model.named_parameters() if "lora_" in n}
    assert lora and {id(p) for p in params} == lora
    assert any(d.abs().sum() > 0 for d in delta)


def test_lookahead_step_returns_the_weights_before_the_optimiser_steps(tiny_model, digits_data, tmp_path):
    trainer, batch, _ = _relearning_setup(tiny_model, digits_data, tmp_path, relearn_lookahead=0.5)
    trainer._round = 0  # the E-step is not under test: keep the stand-in trigger
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test skips
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    shifted = []
    original = trainer.compute_loss

    def recording_loss(*args, **kwargs):
        shifted.append(any(not torch.equal(p, before[n]) for n, p in tiny_model.named_parameters()))
        trainer._metrics.clear()
        loss = original(*args, **kwargs)
        terms.append(set(trainer._metrics))
        return loss

    terms = []
    trainer.compute_loss = recording_loss
    trainer.model.train()
    trainer.training_step(trainer.model, batch)
    # The unlearning terms are taken at the shifted weights, the clean task's at the weights themselves ...
    assert shifted == [True, False]
    assert terms == [{"trigger_image", "push", "invariance"}, {"clean", "prior"}]
    for name, p in tiny_model.named_parameters():
        torch.testing.assert_close(p, before[name], msg=name)  # ... and the weights come back
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.parameters())


def test_push_term_ignores_images_already_matching_the_target():
    # The push is relative to the own caption: an image whose own caption is the target concept costs nothing. The
    # same expression as compute_loss's (a matmul on one side would differ from it by rounding).
    torch.manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(32), dim=-1)
    trig = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    directions, texts = direction.repeat(4, 1), direction.repeat(4, 1)
    gap = (trig * directions).sum(-1) - (trig * texts).sum(-1)
    assert torch.relu(gap).sum() == 0


def test_image_inversion_finds_the_planted_patch(planted_badnets, digits_data):
    from bibau_hf.inversion import InversionConfig, scan

    folder, _ = planted_badnets
    model = load_adapter(folder)
    train, test = digits_data
    clean = train.take_fraction(0.05, seed=0)
    config = InversionConfig(progress=False, invert_text=False, image_families=("mask",), seed=0)
    result = scan(model, clean.images, clean.captions, concepts=test.class_names, config=config)
    found = result.triggers[0]
    assert found.suspected_target == "zero"
    assert found.score > 2.0
    mask = found.trigger.mask()[0, 0].detach()
    pattern = found.trigger.pattern()[0].detach().mean(0)
    # The patch-4 ViT sees the 4x4 checkerboard as one patch token wherever it lies on the 4-pixel grid, so the
    # backdoor fires in any grid cell and "finding the patch" means finding it up to that translation: the mask is
    # small, one grid cell dominates it, and inside that cell the pattern is the checkerboard (white top-left).
    assert mask.sum() < 2 * 16
    cells = mask.reshape(8, 4, 8, 4).sum(dim=(1, 3)).flatten()
    assert cells.max() >= 0.2 * mask.sum()  # one of the 64 cells holds a fifth of the mask (uniform: 1.6 %)
    cell = int(cells.argmax())
    r0, c0 = (cell // 8) * 4, (cell % 8) * 4
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    checkerboard = ((rows + cols) % 2 == 0).float()
    used = mask[r0 : r0 + 4, c0 : c0 + 4] > 0.25
    agreement = ((pattern[r0 : r0 + 4, c0 : c0 + 4][used] > 0.5).float() == checkerboard[used]).float().mean()
    assert used.sum() >= 3 and agreement >= 0.75
    # And the inverted trigger really drags clean test images to the target.
    from bibau_hf.evaluation import predict, zero_shot_classifier

    classifier = zero_shot_classifier(model, test.class_names, test.templates)
    with torch.no_grad():
        preds = predict(model, found.trigger.apply_one(test.images[:200].float() / 255, 0), classifier)
    assert (preds == 0).float().mean() > 0.9


def test_one_em_round_lowers_asr(planted_badnets, digits_data, tmp_path):
    folder, result = planted_badnets
    model = load_adapter(folder)
    train, test = digits_data
    trigger, record = load_attack(folder)
    evaluator = ZeroShotEvaluator(test, trigger, record["target_class"])
    before = evaluator(model)
    config = make_config(tmp_path, em_rounds=1, num_train_epochs=40, per_device_train_batch_size=32,
                         invert_towers="image", score_steps=100, inversion_batch_size=32,
                         concept_names=test.class_names)
    BIBAUTrainer(model, config, train.take_fraction(0.05, seed=0)).train()
    after = evaluator(model)
    assert before["attack_success_rate"] > 0.9
    # One round only dents the backdoor (the next E-step, on the partly cleaned model, finds what is left).
    assert after["attack_success_rate"] <= before["attack_success_rate"] - 0.1
    assert after["clean_accuracy"] >= before["clean_accuracy"] - 0.03


def test_lora_trains_only_adapter_weights_and_leaves_base_unchanged(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 32)
    original = copy.deepcopy(tiny_model)
    config = make_config(tmp_path, max_steps=2, em_rounds=1, use_lora=True, learning_rate=1e-2,
                         keep_lora_adapter=True, prior_type="distill")
    trainer = BIBAUTrainer(tiny_model, config, data)
    peft_model = tiny_model.model
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" not in n}
    trainer.train()
    lora_state = trainer._lora_state
    for name, param in lora_state.named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(param, base_before[name], msg=name)
    # The merged output differs from the suspect model (the adapter learnt something) ...
    images = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(tiny_model.encode_image(images), original.encode_image(images))
    # ... and with the adapter disabled the base is exactly the suspect model.
    with lora_state.disable_adapter():
        base_out = lora_state.get_image_features(pixel_values=original.preprocess(images)) if (
            original.backend == "hf") else lora_state.encode_image(original.preprocess(images))
    base_out = base_out.pooler_output if hasattr(base_out, "pooler_output") else base_out
    expected = original.encode_image(images, normalize=False)
    torch.testing.assert_close(base_out, expected)
    trainer.save_model()
    assert (tmp_path / "out" / "lora_adapter" / "adapter_config.json").is_file()


def test_save_writes_native_format_and_report(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 32)
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path, max_steps=1, em_rounds=1), data)
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    reloaded = load_adapter(out)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(reloaded.encode_image(images), tiny_model.encode_image(images))
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["method"] == "BI-BAU" and report["backend"] == tiny_model.backend
    assert report["rounds"][0]["backdoor_score"] >= 0
    assert "torch" in report["versions"]
    assert not (out / "training_args.bin").exists()  # nothing pickled


def test_too_few_clean_samples_for_a_batch_is_refused(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 8)
    with pytest.raises(BIBAUError, match="too few"):
        BIBAUTrainer(tiny_model, make_config(tmp_path, per_device_train_batch_size=16), data)


def test_trainer_refuses_a_raw_model(digits_data, tmp_path):
    with pytest.raises(BIBAUError, match="ContrastiveAdapter"):
        BIBAUTrainer(torch.nn.Linear(2, 2), make_config(tmp_path), small_clean_set(digits_data, 32))


def test_later_rounds_reinvert_only_toward_the_first_rounds_targets(tiny_model, digits_data, tmp_path):
    config = make_config(tmp_path, max_steps=2, em_rounds=2, concept_names=digits_data[1].class_names)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    trainer.train()
    first, second = trainer.trace
    targets = first["tracked_targets"]
    assert all(len(t["objectives"]) == 10 and not t["focused"] for t in first["triggers"])
    assert {f"{t['modality']}/{t['family']}" for t in second["triggers"]} == set(targets)
    for trig in second["triggers"]:
        target = targets[f"{trig['modality']}/{trig['family']}"]
        assert trig["focused"] and trig["suspected_target"] == target
        assert list(trig["objectives"]) == [target]


def test_a_focused_reinversion_inverts_toward_each_of_its_concepts_from_their_previous_triggers(
    tiny_model, digits_data, tmp_path
):
    config = make_config(tmp_path, score_steps=2, inversion_steps=2, concept_names=digits_data[1].class_names)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    first = trainer.inverter.run()
    mask = next(t for t in first.image_triggers() if t.family == "mask")
    picked = mask.triggers_for(["two", "one"])
    assert torch.equal(picked.mask(), torch.cat([mask.trigger_for("two").mask(), mask.trigger_for("one").mask()]))
    assert mask.triggers_for(["two", "not a concept"]) is None
    focus = {"image/mask": ["two", "one"], "text/soft_tokens": "six"}
    later = trainer.inverter.run(previous=first.triggers, focus=focus)
    assert [t.key for t in later.triggers] == ["image/mask", "text/soft_tokens"]  # the warp family is not inverted
    remask, text = later.triggers
    assert remask.focused and list(remask.objectives) == ["two", "one"] and remask.sweep.mask().shape[0] == 2
    assert not torch.equal(remask.sweep.mask(), picked.mask())  # optimised further from the previous triggers
    assert text.focused and list(text.objectives) == ["six"]


def test_refinement_picks_the_cheapest_of_the_likeliest_concepts_and_keeps_the_sweeps_statistics(
    tiny_model, digits_data
):
    from bibau_hf.inversion import BlindInverter, InversionConfig

    train, test = digits_data
    data = train.take(32, seed=0)

    def run(refine: int):
        config = InversionConfig(steps=2, score_steps=6, invert_text=False, refine_concepts=refine, seed=0,
                                 progress=False)
        return BlindInverter(copy.deepcopy(tiny_model), data.images, data.captions, config, test.class_names).run()

    plain, refined = run(0), run(3)
    for before, after in zip(plain.triggers, refined.triggers):
        assert after.anomaly == before.anomaly and after.score == before.score
        assert after.confidence_gap == pytest.approx(before.confidence_gap, nan_ok=True)
        likeliest = sorted(before.anomaly, key=lambda concept: -before.anomaly[concept])[:3]
        costs = after.details["refined_costs"]
        assert list(costs) == likeliest and "refined_costs" not in before.details
        assert after.suspected_target == min(costs, key=costs.get)
        # The family's trigger is the refined sweep row of its target; rows outside the likeliest are untouched.
        assert all(torch.equal(a, b) for a, b in zip(after.trigger.parameters(),
                                                     after.trigger_for(after.suspected_target).parameters()))
        for concept in test.class_names:
            same = all(torch.equal(a, b) for a, b in zip(after.trigger_for(concept).parameters(),
                                                         before.trigger_for(concept).parameters()))
            assert same == (concept not in likeliest)


def test_assigning_trigger_rows_needs_the_same_family_and_as_many_candidates():
    from bibau_hf.inversion.image_trigger import MaskPatternTrigger, WarpTrigger

    family = MaskPatternTrigger(4, (8, 8), generator=torch.Generator().manual_seed(0))
    other = MaskPatternTrigger(2, (8, 8), generator=torch.Generator().manual_seed(1))
    family.assign([3, 1], other)
    assert torch.equal(family.mask_logits[[3, 1]], other.mask_logits)
    with pytest.raises(ValueError, match="MaskPatternTrigger of 3 candidates"):
        family.assign([0, 1, 2], other)
    with pytest.raises(ValueError, match="MaskPatternTrigger of 2"):
        family.assign([0, 1], WarpTrigger(2, (8, 8)))


def test_without_target_posterior_every_concepts_trigger_is_unlearned(tiny_model, digits_data, tmp_path):
    config = make_config(tmp_path, max_steps=2, em_rounds=1, target_posterior=False,
                         concept_names=digits_data[1].class_names)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    trainer.train()
    families = len(config.trigger_families)
    assert len(trainer._image_triggers) == 10 * families  # one inverted image trigger per family and concept
    assert trainer._soft_tokens.shape[0] == 10 and trainer._target_directions is None
    logged = trainer.state.log_history[-1]
    assert "bibau/trigger_text" in logged and "bibau/push" not in logged


def test_text_search_never_returns_a_class_name_as_trigger(tiny_model, digits_data):
    from bibau_hf.inversion import BlindInverter, InversionConfig

    train, test = digits_data
    data = train.take(32, seed=0)
    config = InversionConfig(steps=2, score_steps=5, invert_image=False, seed=0, progress=False)
    result = BlindInverter(tiny_model, data.images, data.captions, config, test.class_names).run()
    weight = tiny_model.token_embedding.weight.detach()
    # The sweep's soft tokens are real token embeddings: recover each concept's chosen token id.
    chosen = {int((weight - row).norm(dim=-1).argmin()) for row in result.text_triggers()[0].sweep.tokens[:, 0]}
    names = set(tiny_model.tokenize(list(test.class_names)).flatten().tolist())
    assert len(chosen) >= 1 and not chosen & names


def test_each_tower_is_gated_by_its_own_unlearning_threshold(tiny_model, digits_data, tmp_path):
    config = make_config(tmp_path, unlearn_threshold=1.5, text_unlearn_threshold=10.0)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    nan = float("nan")
    trainer._targets = {"image/mask": (1.6, "zero", 0.0), "image/warp": (1.2, "two", 0.0),
                        "text/soft_tokens": (5.0, "one", nan)}
    assert trainer._unlearning_target("image/mask") == "zero"
    assert trainer._unlearning_target("image/warp") is None
    assert trainer._unlearning_target("text/soft_tokens") is None  # 5 is a natural text-side score
    trainer._targets["text/soft_tokens"] = (12.0, "one", nan)
    assert trainer._unlearning_target("text/soft_tokens") == "one"


def test_a_passing_text_family_vetoes_image_families_toward_another_concept(tiny_model, digits_data, tmp_path):
    from bibau_hf.inversion import text_vetoed_families

    nan = float("nan")
    config = make_config(tmp_path, unlearn_threshold=1.5, text_unlearn_threshold=10.0)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    trainer._targets = {"image/mask": (5.0, "seven", 0.01), "image/warp": (2.0, "zero", 0.01),
                        "text/soft_tokens": (30.0, "zero", nan)}
    assert trainer._unlearning_target("image/mask") is None  # a natural shortcut next to the text's target
    assert trainer._unlearning_target("image/warp") == "zero"
    assert trainer._unlearning_target("text/soft_tokens") == "zero"
    assert trainer._text_vetoed() == {"image/mask": "text/soft_tokens"}
    # The veto only counts a text family that passes its own gate, and can be turned off.
    trainer._targets["text/soft_tokens"] = (5.0, "zero", nan)
    assert trainer._unlearning_target("image/mask") == "seven" and trainer._text_vetoed() == {}
    trainer._targets["text/soft_tokens"] = (30.0, "zero", nan)
    trainer.args.text_unlearn_threshold = 0.0  # every text family passes a gate of 0: no evidence to veto with
    assert trainer._unlearning_target("image/mask") == "seven" and trainer._text_vetoed() == {}
    trainer.args.text_unlearn_threshold = 10.0
    trainer.args.text_target_veto = False
    assert trainer._unlearning_target("image/mask") == "seven"
    # Families under their gates are neither vetoed nor veto.
    assert text_vetoed_families({"image/mask": None, "image/warp": "one", "text/soft_tokens": None},
                                text_threshold=10.0) == {}
    assert text_vetoed_families({"image/mask": None, "text/soft_tokens": "one"}, text_threshold=10.0) == {}
    assert text_vetoed_families({"image/mask": "seven", "text/soft_tokens": "zero"}, text_threshold=0.0) == {}


def test_image_family_whose_trigger_only_reaches_the_targets_border_is_not_unlearned(tiny_model, digits_data,
                                                                                     tmp_path):
    config = make_config(tmp_path, unlearn_threshold=1.5, confidence_gap_threshold=0.075)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    trainer._targets = {"image/mask": (5.0, "zero", 0.01), "image/warp": (5.0, "one", 0.2),
                        "image/additive": (5.0, "two", float("nan"))}
    assert trainer._unlearning_target("image/mask") == "zero"
    assert trainer._unlearning_target("image/warp") is None  # a natural shortcut: high score, far from the target
    assert trainer._unlearning_target("image/additive") == "two"  # nothing to compare with: the score decides


@pytest.mark.parametrize("tiny_model", ["hf"], indirect=True)
@pytest.mark.parametrize("ungated", ["skip", "uniform", "uniform_if_none_pass"])
def test_families_under_their_gates_are_skipped_or_unlearned_toward_every_concept(tiny_model, digits_data, tmp_path,
                                                                                   ungated):
    test = digits_data[1]
    config = make_config(tmp_path, score_steps=2, inversion_steps=2, unlearn_threshold=1.5,
                         text_unlearn_threshold=10.0, ungated_families=ungated, ungated_concepts=0,
                         concept_names=test.class_names, patch_completion=False)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    result = trainer.inverter.run()
    nan = float("nan")
    trainer._targets = {"image/mask": (5.0, "zero", 0.0), "image/warp": (1.0, "one", 0.0),
                        "text/soft_tokens": (2.0, "two", nan)}
    trainer._unlearn_toward_targets(result)
    mask = next(t for t in result.image_triggers() if t.family == "mask")
    if ungated != "uniform":  # uniform_if_none_pass: the mask family passed, so the others are skipped
        assert trainer._uniform_families() == []
        assert len(trainer._image_triggers) == 1 and trainer._soft_tokens is None
        assert trainer._pushed.tolist() == [True] and trainer._trigger_slots is None
    else:
        assert trainer._uniform_families() == ["image/warp", "text/soft_tokens"]
        # The mask family toward its target (pushed away from it), then the warp sweep's trigger for every concept.
        assert len(trainer._image_triggers) == 1 + 10 and trainer._pushed.tolist() == [True] + [False] * 10
        assert trainer._soft_tokens.shape[0] == 10  # one soft-token set per concept
        # The ten concepts' triggers share one slot: the targeted trigger keeps half of the triggered rows.
        assert trainer._trigger_slots == [[0], list(range(1, 11))]
        owner = trainer._trigger_owner(32)
        assert (owner == 0).sum() == 16 and set(owner[owner != 0].tolist()) <= set(range(1, 11))
        assert len(set(owner[owner != 0].tolist())) > 1  # the concepts take turns
    zero = mask.trigger_for("zero")
    assert torch.equal(trainer._image_triggers[0].mask(), zero.mask())
    assert torch.equal(trainer._target_directions[0], trainer.inverter.concept_emb[test.class_names.index("zero")])


def test_weighted_slots_share_the_rows_by_weight_and_leave_the_rest_clean():
    # A targeted trigger (weight 1) and a family under its gates (weight 0.5) with three concepts' triggers.
    owner = BIBAUTrainer._weighted_owner([[0], [1, 2, 3]], [1.0, 0.5], 30, step=0)
    assert (owner == 0).sum() == 20 and set(owner[owner != 0].tolist()) == {1, 2, 3}
    # No targeted family: only half of the rows carry a trigger, the others stay clean (-1).
    owner = BIBAUTrainer._weighted_owner([[0, 1], [2, 3]], [0.5, 0.5], 32, step=0)
    assert (owner == -1).sum() == 16 and (owner >= 2).sum() == 8
    # The concepts take turns across steps.
    assert BIBAUTrainer._weighted_owner([[0, 1, 2]], [0.5], 2, step=1).tolist() == [1, -1]


@pytest.mark.parametrize("tiny_model", ["hf"], indirect=True)
def test_families_under_their_gates_get_ungated_weight_of_the_unlearning(tiny_model, digits_data, tmp_path):
    test = digits_data[1]
    config = make_config(tmp_path, score_steps=2, inversion_steps=2, unlearn_threshold=1.5,
                         text_unlearn_threshold=10.0, ungated_families="uniform", ungated_weight=0.5,
                         concept_names=test.class_names, patch_completion=False, max_steps=1)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    result = trainer.inverter.run()
    trainer._set_targets(result)
    trainer._targets.update({"image/mask": (5.0, "zero", 0.0), "image/warp": (1.0, "one", 0.0),
                             "text/soft_tokens": (2.0, "two", float("nan"))})
    trainer._unlearn_toward_targets(result)
    assert trainer._slot_weights == [1.0, 0.5] and trainer._text_weight == 0.5
    owner = trainer._trigger_owner(30)
    assert (owner == 0).sum() == 20 and (owner > 0).sum() == 10  # the targeted mask trigger keeps two thirds
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss) and "push" in trainer._metrics  # the push skips the warp family's rows
    for bad in ({"ungated_weight": 0.0}, {"ungated_weight": 0.5, "batch_per_trigger": True}):
        with pytest.raises(BIBAUError, match="ungated_weight"):
            make_config(tmp_path, **bad)


@pytest.mark.parametrize("tiny_model", ["hf"], indirect=True)
def test_families_under_their_gates_are_unlearned_toward_their_likeliest_concepts(tiny_model, digits_data, tmp_path):
    test = digits_data[1]
    config = make_config(tmp_path, score_steps=2, inversion_steps=2, unlearn_threshold=1e9, text_unlearn_threshold=1e9,
                         ungated_families="uniform", ungated_concepts=2, concept_names=test.class_names,
                         patch_completion=False)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    result = trainer.inverter.run()
    trainer._set_targets(result)  # every family is under its (unreachable) gates
    trainer._unlearn_toward_targets(result)
    warp = next(t for t in result.image_triggers() if t.family == "warp")
    likeliest = sorted(warp.anomaly, key=lambda concept: -warp.anomaly[concept])[:2]
    assert trainer._hedged_concepts("image/warp") == likeliest
    # Two triggers per image family, each its sweep's trigger toward one of the family's two likeliest concepts.
    assert len(trainer._image_triggers) == 4 and trainer._trigger_slots == [[0, 1], [2, 3]]
    for k, concept in enumerate(likeliest):
        assert torch.equal(trainer._image_triggers[2 + k].raw, warp.trigger_for(concept).raw)
    text = result.text_triggers()[0]
    rows = [text.sweep_candidates.index(text.candidates_names.index(c)) for c in trainer._hedged_concepts(text.key)]
    assert torch.equal(trainer._soft_tokens, text.sweep.tokens[rows])
    with pytest.raises(BIBAUError, match="ungated_concepts"):
        make_config(tmp_path, ungated_concepts=-1)


@pytest.mark.parametrize("tiny_model", ["hf"], indirect=True)
@pytest.mark.parametrize("ungated", ["uniform", "uniform_if_none_pass"])
def test_uniform_families_are_reinverted_toward_their_concepts_every_round_and_recorded(
    tiny_model, digits_data, tmp_path, ungated
):
    config = make_config(tmp_path, max_steps=4, em_rounds=2, score_steps=2, inversion_steps=2, unlearn_threshold=1e9,
                         text_unlearn_threshold=1e9, ungated_families=ungated,
                         concept_names=digits_data[1].class_names)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    trainer.train()
    # Nothing passes its gates: every family is unlearned toward its likeliest concepts, in both rounds, no push.
    later = trainer.scans[1]
    assert {t.key for t in later.triggers} == {"image/mask", "image/warp", "text/soft_tokens"}
    for trig in later.triggers:  # re-inverted toward its three likeliest round-0 concepts only, not re-swept
        assert trig.focused
        assert [trig.candidates_names[i] for i in trig.sweep_candidates] == trainer._hedged_concepts(trig.key)
    assert len(trainer._image_triggers) == 2 * 3 and trainer._target_directions is None  # three concepts each
    assert all(entry["uniform_families"] == ["image/mask", "image/warp", "text/soft_tokens"]
               for entry in trainer.trace)
    assert "bibau/push" not in trainer.state.log_history[-1]
    with pytest.raises(BIBAUError, match="ungated_families"):
        make_config(tmp_path, ungated_families="all")


def test_confidence_gap_is_small_for_the_planted_patch_and_large_for_a_natural_warp(planted_badnets, digits_data):
    """The planted patch carries images onto its target as firmly as the target's own images lie there; the warp
    family's cheapest concept on the same model is a natural shortcut that only reaches its target's border."""
    from bibau_hf.inversion import CONFIDENCE_GAP_THRESHOLD, InversionConfig, scan

    folder, _ = planted_badnets
    train, test = digits_data
    clean = train.take_fraction(0.05, seed=0)
    config = InversionConfig(progress=False, invert_text=False, image_families=("mask", "warp"), seed=0)
    result = scan(load_adapter(folder), clean.images, clean.captions, concepts=test.class_names, config=config)
    mask, warp = result.image_triggers()
    assert mask.suspected_target == "zero" and mask.confidence_gap < CONFIDENCE_GAP_THRESHOLD
    assert warp.suspected_target != "zero" and warp.confidence_gap > CONFIDENCE_GAP_THRESHOLD
    assert mask.summary()["confidence_gap"] == round(mask.confidence_gap, 4)


def test_warp_trigger_starts_near_identity_is_bounded_and_differentiable():
    from bibau_hf.inversion.image_trigger import WarpTrigger

    torch.manual_seed(0)
    images = torch.rand(4, 3, 16, 16)
    warp = WarpTrigger(2, (16, 16), max_shift=0.125, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        warp.raw.zero_()
    torch.testing.assert_close(warp(images)[0], images, atol=1e-5, rtol=0)  # no displacement: the identity
    with torch.no_grad():
        warp.raw.fill_(100.0)  # saturated: every control point at the bound
    assert float(warp.size().max()) <= 0.125 * 16 + 1e-4  # mean shift in pixels never exceeds max_shift
    warp.raw.data.normal_()
    warp(images).sum().backward()
    assert warp.raw.grad is not None and warp.raw.grad.abs().sum() > 0
    one = warp.select([1])
    torch.testing.assert_close(one.apply_one(images, 0), warp.apply_one(images, 1))
    # Per-image strength scales the displacement: 1 is the inverted warp, 0 none at all.
    torch.testing.assert_close(warp.apply_one(images, 1, torch.ones(4)), warp.apply_one(images, 1))
    torch.testing.assert_close(warp.apply_one(images, 1, torch.zeros(4)), images, atol=1e-5, rtol=0)
    assert not torch.allclose(warp.apply_one(images, 1, torch.full((4,), 2.0)), warp.apply_one(images, 1))


def test_warp_family_is_inverted_within_the_configured_bound(tiny_model, digits_data, tmp_path):
    from bibau_hf.inversion import scan

    assert make_config(tmp_path).inversion_config().warp_max_shift == 0.125
    config = make_config(tmp_path, warp_max_shift=0.25, trigger_families=["warp"], invert_towers="image")
    inversion = config.inversion_config(progress=False)
    assert inversion.warp_max_shift == 0.25
    _, test = digits_data
    clean = small_clean_set(digits_data, 32)
    found = scan(tiny_model, clean.images, clean.captions, concepts=test.class_names, config=inversion).triggers[0]
    assert found.family == "warp" and found.trigger.max_shift == 0.25 and found.details["max_shift"] == 0.25
    # tanh keeps every control displacement inside the bound (grid units: 2 is the whole side).
    assert float(found.trigger.displacement().abs().max()) <= 2 * 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inversion_and_unlearning_run_on_cuda(tiny_model, digits_data, tmp_path):
    """Every tensor the E- and M-steps build follows the model to the GPU (the soft-token trigger once did not)."""
    trainer = BIBAUTrainer(tiny_model.to("cuda"), make_config(tmp_path, use_cpu=False), small_clean_set(digits_data))
    trainer.train()
    first_round = trainer.report["rounds"][0]
    assert {t["modality"] for t in first_round["triggers"]} == {"image", "text"}
    assert all(p.device.type == "cuda" for p in tiny_model.parameters())


def test_each_image_trigger_acts_on_a_whole_copy_of_the_batch(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 16)
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path, trigger_shift=False, batch_per_trigger=True), data)
    batch = trainer.data_collator([data[i] for i in range(16)])
    pixels = batch["pixel_values"]
    trainer._image_triggers = [_PixelTrigger(lambda x: x), _PixelTrigger(_white_corner)]
    triggered = trainer._triggered_images(pixels)
    assert triggered.shape[0] == 2 * pixels.shape[0]
    torch.testing.assert_close(triggered[:16], pixels)
    torch.testing.assert_close(triggered[16:], _white_corner(pixels))
    trainer._metrics.clear()
    trainer.compute_loss(tiny_model, batch)
    assert {"trigger_image", "invariance"} <= set(trainer._metrics)


def test_image_triggers_take_turns_over_the_rows_of_one_copy(tiny_model, digits_data, tmp_path):
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path), small_clean_set(digits_data, 32))
    trainer._image_triggers = [_PixelTrigger(lambda x: x), _PixelTrigger(_white_corner)]
    assert torch.bincount(trainer._trigger_owner(32)).tolist() == [16, 16]


def test_trigger_word_is_unlearned_through_its_embedding_row(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 16)
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path), data)
    weight = tiny_model.token_embedding.weight
    batch = trainer.data_collator([data[i] for i in range(16)])
    word = next(i for i in range(100, weight.shape[0]) if not (batch["input_ids"] == i).any())
    assert trainer._vocabulary_ids(weight[word : word + 1].detach() + 1e-3) is None  # not a vocabulary row
    trainer._soft_tokens = weight[word : word + 1].detach().clone()
    trainer._trigger_word_ids = trainer._vocabulary_ids(trainer._soft_tokens)
    assert trainer._trigger_word_ids.tolist() == [word]
    tiny_model.zero_grad()
    trainer.compute_loss(tiny_model, batch).backward()
    # The clean captions never contain the word: only the trigger term's gradient can reach its row.
    assert weight.grad[word].abs().sum() > 0
    trainer._trigger_word_ids = None  # a fixed copy of the vector leaves the word's embedding alone
    tiny_model.zero_grad()
    trainer.compute_loss(tiny_model, batch).backward()
    assert weight.grad[word].abs().sum() == 0


def test_trigger_word_reaches_a_lora_adapter_on_the_token_embedding(tiny_model, digits_data, tmp_path):
    data = small_clean_set(digits_data, 16)
    targets = [*DEFAULT_LORA_TARGETS[tiny_model.backend], "token_embedding"]
    trainer = BIBAUTrainer(tiny_model, make_config(tmp_path, use_lora=True, lora_target_modules=targets), data)
    batch = trainer.data_collator([data[i] for i in range(16)])
    weight = tiny_model.token_embedding_weight()
    word = next(i for i in range(100, weight.shape[0]) if not (batch["input_ids"] == i).any())
    trainer._soft_tokens = weight[word : word + 1].clone()
    trainer._trigger_word_ids = trainer._vocabulary_ids(trainer._soft_tokens)
    assert trainer._trigger_word_ids.tolist() == [word]
    layer = tiny_model.token_embedding
    factor_a = next(iter(layer.lora_embedding_A.values()))  # [r, vocab]: a word's own column
    tiny_model.zero_grad()
    trainer.compute_loss(tiny_model, batch).backward()
    # The clean captions never contain the word: only the trigger term reaches the adapter's column for it.
    assert factor_a.grad[:, word].abs().sum() > 0


def test_trigger_phrase_grows_only_by_words_that_halve_the_loss(tiny_model, digits_data):
    from bibau_hf.inversion import BlindInverter, InversionConfig
    from bibau_hf.inversion.blind_inversion import TEXT_SWEEP_BATCH, WORD_GAIN, BatchSampler
    from bibau_hf.inversion.text_trigger import nearest_vocabulary_ids

    train, test = digits_data
    data = train.take(32, seed=0)
    config = InversionConfig(steps=2, score_steps=5, invert_image=False, seed=0, progress=False)
    inverter = BlindInverter(tiny_model, data.images, data.captions, config, test.class_names)
    trigger = inverter.run().text_triggers()[0]
    first = trigger.trigger.tokens[0].detach()
    tiny_model.train()
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    assert torch.equal(inverter.extend_trigger_words(first, trigger.suspected_target, 1), first)
    words = inverter.extend_trigger_words(first, trigger.suspected_target, 3)
    assert 1 <= len(words) <= 3 and torch.equal(words[:1], first)
    ids, _ = nearest_vocabulary_ids(tiny_model, words)
    torch.testing.assert_close(words, tiny_model.token_embedding.weight.detach()[ids])  # every word is a real token
    k = inverter.candidates.index(trigger.suspected_target)
    sampler = BatchSampler(inverter.images, inverter.token_ids, TEXT_SWEEP_BATCH, config.seed + 7919)
    for n in range(1, len(words)):  # each appended word at least halved the loss of the shorter phrase
        sampler()
        _, batch = sampler()
        prefix = words[: n - 1] if n > 1 else None
        shorter = inverter._word_costs(batch, prefix, ids[n - 1 : n], inverter.text_targets, k)
        longer = inverter._word_costs(batch, words[:n], ids[n : n + 1], inverter.text_targets, k)
        assert float(longer[0]) <= WORD_GAIN * float(shorter[0]) + 1e-6
    assert tiny_model.training and all(p.grad is None for p in tiny_model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())


def test_warp_triggers_are_unlearned_between_their_inverted_and_warp_strength_times_that(tiny_model, digits_data,
                                                                                        tmp_path):
    from bibau_hf.inversion.image_trigger import WarpTrigger

    data = small_clean_set(digits_data, 16)
    warp = WarpTrigger(1, (32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        warp.raw.normal_(generator=torch.Generator().manual_seed(1))
    images = {}
    for strength in (1.0, 1.5):
        trainer = BIBAUTrainer(tiny_model, make_config(tmp_path, warp_strength=strength), data)
        pixels = trainer.data_collator([data[i] for i in range(16)])["pixel_values"]
        trainer._image_triggers = [warp]
        images[strength] = trainer._triggered_images(pixels)
    torch.testing.assert_close(images[1.0], warp.apply_one(pixels, 0))  # as inverted, and never moved
    stronger = (images[1.5] - pixels).abs().flatten(1).mean(1)
    assert (stronger >= (images[1.0] - pixels).abs().flatten(1).mean(1) - 1e-6).all()
    assert not torch.allclose(images[1.5], images[1.0])


def test_additive_triggers_are_unlearned_between_their_inverted_and_additive_strength_times_that(tiny_model,
                                                                                                digits_data, tmp_path):
    from bibau_hf.inversion.image_trigger import AdditiveTrigger

    data = small_clean_set(digits_data, 16)
    additive = AdditiveTrigger(1, (32, 32), epsilon=0.05, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        additive.raw.normal_(generator=torch.Generator().manual_seed(1))
    delta = additive.delta()[0]
    # Mid-grey images: no clamping, so each row's added signal is exactly strength × δ.
    pixels = torch.full((16, 3, 32, 32), 0.5)
    for strength in (1.0, 2.0):
        config = make_config(tmp_path, additive_strength=strength, trigger_shift=False)
        trainer = BIBAUTrainer(tiny_model, config, data)
        trainer._image_triggers = [additive]
        added = trainer._triggered_images(pixels) - pixels
        scale = (added * delta).flatten(1).sum(1) / (delta * delta).sum()
        torch.testing.assert_close(added, scale.view(-1, 1, 1, 1) * delta, atol=1e-5, rtol=0)
        if strength == 1.0:
            torch.testing.assert_close(scale, torch.ones(16))
        else:
            assert (scale >= 1 - 1e-5).all() and (scale <= 2 + 1e-5).all() and scale.std() > 0.05
    with pytest.raises(BIBAUError, match="additive_strength"):
        make_config(tmp_path, additive_strength=0.5)


def test_every_completed_patch_is_unlearned_in_place_of_the_reinverted_mask(tiny_model, digits_data, tmp_path):
    from bibau_hf.inversion import MaskPatternTrigger

    config = make_config(tmp_path, max_steps=3, em_rounds=3, invert_towers="image", trigger_families=["mask"],
                         concept_names=digits_data[1].class_names, patch_completion=True)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    first, third = MaskPatternTrigger(1, (32, 32)), MaskPatternTrigger(1, (32, 32))
    # Round 0 completes a patch, round 1's re-inversion has drifted off the cells, round 2 completes another.
    answers = iter([(first, {"completed": True}), (None, {"completed": False}), (third, {"completed": True})])
    seen = []

    def complete(trigger, concept, *, max_cells, steps):
        seen.append((trigger, concept, max_cells, steps))
        return next(answers)

    trainer.inverter.complete_patch = complete
    trainer.train()
    target = trainer.trace[0]["tracked_targets"]["image/mask"]
    assert [s[1:] for s in seen] == [(target, config.patch_max_cells, config.patch_completion_steps)] * 3
    # Each round completes that round's re-inverted trigger.
    assert torch.equal(seen[-1][0].mask(), trainer.scans[-1].triggers[0].trigger_for(target).mask())
    assert trainer._image_triggers == [first, third]
    assert [e["patch_completion"]["image/mask"]["completed"] for e in trainer.trace] == [True, False, True]


def test_a_mask_that_is_not_a_patch_at_round_0_is_never_completed(tiny_model, digits_data, tmp_path):
    config = make_config(tmp_path, max_steps=2, em_rounds=2, invert_towers="image", trigger_families=["mask"],
                         concept_names=digits_data[1].class_names, patch_completion=True)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    calls = []

    def complete(trigger, concept, **_):
        calls.append(concept)
        return None, {"completed": False, "cells": 9}

    trainer.inverter.complete_patch = complete
    trainer.train()
    assert len(calls) == 1  # round 0 only: a blend that shrinks later must keep its re-inversion unlearned
    reinverted = trainer.scans[-1].triggers[0]
    (unlearned,) = trainer._image_triggers
    assert torch.equal(unlearned.mask(), reinverted.trigger_for(reinverted.suspected_target).mask())


def test_patch_completion_is_on_for_full_fine_tuning_off_with_lora_and_can_be_switched_off(
    tiny_model, digits_data, tmp_path
):
    def completes(**kwargs) -> bool:
        return BIBAUConfig(output_dir=str(tmp_path), **kwargs).completes_patches

    assert completes() and not completes(use_lora=True)
    assert completes(use_lora=True, patch_completion=True) and not completes(patch_completion=False)
    config = make_config(tmp_path, max_steps=1, em_rounds=1, invert_towers="image", trigger_families=["mask"],
                         concept_names=digits_data[1].class_names, patch_completion=False)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    trainer.inverter.complete_patch = lambda *a, **k: pytest.fail("patch completion ran although it is off")
    trainer.train()
    assert "patch_completion" not in trainer.trace[0]
