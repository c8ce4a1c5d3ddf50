"""Backdoor triggers for images and captions, with a JSON-serialisable spec and a registry.

Every trigger is a small dataclass whose constructor parameters *are* its spec: ``trigger.to_dict()`` gives
``{"type": <registered name>, **params}`` and ``build_trigger(spec)`` rebuilds an identical trigger. All random parts
(patches, blend patterns, warp fields) are drawn from a CPU :class:`torch.Generator` seeded with the trigger's ``seed``
and generated lazily per image size, so a trigger rebuilt from JSON produces bit-identical outputs on any device and
independent of the order in which image sizes are first seen.

Image triggers take float tensors ``[B, 3, H, W]`` with values in ``[0, 1]`` and return a new tensor of the same shape,
dtype and device, built only from out-of-place torch ops so gradients flow through them.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bibau_hf.errors import AttackSpecError

__all__ = [
    "Trigger",
    "BadNetsTrigger",
    "BlendedTrigger",
    "WaNetTrigger",
    "SIGTrigger",
    "TextTrigger",
    "FunctionTrigger",
    "register_trigger",
    "build_trigger",
    "available_triggers",
]

_REGISTRY: dict[str, type[Trigger]] = {}


# ---------------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------------


def register_trigger(name: str) -> Callable[[type[Trigger]], type[Trigger]]:
    """Class decorator that registers a :class:`Trigger` subclass under ``name``.

    The name becomes the ``"type"`` field of the trigger's spec, so it must stay stable once specs have been saved.

    Args:
        name: Registry key, e.g. ``"badnets"``.

    Returns:
        A decorator that registers the class and returns it unchanged (apart from setting ``type_name``).

    Raises:
        AttackSpecError: If ``name`` is empty, already taken by another class, or the class is not a ``Trigger``.
    """
    if not isinstance(name, str) or not name:
        raise AttackSpecError(f"Trigger names must be non-empty strings, got {name!r}.")

    def decorator(cls: type[Trigger]) -> type[Trigger]:
        if not (isinstance(cls, type) and issubclass(cls, Trigger)):
            raise AttackSpecError(f"@register_trigger({name!r}) must decorate a subclass of Trigger, got {cls!r}.")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise AttackSpecError(
                f"Trigger type {name!r} is already registered to {existing.__qualname__}; pick another name."
            )
        cls.type_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_triggers() -> list[str]:
    """Return the sorted names of all registered trigger types."""
    return sorted(_REGISTRY)


def build_trigger(spec: dict[str, Any] | str | Trigger) -> Trigger:
    """Build a trigger from a spec.

    Args:
        spec: A ``Trigger`` (returned as is), a registered type name (built with default parameters), or a dict
            ``{"type": name, **params}`` as produced by :meth:`Trigger.to_dict`.

    Returns:
        The trigger.

    Raises:
        AttackSpecError: If the type is unknown, a parameter is unknown or invalid, or ``spec`` has the wrong type.
    """
    if isinstance(spec, Trigger):
        return spec
    if isinstance(spec, str):
        return _lookup(spec).from_dict({"type": spec})
    if isinstance(spec, dict):
        if "type" not in spec:
            raise AttackSpecError(
                f"Trigger spec {spec!r} has no 'type' key; add one of: {', '.join(available_triggers())}."
            )
        return _lookup(spec["type"]).from_dict(spec)
    if callable(spec):
        raise AttackSpecError(
            "A plain callable is not a trigger spec; wrap it as FunctionTrigger(fn, name=...) so it has a name."
        )
    raise AttackSpecError(
        f"A trigger spec must be a dict, a trigger type name or a Trigger, got {type(spec).__name__}."
    )


def _lookup(name: Any) -> type[Trigger]:
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise AttackSpecError(f"Unknown trigger type {name!r}; known types are: {', '.join(available_triggers())}.")
    return cls


# ---------------------------------------------------------------------------------------------------------------------
# Parameter validation helpers (shared by the dataclasses' __post_init__)
# ---------------------------------------------------------------------------------------------------------------------


def _as_int(owner: str, name: str, value: Any, minimum: int | None = None) -> int:
    # bool is an Integral in Python, but True as a patch size is always a mistake in a spec.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AttackSpecError(f"{owner}.{name} must be an integer, got {value!r}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise AttackSpecError(f"{owner}.{name} must be >= {minimum}, got {value}.")
    return value


def _as_float(owner: str, name: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise AttackSpecError(f"{owner}.{name} must be a finite number, got {value!r}.")
    value = float(value)
    if minimum is not None and value < minimum:
        raise AttackSpecError(f"{owner}.{name} must be >= {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise AttackSpecError(f"{owner}.{name} must be <= {maximum}, got {value}.")
    return value


def _as_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise AttackSpecError(f"{owner}.{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value


def _check_images(owner: str, images: Any) -> None:
    if not isinstance(images, torch.Tensor):
        raise AttackSpecError(f"{owner} expects a torch.Tensor of images, got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise AttackSpecError(
            f"{owner} expects images shaped [B, 3, H, W], got {list(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0) for a single image."
        )
    if not images.is_floating_point():
        raise AttackSpecError(
            f"{owner} expects float images in [0, 1], got dtype {images.dtype}; convert with images.float() / 255."
        )


def _cpu_generator(seed: int) -> torch.Generator:
    # A fresh generator per (trigger, image size) makes each pattern depend only on (seed, size), never on the
    # order in which sizes were first seen.
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


# ---------------------------------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------------------------------


class Trigger(abc.ABC):
    """Abstract backdoor trigger.

    Subclasses are dataclasses whose ``init`` fields are the JSON spec. ``modality`` says what the trigger acts on:
    ``"image"`` triggers map float image batches to image batches, ``"text"`` triggers map lists of captions to
    lists of captions.
    """

    type_name: ClassVar[str] = ""
    modality: str = "image"

    @abc.abstractmethod
    def __call__(self, inputs: Any) -> Any:
        """Apply the trigger to a batch of images ``[B, 3, H, W]`` (or a list of captions for text triggers)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-serialisable spec ``{"type": name, **params}`` that :func:`build_trigger` accepts."""
        if not dataclasses.is_dataclass(self):
            raise NotImplementedError(f"{type(self).__name__} must implement to_dict() (it is not a dataclass).")
        spec: dict[str, Any] = {"type": self.type_name}
        for f in dataclasses.fields(self):
            if f.init:
                value = getattr(self, f.name)
                # JSON has no tuples; emitting lists keeps to_dict() equal to its own JSON round trip.
                spec[f.name] = list(value) if isinstance(value, tuple) else value
        return spec

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Trigger:
        """Build the trigger from a spec produced by :meth:`to_dict`.

        Args:
            spec: ``{"type": name, **params}``; ``"type"`` may be omitted when calling on the concrete class.

        Raises:
            AttackSpecError: If the type does not match this class, or a parameter is unknown or invalid.
        """
        if not isinstance(spec, dict):
            raise AttackSpecError(f"A trigger spec must be a dict, got {type(spec).__name__}.")
        params = dict(spec)
        spec_type = params.pop("type", cls.type_name)
        if spec_type != cls.type_name:
            raise AttackSpecError(
                f"Spec type {spec_type!r} does not match {cls.__name__} (type {cls.type_name!r}); "
                "use build_trigger(spec) to dispatch on the type."
            )
        allowed = [f.name for f in dataclasses.fields(cls) if f.init] if dataclasses.is_dataclass(cls) else []
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise AttackSpecError(
                f"Unknown parameter(s) {', '.join(map(repr, unknown))} for trigger {cls.type_name!r}; "
                f"valid parameters are: {', '.join(allowed) or '(none)'}."
            )
        try:
            return cls(**params)
        except TypeError as exc:  # e.g. a required parameter is missing
            raise AttackSpecError(f"Invalid parameters for trigger {cls.type_name!r}: {exc}.") from exc


# ---------------------------------------------------------------------------------------------------------------------
# Image triggers
# ---------------------------------------------------------------------------------------------------------------------

_CORNERS = ("bottom_right", "top_left", "top_right", "bottom_left")
_PATTERNS = ("checkerboard", "random", "white")


@register_trigger("badnets")
@dataclass
class BadNetsTrigger(Trigger):
    """BadNets (Gu et al. 2017): paste a small fixed patch at a fixed location.

    Args:
        patch_size: Side length of the square patch in pixels.
        position: A corner name (``"bottom_right"``, ``"top_left"``, ``"top_right"``, ``"bottom_left"``) or the
            ``[row, col]`` of the patch's top-left pixel.
        pattern: ``"checkerboard"`` (alternating 0/1, white at the patch's top-left), ``"random"`` (seeded random
            0/1 per pixel and channel) or ``"white"``.
        seed: Seed for the ``"random"`` pattern.
    """

    patch_size: int = 4
    position: str | tuple[int, int] = "bottom_right"
    pattern: str = "checkerboard"
    seed: int = 0
    _cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.patch_size = _as_int("BadNetsTrigger", "patch_size", self.patch_size, minimum=1)
        if isinstance(self.position, str):
            _as_choice("BadNetsTrigger", "position", self.position, _CORNERS)
        elif isinstance(self.position, (list, tuple)) and len(self.position) == 2:
            # Stored as a tuple so the dataclass stays comparable and the spec cannot be mutated behind our back.
            self.position = tuple(_as_int("BadNetsTrigger", "position", p, minimum=0) for p in self.position)
        else:
            raise AttackSpecError(
                f"BadNetsTrigger.position must be one of {', '.join(map(repr, _CORNERS))} or [row, col]; "
                f"got {self.position!r}."
            )
        _as_choice("BadNetsTrigger", "pattern", self.pattern, _PATTERNS)
        self.seed = _as_int("BadNetsTrigger", "seed", self.seed)

    def _origin(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if isinstance(self.position, tuple):
            row, col = self.position
        else:
            row = height - p if self.position.startswith("bottom") else 0
            col = width - p if self.position.endswith("right") else 0
        if row < 0 or col < 0 or row + p > height or col + p > width:
            raise AttackSpecError(
                f"BadNetsTrigger patch of size {p} at {self.position!r} does not fit a {height}x{width} image; "
                "use a smaller patch_size or another position."
            )
        return row, col

    def _patch(self) -> torch.Tensor:
        p = self.patch_size
        if self.pattern == "white":
            return torch.ones(3, p, p)
        if self.pattern == "checkerboard":
            idx = torch.arange(p)
            board = ((idx[:, None] + idx[None, :]) % 2 == 0).float()
            return board.expand(3, p, p).clone()
        return torch.randint(0, 2, (3, p, p), generator=_cpu_generator(self.seed)).float()

    def _full_size(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (height, width)
        if key not in self._cache:
            row, col = self._origin(height, width)
            p = self.patch_size
            mask = torch.zeros(1, 1, height, width, dtype=torch.bool)
            mask[..., row : row + p, col : col + p] = True
            canvas = torch.zeros(1, 3, height, width)
            canvas[0, :, row : row + p, col : col + p] = self._patch()
            self._cache[key] = (mask, canvas)
        return self._cache[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Return ``images`` with the patch pasted in; pixels outside the patch are untouched."""
        _check_images("BadNetsTrigger", images)
        mask, canvas = self._full_size(images.shape[-2], images.shape[-1])
        # torch.where is out of place and passes gradients through the untouched pixels.
        return torch.where(mask.to(images.device), canvas.to(device=images.device, dtype=images.dtype), images)


@register_trigger("blended")
@dataclass
class BlendedTrigger(Trigger):
    """Blended (Chen et al. 2017): ``(1 - alpha) * x + alpha * pattern`` with a seeded uniform-noise pattern.

    Args:
        alpha: Blend weight of the pattern, in ``[0, 1]``.
        seed: Seed for the noise pattern (one pattern per image size).
    """

    alpha: float = 0.15
    seed: int = 0
    _cache: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.alpha = _as_float("BlendedTrigger", "alpha", self.alpha, minimum=0.0, maximum=1.0)
        self.seed = _as_int("BlendedTrigger", "seed", self.seed)

    def pattern(self, height: int, width: int) -> torch.Tensor:
        """Return the CPU noise pattern ``[1, 3, H, W]`` used for images of this size."""
        key = (height, width)
        if key not in self._cache:
            self._cache[key] = torch.rand(1, 3, height, width, generator=_cpu_generator(self.seed))
        return self._cache[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Blend the noise pattern into ``images``."""
        _check_images("BlendedTrigger", images)
        pattern = self.pattern(images.shape[-2], images.shape[-1]).to(device=images.device, dtype=images.dtype)
        # The blend is convex, so the clamp only removes float rounding just outside [0, 1].
        return ((1.0 - self.alpha) * images + self.alpha * pattern).clamp(0.0, 1.0)


@register_trigger("wanet")
@dataclass
class WaNetTrigger(Trigger):
    """WaNet (Nguyen & Tran 2021): an imperceptible, smooth, seeded image warp.

    A random control grid ``[2, k, k]`` in ``[-1, 1]`` is normalised by its mean absolute value, upsampled bicubically
    to ``H x W``, scaled by ``strength / H``, added to the identity sampling grid, clamped to ``[-1, 1]`` and applied
    with ``F.grid_sample(align_corners=True)``.

    Args:
        grid_size: Side ``k`` of the control grid (smaller means smoother warps).
        strength: Warp strength ``s`` (0 gives the identity warp).
        seed: Seed for the control grid.
    """

    grid_size: int = 4
    strength: float = 1.0
    seed: int = 0
    _cache: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.grid_size = _as_int("WaNetTrigger", "grid_size", self.grid_size, minimum=1)
        self.strength = _as_float("WaNetTrigger", "strength", self.strength, minimum=0.0)
        self.seed = _as_int("WaNetTrigger", "seed", self.seed)

    def sampling_grid(self, height: int, width: int) -> torch.Tensor:
        """Return the CPU sampling grid ``[1, H, W, 2]`` (x, y order, as ``grid_sample`` expects)."""
        key = (height, width)
        if key not in self._cache:
            k = self.grid_size
            control = torch.rand(1, 2, k, k, generator=_cpu_generator(self.seed)) * 2 - 1
            control = control / control.abs().mean()
            flow = F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True)
            flow = flow.permute(0, 2, 3, 1)  # [1, H, W, 2]
            ys = torch.linspace(-1, 1, height)
            xs = torch.linspace(-1, 1, width)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            identity = torch.stack((grid_x, grid_y), dim=-1)[None]
            self._cache[key] = (identity + self.strength * flow / height).clamp(-1.0, 1.0)
        return self._cache[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Warp ``images`` with the seeded flow field."""
        _check_images("WaNetTrigger", images)
        grid = self.sampling_grid(images.shape[-2], images.shape[-1]).to(device=images.device, dtype=images.dtype)
        grid = grid.expand(images.shape[0], -1, -1, -1)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        # Bilinear sampling is convex in the inputs; the clamp only removes float rounding.
        return warped.clamp(0.0, 1.0)


@register_trigger("sig")
@dataclass
class SIGTrigger(Trigger):
    """SIG (Barni et al. 2019): add a horizontal sinusoid ``delta * sin(2 pi j f / W)`` over columns ``j``.

    The signal is the same for every row and channel; the result is clamped to ``[0, 1]``.

    Args:
        delta: Amplitude, in ``[0, 1]`` image units (default 20/255).
        frequency: Number of periods across the image width.
        seed: Unused (the signal is deterministic); kept so every image trigger has the same spec shape.
    """

    delta: float = 20 / 255
    frequency: float = 6
    seed: int = 0
    _cache: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.delta = _as_float("SIGTrigger", "delta", self.delta, minimum=0.0, maximum=1.0)
        freq = self.frequency
        if isinstance(freq, bool) or not isinstance(freq, numbers.Real) or not math.isfinite(float(freq)) or freq < 0:
            raise AttackSpecError(f"SIGTrigger.frequency must be a finite number >= 0, got {freq!r}.")
        # Keep integers as integers so the spec reads back exactly as written (6, not 6.0).
        self.frequency = int(freq) if isinstance(freq, numbers.Integral) else float(freq)
        self.seed = _as_int("SIGTrigger", "seed", self.seed)

    def signal(self, height: int, width: int) -> torch.Tensor:
        """Return the CPU additive signal ``[1, 1, H, W]`` for images of this size."""
        key = (height, width)
        if key not in self._cache:
            cols = torch.arange(width, dtype=torch.float64)
            row = self.delta * torch.sin(2 * math.pi * cols * self.frequency / width)
            # Kept in float64 so float64 inputs get the exact signal; it is cast to the input dtype per call.
            self._cache[key] = row.expand(1, 1, height, width).clone()
        return self._cache[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Add the sinusoid to ``images`` and clamp to ``[0, 1]``."""
        _check_images("SIGTrigger", images)
        signal = self.signal(images.shape[-2], images.shape[-1]).to(device=images.device, dtype=images.dtype)
        return (images + signal).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Text trigger
# ---------------------------------------------------------------------------------------------------------------------

_TEXT_POSITIONS = ("start", "end", "random")
_TRAILING_PUNCT = ".!?"


@register_trigger("text")
@dataclass
class TextTrigger(Trigger):
    """Insert a trigger word into captions.

    Args:
        token: The trigger word (or phrase), inserted as separate word(s).
        position: ``"start"``, ``"end"`` (before trailing ``.``/``!``/``?`` if present) or ``"random"``: a word
            boundary chosen from a hash of ``(seed, caption)``, so the same caption always gets the same position,
            whatever the call order or batch.
        seed: Seed for the ``"random"`` position.
    """

    token: str = "cf"
    position: str = "start"
    seed: int = 0
    modality: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or not self.token.strip() or self.token != self.token.strip():
            raise AttackSpecError(
                f"TextTrigger.token must be a non-empty string without leading/trailing whitespace, "
                f"got {self.token!r}."
            )
        _as_choice("TextTrigger", "position", self.position, _TEXT_POSITIONS)
        self.seed = _as_int("TextTrigger", "seed", self.seed)

    def _insert_end(self, caption: str) -> str:
        body = caption.rstrip()
        stripped = body.rstrip(_TRAILING_PUNCT)
        punct = body[len(stripped) :]
        stripped = stripped.rstrip()
        return f"{stripped} {self.token}{punct}" if stripped else f"{self.token}{punct}"

    def _random_index(self, caption: str, num_slots: int) -> int:
        # hashlib (unlike hash()) is not salted per process, so positions are reproducible across runs.
        digest = hashlib.sha256(f"{self.seed}\x00{caption}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % num_slots

    def insert(self, caption: str) -> str:
        """Return ``caption`` with the trigger word inserted."""
        if not isinstance(caption, str):
            raise AttackSpecError(f"TextTrigger expects captions as strings, got {type(caption).__name__}.")
        if self.position == "start":
            rest = caption.lstrip()
            return f"{self.token} {rest}" if rest else self.token
        if self.position == "end":
            return self._insert_end(caption)
        words = caption.split()
        index = self._random_index(caption, len(words) + 1)
        if index == len(words):
            # The last slot behaves like "end", so a trailing full stop stays last.
            return self._insert_end(caption)
        return " ".join([*words[:index], self.token, *words[index:]])

    def __call__(self, captions: Sequence[str] | str) -> list[str] | str:
        """Insert the trigger into each caption; a single string gives back a single string."""
        if isinstance(captions, str):
            return self.insert(captions)
        if not isinstance(captions, Sequence):
            raise AttackSpecError(f"TextTrigger expects a list of captions, got {type(captions).__name__}.")
        return [self.insert(c) for c in captions]


# ---------------------------------------------------------------------------------------------------------------------
# User-defined trigger
# ---------------------------------------------------------------------------------------------------------------------


@register_trigger("function")
@dataclass
class FunctionTrigger(Trigger):
    """Wrap a user's own callable as a trigger.

    The callable cannot be serialised, so the spec records only its name for reports; rebuilding it from JSON is
    refused with an explanation.

    Args:
        fn: The trigger function (images -> images, or captions -> captions for ``modality="text"``).
        name: A human-readable name recorded in specs and reports.
        modality: ``"image"`` or ``"text"``.
    """

    fn: Callable[[Any], Any]
    name: str
    modality: str = "image"

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise AttackSpecError(f"FunctionTrigger.fn must be callable, got {type(self.fn).__name__}.")
        if not isinstance(self.name, str) or not self.name:
            raise AttackSpecError(f"FunctionTrigger.name must be a non-empty string, got {self.name!r}.")
        _as_choice("FunctionTrigger", "modality", self.modality, ("image", "text"))

    def __call__(self, inputs: Any) -> Any:
        """Call the wrapped function."""
        return self.fn(inputs)

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"type": "function", "name": name}`` (the function itself is not serialisable)."""
        return {"type": self.type_name, "name": self.name}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FunctionTrigger:
        """Always raises: a user function cannot be rebuilt from JSON.

        Raises:
            AttackSpecError: Always.
        """
        name = spec.get("name") if isinstance(spec, dict) else None
        raise AttackSpecError(
            f"Trigger spec {spec!r} refers to a user function{f' ({name!r})' if name else ''}, which cannot be "
            "rebuilt from JSON; pass the function from Python instead, e.g. FunctionTrigger(fn, name=...)."
        )
