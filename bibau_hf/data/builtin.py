"""Offline datasets: scikit-learn's bundled digits, and CIFAR-style ``.npz`` files.

These need no network, which makes them the default for tests, smoke runs and air-gapped machines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bibau_hf.data.captions import DEFAULT_TEMPLATES, DIGIT_TEMPLATES, captions_for_labels, validate_templates
from bibau_hf.data.image_text import ImageTextDataset, ZeroShotSet
from bibau_hf.errors import DataError

DIGIT_CLASS_NAMES: list[str] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
"""Digits are spelled out: text encoders handle "seven" far better than a bare "7"."""

NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test", "class_names")


def _digits_to_uint8(images: np.ndarray, image_size: int) -> torch.Tensor:
    """Turn sklearn digits ``[N, 8, 8]`` (values 0..16) into uint8 RGB ``[N, 3, S, S]``."""
    x = torch.from_numpy(images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)  # [N, 1, 8, 8], 0..255
    if image_size != x.shape[-1]:
        # Bilinear on CPU float32 is deterministic, and smoother than nearest so the upscaled digits look less
        # like blocky pixel art to a model pretrained on natural images.
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous()  # grey -> RGB by replication


def load_digits_data(
    image_size: int = 32, test_fraction: float = 0.3, seed: int = 0
) -> tuple[ImageTextDataset, ZeroShotSet]:
    """Load scikit-learn's 1,797 handwritten 8x8 digits as a captioned train set and a zero-shot test set.

    Args:
        image_size: Side length the 8x8 images are upscaled to (bilinear).
        test_fraction: Share of images held out for the test set, in ``(0, 1)``.
        seed: Seed for the stratified split and the caption template choices.

    Returns:
        ``(train, test)``: train has labels, class names "zero".."nine" and captions from
        :data:`DIGIT_TEMPLATES`; test is a :class:`ZeroShotSet` with the same class names and templates.

    Raises:
        DataError: If ``image_size`` or ``test_fraction`` is out of range.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if int(image_size) < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    y = np.asarray(digits.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=float(test_fraction), stratify=y, random_state=seed
    )
    # Sorting keeps the original dataset order inside each split, so the split is a pure function of the seed.
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    images = _digits_to_uint8(digits.images, int(image_size))
    train = ImageTextDataset(
        images=images[torch.from_numpy(train_idx)].clone(),
        captions=captions_for_labels(y[train_idx], DIGIT_CLASS_NAMES, DIGIT_TEMPLATES, seed=seed),
        labels=torch.from_numpy(y[train_idx]),
        class_names=list(DIGIT_CLASS_NAMES),
    )
    test = ZeroShotSet(
        images=images[torch.from_numpy(test_idx)].clone(),
        labels=torch.from_numpy(y[test_idx]),
        class_names=list(DIGIT_CLASS_NAMES),
        templates=list(DIGIT_TEMPLATES),
    )
    return train, test


def _npz_images(arr: np.ndarray, key: str, path: str) -> torch.Tensor:
    """Check an ``x_*`` array and turn it into uint8 ``[N, 3, H, W]``."""
    if arr.ndim == 3:  # grey [N, H, W]: replicate to RGB
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise DataError(f"{path}: '{key}' must have shape (N, H, W, 3), got {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        # Accept other integer types holding 0..255; refuse floats, whose scale (0..1 or 0..255) is ambiguous.
        if np.issubdtype(arr.dtype, np.integer) and (arr.size == 0 or (arr.min() >= 0 and arr.max() <= 255)):
            arr = arr.astype(np.uint8)
        else:
            raise DataError(
                f"{path}: '{key}' must be uint8 with values 0..255, got dtype {arr.dtype}; "
                "save it with x.astype(np.uint8) (multiply by 255 first if it is in [0, 1])"
            )
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def _npz_labels(arr: np.ndarray, key: str, n: int, num_classes: int, path: str) -> torch.Tensor:
    """Check a ``y_*`` array against its image count and the number of class names."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:  # Keras-style (N, 1) labels
        arr = arr.reshape(-1)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: '{key}' must be a 1-D integer array of class ids, got {arr.dtype} {arr.shape}")
    if arr.shape[0] != n:
        raise DataError(f"{path}: '{key}' has {arr.shape[0]} labels but there are {n} images; give one per image")
    if n and (arr.min() < 0 or arr.max() >= num_classes):
        raise DataError(
            f"{path}: '{key}' holds class ids {int(arr.min())}..{int(arr.max())} but 'class_names' has "
            f"{num_classes} entries; ids must be in 0..{num_classes - 1}"
        )
    return torch.from_numpy(arr.astype(np.int64))


def load_npz_data(
    path: str | os.PathLike,
    seed: int = 0,
    templates: Sequence[str] | None = None,
    max_train: int | None = None,
) -> tuple[ImageTextDataset, ZeroShotSet]:
    """Load a labelled image dataset saved as one ``.npz`` file.

    The file must hold ``x_train`` and ``x_test`` (uint8 ``(N, H, W, 3)``; grey ``(N, H, W)`` is replicated),
    ``y_train`` and ``y_test`` (integer class ids) and ``class_names`` (strings). It is read with
    ``allow_pickle=False``, so nothing in the file can run code.

    Args:
        path: The ``.npz`` file.
        seed: Seed for caption template choices and for the ``max_train`` subset.
        templates: Prompt templates for train captions and zero-shot prompts; :data:`DEFAULT_TEMPLATES` if None.
        max_train: If given, keep a seeded, stratified subset of at most this many training images.

    Returns:
        ``(train, test)``: a captioned :class:`ImageTextDataset` and a :class:`ZeroShotSet`.

    Raises:
        DataError: If the file is missing, unreadable, lacks a key, or holds arrays of the wrong shape/type.
    """
    path = os.fspath(path)
    templates = validate_templates(DEFAULT_TEMPLATES if templates is None else templates)
    if not os.path.isfile(path):
        raise DataError(f"npz file {path!r} not found; pass the path to an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing keys {missing}; the file has {sorted(npz.files)} but needs "
                    f"{list(NPZ_KEYS)} (x_*: uint8 (N, H, W, 3), y_*: int class ids, class_names: str array)"
                )
            arrays = {k: npz[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except ValueError as exc:
        # np.load raises ValueError for object arrays when pickles are refused.
        raise DataError(
            f"{path}: could not read without pickle ({exc}); save class_names as a string array, "
            "e.g. np.array(names, dtype=str), not as Python objects"
        ) from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc

    names_arr = np.asarray(arrays["class_names"]).reshape(-1)
    class_names = [x.decode() if isinstance(x, bytes) else str(x) for x in names_arr.tolist()]
    if not class_names:
        raise DataError(f"{path}: 'class_names' is empty; store one name per class id")
    x_train = _npz_images(arrays["x_train"], "x_train", path)
    x_test = _npz_images(arrays["x_test"], "x_test", path)
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise DataError(f"{path}: x_train and x_test must each hold at least one image")
    y_train = _npz_labels(arrays["y_train"], "y_train", x_train.shape[0], len(class_names), path)
    y_test = _npz_labels(arrays["y_test"], "y_test", x_test.shape[0], len(class_names), path)

    train = ImageTextDataset(
        images=x_train,
        captions=captions_for_labels(y_train, class_names, templates, seed=seed),
        labels=y_train,
        class_names=class_names,
    )
    if max_train is not None:
        if int(max_train) < 1:
            raise DataError(f"max_train must be at least 1, got {max_train}")
        if int(max_train) < len(train):
            train = train.take(int(max_train), seed=seed)
    test = ZeroShotSet(images=x_test, labels=y_test, class_names=list(class_names), templates=list(templates))
    return train, test
