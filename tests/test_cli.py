"""The ``bibau-hf`` command line, run in-process through ``bibau_hf.cli.main``."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from hub_server import TEST_TOKEN, HubServer

import bibau_hf
from bibau_hf.cli import main

FAST_SCAN = ["--max_clean_samples", "24", "--inversion_steps", "2", "--score_steps", "4", "--inversion_batch_size",
             "8", "--inversion_restarts", "1", "--quiet"]
FAST_CLEAN = ["--max_clean_samples", "16", "--max_steps", "2", "--per_device_train_batch_size", "8", "--em_rounds",
              "1", "--inversion_steps", "2", "--score_steps", "4", "--inversion_batch_size", "8",
              "--inversion_restarts", "1", "--invert_towers", "image", "--final_scan", "false", "--disable_tqdm",
              "true"]
HELP_MENTIONS = {
    "scan": ["usage: bibau-hf scan", "model", "--dataset_name", "--max_clean_samples", "--concepts", "--invert_towers",
             "--inversion_steps", "--score_steps", "--threshold", "--text_threshold", "--confidence_gap", "--top_k",
             "--format", "--json", "(default: 1.5)", "(default: 10.0)", "(default: 0.12)"],
    "clean": ["usage: bibau-hf clean", "--model_name_or_path", "--dataset_name", "--max_clean_samples",
              "--eval_attack", "--em_rounds", "--use_lora", "--output_dir", "--push_to_hub", "--hub_model_id",
              "--hub_private_repo", "--hub_strategy", "--config FILE.yaml"],
    "plant": ["usage: bibau-hf plant", "--attack", "--poison_rate", "--target_class", "--dataset", "--model_backend",
              "--output_dir", "--config FILE.yaml"],
    "report": ["usage: bibau-hf report", "output_dir", "--attach CARD.md", "--report", "--output NEW.md"],
    "push": ["usage: bibau-hf push", "output_dir", "repo_id", "--private", "--token", "--revision",
             "--commit_message"],
}


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in HELP_MENTIONS:
        assert f"    {command}" in out
    assert run(["--version"], capsys)[1].strip() == f"bibau-hf {bibau_hf.__version__}"


@pytest.mark.parametrize("command", sorted(HELP_MENTIONS))
def test_every_command_has_a_complete_help(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    for mention in HELP_MENTIONS[command]:
        assert mention in out, mention


def test_usage_errors_exit_2(capsys):
    assert run([], capsys)[0] == 2
    assert run(["nope"], capsys)[0] == 2
    code, _, err = run(["scan"], capsys)
    assert code == 2 and "model" in err


def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys, _tiny_models):
    empty = tmp_path / "empty"
    empty.mkdir()
    model = tmp_path / "model"
    _tiny_models["hf"].save_native(model)
    capsys.readouterr()  # drop save_native's progress bar
    cases = [
        (["scan", tmp_path / "missing"], "does not exist"),
        (["scan", model, "--inversion_batch_size", "1"], "inversion_batch_size"),
        (["push", empty, "tester/x"], "neither config.json"),
        (["report", empty], "unlearning_report.json not found"),
        (["report"], "give an OUTPUT_DIR"),
        (["report", empty, "--output", "x.md"], "go with --attach"),
        (["report", "--attach", tmp_path / "card.md"], "model card"),
        (["clean", "--model_name_or_path", tmp_path / "missing", "--output_dir", tmp_path / "out"], "does not exist"),
        (["plant", "--attack", "nope"], "unknown attack"),
    ]
    for argv, message in cases:
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert err.startswith("error: ") and message in err, (argv, err)
        assert "Traceback" not in err


def test_scan_prints_a_verdict_and_writes_json(_tiny_models, tmp_path, capsys):
    # One backend is enough here: load_adapter hides it, and the inversion is tested on both elsewhere.
    model = tmp_path / "model"
    _tiny_models["hf"].save_native(model)
    code, out, _ = run(["scan", model, *FAST_SCAN, "--format", "json", "--json", tmp_path / "scan.json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result == json.loads((tmp_path / "scan.json").read_text())
    assert result["model"] == str(model) and result["num_clean_pairs"] == 24
    assert result["thresholds"] == {"image": 1.5, "text": 10.0, "periodic": 8.0, "confidence_gap": 0.12,
                                    "text_veto": True}
    for family in result["families"]:  # each family against its own tower's threshold
        text = family["family"].startswith("text/")
        assert family["threshold"] == (10.0 if text else 8.0 if family["family"] == "image/periodic" else 1.5)
        gap = family["confidence_gap"]
        assert gap is None or not text  # measured for image families only (None there: nothing to compare with)
        confident = gap is None or gap <= 0.12
        assert family["suspected"] == (family["score"] >= family["threshold"] and confident)
    assert result["flagged_families"] == [f["family"] for f in result["families"] if f["suspected"]]
    assert result["backdoor_suspected"] == bool(result["flagged_families"])
    assert result["verdict"] == ("backdoor suspected" if result["backdoor_suspected"] else "no backdoor detected")
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert result["suspected_target"] in digits and result["num_candidates"] == 10
    top = list(result["posterior_top"].values())
    assert len(top) == 5 and top == sorted(top, reverse=True)
    assert [f["family"] for f in result["families"]] == ["image/mask", "image/warp", "text/soft_tokens"]
    assert result["strongest_family"] in {"image/mask", "image/warp", "text/soft_tokens"}

    code, out, _ = run(["scan", model, *FAST_SCAN, "--invert_towers", "image", "--threshold", "1000", "--top_k", "3"],
                       capsys)
    assert code == 0  # the verdict is in the output, not in the exit status
    assert "verdict           no backdoor detected" in out
    assert "image/mask" in out and "text/soft_tokens" not in out
    assert "posterior top-3" in out


def _family(modality, name, score, target, posterior, gap=float("nan")):
    from bibau_hf.inversion import InvertedTrigger

    return InvertedTrigger(modality=modality, family=name, trigger=None, score=score, suspected_target=target,
                           posterior=posterior, posterior_entropy=1.0, objectives={}, anomaly={},
                           collapse=float("nan"), collapse_target=target, details={}, confidence_gap=gap)


def _summary(*families, threshold=1.5, text_veto=True):
    from bibau_hf.cli import scan_summary
    from bibau_hf.inversion import ScanResult

    result = ScanResult(triggers=list(families), candidates=["zero", "one", "three", "five"], natural_similarity=0.5,
                        seconds=1.0)
    return scan_summary(result, model="m", threshold=threshold, text_threshold=10.0, confidence_gap=0.12, top_k=5,
                        num_clean_pairs=8, text_veto=text_veto)


def test_scan_headline_pairs_the_flagged_familys_target_with_its_own_posterior():
    # The text family has the highest raw score but stays under its own threshold; the warp family is flagged.
    warp = _family("image", "warp", 2.0, "five", {"five": 0.33, "one": 0.2, "three": 0.1}, gap=0.1)
    text = _family("text", "soft_tokens", 2.5, "three", {"three": 0.55, "five": 0.21})
    summary = _summary(warp, text)
    assert summary["flagged_families"] == ["image/warp"] and summary["strongest_family"] == "image/warp"
    assert summary["suspected_target"] == "five"
    assert summary["suspected_target_posterior"] == 0.33
    assert summary["posterior_top"] == {"five": 0.33, "one": 0.2, "three": 0.1}
    # Nothing flagged: the headline is the strongest family's, consistently.
    quiet = _summary(warp, text, threshold=5.0)
    assert not quiet["backdoor_suspected"] and quiet["strongest_family"] == "text/soft_tokens"
    assert (quiet["suspected_target"], quiet["suspected_target_posterior"]) == ("three", 0.55)


def test_scan_does_not_flag_an_image_family_that_names_another_target_than_the_passing_text_family():
    from bibau_hf.cli import format_scan

    mask = _family("image", "mask", 5.0, "five", {"five": 0.4, "zero": 0.1}, gap=0.05)
    warp = _family("image", "warp", 2.0, "zero", {"zero": 0.3, "one": 0.2}, gap=0.05)
    text = _family("text", "soft_tokens", 30.0, "zero", {"zero": 0.9, "five": 0.01})
    summary = _summary(mask, warp, text)
    assert summary["flagged_families"] == ["image/warp", "text/soft_tokens"]  # the warp family agrees with the text
    assert summary["families"][0]["vetoed_by"] == "text/soft_tokens" and not summary["families"][0]["suspected"]
    assert summary["suspected_target"] == "zero" and summary["thresholds"]["text_veto"] is True
    assert "image/mask passes its gates toward 'five', but text/soft_tokens names another target" in format_scan(
        summary)
    # Without a passing text family, or with the veto off, the mask family is flagged as before.
    assert "image/mask" in _summary(mask, _family("text", "soft_tokens", 4.0, "zero", {"zero": 0.3}))[
        "flagged_families"]
    assert _summary(mask, warp, text, text_veto=False)["flagged_families"] == [
        "image/mask", "image/warp", "text/soft_tokens"]


def test_repeated_scans_flag_a_family_that_passes_toward_one_target_in_most_runs():
    from bibau_hf.cli import combine_repeats, format_scan

    def one_run(mask_score, mask_target, warp_score):
        return _summary(_family("image", "mask", mask_score, mask_target, {mask_target: 0.4, "one": 0.1}, gap=0.0),
                        _family("image", "warp", warp_score, "one", {"one": 0.3, "zero": 0.2}, gap=0.0))

    # mask: under the gate once, over it twice toward "zero"; warp: over it in one run only.
    combined = combine_repeats([one_run(1.1, "zero", 0.7), one_run(2.2, "zero", 1.9), one_run(3.4, "zero", 0.6)],
                               [0, 1, 2])
    mask, warp = combined["repeats"]["families"]
    assert mask["scores"] == [1.1, 2.2, 3.4] and mask["median_score"] == 2.2 and mask["suspected_runs"] == 2
    assert mask["suspected"] and mask["majority_target"] == "zero" and mask["agreement"] == 1.0
    assert warp["suspected_runs"] == 1 and not warp["suspected"]
    assert combined["flagged_families"] == ["image/mask"] and combined["verdict"] == "backdoor suspected"
    # The headline is the strongest passing run's (the third): its own family's posterior for that target.
    assert combined["suspected_target"] == "zero" and combined["suspected_target_posterior"] == 0.4
    assert combined["families"][0]["score"] == 3.4 and combined["seconds"] == 3.0
    assert len(combined["repeats"]["runs"]) == 3 and "over 3 runs (seeds 0, 1, 2)" in format_scan(combined)
    # Passing twice toward different targets is no majority.
    split = combine_repeats([one_run(2.0, "zero", 0.5), one_run(2.0, "five", 0.5), one_run(1.0, "zero", 0.5)],
                            [0, 1, 2])
    assert not split["backdoor_suspected"] and split["repeats"]["families"][0]["suspected_runs"] == 1


def test_scan_repeats_runs_the_inversion_once_per_seed(_tiny_models, tmp_path, capsys):
    model = tmp_path / "model"
    _tiny_models["hf"].save_native(model)
    code, out, _ = run(["scan", model, *FAST_SCAN, "--invert_towers", "image", "--repeats", "2", "--seed", "3",
                        "--format", "json"], capsys)
    assert code == 0
    result = json.loads(out)
    repeats = result["repeats"]
    assert repeats["seeds"] == [3, 4] and len(repeats["runs"]) == 2
    for family in repeats["families"]:
        assert len(family["scores"]) == 2
        assert family["suspected"] == (family["suspected_runs"] == 2)
    assert result["flagged_families"] == [f["family"] for f in repeats["families"] if f["suspected"]]
    code, _, err = run(["scan", model, *FAST_SCAN, "--repeats", "0"], capsys)
    assert code == 2 and "--repeats must be >= 1" in err
    code, _, err = run(["scan", model, *FAST_SCAN, "--refine_concepts", "-1"], capsys)
    assert code == 2 and "--refine_concepts must be >= 0" in err


def _fake_reporting(monkeypatch, calls: list) -> None:
    """Stand-in for bibau_hf.reporting (written elsewhere): records what the command line asks of it."""
    fake = types.ModuleType("bibau_hf.reporting")

    def write_model_card(output_dir):
        calls.append(("card", Path(output_dir)))
        return Path(output_dir) / "README.md"

    def write_plots(output_dir):
        calls.append(("plots", Path(output_dir)))
        return [Path(output_dir) / "plots" / "metrics.png"]

    def attach_report(card, report, output_path=None):
        calls.append(("attach", Path(card), Path(report), Path(output_path)))

    fake.write_model_card, fake.write_plots, fake.attach_report = write_model_card, write_plots, attach_report
    monkeypatch.setitem(sys.modules, "bibau_hf.reporting", fake)
    monkeypatch.setattr(bibau_hf, "reporting", fake, raising=False)


def test_report_command_calls_the_reporting_functions(tmp_path, capsys, monkeypatch):
    calls: list = []
    _fake_reporting(monkeypatch, calls)
    (tmp_path / "unlearning_report.json").write_text("{}")
    card = tmp_path / "CARD.md"
    card.write_text("# card\n")

    code, out, _ = run(["report", tmp_path], capsys)
    assert code == 0 and calls == [("card", tmp_path), ("plots", tmp_path)]
    assert f"wrote {tmp_path / 'README.md'}" in out and f"wrote {tmp_path / 'plots' / 'metrics.png'}" in out

    calls.clear()
    report = tmp_path / "unlearning_report.json"
    assert run(["report", "--attach", card, "--report", report, "--output", tmp_path / "NEW.md"], capsys)[0] == 0
    assert run(["report", tmp_path, "--attach", card], capsys)[0] == 0  # the report from OUTPUT_DIR, card in place
    assert calls == [("attach", card, report, tmp_path / "NEW.md"), ("attach", card, report, card)]


# ---------------------------------------------------------------------------------- clean, report, push
@pytest.fixture(scope="module")
def cleaned(tmp_path_factory, _tiny_models):
    """``bibau-hf clean --push_to_hub`` on a tiny model, against a loopback Hub; the output folder and the repo."""
    from huggingface_hub import constants

    tmp = tmp_path_factory.mktemp("cli_clean")
    _tiny_models["open_clip"].save_native(tmp / "suspect")
    with HubServer(tmp) as hub, pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "ENDPOINT", hub.url)
        code = main(["clean", "--model_name_or_path", str(tmp / "suspect"), "--output_dir", str(tmp / "purified"),
                     *FAST_CLEAN, "--push_to_hub", "true", "--hub_model_id", "tester/cli-clean", "--hub_token",
                     TEST_TOKEN, "--hub_private_repo", "true"])
        return {"code": code, "output_dir": tmp / "purified", "files": hub.files("tester/cli-clean"),
                "private": hub.repos["tester/cli-clean"].private, "messages": hub.commit_messages("tester/cli-clean")}


def test_clean_command_pushes_the_purified_model(cleaned):
    assert cleaned["code"] == 0
    files = cleaned["files"]
    assert {"open_clip_config.json", "open_clip_model.safetensors", "unlearning_report.json"} <= set(files)
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert cleaned["private"] and cleaned["messages"] == ["Model save"]
    report = json.loads(files["unlearning_report.json"])
    assert report["method"] == "BI-BAU" and report["backend"] == "open_clip"
    assert "clean_accuracy" in report["metrics_after"]


def test_push_command_publishes_an_output_folder(cleaned, hub, hub_api, capsys):
    code, out, _ = run(["push", cleaned["output_dir"], "tester/cli-push", "--private", "--token", TEST_TOKEN,
                        "--revision", "v1", "--commit_message", "from the command line"], capsys)
    assert code == 0
    assert out.startswith(f"pushed {cleaned['output_dir']} to {hub.url}/tester/cli-push/commit/")
    assert hub.repos["tester/cli-push"].private
    assert hub.commit_messages("tester/cli-push", "v1") == ["from the command line"]
    assert set(hub.files("tester/cli-push", "v1")) == set(cleaned["files"])


def test_report_command_renders_a_real_card(cleaned, tmp_path, capsys):
    folder = cleaned["output_dir"]
    (folder / "README.md").unlink(missing_ok=True)
    code, out, _ = run(["report", folder], capsys)
    assert code == 0 and (folder / "README.md").is_file()
    assert f"wrote {folder / 'README.md'}" in out

    card = tmp_path / "CARD.md"
    card.write_text("---\nlicense: mit\n---\n# My own card\n\nWritten by hand.\n")
    code, _, _ = run(["report", "--attach", card, "--report", folder / "unlearning_report.json", "--output",
                      tmp_path / "NEW.md"], capsys)
    assert code == 0
    merged = (tmp_path / "NEW.md").read_text()
    assert "Written by hand." in merged and merged != card.read_text()
