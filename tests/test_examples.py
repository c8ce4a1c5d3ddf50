"""The scripts under examples/ run end to end (a planted model, a few optimisation steps)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAST = ["--max_steps", "2", "--score_steps", "3"]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scan_then_clean_writes_a_native_model_that_reloads(planted_badnets, tmp_path, capsys):
    out = tmp_path / "clean"
    example = load_example("scan_then_clean")
    code = example.main(["--model", str(planted_badnets[0]), "--output_dir", str(out), "--clean_anyway", *FAST])
    printed = capsys.readouterr().out
    assert code == 0
    assert "image/mask" in printed and "image/warp" in printed and "text/" in printed  # every family is shown
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    report = json.loads((out / "unlearning_report.json").read_text())
    assert report["steps"] == 2
    # The reloaded folder measures what the report says the purified model measured.
    reloaded = printed.split("reloaded from")[1]
    assert f"'attack_success_rate': {report['metrics_after']['attack_success_rate']}" in reloaded


def test_lora_example_rebuilds_the_merged_model_from_the_suspect_and_its_adapter(planted_badnets, tmp_path, capsys):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    example = load_example("lora_adapter")
    assert example.main(["--model", str(planted_badnets[0]), "--output_dir", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert (out / "lora_adapter" / "adapter_model.safetensors").is_file()
    assert "largest weight difference" in printed
