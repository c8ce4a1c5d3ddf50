"""Shared fixtures: tiny models of both backends (built once per session, copied per test)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def _tiny_models():
    from bibau_hf.models import TinyCLIPSpec, build_tiny_model

    spec = TinyCLIPSpec(width=32, heads=2, embed_dim=32, patch_size=8, bpe_merges=2000)
    return {backend: build_tiny_model(backend, spec, seed=0) for backend in ("hf", "open_clip")}


@pytest.fixture(params=["hf", "open_clip"])
def tiny_model(request, _tiny_models):
    """A fresh copy of a tiny model, for each backend."""
    return copy.deepcopy(_tiny_models[request.param])


@pytest.fixture(scope="session")
def planted_badnets(tmp_path_factory):
    """The lab's default digits model with a planted BadNets backdoor (target 0), trained once per test session."""
    from bibau_hf.attacks.plant import PlantConfig, plant_backdoor

    out = tmp_path_factory.mktemp("planted") / "badnets"
    result = plant_backdoor(PlantConfig(attack="badnets", output_dir=str(out), progress=False))
    return out, result


@pytest.fixture(scope="session")
def digits_data():
    from bibau_hf.data import load_digits_data

    return load_digits_data()


@pytest.fixture
def hub(tmp_path):
    """A Hub-compatible server on loopback (tests/hub_server.py), empty, for one test."""
    from hub_server import HubServer

    with HubServer(tmp_path) as server:
        yield server


@pytest.fixture
def hub_api(hub, monkeypatch):
    """An ``HfApi`` for the loopback Hub, with huggingface_hub's module defaults pointed at it too.

    huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when it is imported (this suite runs offline), so code that
    builds its own HfApi, like BIBAUTrainer and the command line, sees the server only through these constants.
    """
    from hub_server import TEST_TOKEN
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    return HfApi(endpoint=hub.url, token=TEST_TOKEN)
