"""Adapters: encoders, soft tokens, native save/reload, safe loading."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bibau_hf.errors import ModelFormatError, UnsafeCheckpointError
from bibau_hf.models import insert_placeholder_tokens, load_adapter

CAPTIONS = ["a photo of the digit seven.", "a handwritten two", "x", "the number nine, written large."]


def test_embeddings_are_normalised_and_shaped(tiny_model):
    images = torch.rand(3, 3, 32, 32)
    image_emb = tiny_model.encode_image(images)
    text_emb = tiny_model.encode_text(tiny_model.tokenize(CAPTIONS))
    assert image_emb.shape == (3, 32) and text_emb.shape == (4, 32)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(4))


def test_uint8_and_float_images_give_same_embeddings(tiny_model):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(tiny_model.encode_image(images), tiny_model.encode_image(images.float() / 255))


def test_images_of_another_size_are_resized(tiny_model):
    assert tiny_model.encode_image(torch.rand(2, 3, 48, 40)).shape == (2, 32)


def test_bad_image_shape_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_model.encode_image(torch.rand(2, 32, 32))


def test_token_embedding_layer_feeds_the_text_tower(tiny_model):
    ids = tiny_model.tokenize(CAPTIONS)
    before = tiny_model.encode_text(ids)
    with torch.no_grad():
        tiny_model.token_embedding.weight.mul_(2.0)
    assert not torch.allclose(before, tiny_model.encode_text(ids))


def test_soft_tokens_change_text_embeddings_and_get_gradients(tiny_model):
    ids = tiny_model.tokenize(CAPTIONS)
    width = tiny_model.token_embedding.weight.shape[1]
    soft = torch.randn(2, width, requires_grad=True)
    triggered = tiny_model.encode_text(ids, soft_tokens=soft)
    assert triggered.shape == (4, 32)
    assert not torch.allclose(triggered, tiny_model.encode_text(ids))
    triggered.sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0


def test_soft_tokens_equal_to_real_token_embeddings_match_inserted_text(tiny_model):
    # Inserting the embedding of the word "cf" as soft tokens must equal tokenising "cf" into the caption.
    word_ids = tiny_model.tokenize(["cf"])[0]
    eos = tiny_model.eos_token_id
    inner = word_ids[1 : int((word_ids == eos).nonzero()[0])]
    soft = tiny_model.token_embedding(inner).detach()
    with_soft = tiny_model.encode_text(tiny_model.tokenize(["a handwritten two"]), soft_tokens=soft, soft_position=1)
    with_word = tiny_model.encode_text(tiny_model.tokenize(["cf a handwritten two"]))
    torch.testing.assert_close(with_soft, with_word, atol=1e-5, rtol=1e-5)


def test_soft_tokens_match_inserted_text_under_lora_on_the_token_embedding(tiny_model):
    # A LoRA adapter on the embedding wraps the layer after the adapter was built: the soft tokens must still replace
    # the placeholder's whole embedding (adapter delta included), and the effective matrix must include the delta.
    from peft import LoraConfig, get_peft_model

    tiny_model.model = get_peft_model(tiny_model.model, LoraConfig(r=4, target_modules=["token_embedding"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in tiny_model.model.named_parameters():
            if "lora_embedding" in name:
                param.normal_(std=0.5)  # one factor starts at zero; a trained adapter's delta is not
    word_ids = tiny_model.tokenize(["cf"])[0]
    inner = word_ids[1 : int((word_ids == tiny_model.eos_token_id).nonzero()[0])]
    weight = tiny_model.token_embedding_weight()
    assert not torch.allclose(weight, tiny_model.token_embedding.weight)
    with_soft = tiny_model.encode_text(tiny_model.tokenize(["a handwritten two"]), soft_tokens=weight[inner])
    with_word = tiny_model.encode_text(tiny_model.tokenize(["cf a handwritten two"]))
    torch.testing.assert_close(with_soft, with_word, atol=1e-5, rtol=1e-5)


def test_insert_placeholder_tokens_keeps_eos_when_full():
    ids = torch.tensor([[10, 1, 2, 3, 99], [10, 1, 99, 0, 0]])
    new, mask = insert_placeholder_tokens(ids, 2, 1, placeholder_id=7, eos_id=99, pad_id=0, max_length=5)
    assert new.tolist() == [[10, 7, 7, 1, 99], [10, 7, 7, 1, 99]]
    assert mask.sum(1).tolist() == [2, 2]


def test_native_save_reload_round_trip(tiny_model, tmp_path):
    images = torch.rand(2, 3, 32, 32)
    tiny_model.save_native(tmp_path / "m")
    reloaded = load_adapter(tmp_path / "m")
    assert reloaded.backend == tiny_model.backend
    torch.testing.assert_close(reloaded.encode_image(images), tiny_model.encode_image(images))
    torch.testing.assert_close(
        reloaded.encode_text(reloaded.tokenize(CAPTIONS)), tiny_model.encode_text(tiny_model.tokenize(CAPTIONS))
    )
    torch.testing.assert_close(reloaded.logit_scale(), tiny_model.logit_scale())


_PLAIN_LOAD = {
    "hf": """
import sys, torch
from transformers import CLIPModel, CLIPProcessor
model = CLIPModel.from_pretrained(sys.argv[1]).eval()
proc = CLIPProcessor.from_pretrained(sys.argv[1])
ids = proc.tokenizer(["a photo of the digit seven."], return_tensors="pt")["input_ids"]
pix = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    img = model.get_image_features(pixel_values=pix).pooler_output
    txt = model.get_text_features(input_ids=ids).pooler_output
torch.save({"img": img, "txt": txt}, sys.argv[3])
assert "bibau_hf" not in sys.modules
""",
    "open_clip": """
import sys, torch, open_clip
model = open_clip.create_model("local-dir:" + sys.argv[1]).eval()
tok = open_clip.get_tokenizer("local-dir:" + sys.argv[1])
pix = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    img = model.encode_image(pix)
    txt = model.encode_text(tok(["a photo of the digit seven."]))
torch.save({"img": img, "txt": txt}, sys.argv[3])
assert "bibau_hf" not in sys.modules
""",
}


def test_saved_model_loads_with_plain_library_and_gives_same_embeddings(tiny_model, tmp_path):
    folder = tmp_path / "model"
    tiny_model.save_native(folder)
    images = torch.rand(2, 3, 32, 32)
    torch.save(tiny_model.preprocess(images).cpu(), tmp_path / "pix.pt")
    script = tmp_path / "load.py"
    script.write_text(_PLAIN_LOAD[tiny_model.backend])
    subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "pix.pt"), str(tmp_path / "out.pt")],
        check=True, capture_output=True, cwd=tmp_path,
    )
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        img = tiny_model.encode_image(images, normalize=False)
        txt = tiny_model.encode_text(tiny_model.tokenize(["a photo of the digit seven."]), normalize=False)
    torch.testing.assert_close(out["img"], img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["txt"], txt, atol=1e-5, rtol=1e-5)


def test_pickle_only_folder_is_refused(tiny_model, tmp_path):
    folder = tmp_path / "m"
    tiny_model.save_native(folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsafeCheckpointError, match="safetensors only"):
        load_adapter(folder)


@pytest.mark.parametrize("name", ["model.pt", "weights.bin"])
def test_pickle_file_is_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"not loaded")
    with pytest.raises(UnsafeCheckpointError):
        load_adapter(tmp_path / name)


def test_folder_without_weights_is_refused(tiny_model, tmp_path):
    tiny_model.save_native(tmp_path / "m")
    for weights in (tmp_path / "m").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelFormatError, match="no weights"):
        load_adapter(tmp_path / "m")


def test_wrong_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="'bert'"):
        load_adapter(tmp_path)


def test_folder_that_is_no_model_is_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="neither config.json"):
        load_adapter(tmp_path)


def test_backend_mismatch_is_refused(tiny_model, tmp_path):
    tiny_model.save_native(tmp_path / "m")
    other = "hf" if tiny_model.backend == "open_clip" else "open_clip"
    with pytest.raises(ModelFormatError, match="backend"):
        load_adapter(tmp_path / "m", backend=other)
