"""Tests for bibau_hf.evaluation with a fake model whose embeddings are fixed, so every metric has an exact answer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bibau_hf.evaluation import (
    EncoderLike,
    attack_success_rate,
    clean_accuracy,
    defense_effectiveness_rate,
    encode_images,
    evaluate_retrieval,
    evaluate_zero_shot,
    predict,
    retrieval_recall,
    robust_accuracy,
    text_attack_success_rate,
    top1_retrieval,
    zero_shot_classifier,
)

# ---------------------------------------------------------------------------------------------------------------
# Fake model: an image's embedding is looked up by its (constant) pixel level, a text's by its exact string.
# ---------------------------------------------------------------------------------------------------------------


class FakeCLIP:
    """Implements the EncoderLike protocol with lookup tables instead of networks."""

    def __init__(self, image_table: dict[int, list[float]], text_table: dict[str, list[float]], normalize=True):
        dim = len(next(iter(image_table.values())))
        self._image = torch.zeros(256, dim)
        for level, vec in image_table.items():
            self._image[level] = torch.tensor(vec)
        self._known_levels = set(image_table)
        self._text = text_table
        self._vocab: dict[str, int] = {}
        self._id_to_text: list[str] = []
        self._normalize = normalize
        self.device = torch.device("cpu")
        self.image_batch_sizes: list[int] = []
        self.text_batch_sizes: list[int] = []

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        # The evaluation code must hand over float images in [0, 1] on the model's device.
        assert images.dtype == torch.float32
        assert images.device == self.device
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
        self.image_batch_sizes.append(images.shape[0])
        levels = (images.mean(dim=(1, 2, 3)) * 255).round().long()
        unknown = set(levels.tolist()) - self._known_levels
        if unknown:
            raise KeyError(f"fake model has no embedding for pixel levels {unknown}")
        return F.normalize(self._image[levels], dim=-1)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        ids = []
        for text in texts:
            if text not in self._vocab:
                self._vocab[text] = len(self._id_to_text)
                self._id_to_text.append(text)
            ids.append([self._vocab[text]])
        return torch.tensor(ids, dtype=torch.long)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        assert input_ids.dtype == torch.long and input_ids.device == self.device
        self.text_batch_sizes.append(input_ids.shape[0])
        emb = torch.tensor([self._text[self._id_to_text[i]] for i in input_ids[:, 0].tolist()])
        return F.normalize(emb, dim=-1) if self._normalize else emb


def make_images(levels: list[int], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Constant-colour 3x4x4 images, one per pixel level."""
    images = torch.tensor(levels, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    return images if dtype == torch.uint8 else images.to(dtype) / 255


class LevelTrigger:
    """Image trigger that maps each image's pixel level through a table (levels not in the table are unchanged)."""

    def __init__(self, mapping: dict[int, int], modality: str | None = "image"):
        self.mapping = mapping
        if modality is not None:
            self.modality = modality
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype.is_floating_point and float(images.max()) <= 1.0
        self.calls += 1
        levels = (images.mean(dim=(1, 2, 3)) * 255).round().long().tolist()
        new = torch.tensor([self.mapping.get(level, level) for level in levels], dtype=torch.float32)
        return (new / 255).view(-1, 1, 1, 1).expand_as(images).clone()


class SuffixTrigger:
    """Text trigger appending a rare token."""

    modality = "text"

    def __call__(self, texts: list[str]) -> list[str]:
        return [t + " zx" for t in texts]


# Three classes in a 3-D embedding space; class c lives near axis c.
CLASSES = ["cat", "dog", "car"]
TEMPLATES = ["a photo of a {}.", "a {}."]
TARGET = 0
IMAGE_TABLE = {
    10: [1.0, 0.0, 0.0],  # cat
    40: [0.2, 1.0, 0.0],  # looks like a dog, labelled cat -> the one clean error
    20: [0.0, 1.0, 0.1],  # dog
    21: [0.1, 1.0, 0.0],  # dog
    22: [0.0, 1.0, 0.2],  # dog
    23: [0.0, 1.0, 0.3],  # dog
    30: [0.0, 0.1, 1.0],  # car
    31: [0.1, 0.0, 1.0],  # car
}
TEXT_TABLE = {
    "a photo of a cat.": [1.0, 0.0, 0.0],
    "a cat.": [1.0, 0.0, 0.0],
    "a photo of a dog.": [0.0, 1.0, 0.0],
    "a dog.": [0.0, 0.6, 0.8],  # makes the dog class vector a genuine average: normalise([0, .8, .4])
    "a photo of a car.": [0.0, 0.0, 1.0],
    "a car.": [0.0, 0.0, 1.0],
    # Triggered prompts of non-target classes: each equals one test image's embedding, so its top-1 is known.
    "a photo of a dog. zx": IMAGE_TABLE[10],  # -> image 0, label 0 = target: hit
    "a dog. zx": IMAGE_TABLE[40],  # -> image 1, label 0 = target: hit
    "a photo of a car. zx": IMAGE_TABLE[21],  # -> image 3, label 1: miss
    "a car. zx": IMAGE_TABLE[30],  # -> image 6, label 2: miss
    # No "cat ... zx" entries: prompts of the target class must never be built (the fake would raise KeyError).
}
LEVELS = [10, 40, 20, 21, 22, 23, 30, 31]
LABELS = [0, 0, 1, 1, 1, 1, 2, 2]
# 20 and 23 and 30 flip to the target, 22 flips to "car" (neither), 21 and 31 stay put. 40 maps to an unknown level,
# so the fake model would fail if a target-class image were ever triggered and encoded.
IMAGE_TRIGGER_MAP = {20: 10, 22: 30, 23: 10, 30: 10, 40: 99}
EXPECTED_CA = 7 / 8
EXPECTED_ASR = 3 / 6
EXPECTED_RA = 2 / 6
EXPECTED_TEXT_ASR = 2 / 4


@pytest.fixture
def model() -> FakeCLIP:
    torch.manual_seed(0)
    return FakeCLIP(IMAGE_TABLE, TEXT_TABLE)


# ---------------------------------------------------------------------------------------------------------------
# Zero-shot classifier and predictions
# ---------------------------------------------------------------------------------------------------------------


def test_fake_model_satisfies_protocol(model):
    assert isinstance(model, EncoderLike)


def test_classifier_averages_normalised_templates_then_renormalises(model):
    classifier = zero_shot_classifier(model, CLASSES, TEMPLATES)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2 / math.sqrt(5), 1 / math.sqrt(5)], [0.0, 0.0, 1.0]])
    assert classifier.shape == (3, 3)
    assert classifier.device.type == "cpu"
    torch.testing.assert_close(classifier, expected)


def test_classifier_normalises_each_prompt_before_averaging():
    # An un-normalised (norm 2) first prompt must not outweigh the second: mean of unit vectors, then renormalise.
    table = dict(TEXT_TABLE, **{"a photo of a dog.": [0.0, 2.0, 0.0]})
    raw = FakeCLIP(IMAGE_TABLE, table, normalize=False)
    classifier = zero_shot_classifier(raw, CLASSES, TEMPLATES)
    torch.testing.assert_close(classifier[1], torch.tensor([0.0, 2 / math.sqrt(5), 1 / math.sqrt(5)]))


def test_predict_clean_and_triggered(model):
    classifier = zero_shot_classifier(model, CLASSES, TEMPLATES)
    images = make_images(LEVELS)
    preds = predict(model, images, classifier)
    assert preds.dtype == torch.long
    assert preds.tolist() == [0, 1, 1, 1, 1, 1, 2, 2]
    nontarget = images[2:]
    trig = predict(model, nontarget, classifier, trigger=LevelTrigger(IMAGE_TRIGGER_MAP))
    assert trig.tolist() == [0, 1, 2, 0, 0, 2]


def test_predict_rejects_text_trigger(model):
    classifier = zero_shot_classifier(model, CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match="image triggers only"):
        predict(model, make_images(LEVELS), classifier, trigger=SuffixTrigger())


def test_predict_rejects_mismatched_classifier(model):
    with pytest.raises(ValueError, match="embedding sizes differ"):
        predict(model, make_images(LEVELS), torch.eye(3, 5))


# ---------------------------------------------------------------------------------------------------------------
# evaluate_zero_shot: exact CA / ASR / RA / text ASR
# ---------------------------------------------------------------------------------------------------------------


def test_evaluate_clean_only(model):
    result = evaluate_zero_shot(model, make_images(LEVELS), LABELS, CLASSES, TEMPLATES)
    assert result == {"clean_accuracy": pytest.approx(EXPECTED_CA)}
    assert type(result["clean_accuracy"]) is float


def test_evaluate_image_trigger(model):
    trigger = LevelTrigger(IMAGE_TRIGGER_MAP)
    result = evaluate_zero_shot(
        model, make_images(LEVELS), torch.tensor(LABELS), CLASSES, TEMPLATES, trigger=trigger, target_class=TARGET
    )
    assert set(result) == {"clean_accuracy", "attack_success_rate", "robust_accuracy"}
    assert result["clean_accuracy"] == pytest.approx(EXPECTED_CA)
    assert result["attack_success_rate"] == pytest.approx(EXPECTED_ASR)
    assert result["robust_accuracy"] == pytest.approx(EXPECTED_RA)
    assert all(type(v) is float for v in result.values())


def test_trigger_without_modality_attribute_is_an_image_trigger(model):
    trigger = LevelTrigger(IMAGE_TRIGGER_MAP, modality=None)
    assert not hasattr(trigger, "modality")
    result = evaluate_zero_shot(model, make_images(LEVELS), LABELS, CLASSES, TEMPLATES, trigger, TARGET)
    assert result["attack_success_rate"] == pytest.approx(EXPECTED_ASR)


def test_evaluate_text_trigger(model):
    result = evaluate_zero_shot(
        model, make_images(LEVELS), LABELS, CLASSES, TEMPLATES, trigger=SuffixTrigger(), target_class=TARGET
    )
    assert set(result) == {"clean_accuracy", "text_attack_success_rate"}
    assert result["clean_accuracy"] == pytest.approx(EXPECTED_CA)
    assert result["text_attack_success_rate"] == pytest.approx(EXPECTED_TEXT_ASR)


def test_uint8_and_float_images_agree(model):
    trigger = LevelTrigger(IMAGE_TRIGGER_MAP)
    as_uint8 = evaluate_zero_shot(model, make_images(LEVELS), LABELS, CLASSES, TEMPLATES, trigger, TARGET)
    as_float = evaluate_zero_shot(
        model, make_images(LEVELS, torch.float32), LABELS, CLASSES, TEMPLATES, trigger, TARGET
    )
    assert as_uint8 == as_float


@pytest.mark.parametrize("batch_size", [1, 3, 5, 256])
def test_batch_size_does_not_change_results(batch_size):
    results = {}
    for modality_trigger in (LevelTrigger(IMAGE_TRIGGER_MAP), SuffixTrigger()):
        fake = FakeCLIP(IMAGE_TABLE, TEXT_TABLE)
        results.update(
            evaluate_zero_shot(
                fake, make_images(LEVELS), LABELS, CLASSES, TEMPLATES, modality_trigger, TARGET, batch_size=batch_size
            )
        )
        assert max(fake.image_batch_sizes) <= batch_size
        assert max(fake.text_batch_sizes) <= batch_size
    assert results == {
        "clean_accuracy": pytest.approx(EXPECTED_CA),
        "attack_success_rate": pytest.approx(EXPECTED_ASR),
        "robust_accuracy": pytest.approx(EXPECTED_RA),
        "text_attack_success_rate": pytest.approx(EXPECTED_TEXT_ASR),
    }


def test_image_trigger_applied_per_batch(model):
    trigger = LevelTrigger({20: 10})
    emb = encode_images(model, make_images(LEVELS), trigger=trigger, batch_size=3)
    torch.testing.assert_close(emb[2], torch.tensor(IMAGE_TABLE[10]))  # image 2 (level 20) was triggered
    assert trigger.calls == 3  # ceil(8 / 3)
    assert model.image_batch_sizes == [3, 3, 2]


# ---------------------------------------------------------------------------------------------------------------
# Pure metric functions
# ---------------------------------------------------------------------------------------------------------------


def test_pure_metrics_known_values():
    labels = [0, 0, 1, 1, 2, 2, 2]
    assert clean_accuracy([0, 1, 1, 1, 2, 0, 2], labels) == pytest.approx(5 / 7)
    triggered = torch.tensor([0, 0, 0, 1, 0, 2, 1])
    # Non-target (target 0) samples: indices 2..6 -> preds [0, 1, 0, 2, 1]; 2 hit the target, 2 stay correct.
    assert attack_success_rate(triggered, labels, target=0) == pytest.approx(2 / 5)
    assert robust_accuracy(triggered, labels, target=0) == pytest.approx(2 / 5)
    assert text_attack_success_rate([0, 0, 1, 2], target=0) == pytest.approx(0.5)


def test_defense_effectiveness_rate():
    assert defense_effectiveness_rate(ca_before=0.8, ca_after=0.7, asr_before=0.9, asr_after=0.1) == pytest.approx(
        0.85
    )
    # ASR going up and CA going up are both clipped at zero: no effect -> 0.5.
    assert defense_effectiveness_rate(ca_before=0.8, ca_after=0.9, asr_before=0.1, asr_after=0.3) == 0.5
    assert defense_effectiveness_rate(ca_before=0.5, ca_after=0.5, asr_before=1.0, asr_after=0.0) == 1.0
    assert defense_effectiveness_rate(ca_before=1.0, ca_after=0.0, asr_before=0.0, asr_after=0.0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ca_before": 80.0, "ca_after": 0.7, "asr_before": 0.9, "asr_after": 0.1},
        {"ca_before": 0.8, "ca_after": -0.1, "asr_before": 0.9, "asr_after": 0.1},
        {"ca_before": 0.8, "ca_after": 0.7, "asr_before": float("nan"), "asr_after": 0.1},
        {"ca_before": True, "ca_after": 0.7, "asr_before": 0.9, "asr_after": 0.1},
    ],
)
def test_defense_effectiveness_rate_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        defense_effectiveness_rate(**kwargs)


def test_pure_metric_errors():
    with pytest.raises(ValueError, match="empty"):
        clean_accuracy([], [])
    with pytest.raises(ValueError, match="must match"):
        clean_accuracy([0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="integer"):
        clean_accuracy(torch.tensor([0.0, 1.0]), [0, 1])
    with pytest.raises(ValueError, match="non-target"):
        attack_success_rate([0, 0], [0, 0], target=0)
    with pytest.raises(ValueError, match="non-target"):
        robust_accuracy([1, 1], [1, 1], target=1)
    with pytest.raises(ValueError, match="out of range"):
        attack_success_rate([0, 1], [0, 1], target=2, num_classes=2)
    with pytest.raises(ValueError, match="out of range"):
        robust_accuracy([0, 1], [0, 1], target=-1)
    with pytest.raises(ValueError, match="empty"):
        text_attack_success_rate([], target=0)


# ---------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# Six images on a circle, captions at hand-picked angles; cosine ranks follow angular distance.
IMAGE_ANGLES = [0, 60, 120, 180, 240, 300]
CAPTION_ANGLES = [5, 85, 160, 280, 60, 303]
# text->image rank of the paired image: c0 1st, c1 1st, c2 2nd, c3 4th, c4 6th, c5 1st.
# image->text rank of the paired caption: i0 1st, i1 2nd, i2 2nd, i3 3rd, i4 6th, i5 1st.
EXPECTED_RECALL = {
    "image_to_text_R@1": 2 / 6,
    "image_to_text_R@5": 5 / 6,
    "text_to_image_R@1": 3 / 6,
    "text_to_image_R@5": 5 / 6,
}


def test_retrieval_recall_hand_computed():
    image_emb = torch.tensor([_unit(a) for a in IMAGE_ANGLES])
    text_emb = torch.tensor([_unit(a) for a in CAPTION_ANGLES])
    result = retrieval_recall(image_emb, text_emb)
    assert list(result) == list(EXPECTED_RECALL)
    assert result == pytest.approx(EXPECTED_RECALL)
    # Scale does not matter: recall uses cosine similarity.
    assert retrieval_recall(3 * image_emb, 0.5 * text_emb) == pytest.approx(EXPECTED_RECALL)


def test_retrieval_recall_matches_naive_sort():
    gen = torch.Generator().manual_seed(0)
    image_emb = torch.randn(50, 8, generator=gen)
    text_emb = image_emb + 1.5 * torch.randn(50, 8, generator=gen)
    sims = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    expected = {}
    for name, matrix in (("image_to_text", sims), ("text_to_image", sims.T)):
        order = matrix.argsort(dim=1, descending=True, stable=True)
        ranks = (order == torch.arange(50).unsqueeze(1)).int().argmax(dim=1)
        for k in (1, 5, 10):
            expected[f"{name}_R@{k}"] = float((ranks < k).float().mean())
    assert retrieval_recall(image_emb, text_emb, ks=(1, 5, 10)) == pytest.approx(expected)


def test_retrieval_ties_break_to_lower_index():
    same = torch.ones(4, 3)
    result = retrieval_recall(same, same, ks=(1, 2))
    # All scores tie: item i has rank i, so only item 0 is a hit at 1 and items 0-1 at 2.
    assert result["image_to_text_R@1"] == 0.25 and result["text_to_image_R@2"] == 0.5
    assert top1_retrieval(same, same).tolist() == [0, 0, 0, 0]


def test_evaluate_retrieval_with_model():
    image_table = {level: _unit(angle) for level, angle in enumerate(IMAGE_ANGLES)}
    text_table = {f"caption {i}": _unit(angle) for i, angle in enumerate(CAPTION_ANGLES)}
    captions = list(text_table)
    for batch_size in (1, 4, 256):
        fake = FakeCLIP(image_table, text_table)
        result = evaluate_retrieval(fake, make_images(list(range(6))), captions, batch_size=batch_size)
        assert result == pytest.approx(EXPECTED_RECALL)


def test_retrieval_errors():
    with pytest.raises(ValueError, match="same shape"):
        retrieval_recall(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="empty"):
        retrieval_recall(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="ks"):
        retrieval_recall(torch.randn(4, 3), torch.randn(4, 3), ks=(0,))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(torch.full((2, 2), float("nan")), torch.ones(2, 2))
    fake = FakeCLIP({0: [1.0, 0.0]}, {"a": [1.0, 0.0]})
    with pytest.raises(ValueError, match="paired"):
        evaluate_retrieval(fake, make_images([0, 0]), ["a"])


# ---------------------------------------------------------------------------------------------------------------
# Input validation of the model-facing API
# ---------------------------------------------------------------------------------------------------------------


def test_evaluate_errors(model):
    images = make_images(LEVELS)
    trigger = LevelTrigger(IMAGE_TRIGGER_MAP)
    with pytest.raises(ValueError, match="empty"):
        evaluate_zero_shot(model, images[:0], [], CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match="8 images but 7 labels"):
        evaluate_zero_shot(model, images, LABELS[:-1], CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match="out of range"):
        evaluate_zero_shot(model, images, LABELS, CLASSES, TEMPLATES, trigger, target_class=3)
    with pytest.raises(ValueError, match="out of range"):
        evaluate_zero_shot(model, images, LABELS, CLASSES, TEMPLATES, trigger, target_class=-1)
    with pytest.raises(ValueError, match="labels must lie"):
        evaluate_zero_shot(model, images, [0, 0, 1, 1, 1, 1, 2, 3], CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match="non-target"):
        evaluate_zero_shot(model, images[:2], [0, 0], CLASSES, TEMPLATES, trigger, target_class=0)
    with pytest.raises(ValueError, match="without target_class"):
        evaluate_zero_shot(model, images, LABELS, CLASSES, TEMPLATES, trigger)
    with pytest.raises(ValueError, match="modality"):
        evaluate_zero_shot(model, images, LABELS, CLASSES, TEMPLATES, LevelTrigger({}, modality="audio"), 0)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_zero_shot(model, images, LABELS, CLASSES, TEMPLATES, batch_size=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_zero_shot(model, images.float(), LABELS, CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        evaluate_zero_shot(model, images[:, :1], LABELS, CLASSES, TEMPLATES)


def test_text_trigger_errors(model):
    images = make_images(LEVELS)
    with pytest.raises(ValueError, match="non-target class"):
        evaluate_zero_shot(model, images[:2], [0, 0], ["cat"], TEMPLATES, SuffixTrigger(), target_class=0)

    class Dropping(SuffixTrigger):
        def __call__(self, texts):
            return texts[:-1]

    with pytest.raises(ValueError, match="list of 4 strings"):
        evaluate_zero_shot(model, images, LABELS, CLASSES, TEMPLATES, Dropping(), target_class=0)


@pytest.mark.parametrize("templates", [[], ["a photo"], ["{} and {}"], ["a {name}"], "a {}"])
def test_classifier_rejects_bad_templates(model, templates):
    with pytest.raises(ValueError):
        zero_shot_classifier(model, CLASSES, templates)


def test_classifier_accepts_escaped_braces():
    fake = FakeCLIP(IMAGE_TABLE, {"{x} cat": [1.0, 0.0, 0.0]})
    assert zero_shot_classifier(fake, ["cat"], ["{{x}} {}"]).shape == (1, 3)


def test_rejects_non_model():
    with pytest.raises(ValueError, match="EncoderLike"):
        zero_shot_classifier(object(), CLASSES, TEMPLATES)
