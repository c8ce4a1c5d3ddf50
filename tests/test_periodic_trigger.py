"""The periodic image family: its dictionary, its exhaustive sweep, its own gate, and how the M-step applies it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_trainer import make_config, small_clean_set

from bibau_hf.bibau_trainer import BIBAUTrainer
from bibau_hf.errors import BIBAUError
from bibau_hf.inversion import (
    PERIODIC_THRESHOLD,
    BlindInverter,
    InversionConfig,
    PeriodicTrigger,
    build_image_trigger,
    periodic_atoms,
)
from bibau_hf.inversion.blind_inversion import _Side


def test_dictionary_holds_every_direction_once_at_two_phases():
    signals, atoms = periodic_atoms((12, 16), max_frequency=3)
    # fx in 0..3, fy in -3..3, minus (0, fy <= 0): 4 * 7 - 4 = 24 directions, two phases each.
    assert signals.shape == (48, 1, 12, 16) and len(atoms) == 48
    assert len(set(atoms)) == 48 and all(fx > 0 or fy > 0 for fx, fy, _ in atoms)
    assert {phase for *_, phase in atoms} == {0.0, math.pi / 2}
    assert float(signals.abs().max()) <= 1.0 + 1e-6
    # No atom is another's mirror image (the opposite direction is the same wave): all are pairwise distinct.
    flat = F.normalize(signals.flatten(1), dim=1)
    similarity = (flat @ flat.t()).abs() - torch.eye(48)
    assert float(similarity.max()) < 0.99
    with pytest.raises(ValueError, match="max_frequency"):
        periodic_atoms((8, 8), max_frequency=0)


def test_periodic_trigger_adds_its_sinusoid_at_its_amplitude_times_the_strength():
    trigger = PeriodicTrigger.dictionary((8, 8), amplitude=0.1, max_frequency=2)
    chosen = trigger.select([3])
    assert chosen.num_candidates == 1 and chosen.atoms == [trigger.atoms[3]]
    grey = torch.full((4, 3, 8, 8), 0.5)  # mid-grey: nothing is clamped
    torch.testing.assert_close(chosen.apply_one(grey, 0) - grey, (0.1 * trigger.signals[3]).expand(4, 3, 8, 8))
    strength = torch.tensor([1.0, 1.5, 2.0, 1.0])
    added = chosen.apply_one(grey, 0, strength) - grey
    torch.testing.assert_close(added, strength.view(4, 1, 1, 1) * 0.1 * trigger.signals[3].expand(4, 3, 8, 8))
    assert float(chosen.prior_cost()) == 0.0 and list(trigger.parameters()) == []
    described = chosen.describe(0)
    assert described["family"] == "periodic" and described["amplitude"] == 0.1
    with pytest.raises(ValueError, match="PeriodicTrigger.dictionary"):
        build_image_trigger("periodic", 1, (8, 8))


def test_dictionary_sweep_keeps_each_concepts_cheapest_atom(tiny_model, digits_data):
    train, test = digits_data
    data = train.take(32, seed=0)
    config = InversionConfig(image_families=("periodic",), periodic_max_frequency=2, periodic_amplitude=0.2,
                             progress=False, seed=0)
    inverter = BlindInverter(tiny_model, data.images, data.captions, config, concepts=test.class_names)
    inverter.run()  # embeds the concepts
    targets = inverter.concept_emb
    subset = [0, 3, 7]
    side = _Side(inverter, "image", "periodic")
    sweep, objectives = inverter._dictionary_sweep(side, targets, subset, inverter._sampler(5), batches=3)

    # The same three batches, every atom applied through the trigger's own apply_one, scored one by one.
    sampler = inverter._sampler(5)
    images = torch.cat([sampler()[0] for _ in range(3)])
    dictionary = PeriodicTrigger.dictionary(tuple(images.shape[-2:]), 0.2, 2)
    scale = tiny_model.logit_scale().detach()
    with torch.no_grad():
        costs = torch.stack([
            F.cross_entropy(scale * tiny_model.encode_image(dictionary.apply_one(images, a)) @ targets.t(),
                            torch.full((len(images),), k), reduction="mean")
            for a in range(dictionary.num_candidates) for k in subset
        ]).view(dictionary.num_candidates, len(subset))
    torch.testing.assert_close(objectives, costs.min(0).values, atol=1e-4, rtol=1e-4)
    assert sweep.atoms == [dictionary.atoms[a] for a in costs.argmin(0).tolist()]


def test_periodic_family_scan_reports_a_score_and_target_without_changing_the_model(tiny_model, digits_data):
    train, test = digits_data
    data = train.take(32, seed=0)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    config = InversionConfig(image_families=("mask", "periodic"), invert_text=False, steps=2, score_steps=2,
                             periodic_max_frequency=2, progress=False, seed=0)
    result = BlindInverter(tiny_model, data.images, data.captions, config, concepts=test.class_names).run()
    periodic = next(t for t in result.image_triggers() if t.family == "periodic")
    assert periodic.suspected_target in test.class_names and periodic.score >= 0
    assert set(periodic.objectives) == set(test.class_names)  # every concept is scored: a pass costs the same
    assert isinstance(periodic.trigger, PeriodicTrigger) and periodic.trigger.num_candidates == 1
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, before[key])


def test_periodic_family_is_gated_by_its_own_threshold(tiny_model, digits_data, tmp_path):
    config = make_config(tmp_path, unlearn_threshold=1.5, confidence_gap_threshold=0.12)
    assert config.periodic_unlearn_threshold == PERIODIC_THRESHOLD
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 32))
    trainer._targets = {"image/mask": (3.0, "zero", 0.0), "image/periodic": (3.0, "one", 0.0)}
    assert trainer._unlearning_target("image/mask") == "zero"
    assert trainer._unlearning_target("image/periodic") is None  # a natural stripe pattern's level
    trainer._targets["image/periodic"] = (PERIODIC_THRESHOLD + 1, "one", 0.0)
    assert trainer._unlearning_target("image/periodic") == "one"
    trainer._targets["image/periodic"] = (PERIODIC_THRESHOLD + 1, "one", 0.5)  # the confidence gap still vetoes
    assert trainer._unlearning_target("image/periodic") is None


def test_periodic_triggers_are_unlearned_between_their_amplitude_and_additive_strength_times_that(
    tiny_model, digits_data, tmp_path
):
    trigger = PeriodicTrigger.dictionary((32, 32), amplitude=0.1, max_frequency=2).select([5])
    signal = 0.1 * trigger.signals[0]
    grey = torch.full((16, 3, 32, 32), 0.5)
    config = make_config(tmp_path, additive_strength=2.0, trigger_shift=False)
    trainer = BIBAUTrainer(tiny_model, config, small_clean_set(digits_data, 16))
    trainer._image_triggers = [trigger]
    added = trainer._triggered_images(grey) - grey
    scale = (added * signal).flatten(1).sum(1) / (signal * signal).sum() / 3
    torch.testing.assert_close(added, scale.view(-1, 1, 1, 1) * signal.expand(16, 3, 32, 32), atol=1e-5, rtol=0)
    assert (scale >= 1 - 1e-5).all() and (scale <= 2 + 1e-5).all() and scale.std() > 0.05


def test_config_rejects_bad_periodic_settings(tmp_path):
    for amplitude in (0.0, 0.6):
        with pytest.raises(BIBAUError, match="periodic_amplitude"):
            make_config(tmp_path, periodic_amplitude=amplitude)
    with pytest.raises(BIBAUError, match="periodic_max_frequency"):
        make_config(tmp_path, periodic_max_frequency=0)
    with pytest.raises(BIBAUError, match="periodic_unlearn_threshold"):
        make_config(tmp_path, periodic_unlearn_threshold=-1)
    config = make_config(tmp_path, trigger_families=["mask", "periodic"], periodic_amplitude=0.2)
    inversion = config.inversion_config()
    assert inversion.image_families == ("mask", "periodic") and inversion.periodic_amplitude == 0.2


def test_adding_the_periodic_family_leaves_the_other_families_results_unchanged(tiny_model, digits_data):
    train, test = digits_data
    data = train.take(32, seed=0)

    def scan(families):
        config = InversionConfig(image_families=families, steps=2, score_steps=3, periodic_max_frequency=1,
                                 progress=False, seed=0)
        result = BlindInverter(tiny_model, data.images, data.captions, config, concepts=test.class_names).run()
        return {t.key: t for t in result.triggers}

    without, with_periodic = scan(("mask",)), scan(("periodic", "mask"))
    assert set(with_periodic) == {"image/periodic", "image/mask", "text/soft_tokens"}
    for key in ("image/mask", "text/soft_tokens"):
        assert with_periodic[key].objectives == without[key].objectives
        assert with_periodic[key].suspected_target == without[key].suspected_target


@pytest.fixture(scope="module")
def planted_sig(tmp_path_factory):
    """The lab's digits SIG model, seed 2 (one of the digits seeds whose SIG the periodic family reaches)."""
    from bibau_hf.attacks.plant import PlantConfig, plant_backdoor

    out = tmp_path_factory.mktemp("planted") / "sig"
    plant_backdoor(PlantConfig(attack="sig", seed=2, output_dir=str(out), progress=False))
    return out


def test_periodic_family_finds_a_planted_sig_and_its_target(planted_sig):
    from bibau_hf.bibau_config import BIBAUConfig
    from bibau_hf.data.sources import load_train_and_eval
    from bibau_hf.inversion import scan
    from bibau_hf.models import load_adapter

    train, test = load_train_and_eval("digits", seed=2)
    clean = train.take_fraction(0.05, seed=2)  # the benchmark's defender data for seed 2
    config = BIBAUConfig(output_dir=str(planted_sig.parent / "scan"), seed=2, trigger_families=["periodic"],
                         invert_towers="image")
    found = scan(load_adapter(planted_sig), clean.images, clean.captions, concepts=test.class_names,
                 config=config.inversion_config(progress=False)).triggers[0]
    assert found.family == "periodic" and found.suspected_target == "zero"
    assert found.score >= config.periodic_unlearn_threshold and found.confidence_gap <= 0.12
