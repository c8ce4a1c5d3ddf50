"""Publishing to the Hub: push_output_dir, BIBAUTrainer's push_to_hub, and reloading with plain loaders.

Everything runs against a Hub-compatible server on loopback (tests/hub_server.py); nothing reaches huggingface.co.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import TEST_TOKEN, HubServer
from safetensors.torch import load_file, save_file

from bibau_hf import hub as hub_module
from bibau_hf.errors import HubError, ModelFormatError, UnsafeCheckpointError
from bibau_hf.hub import check_native_folder, collect_push_files, push_output_dir
from bibau_hf.models import load_adapter

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "a photo of the digit seven"
NATIVE = {
    "hf": {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"},
    "open_clip": {"open_clip_config.json", "open_clip_model.safetensors"},
}
EXTRAS = {"README.md", "unlearning_report.json", "inverted_triggers.safetensors", "plots/triggers.png",
          "plots/metrics.png", "lora_adapter/adapter_config.json", "lora_adapter/adapter_model.safetensors"}
PICKLES = ("training_args.bin", "pytorch_model.bin", "optimizer.pt", "rng_state.pth", "checkpoint-2/optimizer.pt",
           "checkpoint-2/model.safetensors", "runs/events.out", "modeling_evil.py", ".cache/x.json")


@pytest.fixture
def api(hub_api):
    return hub_api


def write_output_folder(adapter, folder: Path, junk: bool = True) -> Path:
    """A bibau_hf-like output folder: the native model, a fake report/card/triggers/plots/LoRA, and pickled junk."""
    adapter.save_native(folder)
    (folder / "unlearning_report.json").write_text(json.dumps({"method": "BI-BAU", "metrics_after": {}}))
    (folder / "README.md").write_text("---\nlibrary_name: bibau_hf\ntags:\n- backdoor-removal\n---\n# Purified\n")
    save_file({"mask": torch.zeros(1, 1, 4, 4)}, str(folder / "inverted_triggers.safetensors"))
    (folder / "plots").mkdir()
    for name in ("triggers.png", "metrics.png"):
        (folder / "plots" / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "lora_adapter").mkdir()
    (folder / "lora_adapter" / "adapter_config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(folder / "lora_adapter" / "adapter_model.safetensors"))
    if junk:
        for rel in PICKLES:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(b"not to be published")
    return folder


def test_file_names_match_the_adapters():
    from bibau_hf.bibau_trainer import REPORT_FILE
    from bibau_hf.models.open_clip_adapter import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS

    assert (hub_module.OPEN_CLIP_CONFIG, hub_module.OPEN_CLIP_WEIGHTS) == (OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS)
    assert hub_module.REPORT_FILE == REPORT_FILE


def test_push_uploads_the_native_model_and_report_but_no_pickles(tiny_model, tmp_path, hub, api):
    folder = write_output_folder(tiny_model, tmp_path / "out")
    assert check_native_folder(folder) == tiny_model.backend
    repo = f"tester/pushed-{tiny_model.backend}"
    url = push_output_dir(folder, repo, private=True, token=TEST_TOKEN, commit_message="first", api=api)

    files = hub.files(repo)
    assert set(files) == NATIVE[tiny_model.backend] | EXTRAS
    for name in files:
        assert (folder / name).read_bytes() == files[name], name
    assert hub.repos[repo].private
    assert url == f"{hub.url}/{repo}/commit/{hub.repos[repo].refs['main']}"
    assert hub.commit_messages(repo) == ["first"]
    assert set(api.list_repo_files(repo)) == set(files)

    # A second push of the same folder changes nothing on the Hub and still answers a commit URL.
    assert push_output_dir(folder, repo, token=TEST_TOKEN, api=api).startswith(f"{hub.url}/{repo}/commit/")
    assert hub.commit_messages(repo) == ["first"]


def test_push_to_a_branch_leaves_main_alone(tmp_path, hub, api, _tiny_models):
    folder = write_output_folder(_tiny_models["hf"], tmp_path / "out", junk=False)
    push_output_dir(folder, "tester/branchy", revision="purified", token=TEST_TOKEN, api=api)
    assert set(hub.files("tester/branchy", "purified")) == NATIVE["hf"] | EXTRAS
    assert hub.files("tester/branchy", "main") == {}


def test_pushed_repos_load_with_plain_loaders_in_a_fresh_process(tmp_path, hub, api, _tiny_models):
    """CLIPModel.from_pretrained / open_clip hf-hub: / load_adapter, from HF_ENDPOINT only, give the same model."""
    repos = {}
    for backend, adapter in _tiny_models.items():
        repos[backend] = f"tester/reload-{backend}"
        push_output_dir(write_output_folder(adapter, tmp_path / backend), repos[backend], token=TEST_TOKEN, api=api)

    generator = torch.Generator().manual_seed(0)
    hf, oc = _tiny_models["hf"], _tiny_models["open_clip"]
    inputs = {
        "pixels": torch.randn(3, 3, 32, 32, generator=generator),  # already normalised: the models' own input
        "images": torch.rand(3, 3, 32, 32, generator=generator),  # in [0, 1]: the adapters' input
        "hf_ids": hf.tokenize([CAPTION, "zero", "a photo of a nine"]).cpu(),
        "oc_ids": oc.tokenize([CAPTION, "zero", "a photo of a nine"]).cpu(),
    }
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "TRANSFORMERS_CACHE")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               HF_HUB_DISABLE_TELEMETRY="1")
    worker = Path(__file__).with_name("hub_reload_worker.py")
    result = subprocess.run(
        [sys.executable, str(worker), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors"),
         repos["hf"], repos["open_clip"], CAPTION],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = load_file(str(tmp_path / "out.safetensors"))

    with torch.no_grad():
        hf_model, oc_model = hf.native_model, oc.native_model
        torch.testing.assert_close(out["hf_image"], hf_model.get_image_features(pixel_values=inputs["pixels"])
                                   .pooler_output)
        torch.testing.assert_close(out["hf_text"], hf_model.get_text_features(input_ids=inputs["hf_ids"])
                                   .pooler_output)
        torch.testing.assert_close(out["oc_image"], oc_model.encode_image(inputs["pixels"]))
        torch.testing.assert_close(out["oc_text"], oc_model.encode_text(inputs["oc_ids"]))
        torch.testing.assert_close(out["bibau_hf_image"], hf.encode_image(inputs["images"]))
        torch.testing.assert_close(out["bibau_oc_image"], oc.encode_image(inputs["images"]))
    # The tokenizers the Hub hands out are the ones the models were trained with.
    hf_ids = hf.tokenize([CAPTION])[0].tolist()
    assert out["hf_caption_ids"].tolist() == hf_ids[: len(out["hf_caption_ids"])]
    assert out["oc_caption_ids"].tolist() == oc.tokenize([CAPTION])[0].tolist()
    assert out["oc_preprocessed_shape"].tolist() == [3, 32, 32]
    # Nothing asked the Hub for a pickle, and nothing outside the loopback Hub was needed.
    downloads = [path for method, path in hub.requests if "/resolve/" in path]
    assert downloads and not any(path.endswith((".bin", ".pt", ".pth")) for path in downloads)


def test_push_refuses_non_native_and_pickled_folders(tmp_path, hub, api, _tiny_models):
    def push(folder):
        return push_output_dir(folder, "tester/refused", token=TEST_TOKEN, api=api)

    with pytest.raises(ModelFormatError, match="not a folder"):
        push(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFormatError, match="neither config.json"):
        push(empty)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "clip"}')
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        push(pickled)
    only_pickle = tmp_path / "only_pickle"
    only_pickle.mkdir()
    (only_pickle / "open_clip_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UnsafeCheckpointError, match="never publishes pickles"):
        push(only_pickle)

    # What transformers' Trainer._save writes for an open_clip model: open_clip's hf-hub loader cannot read it.
    trainer_style = tmp_path / "trainer_style"
    _tiny_models["open_clip"].save_native(trainer_style)
    (trainer_style / "open_clip_model.safetensors").rename(trainer_style / "model.safetensors")
    with pytest.raises(ModelFormatError, match="open_clip_model.safetensors"):
        push(trainer_style)
    no_cfg = tmp_path / "no_cfg"
    _tiny_models["open_clip"].save_native(no_cfg)
    (no_cfg / "open_clip_config.json").write_text('{"preprocess_cfg": {}}')
    with pytest.raises(ModelFormatError, match="model_cfg"):
        push(no_cfg)
    assert hub.requests == []  # refused before anything was sent


def test_hub_failures_are_user_errors(tmp_path, _tiny_models):
    from huggingface_hub import HfApi

    folder = write_output_folder(_tiny_models["hf"], tmp_path / "out", junk=False)
    with HubServer(tmp_path / "gone") as gone:
        dead_url = gone.url
    with pytest.raises(HubError, match="could not create or reach"):
        push_output_dir(folder, "tester/x", token=TEST_TOKEN, api=HfApi(endpoint=dead_url, token=TEST_TOKEN))
    with pytest.raises(HubError):
        push_output_dir(folder, "not a valid id!", token=TEST_TOKEN, api=HfApi(endpoint=dead_url, token=TEST_TOKEN))


def test_collect_push_files_is_an_allow_list(tmp_path, _tiny_models):
    folder = write_output_folder(_tiny_models["open_clip"], tmp_path / "out")
    assert set(collect_push_files(folder)) == NATIVE["open_clip"] | EXTRAS


# ------------------------------------------------------------------------------------------------- trainer
PUSH_CONFIG = dict(
    inversion_steps=2, score_steps=4, inversion_batch_size=8, inversion_restarts=1, invert_towers="image",
    disable_tqdm=True, logging_steps=1000, report_to="none", seed=0, final_scan=False, em_rounds=1,
    per_device_train_batch_size=8, max_steps=2, save_strategy="steps", save_steps=1,
)


def test_trainer_pushes_natively_at_checkpoints_and_at_the_end(tiny_model, digits_data, tmp_path, hub, api):
    from bibau_hf.bibau_config import BIBAUConfig
    from bibau_hf.bibau_trainer import BIBAUTrainer

    repo = f"tester/bibau-{tiny_model.backend}"
    config = BIBAUConfig(output_dir=str(tmp_path / "out"), push_to_hub=True, hub_model_id=repo,
                         hub_private_repo=True, hub_strategy="checkpoint", hub_token=TEST_TOKEN, **PUSH_CONFIG)
    trainer = BIBAUTrainer(tiny_model, config, digits_data[0].take(16, seed=0), base_model_name="tiny")
    assert trainer.hub_model_id == repo and hub.repos[repo].private  # created when the trainer was
    trainer.train()
    # The checkpoints were pushed in the background as they were saved, without their pickled states.
    files = hub.files(repo)
    assert set(files) >= {f"last-checkpoint/{name}" for name in NATIVE[tiny_model.backend]}
    assert "last-checkpoint/trainer_state.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files), sorted(files)
    assert hub.commit_messages(repo)[0] == "Training in progress, step 1"
    assert (Path(config.output_dir) / "checkpoint-2" / "optimizer.pt").is_file()  # the local checkpoint keeps it

    trainer.save_model()  # what the cleaning recipe calls; with push_to_hub it pushes the final model
    files = hub.files(repo)
    assert set(files) >= NATIVE[tiny_model.backend] | {"unlearning_report.json"}
    assert not any(name.endswith((".bin", ".pt", ".pth")) or name.startswith("checkpoint-") for name in files)
    assert hub.commit_messages(repo)[-1] == "Model save"
    assert json.loads(files["unlearning_report.json"])["method"] == "BI-BAU"
    if importlib.util.find_spec("bibau_hf.reporting") is not None:
        assert "README.md" in files

    # The root of the repo is the purified model.
    pulled = load_adapter(hub.materialize(repo, tmp_path / "pulled"))
    images = digits_data[0].images[:4]
    with torch.no_grad():
        torch.testing.assert_close(pulled.encode_image(images), trainer.adapter.encode_image(images))

    future = trainer.push_to_hub(commit_message="again", blocking=False)
    assert future.result().startswith(f"{hub.url}/{repo}/commit/")


def test_trainer_push_to_hub_without_push_to_hub_argument(tmp_path, hub, api, digits_data, _tiny_models):
    from bibau_hf.bibau_config import BIBAUConfig
    from bibau_hf.bibau_trainer import BIBAUTrainer

    model = copy.deepcopy(_tiny_models["hf"])
    values = dict(PUSH_CONFIG, save_strategy="no", max_steps=1)
    config = BIBAUConfig(output_dir=str(tmp_path / "my-model"), **values)
    trainer = BIBAUTrainer(model, config, digits_data[0].take(16, seed=0))
    trainer.train()
    url = trainer.push_to_hub(token=TEST_TOKEN)  # the repo is named after the output folder, in the token's namespace
    assert url.startswith(f"{hub.url}/tester/my-model/commit/")
    assert set(hub.files("tester/my-model")) >= NATIVE["hf"] | {"unlearning_report.json"}
