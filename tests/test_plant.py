"""The attack lab end to end: plant_backdoor and its recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bibau_hf.attacks import build_trigger
from bibau_hf.attacks.plant import PlantConfig, load_attack, plant_backdoor
from bibau_hf.data import load_digits_data
from bibau_hf.errors import AttackSpecError, DataError, OutputDirError, UnsafeCheckpointError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def planted(planted_badnets):
    return planted_badnets


def test_small_plant_run_reaches_high_asr_and_keeps_clean_accuracy(planted):
    _, result = planted
    metrics = result.record["metrics"]
    assert metrics["attack_success_rate"] >= 0.9
    assert metrics["clean_accuracy"] >= 0.9


def test_plant_writes_native_model_and_attack_json(planted):
    out, result = planted
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    record = json.loads((out / "attack.json").read_text())
    assert record["trigger"]["type"] == "badnets"
    assert record["num_poisoned"] == round(0.05 * record["num_train_pairs"])
    assert record["metrics"] == result.record["metrics"]


def test_trigger_rebuilt_from_attack_json_is_bit_identical(planted):
    out, _ = planted
    trigger, _ = load_attack(out)
    train, _ = load_digits_data()
    images = train.images[:16].float() / 255
    assert torch.equal(trigger(images), build_trigger(PlantConfig().trigger_spec())(images))


def test_poison_rate_defaults_to_the_dataset_presets_rate_for_the_attack():
    natural = "images.npz"  # any non-digits source trains with augmentation, where WaNet needs its paper's 10 %
    assert PlantConfig(attack="wanet", dataset=natural).poison_rate == 0.1
    assert PlantConfig(attack="wanet", dataset=natural).trigger_spec()["strength"] == 8.0
    assert PlantConfig(attack="badnets", dataset=natural).poison_rate == 0.05
    assert PlantConfig(attack="wanet").poison_rate == 0.05  # digits
    assert PlantConfig(attack="wanet", dataset=natural, poison_rate=0.02).poison_rate == 0.02
    assert PlantConfig(attack="wanet", dataset=natural, poison_rate=0.0).poison_rate == 0.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attack": "trojannn"}, AttackSpecError, "unknown attack"),
        ({"poison_rate": 1.5}, AttackSpecError, r"\[0, 1\]"),
        ({"poison_rate": -0.1}, AttackSpecError, r"\[0, 1\]"),
        ({"target_class": 12}, AttackSpecError, "0..9"),
        ({"trigger": "{not json"}, AttackSpecError, "JSON"),
        ({"trigger": '{"alpha": 2}', "attack": "blended"}, AttackSpecError, "alpha"),
    ],
)
def test_bad_plant_arguments_fail_clearly_and_write_nothing(tmp_path, kwargs, error, match):
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        plant_backdoor(PlantConfig(output_dir=str(out), progress=False, epochs=1, **kwargs))
    assert not out.exists()


def test_non_empty_output_dir_needs_overwrite(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(OutputDirError, match="overwrite_output_dir"):
        plant_backdoor(PlantConfig(output_dir=str(tmp_path), progress=False, epochs=1))
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_pickle_model_to_fine_tune_is_refused(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"never unpickled")
    with pytest.raises(UnsafeCheckpointError):
        plant_backdoor(PlantConfig(model_name_or_path=str(tmp_path / "model.pt"), output_dir=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_dataset_without_named_column_fails_clearly(tmp_path):
    from datasets import Dataset
    from PIL import Image

    images = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(4)]
    Dataset.from_dict({"img": images, "text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]}).save_to_disk(
        tmp_path / "ds"
    )
    with pytest.raises(DataError, match="caption"):
        plant_backdoor(PlantConfig(dataset=str(tmp_path / "ds"), image_column="img", output_dir=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_recipe_reports_user_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "plant_backdoor.py"), "--attack", "nope", "--output_dir",
         str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "error: unknown attack 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
