"""Reload pushed repos with plain loaders, in a fresh process whose ``HF_ENDPOINT`` is the loopback Hub.

    python hub_reload_worker.py INPUTS.safetensors OUTPUT.safetensors HF_REPO OPEN_CLIP_REPO CAPTION

A fresh process matters: ``huggingface_hub`` reads ``HF_ENDPOINT`` when it is imported, and a user downloading the
model has nothing but the repo id. Writes the embeddings of the fixed inputs and the tokenised caption per loader.
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file, save_file


def main() -> None:
    inputs_path, output_path, hf_repo, open_clip_repo, caption = sys.argv[1:]
    inputs = load_file(inputs_path)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(hf_repo).eval()
        out["hf_image"] = model.get_image_features(pixel_values=inputs["pixels"]).pooler_output
        out["hf_text"] = model.get_text_features(input_ids=inputs["hf_ids"]).pooler_output
        processor = CLIPProcessor.from_pretrained(hf_repo)
        out["hf_caption_ids"] = processor.tokenizer([caption], return_tensors="pt").input_ids[0]

        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:" + open_clip_repo)
        model.eval()
        tokenizer = open_clip.get_tokenizer("hf-hub:" + open_clip_repo)
        out["oc_image"] = model.encode_image(inputs["pixels"])
        out["oc_text"] = model.encode_text(inputs["oc_ids"])
        out["oc_caption_ids"] = tokenizer([caption])[0]
        from PIL import Image

        # The transforms come from the pushed preprocess_cfg (and the model's image size), not from defaults.
        out["oc_preprocessed_shape"] = torch.tensor(preprocess(Image.new("RGB", (64, 48))).shape)

        from bibau_hf.models import load_adapter

        for key, repo in (("bibau_hf", hf_repo), ("bibau_oc", open_clip_repo)):
            out[f"{key}_image"] = load_adapter(repo).encode_image(inputs["images"])
    save_file({k: v.contiguous() for k, v in out.items()}, output_path)


if __name__ == "__main__":
    main()
