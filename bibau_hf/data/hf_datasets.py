"""Load image-caption and zero-shot data through Hugging Face ``datasets``.

One entry point accepts everything a user is likely to have: a ``save_to_disk`` folder, an ``imagefolder`` folder
(images plus ``metadata.jsonl``), a parquet/JSON/JSONL file, another local data folder, or a Hub dataset name.
Images are decoded, converted to RGB, centre-cropped to a square and resized once, up front, into one uint8 tensor,
so training never pays for JPEG decoding again.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageOps

from bibau_hf.data.captions import DEFAULT_TEMPLATES, captions_for_labels, validate_templates
from bibau_hf.data.image_text import ImageTextDataset, ZeroShotSet
from bibau_hf.errors import DataError

_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}


# --------------------------------------------------------------------------------------------------------------------
# Opening a source
# --------------------------------------------------------------------------------------------------------------------


def _looks_local(name: str) -> bool:
    """True if ``name`` is clearly meant as a local path (so a missing file is not retried on the Hub)."""
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or os.path.splitext(name)[1].lower() in _FILE_BUILDERS
        or (len(name) > 1 and name[1] == ":")  # Windows drive letter
    )


def _pick_split(obj: Any, split: str, source: str) -> Any:
    """Return ``obj[split]`` for a DatasetDict (or ``obj`` itself for a Dataset), with a helpful error."""
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        if split not in obj:
            raise DataError(f"{source} has splits {sorted(obj.keys())} but not {split!r}; pass --split NAME")
        return obj[split]
    return obj


def _open_source(name_or_path: str | os.PathLike, split: str, cache_dir: str | None) -> tuple[Any, Path | None]:
    """Open any supported source as a ``datasets.Dataset``.

    Returns:
        The dataset and, for local sources, the folder that relative image paths are resolved against.
    """
    import datasets

    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            if any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
                # Written by Dataset.save_to_disk / DatasetDict.save_to_disk.
                return _pick_split(datasets.load_from_disk(str(path)), split, name), path
            has_images = any(p.suffix.lower() in _IMAGE_EXTENSIONS for p in path.rglob("*") if p.is_file())
            if has_images:
                obj = datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir)
            else:
                # Folder of parquet/json/csv shards: let datasets infer the format from the extensions.
                obj = datasets.load_dataset(str(path), cache_dir=cache_dir)
            return _pick_split(obj, split, name), path
        if path.is_file():
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"{name}: unsupported file type {path.suffix!r}; pass a .parquet, .json or .jsonl file, "
                    "a save_to_disk folder, an imagefolder folder, or a Hub dataset name"
                )
            # A single file has exactly one split ("train"), so the requested split name does not apply.
            obj = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
            return obj, path.parent
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types (ValueError, FileNotFoundError, ArrowInvalid, ...)
        raise DataError(f"could not load local dataset {name!r}: {type(exc).__name__}: {exc}") from exc

    if _looks_local(name):
        raise DataError(f"local dataset {name!r} not found; check the path")
    try:
        obj = datasets.load_dataset(name, split=split, cache_dir=cache_dir)
    except Exception as exc:
        raise DataError(
            f"could not load dataset {name!r} (split {split!r}) from the Hugging Face Hub: "
            f"{type(exc).__name__}: {exc}. The name may be wrong, the split may not exist, or this machine may be "
            "offline; if so, download it elsewhere and pass a local save_to_disk folder, imagefolder or parquet file"
        ) from exc
    return obj, None


def _require_column(ds: Any, column: str, flag: str, source: str, role: str) -> None:
    """Raise :class:`DataError` listing the available columns if ``column`` is missing."""
    if column not in ds.column_names:
        raise DataError(
            f"dataset {source!r} has columns {list(ds.column_names)} but no {role} column {column!r}; "
            f"pass {flag} NAME"
        )


def _random_subset(ds: Any, max_samples: int | None, seed: int) -> Any:
    """Keep a seeded random subset of at most ``max_samples`` rows (before decoding, to save time)."""
    if max_samples is None:
        return ds
    if int(max_samples) < 1:
        raise DataError(f"max_samples must be at least 1, got {max_samples}")
    if int(max_samples) >= len(ds):
        return ds
    indices = sorted(random.Random(seed).sample(range(len(ds)), int(max_samples)))
    return ds.select(indices)


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def _open_image(value: Any, base_dir: Path | None, row: int) -> PILImage.Image:
    """Turn one cell of an image column into a PIL image.

    Handles what ``datasets`` hands out with ``Image(decode=False)`` (``{"bytes", "path"}`` dicts) and what raw
    parquet/JSON columns hold: file paths (relative ones resolved against the data file's folder), raw bytes,
    arrays, or already-decoded PIL images.
    """
    try:
        if isinstance(value, PILImage.Image):
            return value
        if isinstance(value, dict):
            if value.get("bytes"):
                return PILImage.open(io.BytesIO(value["bytes"]))
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return PILImage.open(io.BytesIO(value))
        if isinstance(value, (str, os.PathLike)):
            p = Path(value).expanduser()
            if not p.is_absolute() and not p.exists() and base_dir is not None:
                p = base_dir / p
            return PILImage.open(p)
        if isinstance(value, np.ndarray):
            return PILImage.fromarray(value)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"row {row}: could not read image ({type(exc).__name__}: {exc})") from exc
    raise DataError(
        f"row {row}: image cell is {type(value).__name__}, expected an image, a file path, or a "
        "{'bytes': ..., 'path': ...} dict; check --image_column"
    )


def _to_square_uint8(img: PILImage.Image, image_size: int) -> torch.Tensor:
    """RGB, centre-crop to a square, bicubic resize, and return uint8 ``[3, S, S]``."""
    img = ImageOps.exif_transpose(img)  # camera photos: honour the orientation tag before cropping
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    # Centre crop (as CLIP preprocessing does) rather than squashing, so objects keep their aspect ratio.
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), PILImage.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _decode_images(ds: Any, image_column: str, image_size: int, base_dir: Path | None) -> torch.Tensor:
    """Decode a whole image column into uint8 ``[N, 3, S, S]``."""
    import datasets

    feature = ds.features[image_column]
    if isinstance(feature, datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string") and base_dir is not None:
        # Relative paths in a JSON/parquet file are relative to that file, not to the current directory, which
        # is where datasets.Image() would look; resolve them before casting.
        ds = ds.map(
            lambda v: {image_column: v if os.path.isabs(v) or os.path.exists(v) else str(base_dir / v)},
            input_columns=image_column,
        )
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    else:
        try:
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        except Exception:
            # Columns datasets cannot cast (e.g. {"path": ...} dicts without "bytes") are decoded by hand below.
            pass
    out = torch.empty((len(ds), 3, image_size, image_size), dtype=torch.uint8)
    column = ds.select_columns([image_column])
    for i, row in enumerate(column):
        img = _open_image(row[image_column], base_dir, i)
        try:
            out[i] = _to_square_uint8(img, image_size)
        except OSError as exc:  # truncated/corrupt files only fail when pixels are read
            raise DataError(f"row {i}: could not decode image ({exc})") from exc
    return out


# --------------------------------------------------------------------------------------------------------------------
# Captions and labels
# --------------------------------------------------------------------------------------------------------------------


def _read_captions(ds: Any, caption_column: str, seed: int) -> list[str]:
    """Read the caption column; for a list of captions per image, pick one at random (seeded)."""
    rng = random.Random(seed)
    captions = []
    for i, c in enumerate(ds[caption_column]):
        if isinstance(c, (list, tuple)):  # COCO-style: several captions per image
            c = [x for x in c if isinstance(x, str) and x.strip()]
            c = rng.choice(c) if c else None
        if not isinstance(c, str) or not c.strip():
            raise DataError(
                f"row {i}: caption in column {caption_column!r} is {c!r}, not text; every row needs a caption"
            )
        captions.append(c)
    return captions


def _read_labels(
    ds: Any, label_column: str, class_names: Sequence[str] | None
) -> tuple[torch.Tensor, list[str] | None]:
    """Read a label column as class ids, and work out the class names if possible.

    ClassLabel features carry their own names (overridden by ``class_names`` when given, e.g. to replace WordNet
    ids with readable names); string labels are mapped to ids through ``class_names``, or through their sorted
    unique values; plain integer labels keep ``class_names`` (possibly ``None``).
    """
    import datasets

    feature = ds.features[label_column]
    values = ds[label_column]
    names = None if class_names is None else [str(c) for c in class_names]
    if isinstance(feature, datasets.ClassLabel):
        if names is None:
            names = list(feature.names)
        elif len(names) < feature.num_classes:
            raise DataError(
                f"label column {label_column!r} has {feature.num_classes} classes {list(feature.names)} but only "
                f"{len(names)} class names were given; give one per class"
            )
    if values and all(isinstance(v, str) for v in values):
        if names is None:
            names = sorted(set(values))
        lookup = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(values) - lookup.keys())
        if unknown:
            raise DataError(f"labels {unknown[:10]} in column {label_column!r} are not among the class names {names}")
        return torch.tensor([lookup[v] for v in values], dtype=torch.long), names
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        bad = next(v for v in values if not isinstance(v, (int, np.integer)) or isinstance(v, bool))
        raise DataError(
            f"label column {label_column!r} holds {type(bad).__name__} values such as {bad!r}; it must hold integer "
            "class ids or class-name strings; pass the right --label_column"
        )
    labels = torch.tensor(values, dtype=torch.long)
    if len(labels) and int(labels.min()) < 0:
        raise DataError(
            f"label column {label_column!r} has negative ids (e.g. -1 for 'no label'); drop those rows first"
        )
    if names is not None and len(labels) and int(labels.max()) >= len(names):
        raise DataError(
            f"label column {label_column!r} has class id {int(labels.max())} but only {len(names)} class names; "
            "give one name per class id"
        )
    return labels, names


# --------------------------------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------------------------------


def load_image_text_dataset(
    name_or_path: str | os.PathLike,
    image_column: str = "image",
    caption_column: str | None = "caption",
    label_column: str | None = None,
    split: str = "train",
    image_size: int = 224,
    max_samples: int | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    cache_dir: str | None = None,
) -> ImageTextDataset:
    """Load image-caption pairs from a local folder/file or the Hugging Face Hub.

    Accepted sources: a ``save_to_disk`` folder (``dataset_info.json``/``state.json`` or ``dataset_dict.json``),
    an ``imagefolder`` folder (images plus ``metadata.jsonl`` with ``file_name`` and the caption column), a
    ``.parquet``/``.json``/``.jsonl`` file (image cells may be ``{"bytes": ...}``/``{"path": ...}`` dicts or file
    paths, relative paths being relative to the file), another folder of data files, or a Hub dataset name.

    Args:
        name_or_path: Local path or Hub dataset name.
        image_column: Column holding the images.
        caption_column: Column holding captions (a list of captions per row picks one, seeded). ``None`` makes
            captions from the labels with :data:`DEFAULT_TEMPLATES`, which then needs ``label_column``.
        label_column: Optional column of class ids / class-name strings.
        split: Split to load from a folder or the Hub (ignored for single files, which have one split).
        image_size: Side length of the square output images.
        max_samples: If given, keep a seeded random subset of at most this many rows.
        seed: Seed for ``max_samples`` and for picking among multiple captions.
        class_names: Class names by id; taken from a ClassLabel label column when not given.
        cache_dir: ``datasets`` cache folder (default: the ``HF_DATASETS_CACHE`` location).

    Returns:
        An :class:`ImageTextDataset` with uint8 ``[N, 3, image_size, image_size]`` images.

    Raises:
        DataError: If the source cannot be loaded, a column is missing, a cell is bad, or the result is empty.
    """
    if int(image_size) < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size}")
    source = os.fspath(name_or_path)
    ds, base_dir = _open_source(name_or_path, split, cache_dir)
    _require_column(ds, image_column, "--image_column", source, "image")
    if caption_column is None:
        if label_column is None:
            raise DataError(
                "no caption column and no label column given; pass --caption_column NAME, or --label_column NAME "
                "to make captions from class names"
            )
    else:
        _require_column(ds, caption_column, "--caption_column", source, "caption")
    if label_column is not None:
        _require_column(ds, label_column, "--label_column", source, "label")
    if len(ds) == 0:
        raise DataError(f"dataset {source!r} (split {split!r}) is empty")
    ds = _random_subset(ds, max_samples, seed)

    labels, names = (None, None if class_names is None else [str(c) for c in class_names])
    if label_column is not None:
        labels, names = _read_labels(ds, label_column, class_names)
    if caption_column is not None:
        captions = _read_captions(ds, caption_column, seed)
    else:
        if names is None:
            raise DataError(
                f"cannot make captions from label column {label_column!r}: it holds plain ids and no class names "
                "were given; pass --class_names or --caption_column NAME"
            )
        captions = captions_for_labels(labels, names, DEFAULT_TEMPLATES, seed=seed)
    images = _decode_images(ds, image_column, int(image_size), base_dir)
    return ImageTextDataset(images=images, captions=captions, labels=labels, class_names=names)


def load_zero_shot_set(
    name_or_path: str | os.PathLike,
    image_column: str = "image",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    split: str = "test",
    image_size: int = 224,
    max_samples: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
) -> ZeroShotSet:
    """Load labelled images for zero-shot evaluation from a local folder/file or the Hub.

    Sources are the same as for :func:`load_image_text_dataset`.

    Args:
        name_or_path: Local path or Hub dataset name.
        image_column: Column holding the images.
        label_column: Column of class ids (ClassLabel or int) or class-name strings.
        class_names: Class names by id; required unless the label column is a ClassLabel or holds strings.
        templates: Prompt templates with one ``{}`` each; :data:`DEFAULT_TEMPLATES` if None.
        split: Split to load from a folder or the Hub (ignored for single files).
        image_size: Side length of the square output images.
        max_samples: If given, keep a seeded random subset of at most this many rows.
        seed: Seed for ``max_samples``.
        cache_dir: ``datasets`` cache folder.

    Returns:
        A :class:`ZeroShotSet`.

    Raises:
        DataError: If the source cannot be loaded, a column is missing, class names are unknown, or it is empty.
    """
    if int(image_size) < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size}")
    templates = validate_templates(DEFAULT_TEMPLATES if templates is None else templates)
    source = os.fspath(name_or_path)
    ds, base_dir = _open_source(name_or_path, split, cache_dir)
    _require_column(ds, image_column, "--image_column", source, "image")
    _require_column(ds, label_column, "--label_column", source, "label")
    if len(ds) == 0:
        raise DataError(f"dataset {source!r} (split {split!r}) is empty")
    ds = _random_subset(ds, max_samples, seed)
    labels, names = _read_labels(ds, label_column, class_names)
    if names is None:
        raise DataError(
            f"label column {label_column!r} of {source!r} holds plain integer ids with no class names; "
            "pass --class_names (one per id) so zero-shot prompts can be built"
        )
    images = _decode_images(ds, image_column, int(image_size), base_dir)
    return ZeroShotSet(images=images, labels=labels, class_names=names, templates=templates)
