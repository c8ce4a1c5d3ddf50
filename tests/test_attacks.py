"""Tests for bibau_hf.attacks: triggers, their specs, and dataset poisoning."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from bibau_hf.attacks import (
    BadNetsTrigger,
    BlendedTrigger,
    FunctionTrigger,
    PoisonResult,
    SIGTrigger,
    TextTrigger,
    Trigger,
    WaNetTrigger,
    available_triggers,
    build_trigger,
    poison_pairs,
    register_trigger,
)
from bibau_hf.errors import AttackSpecError

IMAGE_TRIGGERS = [
    BadNetsTrigger(),
    BadNetsTrigger(patch_size=3, position="top_left", pattern="random", seed=7),
    BadNetsTrigger(patch_size=5, position=[2, 10], pattern="white"),
    BlendedTrigger(),
    BlendedTrigger(alpha=0.3, seed=3),
    WaNetTrigger(),
    WaNetTrigger(grid_size=6, strength=0.5, seed=11),
    SIGTrigger(),
    SIGTrigger(delta=0.1, frequency=3),
]
CLASS_NAMES = ["airplane", "cat", "dog", "ship"]


def _images(batch: int = 4, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=gen)


def _roundtrip(trigger: Trigger) -> Trigger:
    return build_trigger(json.loads(json.dumps(trigger.to_dict())))


def _caption_fn(class_name: str, rng: random.Random) -> str:
    return f"a photo of a {class_name} #{rng.randint(0, 999)}."


def _dataset(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)
    labels = torch.arange(n) % len(CLASS_NAMES)
    captions = [f"a photo of a {CLASS_NAMES[int(y)]} number {i}." for i, y in enumerate(labels)]
    return images, captions, labels


# ---------------------------------------------------------------------------------------------------------------------
# Specs and registry
# ---------------------------------------------------------------------------------------------------------------------


def test_registry_lists_builtin_triggers() -> None:
    assert {"badnets", "blended", "wanet", "sig", "text", "function"} <= set(available_triggers())


@pytest.mark.parametrize("trigger", IMAGE_TRIGGERS, ids=lambda t: json.dumps(t.to_dict()))
def test_image_trigger_json_roundtrip_is_bit_exact(trigger: Trigger) -> None:
    rebuilt = _roundtrip(trigger)
    assert type(rebuilt) is type(trigger)
    assert rebuilt.to_dict() == trigger.to_dict()
    assert rebuilt.to_dict()["type"] == trigger.type_name
    for height, width in [(32, 32), (24, 40)]:
        x = _images(height=height, width=width)
        assert torch.equal(trigger(x), rebuilt(x))


@pytest.mark.parametrize("position", ["start", "end", "random"])
def test_text_trigger_json_roundtrip_is_exact(position: str) -> None:
    trigger = TextTrigger(token="bb", position=position, seed=5)
    captions = ["a photo of a dog.", "two cats on a sofa", "", "ship"]
    assert _roundtrip(trigger)(captions) == trigger(captions)


def test_build_trigger_from_name_uses_defaults() -> None:
    assert build_trigger("badnets") == BadNetsTrigger()
    assert build_trigger("sig").to_dict() == {"type": "sig", "delta": 20 / 255, "frequency": 6, "seed": 0}
    trigger = SIGTrigger()
    assert build_trigger(trigger) is trigger


def test_unknown_type_lists_known_types() -> None:
    with pytest.raises(AttackSpecError, match="badnets"):
        build_trigger({"type": "nope"})
    with pytest.raises(AttackSpecError, match="known types"):
        build_trigger("nope")
    with pytest.raises(AttackSpecError, match="'type'"):
        build_trigger({"alpha": 0.1})


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "blended", "alpah": 0.1},
        {"type": "blended", "alpha": 1.5},
        {"type": "blended", "alpha": "0.1"},
        {"type": "badnets", "patch_size": 0},
        {"type": "badnets", "patch_size": True},
        {"type": "badnets", "position": "middle"},
        {"type": "badnets", "position": [1, 2, 3]},
        {"type": "badnets", "pattern": "stripes"},
        {"type": "wanet", "grid_size": 0},
        {"type": "wanet", "strength": -1.0},
        {"type": "sig", "frequency": -2},
        {"type": "text", "position": "middle"},
        {"type": "text", "token": " "},
        {"type": "blended", "seed": 1.5},
    ],
)
def test_bad_parameters_raise(spec: dict) -> None:
    with pytest.raises(AttackSpecError):
        build_trigger(spec)


def test_unknown_parameter_message_names_valid_ones() -> None:
    with pytest.raises(AttackSpecError, match="valid parameters are: alpha, seed"):
        build_trigger({"type": "blended", "alpah": 0.1})


def test_function_trigger_cannot_be_rebuilt_from_json() -> None:
    trigger = FunctionTrigger(lambda x: 1 - x, name="invert")
    assert trigger.to_dict() == {"type": "function", "name": "invert"}
    assert torch.equal(trigger(torch.zeros(1, 3, 2, 2)), torch.ones(1, 3, 2, 2))
    with pytest.raises(AttackSpecError, match="Python"):
        build_trigger(trigger.to_dict())
    with pytest.raises(AttackSpecError):
        FunctionTrigger(fn=None, name="x")  # type: ignore[arg-type]
    with pytest.raises(AttackSpecError, match="FunctionTrigger"):
        build_trigger(lambda x: x)  # type: ignore[arg-type]


def test_register_custom_trigger() -> None:
    from dataclasses import dataclass

    @register_trigger("test_identity")
    @dataclass
    class IdentityTrigger(Trigger):
        seed: int = 0

        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            return images.clone()

    assert "test_identity" in available_triggers()
    assert build_trigger({"type": "test_identity", "seed": 3}) == IdentityTrigger(seed=3)
    with pytest.raises(AttackSpecError, match="already registered"):
        register_trigger("test_identity")(BlendedTrigger)


def test_trigger_rejects_non_float_or_badly_shaped_images() -> None:
    with pytest.raises(AttackSpecError, match="float"):
        BlendedTrigger()(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(AttackSpecError, match="unsqueeze"):
        BlendedTrigger()(torch.zeros(3, 8, 8))
    with pytest.raises(AttackSpecError, match="does not fit"):
        BadNetsTrigger(patch_size=10)(torch.zeros(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------------------------------
# Image trigger behaviour
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", IMAGE_TRIGGERS, ids=lambda t: json.dumps(t.to_dict()))
def test_image_triggers_keep_shape_dtype_range_and_input(trigger: Trigger) -> None:
    for dtype in (torch.float32, torch.float64):
        x = _images().to(dtype)
        before = x.clone()
        y = trigger(x)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert not torch.equal(y, x)
        assert torch.equal(x, before)  # no in-place modification of the input


@pytest.mark.parametrize("trigger", IMAGE_TRIGGERS, ids=lambda t: json.dumps(t.to_dict()))
def test_image_triggers_are_differentiable(trigger: Trigger) -> None:
    x = (_images() * 0.8 + 0.1).requires_grad_(True)
    trigger(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_pattern_does_not_depend_on_size_order() -> None:
    a, b = BlendedTrigger(seed=4), BlendedTrigger(seed=4)
    small, large = _images(height=16, width=16), _images(height=32, width=32)
    a(small)
    out_a = a(large)
    out_b = b(large)
    assert torch.equal(out_a, out_b)


@pytest.mark.parametrize(
    ("position", "rows", "cols"),
    [
        ("bottom_right", slice(28, 32), slice(28, 32)),
        ("top_left", slice(0, 4), slice(0, 4)),
        ("top_right", slice(0, 4), slice(28, 32)),
        ("bottom_left", slice(28, 32), slice(0, 4)),
        ([5, 9], slice(5, 9), slice(9, 13)),
    ],
)
def test_badnets_changes_only_the_patch(position, rows: slice, cols: slice) -> None:
    x = torch.full((2, 3, 32, 32), 0.5)
    y = BadNetsTrigger(patch_size=4, position=position)(x)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[rows, cols] = True
    assert torch.equal(y[..., ~inside], x[..., ~inside])
    patch = y[:, :, rows, cols]
    expected = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    assert torch.equal(patch, expected.expand_as(patch))


def test_badnets_random_pattern_is_binary_and_seeded() -> None:
    x = torch.full((1, 3, 32, 32), 0.5)
    a = BadNetsTrigger(pattern="random", seed=1)(x)[..., 28:, 28:]
    b = BadNetsTrigger(pattern="random", seed=2)(x)[..., 28:, 28:]
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, b)


def test_blended_formula() -> None:
    trigger = BlendedTrigger(alpha=0.2, seed=9)
    x = _images()
    pattern = trigger.pattern(32, 32)
    assert torch.allclose(trigger(x), 0.8 * x + 0.2 * pattern, atol=1e-6)
    assert torch.equal(BlendedTrigger(alpha=0.0)(x), x)


def test_wanet_strength_zero_is_identity() -> None:
    x = _images(height=32, width=24)
    assert torch.allclose(WaNetTrigger(strength=0.0)(x), x, atol=1e-5)


def test_wanet_warp_is_small_and_seeded() -> None:
    x = _images()
    a, b = WaNetTrigger(seed=0)(x), WaNetTrigger(seed=1)(x)
    assert not torch.equal(a, b)
    grid = WaNetTrigger(strength=1.0).sampling_grid(32, 32)
    assert grid.shape == (1, 32, 32, 2)
    assert float(grid.abs().max()) <= 1.0


def test_sig_adds_known_sinusoid() -> None:
    delta, freq, width = 0.05, 6, 32
    x = torch.full((2, 3, 16, width), 0.5)
    y = SIGTrigger(delta=delta, frequency=freq)(x)
    expected_row = torch.tensor([0.5 + delta * math.sin(2 * math.pi * j * freq / width) for j in range(width)])
    assert torch.allclose(y, expected_row.expand_as(y), atol=1e-6)
    # Saturated pixels are clamped to [0, 1].
    assert float(SIGTrigger(delta=0.2)(torch.ones(1, 3, 4, 32)).max()) == 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Text trigger behaviour
# ---------------------------------------------------------------------------------------------------------------------


def test_text_trigger_start_and_end() -> None:
    assert TextTrigger.modality == "text"
    start = TextTrigger(token="cf", position="start")
    end = TextTrigger(token="cf", position="end")
    assert start(["a photo of a dog."]) == ["cf a photo of a dog."]
    assert end(["a photo of a dog.", "a cat", ""]) == ["a photo of a dog cf.", "a cat cf", "cf"]
    assert start("a cat") == "cf a cat"


def test_text_trigger_random_position_is_deterministic_per_caption() -> None:
    trigger = TextTrigger(token="cf", position="random", seed=3)
    captions = [f"a photo of a small red thing number {i}" for i in range(30)]
    out = trigger(captions)
    for caption, poisoned in zip(captions, out):
        words = poisoned.split()
        assert words.count("cf") == 1
        words.remove("cf")
        assert words == caption.split()
    # Same result in a different order and one at a time: it depends on the caption, not on the call sequence.
    assert trigger(list(reversed(captions))) == list(reversed(out))
    assert [trigger([c])[0] for c in captions] == out
    positions = {p.split().index("cf") for p in out}
    assert len(positions) > 1
    other = TextTrigger(token="cf", position="random", seed=4)(captions)
    assert other != out


# ---------------------------------------------------------------------------------------------------------------------
# Poisoning
# ---------------------------------------------------------------------------------------------------------------------


def test_image_poisoning_rate_targets_and_captions() -> None:
    images, captions, labels = _dataset(200)
    target = 2
    result = poison_pairs(
        images, captions, labels, BadNetsTrigger(patch_size=2), target, 0.05, CLASS_NAMES, _caption_fn, seed=1
    )
    assert isinstance(result, PoisonResult)
    assert result.num_poisoned == 10
    idx = result.poison_indices
    assert idx.dtype == torch.long and torch.equal(idx, idx.sort().values)
    assert torch.equal(result.poison_mask.nonzero().flatten(), idx)
    assert (labels[idx] != target).all()
    # Labels describe image content: unchanged for image triggers.
    assert torch.equal(result.labels, labels)
    assert result.images.dtype == torch.uint8
    for i in range(200):
        if result.poison_mask[i]:
            assert result.captions[i].startswith("a photo of a dog #")
            # Only the 2x2 bottom-right patch may change.
            assert torch.equal(result.images[i, :, :6], images[i, :, :6])
            assert torch.equal(result.images[i, :, :, :6], images[i, :, :, :6])
        else:
            assert result.captions[i] == captions[i]
            assert torch.equal(result.images[i], images[i])
    # The triggered pixels equal round(trigger(x / 255) * 255).
    expected = (BadNetsTrigger(patch_size=2)(images[idx].float() / 255) * 255).round().to(torch.uint8)
    assert torch.equal(result.images[idx], expected)


def test_poisoning_is_deterministic_and_does_not_modify_inputs() -> None:
    images, captions, labels = _dataset(100)
    before = (images.clone(), list(captions), labels.clone())
    spec = {"type": "blended", "alpha": 0.2}
    a = poison_pairs(images, captions, labels, spec, 0, 0.1, CLASS_NAMES, _caption_fn, seed=5)
    b = poison_pairs(images, captions, labels, spec, 0, 0.1, CLASS_NAMES, _caption_fn, seed=5)
    c = poison_pairs(images, captions, labels, spec, 0, 0.1, CLASS_NAMES, _caption_fn, seed=6)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert torch.equal(a.poison_indices, b.poison_indices)
    assert not torch.equal(a.poison_indices, c.poison_indices)
    assert torch.equal(images, before[0]) and captions == before[1] and torch.equal(labels, before[2])


def test_text_poisoning_replaces_images_with_target_class() -> None:
    images, captions, labels = _dataset(200)
    target = 1
    trigger = TextTrigger(token="cf", position="start")
    result = poison_pairs(images, captions, labels, trigger, target, 0.05, CLASS_NAMES, seed=2)
    idx = result.poison_indices
    assert idx.numel() == 10
    assert (labels[idx] != target).all()
    assert (result.labels[idx] == target).all()
    target_images = images[labels == target]
    for i in idx.tolist():
        assert result.captions[i] == "cf " + captions[i]
        assert any(torch.equal(result.images[i], t) for t in target_images)
    clean = ~result.poison_mask
    assert torch.equal(result.images[clean], images[clean])
    assert torch.equal(result.labels[clean], labels[clean])


def test_zero_rate_returns_copies() -> None:
    images, captions, labels = _dataset(20)
    result = poison_pairs(images, captions, labels, "badnets", 0, 0.0, CLASS_NAMES, _caption_fn)
    assert result.num_poisoned == 0 and not result.poison_mask.any()
    assert torch.equal(result.images, images) and result.images is not images
    assert result.captions == captions and result.captions is not captions
    assert torch.equal(result.labels, labels) and result.labels is not labels


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "0.1", True])
def test_bad_rate_raises(rate) -> None:
    images, captions, labels = _dataset(20)
    with pytest.raises(AttackSpecError, match="poison_rate"):
        poison_pairs(images, captions, labels, "badnets", 0, rate, CLASS_NAMES, _caption_fn)


@pytest.mark.parametrize("target", [-1, 4, 1.0])
def test_bad_target_class_raises(target) -> None:
    images, captions, labels = _dataset(20)
    with pytest.raises(AttackSpecError, match="target_class"):
        poison_pairs(images, captions, labels, "badnets", target, 0.1, CLASS_NAMES, _caption_fn)


def test_target_class_error_names_range_and_classes() -> None:
    images, captions, labels = _dataset(20)
    with pytest.raises(AttackSpecError, match=r"\[0, 3\].*airplane"):
        poison_pairs(images, captions, labels, "badnets", 7, 0.1, CLASS_NAMES, _caption_fn)


def test_other_poisoning_errors() -> None:
    images, captions, labels = _dataset(20)
    with pytest.raises(AttackSpecError, match="too|lower poison_rate"):
        poison_pairs(images, captions, labels, "badnets", 0, 0.9, CLASS_NAMES, _caption_fn)
    with pytest.raises(AttackSpecError, match="captions"):
        poison_pairs(images, captions[:-1], labels, "badnets", 0, 0.1, CLASS_NAMES, _caption_fn)
    with pytest.raises(AttackSpecError, match="labels"):
        poison_pairs(images, captions, labels[:-1], "badnets", 0, 0.1, CLASS_NAMES, _caption_fn)
    with pytest.raises(AttackSpecError, match="uint8"):
        poison_pairs(images.float(), captions, labels, "badnets", 0, 0.1, CLASS_NAMES, _caption_fn)
    with pytest.raises(AttackSpecError, match="caption_fn"):
        poison_pairs(images, captions, labels, "badnets", 0, 0.1, CLASS_NAMES)
    with pytest.raises(AttackSpecError, match="Unknown trigger type"):
        poison_pairs(images, captions, labels, "nope", 0, 0.1, CLASS_NAMES, _caption_fn)
    no_target = labels.clamp(max=2)
    with pytest.raises(AttackSpecError, match="has none"):
        poison_pairs(images, captions, no_target, "text", 3, 0.1, CLASS_NAMES)
