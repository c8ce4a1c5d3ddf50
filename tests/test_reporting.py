"""Reporting: inverted-trigger artifacts, plots, the model card (round trip of its metrics) and attaching to a card."""

from __future__ import annotations

import copy
import json

import pytest
from huggingface_hub import ModelCard, metadata_load
from safetensors import safe_open

from bibau_hf.attacks.triggers import build_trigger
from bibau_hf.bibau_config import BIBAUConfig
from bibau_hf.bibau_trainer import REPORT_FILE, BIBAUTrainer
from bibau_hf.clean_pipeline import command_line
from bibau_hf.data import ZeroShotSet
from bibau_hf.evaluation import ZeroShotEvaluator
from bibau_hf.reporting import attach_report, render_model_card, write_model_card, write_plots
from bibau_hf.reporting.attach import END_MARKER, START_MARKER
from bibau_hf.reporting.model_card import BIBAU_METRIC_TYPES, CARD_METRICS

FAST = dict(
    inversion_steps=2, score_steps=5, inversion_batch_size=16, inversion_restarts=1, disable_tqdm=True,
    logging_steps=1000, report_to="none", seed=0, unlearn_threshold=0.0,
    text_unlearn_threshold=0.0, per_device_train_batch_size=16,
)


def _trigger(modality: str, family: str, target: str, score: float, **details) -> dict:
    objectives = {"zero": 0.2, "one": 0.5, "two": 0.45, "three": 0.6}
    return {
        "modality": modality, "family": family, "score": score, "suspected_target": target,
        "posterior_top": {target: 0.9, "two": 0.05}, "posterior_entropy": 0.4, "objectives": objectives,
        "collapse": 0.2, "collapse_target": target, **details,
    }


def _scan(score: float, target: str, posterior: float) -> dict:
    return {
        "backdoor_score": score, "suspected_target": target, "suspected_target_posterior": posterior,
        "strongest_family": "image/mask", "natural_similarity": 0.04, "seconds": 1.0,
        "triggers": [
            _trigger("image", "mask", target, score, mask_pixels=11.3, mask_fraction=0.01),
            _trigger("text", "soft_tokens", "one", 0.8, num_tokens=2, relative_norm=1.2,
                     nearest_tokens=[["took</w>", "oni"], ["mb", "aged</w>"]]),
        ],
    }


def hand_report(**overrides) -> dict:
    """A complete report as BIBAUTrainer + run_clean write it (values from a real demo run, shortened)."""
    report = {
        "method": "BI-BAU", "mode": "full", "bibau_hf_version": "0.1.0", "base_model": "acme/clip-backdoored",
        "backend": "hf", "seed": 42, "num_clean_pairs": 63, "num_processes": 1,
        "versions": {"python": "3.11.7", "torch": "2.14.1", "transformers": "5.24.0"},
        "metrics_before": {"clean_accuracy": 0.9759, "attack_success_rate": 1.0, "robust_accuracy": 0.0,
                           "backdoor_score": 6.107},
        "metrics_after": {"clean_accuracy": 0.9704, "attack_success_rate": 0.0041, "robust_accuracy": 0.9588,
                          "backdoor_score": 0.339},
        "scan_before": _scan(6.107, "zero", 0.9776),
        "scan_after": _scan(0.339, "four", 0.21),
        "suspected_target": "zero",
        "rounds": [
            {"round": 0, "step": 0, **_scan(6.107, "zero", 0.9776), "unlearned_trigger_words": ["c", "f</w>"],
             "metrics": {"clean_accuracy": 0.9759, "attack_success_rate": 1.0, "robust_accuracy": 0.0}},
            {"round": 1, "step": 20, **_scan(1.992, "two", 0.4173),
             "metrics": {"clean_accuracy": 0.9722, "attack_success_rate": 0.9712, "robust_accuracy": 0.0062}},
        ],
        "stopped_early": False, "steps": 40, "train_loss": 7.09,
        "timing": {"e_step_seconds": 82.7, "total_seconds": 88.87, "m_step_seconds": 6.16},
        "config": {"output_dir": "outputs/bibau_clean", "em_rounds": 2, "final_scan": True, "seed": 42},
        "dataset": "acme/digits-captions",
        "eval_attack": "planted/badnets",
        "command": "python recipes/clean_clip.py --output_dir outputs/bibau_clean --seed 42",
        "completeness": {"retuned_asr": 0.019, "reference_retuned_asr": 0.017},
        "diagnostics": {"similarity": {
            "target": "zero", "family": "mask",
            "before": {"clean": [0.1, 0.12, 0.09], "triggered": [0.8, 0.85, 0.79]},
            "after": {"clean": [0.1, 0.11, 0.1], "triggered": [0.12, 0.1, 0.13]},
        }},
    }
    report.update(overrides)
    return report


def expected_metrics(report: dict) -> dict[str, float]:
    """``{metric_type: value}`` that model-index must hold for ``report``."""
    return {f"{key}_{phase}": report[f"metrics_{phase}"][key]
            for phase in ("before", "after") for key in CARD_METRICS if key in report[f"metrics_{phase}"]}


def card_metrics(path) -> dict[str, float]:
    results = ModelCard.load(path).data.eval_results or []
    values = {r.metric_type: r.metric_value for r in results}
    assert len(values) == len(results), "a metric type appears twice"
    return values


def index_metrics(path) -> dict[str, float]:
    """The same numbers read as plain YAML metadata (what the Hub and other tools see)."""
    return {m["type"]: m["value"] for entry in metadata_load(path)["model-index"] for result in entry["results"]
            for m in result["metrics"]}


# ---------------------------------------------------------------------------------------------- model card
def test_card_metrics_round_trip_exactly(tmp_path):
    report = hand_report()
    path = tmp_path / "README.md"
    render_model_card(report).save(path)
    expected = expected_metrics(report)
    assert len(expected) == 8
    assert card_metrics(path) == expected
    assert index_metrics(path) == expected
    meta = metadata_load(path)
    assert meta["base_model"] == "acme/clip-backdoored"
    assert meta["datasets"] == ["acme/digits-captions"]
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "zero-shot-image-classification"
    assert meta["tags"] == ["backdoor-removal", "bibau", "clip", "transformers"]


def test_card_body_reads_the_report(tmp_path):
    report = hand_report()
    plots = ["plots/trigger_image_mask.png", "plots/trigger_text.png", "plots/rounds.png",
             "plots/similarity_histograms.png"]
    text = render_model_card(report, plots, extra_command="bibau-hf push outputs/bibau_clean acme/clean").text
    assert "| Clean accuracy | 97.59 % | 97.04 % | -0.55 pt |" in text
    assert "| Attack success rate | 100.00 % | 0.41 % | -99.59 pt |" in text
    assert "| Backdoor score | 6.107 | 0.339 | -5.768 |" in text
    assert "pointed at **zero**, with posterior 0.978" in text
    # Per-round trace: two rounds and the final scan, with trigger sizes and the evaluator's metrics.
    assert "| 0 | 0 | 6.107 | zero | 0.978 | mask 11.3 px | 97.59 % | 100.00 % | 0.00 % |" in text
    assert "| 1 | 20 | 1.992 | two | 0.417 | mask 11.3 px | 97.22 % | 97.12 % | 0.62 % |" in text
    assert "| end | 40 | 0.339 | four | 0.210 | mask 11.3 px | 97.04 % | 0.41 % | 95.88 % |" in text
    assert "1.90 % for the purified model against 1.70 % for the clean reference" in text
    assert f"```bash\n{report['command']}\n```" in text
    assert "```bash\nbibau-hf push outputs/bibau_clean acme/clean\n```" in text
    assert "`took</w>`/`oni` + `mb`/`aged</w>`" in text
    assert "round 0: unlearned as the words `c` `f</w>`" in text
    assert "(below the image/mask family's unlearning threshold of 1.5)" in text
    for plot in plots:
        assert f"]({plot})" in text
    assert "<summary>Full configuration</summary>" in text and '"em_rounds": 2' in text
    assert "[`acme/clip-backdoored`](https://huggingface.co/acme/clip-backdoored)" in text


def test_card_says_how_far_the_weights_were_extrapolated():
    report = hand_report()
    assert "times as far from the original" not in render_model_card(report).text  # a report from before the option
    report["config"]["path_extrapolation"] = 1.5
    assert "Between rounds it moved the weights 1.5 times as far from the original" in render_model_card(report).text
    report["rounds"] = report["rounds"][:1]  # one round: nothing was extrapolated
    assert "times as far from the original" not in render_model_card(report).text


def test_card_says_per_family_whether_it_was_unlearned_and_its_confidence_gap():
    report = hand_report()
    text = render_model_card(report).text
    assert "image/mask → zero (score 6.107)" in text  # a report from before the confidence gate: no such facts
    report["scan_before"]["triggers"][0]["confidence_gap"] = 0.012
    report["rounds"][0]["unlearned_targets"] = {"image/mask": "zero"}
    text = render_model_card(report).text
    assert "image/mask → zero (score 6.107, confidence gap 0.012, unlearned)" in text
    assert "text/soft_tokens → one (score 0.800, not unlearned)" in text
    report["rounds"][0]["unlearned_targets"] = {"text/soft_tokens": "one"}
    report["rounds"][0]["text_vetoed"] = {"image/mask": "text/soft_tokens"}
    text = render_model_card(report).text
    assert ("image/mask → zero (score 6.107, confidence gap 0.012, not unlearned: text/soft_tokens names another "
            "target (`text_target_veto`))") in text
    report["rounds"][0]["unlearned_targets"] = {"image/mask": "zero"}
    del report["rounds"][0]["text_vetoed"]
    report["rounds"][0]["uniform_families"] = ["text/soft_tokens"]
    text = render_model_card(report).text
    assert "text/soft_tokens → one (score 0.800, under its gates: unlearned toward every concept)" in text
    report["rounds"][0]["hedged_concepts"] = {"text/soft_tokens": ["one", "seven"]}
    text = render_model_card(report).text
    assert "(score 0.800, under its gates: unlearned toward its likeliest concepts (one, seven))" in text
    assert "as a hedge" not in text  # the mask family passed its gates
    report["rounds"][0]["unlearned_targets"] = {}
    report["rounds"][0]["uniform_families"] = ["image/mask", "text/soft_tokens"]
    assert "No family passed its gates, so the search named no target; as a hedge" in render_model_card(report).text


def test_card_of_a_bare_run_skips_what_is_missing(tmp_path):
    # Trainer used directly: no evaluator, no text tower, no final scan, no command, local base model.
    report = hand_report(base_model=str(tmp_path), dataset=None, eval_attack=None, command=None, completeness=None,
                         metrics_before={"backdoor_score": 6.107}, metrics_after={"backdoor_score": 0.339},
                         config={"output_dir": str(tmp_path / "purified"), "final_scan": False},
                         diagnostics=None)
    for scan in (report["scan_before"], report["scan_after"], *report["rounds"]):
        scan["triggers"] = scan["triggers"][:1]
    for entry in report["rounds"]:
        del entry["metrics"]
        entry.pop("unlearned_trigger_words", None)
    path = tmp_path / "README.md"
    card = render_model_card(report)
    card.save(path)
    assert card_metrics(path) == {"backdoor_score_before": 6.107, "backdoor_score_after": 0.339}
    meta = metadata_load(path)
    assert "base_model" not in meta and "datasets" not in meta  # a local path is no Hub id ...
    assert f"the local model `{tmp_path}`" in card.text  # ... so it is named in the body instead
    assert meta["model-index"][0]["name"] == "purified"
    for absent in ("Completeness", "Attack success rate", "Text tower", "![", "| end |"):
        assert absent not in card.text, absent
    assert "no command line was recorded" in card.text


def test_card_does_not_pass_the_round_0_scan_off_as_after():
    # One round and no final scan: the report's "after" scan is the round-0 scan itself.
    report = hand_report(config={"output_dir": "out", "final_scan": False})
    report["scan_after"] = copy.deepcopy(report["scan_before"])
    text = render_model_card(report).text
    assert "the only search, made before unlearning" in text
    assert "After unlearning, the backdoor score" not in text and "- after unlearning:" not in text


def test_open_clip_card_names_its_library(tmp_path):
    report = hand_report(backend="open_clip", mode="lora", config={"output_dir": "out", "lora_r": 4})
    card = render_model_card(report)
    assert card.data.library_name == "open_clip"
    assert card.data.tags == ["backdoor-removal", "bibau", "clip", "open_clip", "lora"]
    assert 'open_clip.create_model_and_transforms("local-dir:out")' in card.text
    assert "LoRA (r=4)" in card.text


def test_write_model_card_reads_the_folder(tmp_path):
    report = hand_report()
    (tmp_path / REPORT_FILE).write_text(json.dumps(report))
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "rounds.png").write_bytes(b"\x89PNG")
    path = write_model_card(tmp_path)
    assert path == tmp_path / "README.md"
    assert "](plots/rounds.png)" in path.read_text()
    assert card_metrics(path) == expected_metrics(report)


# ------------------------------------------------------------------------------------------------- attach
OTHER_CARD = """---
license: mit
language:
- en
- fr
tags:
- vision
- clip
my_custom_key:
  nested: [1, 2]
  note: keep me
model-index:
- name: other-model
  results:
  - task:
      type: image-classification
    dataset:
      name: ImageNet
      type: imagenet-1k
      split: validation
    metrics:
    - type: accuracy
      value: 0.761
---

# Other model

Made by another tool.

## Training

Trained for 3 epochs.

## Evaluation

See the metadata.
"""


def test_attach_keeps_the_card_and_is_idempotent(tmp_path):
    source = tmp_path / "card.md"
    source.write_text(OTHER_CARD)
    original = ModelCard.load(source)
    report = hand_report()
    first, second = tmp_path / "once.md", tmp_path / "twice.md"
    attach_report(source, report, first)
    attach_report(first, report, second)
    assert first.read_bytes() == second.read_bytes()

    merged = ModelCard.load(second)
    meta = metadata_load(second)
    assert meta["license"] == "mit" and meta["language"] == ["en", "fr"]
    assert meta["my_custom_key"] == {"nested": [1, 2], "note": "keep me"}
    assert meta["tags"] == ["vision", "clip", "backdoor-removal", "bibau", "transformers"]
    assert merged.data.model_name == "other-model"
    theirs = [r for r in merged.data.eval_results if r.metric_type not in BIBAU_METRIC_TYPES]
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in theirs] == [("accuracy", 0.761, "validation")]
    assert card_metrics(second) == {"accuracy": 0.761, **expected_metrics(report)}
    # The original body is untouched and comes first; the report is one marked section after it.
    assert merged.text.startswith(original.text.rstrip())
    assert merged.text.count(START_MARKER) == 1 and merged.text.count(END_MARKER) == 1
    section = merged.text.split(START_MARKER)[1].split(END_MARKER)[0]
    assert section.lstrip().startswith("## Backdoor removal with BI-BAU")
    assert "### Results" in section and "| Clean accuracy | 97.59 % | 97.04 % |" in section


def test_attach_replaces_an_earlier_report(tmp_path):
    first = attach_report(OTHER_CARD, hand_report())
    newer = hand_report(metrics_after={"clean_accuracy": 0.5, "backdoor_score": 0.1})
    merged = attach_report(first, newer, tmp_path / "README.md")
    assert card_metrics(tmp_path / "README.md") == {"accuracy": 0.761, **expected_metrics(newer)}
    assert "attack_success_rate_after" not in card_metrics(tmp_path / "README.md")
    assert merged.text.count(START_MARKER) == 1 and "| 97.59 % | 50.00 % |" in merged.text
    assert ModelCard(OTHER_CARD).data.tags == ["vision", "clip"]  # the input card is not modified


def test_attach_to_a_card_without_metadata():
    card = attach_report("# Bare card\n\nJust text.\n", hand_report(metrics_before={}, metrics_after={}))
    assert card.text.startswith("# Bare card\n\nJust text.\n\n" + START_MARKER)
    assert card.data.eval_results is None and "bibau" in card.data.tags


# -------------------------------------------------------------------------------------------------- plots
def test_plots_skip_what_the_report_lacks(tmp_path):
    report = hand_report(diagnostics=None)
    for entry in report["rounds"]:
        del entry["metrics"]
    (tmp_path / REPORT_FILE).write_text(json.dumps(report))
    paths = write_plots(tmp_path)  # no inverted_triggers.safetensors, no similarity data
    assert [p.name for p in paths] == ["trigger_text.png", "rounds.png"]
    assert all(p.parent == tmp_path / "plots" and p.read_bytes().startswith(b"\x89PNG") for p in paths)
    with pytest.raises(FileNotFoundError, match=REPORT_FILE):
        write_plots(tmp_path / "missing")


def test_command_line_names_what_the_user_typed():
    assert command_line(["/venv/bin/bibau-hf", "clean", "--output_dir", "a b"]) == "bibau-hf clean --output_dir 'a b'"
    assert command_line(["recipes/clean_clip.py", "--seed", "1"]) == "python recipes/clean_clip.py --seed 1"


# --------------------------------------------------------------------------------------------- end to end
def _small_eval_set(digits_data, n: int = 60) -> ZeroShotSet:
    _, test = digits_data
    return ZeroShotSet(test.images[:n], test.labels[:n], test.class_names, test.templates[:1])


def test_save_writes_card_plots_and_triggers(tiny_model, digits_data, tmp_path):
    train, test = digits_data
    evaluator = ZeroShotEvaluator(_small_eval_set(digits_data), build_trigger("badnets"), 0)
    out = tmp_path / "out"
    config = BIBAUConfig(**FAST, output_dir=str(out), max_steps=1, em_rounds=1, final_scan=True,
                         concept_names=test.class_names, trigger_families=["mask", "additive", "periodic"])
    trainer = BIBAUTrainer(tiny_model, config, train.take(32, seed=0), evaluator=evaluator,
                           base_model_name="tiny-local")
    trainer.train()
    trainer.save_model()

    report = json.loads((out / REPORT_FILE).read_text())
    # The similarity diagnostics: one value per sampled clean image (all 32), before and after.
    similarity = report["diagnostics"]["similarity"]
    assert similarity["target"] == report["scan_before"]["triggers"][0]["suspected_target"]
    for phase in ("before", "after"):
        assert len(similarity[phase]["clean"]) == len(similarity[phase]["triggered"]) == 32
        assert all(-1 <= v <= 1 for v in similarity[phase]["clean"] + similarity[phase]["triggered"])

    with safe_open(str(out / "inverted_triggers.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        mask = handle.get_tensor("before/image/mask/mask")
        token_ids = handle.get_tensor("before/text/soft_tokens/nearest_token_ids")
    assert {"example/clean", "before/image/mask/pattern", "after/image/mask/example_triggered",
            "before/image/additive/delta", "before/image/periodic/delta", "after/text/soft_tokens/tokens"} <= keys
    assert mask.shape == (32, 32) and 0 <= float(mask.min()) and float(mask.max()) <= 1
    text_entry = next(e for e in report["artifacts"]["triggers"] if e["phase"] == "before" and e["modality"] == "text")
    # The text search inserts one real vocabulary token, so its nearest token is itself (cosine 1).
    assert token_ids.tolist() == text_entry["nearest_token_ids"] and token_ids.shape == (1, 3)
    found = report["scan_before"]["triggers"][-1]
    assert found["modality"] == "text" and text_entry["nearest_tokens"][0][0] == found["nearest_tokens"][0][0]

    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["rounds.png", "similarity_histograms.png", "trigger_image_additive.png",
                     "trigger_image_mask.png", "trigger_image_periodic.png", "trigger_text.png"]
    readme = out / "README.md"
    assert card_metrics(readme) == expected_metrics(report)
    assert {"clean_accuracy_after", "attack_success_rate_before", "backdoor_score_after"} <= set(card_metrics(readme))
    text = readme.read_text()
    for plot in plots:
        assert f"](plots/{plot})" in text
    assert metadata_load(readme)["library_name"] == ("open_clip" if tiny_model.backend == "open_clip"
                                                     else "transformers")

    # push_to_hub's create_model_card writes the same card, plus Trainer's tags and license.
    readme.unlink()
    trainer.create_model_card(tags=["my-tag"], license="apache-2.0", finetuned_from="ignored")
    meta = metadata_load(readme)
    assert meta["tags"][-1] == "my-tag" and "bibau" in meta["tags"] and meta["license"] == "apache-2.0"
    assert card_metrics(readme) == expected_metrics(report)


def test_lora_adapter_readme_does_not_replace_the_card(tiny_model, digits_data, tmp_path):
    if tiny_model.backend != "hf":
        pytest.skip("one backend suffices: the README order does not depend on it")
    train, _ = digits_data
    out = tmp_path / "out"
    config = BIBAUConfig(**{**FAST, "final_scan": False}, output_dir=str(out), max_steps=1, em_rounds=1,
                         use_lora=True, keep_lora_adapter=True, invert_towers="image")
    trainer = BIBAUTrainer(tiny_model, config, train.take(32, seed=0))
    trainer.train()
    trainer.save_model()
    assert (out / "lora_adapter" / "README.md").is_file()  # peft's own card, left in its folder
    with safe_open(str(out / "inverted_triggers.safetensors"), framework="pt") as handle:
        # One round, no final scan: nothing was inverted after unlearning, so only "before" triggers are saved.
        assert {k.split("/")[0] for k in handle.keys()} == {"before", "example"}
    meta = metadata_load(out / "README.md")
    assert "bibau" in meta["tags"] and "lora" in meta["tags"]
    assert card_metrics(out / "README.md") == expected_metrics(json.loads((out / REPORT_FILE).read_text()))
    assert "## Per-round trace" in (out / "README.md").read_text()
