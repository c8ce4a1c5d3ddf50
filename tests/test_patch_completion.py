"""Patch completion (METHOD_NOTES §21): the cells a mask occupies, when a trigger is completed, what it becomes."""

from __future__ import annotations

import torch

from bibau_hf.inversion import BlindInverter, InversionConfig, MaskPatternTrigger
from bibau_hf.inversion.patch_completion import cells_connected, cells_to_pixels, patch_cells
from bibau_hf.models import load_adapter


def test_patch_cells_keeps_cells_holding_a_real_share_of_the_mask():
    mask = torch.full((8, 8), 0.01)
    mask[4:8, 0:4] = 0.5  # one full cell
    mask[0, 5] = 0.9  # one bright pixel: a quarter of that cell's mass is 2.0, and 0.9 + 15 * 0.01 < 2
    cells = patch_cells(mask, 4)
    assert cells.tolist() == [[False, False], [True, False]]
    assert cells_to_pixels(cells, 4, (8, 8)).sum() == 16


def test_patch_cells_pads_an_image_that_is_not_a_whole_number_of_cells():
    mask = torch.zeros(10, 10)
    mask[9, 9] = 1.0
    cells = patch_cells(mask, 4)
    assert cells.shape == (3, 3) and cells.nonzero().tolist() == [[2, 2]]
    assert cells_to_pixels(cells, 4, (10, 10)).shape == (10, 10)


def test_cells_connected_accepts_one_region_touching_at_corners_and_refuses_cells_apart():
    grid = torch.zeros(4, 4, dtype=torch.bool)
    grid[1, 1] = grid[2, 2] = grid[2, 3] = True  # a diagonal step is still one stamp
    assert cells_connected(grid)
    grid[0, 3] = True  # a cell two columns from the rest
    assert not cells_connected(grid)
    assert cells_connected(torch.zeros(3, 3, dtype=torch.bool))


def _inverter_after_one_scan(model, digits_data) -> BlindInverter:
    """An inverter on 32 digits pairs that has run one (one-step) scan, so that it holds concept embeddings."""
    train, test = digits_data
    data = train.take(32, seed=0)
    inverter = BlindInverter(model, data.images, data.captions,
                             InversionConfig(steps=1, score_steps=1, seed=0, progress=False), test.class_names)
    inverter.run()
    return inverter


def test_a_mask_in_cells_that_lie_apart_is_not_completed(tiny_model, digits_data):
    inverter = _inverter_after_one_scan(tiny_model, digits_data)
    apart = MaskPatternTrigger(1, (32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # two fully masked cells, (1, 1) and (5, 6), nothing elsewhere: no refinement step undoes it
        apart.mask_logits.fill_(-12.0)
        apart.mask_logits[0, 0, 4:8, 4:8] = 12.0
        apart.mask_logits[0, 0, 20:24, 24:28] = 12.0
    completed, info = inverter.complete_patch(apart, "zero", max_cells=4, steps=1)
    assert completed is None and not info["completed"] and info["cells"] == 2 and not info["connected"]


def test_a_mask_spread_over_many_cells_is_not_completed(tiny_model, digits_data):
    inverter = _inverter_after_one_scan(tiny_model, digits_data)
    spread = MaskPatternTrigger(1, (32, 32), generator=torch.Generator().manual_seed(0), init_mask=0.3)
    completed, info = inverter.complete_patch(spread, "zero", max_cells=4, steps=2)
    assert completed is None and not info["completed"] and info["cells"] > 4


def test_completing_the_planted_badnets_trigger_fills_its_cell_with_a_pattern_that_fires(planted_badnets,
                                                                                         digits_data):
    from bibau_hf.evaluation import predict, zero_shot_classifier

    folder, _ = planted_badnets
    model = load_adapter(folder)
    train, test = digits_data
    clean = train.take_fraction(0.05, seed=0)
    config = InversionConfig(progress=False, invert_text=False, image_families=("mask",), seed=0)
    inverter = BlindInverter(model, clean.images, clean.captions, config, test.class_names)
    found = inverter.run().triggers[0]
    assert found.suspected_target == "zero"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    completed, info = inverter.complete_patch(found.trigger_for("zero"), "zero", max_cells=4, steps=100)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the model is only read
    assert completed is not None and info["completed"] and 1 <= info["cells"] <= 4
    mask = completed.mask()[0, 0].detach()
    # Whole 4x4 cells of the patch-4 ViT, fully replaced; nothing outside them.
    cells = mask.reshape(8, 4, 8, 4).mean(dim=(1, 3))
    assert ((cells > 0.999) | (cells < 1e-3)).all() and int((cells > 0.999).sum()) == info["cells"]
    classifier = zero_shot_classifier(model, test.class_names, test.templates)
    with torch.no_grad():
        preds = predict(model, completed.apply_one(test.images[:200].float() / 255, 0), classifier)
    assert (preds == 0).float().mean() > 0.95
