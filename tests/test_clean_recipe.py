"""The cleaning job: clear errors on bad input, nothing written; the recipe parses YAML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bibau_hf.bibau_config import BIBAUConfig
from bibau_hf.clean_pipeline import CleanArguments, run_clean
from bibau_hf.errors import BIBAUError, DataError, ModelFormatError, OutputDirError
from bibau_hf.recipe_args import parse_recipe_args

ROOT = Path(__file__).resolve().parents[1]


def config(tmp_path, **kwargs) -> BIBAUConfig:
    return BIBAUConfig(output_dir=str(tmp_path / "out"), disable_tqdm=True, **kwargs)


def test_model_folder_without_weights_fails_clearly(tiny_model, tmp_path):
    tiny_model.save_native(tmp_path / "m")
    for weights in (tmp_path / "m").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelFormatError, match="no weights"):
        run_clean(CleanArguments(model_name_or_path=str(tmp_path / "m")), config(tmp_path))
    assert not (tmp_path / "out").exists()


def test_wrong_model_type_fails_clearly(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="model_type 'clip'"):
        run_clean(CleanArguments(model_name_or_path=str(tmp_path / "m")), config(tmp_path))


def test_dataset_without_caption_column_fails_clearly(tiny_model, tmp_path):
    from datasets import Dataset
    from PIL import Image

    tiny_model.save_native(tmp_path / "m")
    images = [Image.new("RGB", (8, 8), (i * 30, 0, 0)) for i in range(4)]
    Dataset.from_dict({"image": images, "text": list("abcd")}).save_to_disk(tmp_path / "ds")
    args = CleanArguments(model_name_or_path=str(tmp_path / "m"), dataset_name=str(tmp_path / "ds"))
    with pytest.raises(DataError, match="caption"):
        run_clean(args, config(tmp_path))
    assert not (tmp_path / "out").exists()


def test_too_few_clean_samples_fail_clearly(tiny_model, tmp_path):
    tiny_model.save_native(tmp_path / "m")
    args = CleanArguments(model_name_or_path=str(tmp_path / "m"), dataset_name="digits", max_clean_samples=10)
    with pytest.raises(BIBAUError, match="too few"):
        run_clean(args, config(tmp_path, per_device_train_batch_size=32))
    assert not (tmp_path / "out").exists()


def test_non_empty_output_dir_is_never_overwritten_silently(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_text("someone's model")
    with pytest.raises(OutputDirError):
        run_clean(CleanArguments(model_name_or_path=str(tmp_path / "missing")), config(tmp_path))
    assert (tmp_path / "out" / "model.safetensors").read_text() == "someone's model"


def test_yaml_config_sets_defaults_and_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("em_rounds: 2\nlearning_rate: 0.002\nmax_clean_samples: 50\noutput_dir: x\n")
    args, cfg = parse_recipe_args([CleanArguments, BIBAUConfig], ["--config", str(path), "--em_rounds", "4"])
    assert cfg.em_rounds == 4 and cfg.learning_rate == 0.002 and args.max_clean_samples == 50


def test_yaml_config_with_unknown_key_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("em_roundz: 2\n")
    with pytest.raises(BIBAUError, match="em_roundz"):
        parse_recipe_args([CleanArguments, BIBAUConfig], ["--config", str(path)])


def test_shipped_configs_parse():
    for path in sorted((ROOT / "recipes" / "configs").glob("clean_*.yaml")):
        parse_recipe_args([CleanArguments, BIBAUConfig], ["--config", str(path)])


def test_recipe_prints_one_line_error_for_a_missing_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "clean_clip.py"), "--model_name_or_path", str(tmp_path / "nope"),
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_completeness_test_needs_the_trigger(tiny_model, tmp_path):
    tiny_model.save_native(tmp_path / "m")
    args = CleanArguments(model_name_or_path=str(tmp_path / "m"), completeness_test=True)
    with pytest.raises(DataError, match="eval_attack"):
        run_clean(args, config(tmp_path))
    assert not (tmp_path / "out").exists()


def test_completeness_test_retunes_the_model_and_a_reference(planted_badnets, digits_data, tiny_model, tmp_path):
    from bibau_hf.attacks.plant import load_attack
    from bibau_hf.clean_pipeline import completeness_test
    from bibau_hf.evaluation import ZeroShotEvaluator
    from bibau_hf.models import load_adapter

    folder, _ = planted_badnets
    train, test = digits_data
    trigger, record = load_attack(folder)
    evaluator = ZeroShotEvaluator(test, trigger, record["target_class"])
    model = load_adapter(folder)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tiny_model.save_native(tmp_path / "reference")
    result = completeness_test(model, train, test, evaluator, trigger, record["target_class"], seed=0,
                               reference_model=str(tmp_path / "reference"))
    # The planted backdoor is still there, so retuning keeps it; the untrained reference cannot learn it that fast.
    assert result["retuned_asr"] > 0.9
    assert 0.0 <= result["reference_retuned_asr"] < result["retuned_asr"]
    for name, param in model.named_parameters():  # retuning works on copies
        torch.testing.assert_close(param, before[name])
