"""Tests for bibau_hf.data. All data is made on the fly or comes from scikit-learn's bundled digits (no network)."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from bibau_hf.data import (
    DEFAULT_TEMPLATES,
    DIGIT_CLASS_NAMES,
    DIGIT_TEMPLATES,
    ImageTextDataset,
    ZeroShotSet,
    captions_for_labels,
    load_builtin,
    load_digits_data,
    load_image_text_dataset,
    load_npz_data,
    load_zero_shot_set,
    make_caption,
)
from bibau_hf.errors import DataError

# Distinct solid colours, so a test can check that each caption stayed with its own image.
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def _png_bytes(rgb: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def _centre_pixel(images: torch.Tensor, i: int) -> tuple[int, ...]:
    h, w = images.shape[2:]
    return tuple(int(v) for v in images[i, :, h // 2, w // 2])


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    """Keep datasets' cache inside the test's tmp folder instead of the user's home."""
    return str(tmp_path / "hf_cache")


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for name, rgb in COLOURS.items():
            (folder / f"{name}.png").write_bytes(_png_bytes(rgb))
            f.write(json.dumps({"file_name": f"{name}.png", "caption": f"a {name} square", "colour": name}) + "\n")
    return folder


# --------------------------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------------------------


def test_templates_have_one_placeholder() -> None:
    for templates in (DEFAULT_TEMPLATES, DIGIT_TEMPLATES):
        assert len(templates) >= 6
        assert all(t.count("{}") == 1 for t in templates)


def test_captions_for_labels_deterministic_and_varied() -> None:
    labels = [i % 3 for i in range(60)]
    names = ["cat", "dog", "car"]
    a = captions_for_labels(labels, names, DEFAULT_TEMPLATES, seed=1)
    b = captions_for_labels(labels, names, DEFAULT_TEMPLATES, seed=1)
    c = captions_for_labels(labels, names, DEFAULT_TEMPLATES, seed=2)
    assert a == b
    assert a != c
    assert len(set(a)) > 6  # several templates are used
    assert all(names[y] in cap for y, cap in zip(labels, a))


def test_make_caption_uses_template() -> None:
    cap = make_caption("zebra", random.Random(0), ["a {} here."])
    assert cap == "a zebra here."


def test_captions_bad_input() -> None:
    with pytest.raises(DataError, match="class name"):
        captions_for_labels([0, 5], ["a", "b"])
    with pytest.raises(DataError, match="exactly one"):
        captions_for_labels([0], ["a"], ["no placeholder"])


# --------------------------------------------------------------------------------------------------------------------
# ImageTextDataset / ZeroShotSet
# --------------------------------------------------------------------------------------------------------------------


def _toy(n_per_class: tuple[int, ...] = (30, 20, 10)) -> ImageTextDataset:
    labels = torch.tensor([c for c, k in enumerate(n_per_class) for _ in range(k)])
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return ImageTextDataset(images, [f"item {i}" for i in range(n)], labels, ["a", "b", "c"])


def test_dataset_getitem_and_validation() -> None:
    ds = _toy()
    item = ds[5]
    assert item["pixel_values"].shape == (3, 4, 4) and item["pixel_values"].dtype == torch.uint8
    assert item["caption"] == "item 5" and item["index"] == 5 and item["label"] == 0
    assert ds[-1]["index"] == len(ds) - 1
    with pytest.raises(DataError, match="captions"):
        ImageTextDataset(ds.images, ds.captions[:-1])
    with pytest.raises(DataError, match="uint8"):
        ImageTextDataset(ds.images.float(), ds.captions)
    with pytest.raises(DataError, match="class names"):
        ImageTextDataset(ds.images, ds.captions, ds.labels, ["only", "two"])
    no_labels = ImageTextDataset(ds.images, ds.captions)
    assert "label" not in no_labels[0]


def test_subset() -> None:
    ds = _toy()
    sub = ds.subset([3, 40, 59])
    assert len(sub) == 3
    assert sub.captions == ["item 3", "item 40", "item 59"]
    assert sub.labels.tolist() == [0, 1, 2]
    assert int(sub.images[1, 0, 0, 0]) == 40
    with pytest.raises(DataError, match="indices"):
        ds.subset([60])


def test_take_fraction_stratified_and_seeded() -> None:
    ds = _toy((30, 20, 10))
    part = ds.take_fraction(0.5, seed=3)
    assert len(part) == 30
    assert Counter(part.labels.tolist()) == {0: 15, 1: 10, 2: 5}
    assert part.captions == ds.take_fraction(0.5, seed=3).captions
    assert part.captions != ds.take_fraction(0.5, seed=4).captions
    assert len(ds.take_fraction(1e-6, seed=0)) == 1  # never empty
    # Without labels it is a plain seeded random pick.
    plain = ImageTextDataset(ds.images, ds.captions)
    assert len(plain.take_fraction(0.1, seed=0)) == 6
    with pytest.raises(DataError, match="fraction"):
        ds.take_fraction(0.0)


def test_zero_shot_set_validation() -> None:
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    zs = ZeroShotSet(images, torch.tensor([0, 1]), ["cat", "dog"], ["a {}."])
    assert zs.prompts() == [["a cat."], ["a dog."]]
    with pytest.raises(DataError, match="exactly one"):
        ZeroShotSet(images, torch.tensor([0, 1]), ["cat", "dog"], ["a photo."])
    with pytest.raises(DataError, match="class"):
        ZeroShotSet(images, torch.tensor([0, 2]), ["cat", "dog"], ["a {}."])


# --------------------------------------------------------------------------------------------------------------------
# Built-in: digits and npz
# --------------------------------------------------------------------------------------------------------------------


def test_digits_shapes_and_class_names() -> None:
    train, test = load_digits_data(image_size=32, test_fraction=0.3, seed=0)
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape[1:] == (3, 32, 32) and test.images.dtype == torch.uint8
    assert train.labels.dtype == torch.long and test.labels.dtype == torch.long
    assert train.class_names == DIGIT_CLASS_NAMES == test.class_names
    assert DIGIT_CLASS_NAMES[0] == "zero" and DIGIT_CLASS_NAMES[9] == "nine"
    assert test.templates == DIGIT_TEMPLATES
    # Grey replicated to RGB, full 0..255 range used.
    assert torch.equal(train.images[:, 0], train.images[:, 1]) and torch.equal(train.images[:, 0], train.images[:, 2])
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    for cap, y in zip(train.captions[:50], train.labels[:50].tolist()):
        assert DIGIT_CLASS_NAMES[y] in cap
    assert len(set(train.captions)) > 10


def test_digits_deterministic_and_stratified() -> None:
    a_train, a_test = load_digits_data(image_size=16, seed=0)
    b_train, b_test = load_digits_data(image_size=16, seed=0)
    assert torch.equal(a_train.images, b_train.images) and a_train.captions == b_train.captions
    assert torch.equal(a_test.labels, b_test.labels)
    c_train, _ = load_digits_data(image_size=16, seed=1)
    assert not torch.equal(a_train.labels, c_train.labels) or not torch.equal(a_train.images, c_train.images)
    # Stratified: every class has about 30% of its images in the test set.
    total = Counter(a_train.labels.tolist()) + Counter(a_test.labels.tolist())
    test_counts = Counter(a_test.labels.tolist())
    for c in range(10):
        assert abs(test_counts[c] - 0.3 * total[c]) <= 1.0


def test_digits_bad_args() -> None:
    with pytest.raises(DataError, match="test_fraction"):
        load_digits_data(test_fraction=1.5)


def test_load_builtin_dispatch(tmp_path: Path) -> None:
    train, _ = load_builtin("digits", image_size=8)
    assert train.images.shape[1:] == (3, 8, 8)
    with pytest.raises(DataError, match="digits"):
        load_builtin("cifar-nonexistent")
    path = _write_npz(tmp_path / "small.npz")
    train, test = load_builtin(str(path), seed=0)
    assert len(train) == 12 and len(test) == 6


def _write_npz(path: Path, drop: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, size=(12, 10, 10, 3), dtype=np.uint8),
        "y_train": np.array([0, 1, 2] * 4),
        "x_test": rng.integers(0, 256, size=(6, 10, 10, 3), dtype=np.uint8),
        "y_test": np.array([0, 1, 2] * 2),
        "class_names": np.array(["airplane", "bird", "cat"]),
    }
    if drop:
        del arrays[drop]
    np.savez(path, **arrays)
    return path


def test_npz_loader(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "small.npz")
    train, test = load_npz_data(path, seed=0)
    assert train.images.shape == (12, 3, 10, 10) and train.images.dtype == torch.uint8
    assert test.images.shape == (6, 3, 10, 10)
    assert train.class_names == ["airplane", "bird", "cat"] == test.class_names
    assert all(isinstance(c, str) for c in train.class_names)
    assert test.templates == DEFAULT_TEMPLATES
    raw = np.load(path)
    assert torch.equal(train.images[1].permute(1, 2, 0), torch.from_numpy(raw["x_train"][1]))
    for cap, y in zip(train.captions, train.labels.tolist()):
        assert train.class_names[y] in cap
    assert train.captions == load_npz_data(path, seed=0)[0].captions
    small, _ = load_npz_data(path, seed=0, max_train=6, templates=["a {}"])
    assert len(small) == 6 and Counter(small.labels.tolist()) == {0: 2, 1: 2, 2: 2}
    assert small.captions[0].startswith("a ")


def test_npz_missing_key(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "bad.npz", drop="y_test")
    with pytest.raises(DataError, match="y_test") as err:
        load_npz_data(path)
    assert "class_names" in str(err.value)  # the message lists everything that is needed
    with pytest.raises(DataError, match="not found"):
        load_npz_data(tmp_path / "nope.npz")


def test_npz_refuses_pickled_class_names(tmp_path: Path) -> None:
    path = tmp_path / "pickled.npz"
    np.savez(
        path,
        x_train=np.zeros((2, 4, 4, 3), np.uint8),
        y_train=np.array([0, 1]),
        x_test=np.zeros((2, 4, 4, 3), np.uint8),
        y_test=np.array([0, 1]),
        class_names=np.array(["a", "b"], dtype=object),
    )
    with pytest.raises(DataError, match="pickle"):
        load_npz_data(path)


# --------------------------------------------------------------------------------------------------------------------
# Hugging Face datasets sources
# --------------------------------------------------------------------------------------------------------------------


def test_imagefolder_with_metadata(imagefolder: Path, cache_dir: str) -> None:
    ds = load_image_text_dataset(imagefolder, image_size=16, cache_dir=cache_dir)
    assert len(ds) == 4
    assert ds.images.shape == (4, 3, 16, 16) and ds.images.dtype == torch.uint8
    for i, cap in enumerate(ds.captions):
        colour = cap.split()[1]
        assert _centre_pixel(ds.images, i) == COLOURS[colour]  # caption stayed with its image


def test_imagefolder_labels_from_string_column(imagefolder: Path, cache_dir: str) -> None:
    ds = load_image_text_dataset(imagefolder, label_column="colour", image_size=8, cache_dir=cache_dir)
    assert ds.class_names == sorted(COLOURS)
    for i, y in enumerate(ds.labels.tolist()):
        assert ds.class_names[y] in ds.captions[i]


def test_missing_caption_column_lists_columns(imagefolder: Path, cache_dir: str) -> None:
    with pytest.raises(DataError) as err:
        load_image_text_dataset(imagefolder, caption_column="text", cache_dir=cache_dir)
    msg = str(err.value)
    assert "--caption_column" in msg and "'caption'" in msg and "'image'" in msg
    with pytest.raises(DataError, match="--image_column"):
        load_image_text_dataset(imagefolder, image_column="img", cache_dir=cache_dir)


def test_centre_crop_keeps_middle(tmp_path: Path) -> None:
    # A wide image: red left third, green middle, blue right third. The centre crop keeps only green.
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:20] = (0, 255, 0)
    arr[:, 20:] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    rows = [{"image": "wide.png", "caption": "stripes"}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_image_text_dataset(tmp_path / "data.jsonl", image_size=10, cache_dir=str(tmp_path / "c"))
    assert ds.captions == ["stripes"]
    assert ds.images.shape == (1, 3, 10, 10)
    assert _centre_pixel(ds.images, 0) == (0, 255, 0)
    assert int(ds.images[0, 0].max()) < 40 and int(ds.images[0, 2].max()) < 40  # no red/blue left


def _hf_dataset(n: int = 6) -> datasets.Dataset:
    names = list(COLOURS)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=names),
            "plain": datasets.Value("int64"),
        }
    )
    rows = {
        "image": [{"bytes": _png_bytes(COLOURS[names[i % 4]]), "path": None} for i in range(n)],
        "text": [f"a {names[i % 4]} thing {i}" for i in range(n)],
        "label": [i % 4 for i in range(n)],
        "plain": [i % 4 for i in range(n)],
    }
    return datasets.Dataset.from_dict(rows, features=features)


def test_load_from_disk_folder(tmp_path: Path, cache_dir: str) -> None:
    folder = tmp_path / "saved"
    _hf_dataset().save_to_disk(str(folder))
    ds = load_image_text_dataset(folder, caption_column="text", label_column="label", image_size=12)
    assert len(ds) == 6 and ds.images.shape == (6, 3, 12, 12)
    assert ds.class_names == list(COLOURS)  # from the ClassLabel feature
    for i in range(6):
        assert _centre_pixel(ds.images, i) == COLOURS[ds.class_names[int(ds.labels[i])]]
        assert ds.captions[i].startswith(f"a {ds.class_names[int(ds.labels[i])]}")
    sub = load_image_text_dataset(folder, caption_column="text", image_size=8, max_samples=3, seed=1)
    assert len(sub) == 3
    assert sub.captions == load_image_text_dataset(folder, caption_column="text", max_samples=3, seed=1).captions


def test_load_from_disk_dataset_dict_splits(tmp_path: Path) -> None:
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": _hf_dataset(4), "test": _hf_dataset(2)}).save_to_disk(str(folder))
    zs = load_zero_shot_set(folder, label_column="label", split="test", image_size=8, templates=["a {}."])
    assert len(zs) == 2 and zs.class_names == list(COLOURS) and zs.templates == ["a {}."]
    assert zs.images.shape == (2, 3, 8, 8)
    with pytest.raises(DataError, match="splits"):
        load_zero_shot_set(folder, split="validation")


def test_zero_shot_needs_class_names(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    _hf_dataset().save_to_disk(str(folder))
    with pytest.raises(DataError, match="--class_names"):
        load_zero_shot_set(folder, label_column="plain")
    zs = load_zero_shot_set(folder, label_column="plain", class_names=["r", "g", "b", "w"], image_size=8)
    assert zs.class_names == ["r", "g", "b", "w"]
    assert zs.templates == DEFAULT_TEMPLATES


def test_parquet_file(tmp_path: Path, cache_dir: str) -> None:
    path = tmp_path / "data.parquet"
    _hf_dataset().to_parquet(str(path))
    ds = load_image_text_dataset(path, caption_column="text", label_column="label", image_size=8, cache_dir=cache_dir)
    assert len(ds) == 6 and ds.images.shape == (6, 3, 8, 8)
    assert ds.class_names == list(COLOURS)
    assert _centre_pixel(ds.images, 1) == COLOURS["green"]


def test_captions_from_labels_when_no_caption_column(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    _hf_dataset().save_to_disk(str(folder))
    ds = load_image_text_dataset(folder, caption_column=None, label_column="label", image_size=8)
    for cap, y in zip(ds.captions, ds.labels.tolist()):
        assert ds.class_names[y] in cap


def test_bad_sources(tmp_path: Path, cache_dir: str) -> None:
    with pytest.raises(DataError, match="not found"):
        load_image_text_dataset(str(tmp_path / "missing.parquet"), cache_dir=cache_dir)
    bad = tmp_path / "data.csvx"
    bad.write_text("x")
    with pytest.raises(DataError, match="unsupported"):
        load_image_text_dataset(bad, cache_dir=cache_dir)
    empty = tmp_path / "empty"
    _hf_dataset().select([]).save_to_disk(str(empty))
    with pytest.raises(DataError, match="empty"):
        load_image_text_dataset(empty, caption_column="text")
