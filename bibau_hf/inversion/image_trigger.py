"""Learnable image-trigger operators T(x) for blind inversion (DESIGN §3), several candidates at once.

Every family holds ``num_candidates`` independent triggers (restarts, or one per candidate target) as a leading
dimension, so one optimiser step updates them all in a single batched forward pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_FAMILIES = ("mask", "additive", "warp", "periodic")
"""Image trigger families the inverter knows (``periodic`` is a fixed dictionary, :mod:`.periodic_trigger`)."""
WARP_MAX_SHIFT = 0.125
"""Default bound of the warp family's control displacements, a fraction of the image side (METHOD_NOTES §11, §24)."""


class ImageTriggerFamily(nn.Module):
    """Base class: ``forward(images [B,3,H,W]) -> [C, B, 3, H, W]`` for C candidate triggers."""

    family: str = ""

    def __init__(self, num_candidates: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_candidates = int(num_candidates)
        self.image_size = tuple(image_size)

    def prior_cost(self) -> torch.Tensor:
        """``-log p(φ)`` per candidate (up to its weight), shape ``[C]``."""
        raise NotImplementedError

    def size(self) -> torch.Tensor:
        """A human-readable size per candidate (mask pixels, or L∞ norm), shape ``[C]``."""
        raise NotImplementedError

    def apply_one(self, images: torch.Tensor, index: int) -> torch.Tensor:
        """Apply candidate ``index`` to ``[B,3,H,W]`` images."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.apply_one(images, c) for c in range(self.num_candidates)])

    def select(self, indices: list[int]) -> ImageTriggerFamily:
        """A new family holding (detached copies of) the chosen candidates."""
        raise NotImplementedError

    def describe(self, index: int) -> dict[str, Any]:
        return {"family": self.family, "size": float(self.size()[index])}

    @torch.no_grad()
    def assign(self, rows: list[int], other: ImageTriggerFamily) -> None:
        """Overwrite candidates ``rows`` with ``other``'s candidates, in order (``other`` as from :meth:`select`)."""
        if type(other) is not type(self) or other.num_candidates != len(rows):
            raise ValueError(f"assign needs a {type(self).__name__} of {len(rows)} candidates")
        params = list(self.parameters())
        if not params:
            raise TypeError(f"{type(self).__name__} has no optimised candidates to assign")
        index = torch.tensor(rows, device=params[0].device)
        for mine, theirs in zip(params, other.parameters()):
            mine.index_copy_(0, index, theirs.to(mine.device))


class MaskPatternTrigger(ImageTriggerFamily):
    """T(x) = (1 − m) ⊙ x + m ⊙ p, with m = σ(mask logits) ∈ [0,1]^{H×W} and p = σ(pattern logits) ∈ [0,1]^{3×H×W}.

    The prior is the mask's mean value (its L1 norm over the pixel count): small triggers are likely.
    """

    family = "mask"

    def __init__(
        self, num_candidates: int, image_size: tuple[int, int], generator: torch.Generator | None = None,
        init_mask: float = 0.05,
    ) -> None:
        super().__init__(num_candidates, image_size)
        h, w = self.image_size
        # Start from a faint full-image mask with a random pattern: every pixel gets gradient at first, and the
        # L1 prior shrinks the mask onto the pixels that matter.
        logit = math.log(init_mask / (1 - init_mask))
        noise = torch.randn(num_candidates, 1, h, w, generator=generator) * 0.5
        self.mask_logits = nn.Parameter(noise + logit)
        self.pattern_logits = nn.Parameter(torch.randn(num_candidates, 3, h, w, generator=generator) * 2.0)

    def mask(self) -> torch.Tensor:
        return torch.sigmoid(self.mask_logits)

    def pattern(self) -> torch.Tensor:
        return torch.sigmoid(self.pattern_logits)

    def prior_cost(self) -> torch.Tensor:
        return self.mask().flatten(1).mean(1)

    def size(self) -> torch.Tensor:
        return self.mask().flatten(1).sum(1).detach()

    def apply_one(self, images: torch.Tensor, index: int) -> torch.Tensor:
        m = self.mask()[index].to(images.device)
        return (1 - m) * images + m * self.pattern()[index].to(images.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = self.mask().unsqueeze(1).to(images.device)
        p = self.pattern().unsqueeze(1).to(images.device)
        return (1 - m) * images.unsqueeze(0) + m * p

    def select(self, indices: list[int]) -> MaskPatternTrigger:
        new = MaskPatternTrigger(len(indices), self.image_size)
        with torch.no_grad():
            new.mask_logits.copy_(self.mask_logits[indices])
            new.pattern_logits.copy_(self.pattern_logits[indices])
        return new.to(self.mask_logits.device)

    def describe(self, index: int) -> dict[str, Any]:
        mask = self.mask()[index, 0].detach()
        flat = mask.flatten()
        peak = int(flat.argmax())
        return {
            "family": self.family,
            "mask_pixels": float(flat.sum()),
            "mask_fraction": float(flat.mean()),
            "mask_peak_row": peak // mask.shape[1],
            "mask_peak_col": peak % mask.shape[1],
        }


class AdditiveTrigger(ImageTriggerFamily):
    """T(x) = clip(x + δ, 0, 1), with δ = ε · tanh(raw) so that ‖δ‖∞ ≤ ε (global triggers)."""

    family = "additive"

    def __init__(
        self, num_candidates: int, image_size: tuple[int, int], epsilon: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(num_candidates, image_size)
        h, w = self.image_size
        self.epsilon = float(epsilon)
        self.raw = nn.Parameter(torch.randn(num_candidates, 3, h, w, generator=generator) * 0.1)

    def delta(self) -> torch.Tensor:
        return self.epsilon * torch.tanh(self.raw)

    def prior_cost(self) -> torch.Tensor:
        # Within the ε-ball a smaller perturbation is still more likely; normalised to [0, 1].
        return (self.delta().abs().flatten(1).mean(1)) / max(self.epsilon, 1e-8)

    def size(self) -> torch.Tensor:
        return self.delta().abs().flatten(1).mean(1).detach()

    def apply_one(self, images: torch.Tensor, index: int, strength: torch.Tensor | None = None) -> torch.Tensor:
        """Add candidate ``index``'s δ to ``images``; ``strength`` ``[B]`` scales each image's δ."""
        delta = self.delta()[index].to(images.device)
        if strength is not None:
            delta = strength.view(-1, 1, 1, 1).to(delta) * delta
        return (images + delta).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.unsqueeze(0) + self.delta().unsqueeze(1).to(images.device)).clamp(0, 1)

    def select(self, indices: list[int]) -> AdditiveTrigger:
        new = AdditiveTrigger(len(indices), self.image_size, self.epsilon)
        with torch.no_grad():
            new.raw.copy_(self.raw[indices])
        return new.to(self.raw.device)

    def describe(self, index: int) -> dict[str, Any]:
        delta = self.delta()[index].detach()
        return {"family": self.family, "epsilon": self.epsilon, "mean_abs_delta": float(delta.abs().mean())}


class WarpTrigger(ImageTriggerFamily):
    """T(x) = x sampled along a smooth displacement field (warp-based triggers such as WaNet).

    The field is a ``grid × grid`` control grid of 2-D displacements, bounded by ``max_shift`` (a fraction of the
    image side) through tanh and upsampled bicubically to the image: only smooth, low-frequency warps are expressible,
    which is what makes a warp imperceptible. Pixels are resampled bilinearly with border padding, so the family
    moves content and cannot paint a patch. The prior is the mean displacement relative to ``max_shift``.
    """

    family = "warp"

    def __init__(
        self, num_candidates: int, image_size: tuple[int, int], max_shift: float = WARP_MAX_SHIFT, grid: int = 4,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(num_candidates, image_size)
        self.max_shift = float(max_shift)
        self.grid = int(grid)
        self.raw = nn.Parameter(torch.randn(num_candidates, 2, self.grid, self.grid, generator=generator) * 0.1)
        h, w = self.image_size
        ys, xs = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        self.register_buffer("identity", torch.stack((grid_x, grid_y), dim=-1), persistent=False)

    def displacement(self) -> torch.Tensor:
        """``[C, 2, grid, grid]`` control displacements in grid_sample units (2 = the whole image side)."""
        return 2 * self.max_shift * torch.tanh(self.raw)

    def sampling_grid(self) -> torch.Tensor:
        h, w = self.image_size
        flow = F.interpolate(self.displacement(), size=(h, w), mode="bicubic", align_corners=True)
        return self.identity.unsqueeze(0) + flow.permute(0, 2, 3, 1)  # [C, H, W, 2]

    def prior_cost(self) -> torch.Tensor:
        return torch.tanh(self.raw).abs().flatten(1).mean(1)

    def size(self) -> torch.Tensor:
        """Mean displacement in pixels."""
        return (self.displacement().abs().flatten(1).mean(1) * self.image_size[0] / 2).detach()

    def _warp(self, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != grid.shape[-3:-1]:
            raise ValueError(
                f"warp trigger built for {tuple(grid.shape[-3:-1])} images, got {tuple(images.shape[-2:])}"
            )
        return F.grid_sample(images, grid.to(images), mode="bilinear", padding_mode="border", align_corners=True)

    def apply_one(self, images: torch.Tensor, index: int, strength: torch.Tensor | None = None) -> torch.Tensor:
        """Warp ``images`` by candidate ``index``; ``strength`` ``[B]`` scales each image's displacement."""
        grid = self.sampling_grid()[index : index + 1].expand(images.shape[0], -1, -1, -1)
        if strength is not None:
            identity = self.identity.unsqueeze(0)
            grid = identity + strength.view(-1, 1, 1, 1).to(grid) * (grid - identity)
        return self._warp(images, grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c, b = self.num_candidates, images.shape[0]
        grid = self.sampling_grid().unsqueeze(1).expand(-1, b, -1, -1, -1).flatten(0, 1)
        stacked = images.unsqueeze(0).expand(c, -1, -1, -1, -1).flatten(0, 1)
        return self._warp(stacked, grid).view(c, b, *images.shape[1:])

    def select(self, indices: list[int]) -> WarpTrigger:
        new = WarpTrigger(len(indices), self.image_size, self.max_shift, self.grid)
        with torch.no_grad():
            new.raw.copy_(self.raw[indices])
        return new.to(self.raw.device)

    def describe(self, index: int) -> dict[str, Any]:
        return {"family": self.family, "grid": self.grid, "max_shift": self.max_shift,
                "mean_shift_pixels": float(self.size()[index])}


def build_image_trigger(
    family: str, num_candidates: int, image_size: tuple[int, int], epsilon: float = 16 / 255,
    generator: torch.Generator | None = None, warp_max_shift: float = WARP_MAX_SHIFT,
) -> ImageTriggerFamily:
    """A trigger family by name: ``"mask"``, ``"additive"`` or ``"warp"``."""
    if family == "mask":
        return MaskPatternTrigger(num_candidates, image_size, generator)
    if family == "additive":
        return AdditiveTrigger(num_candidates, image_size, epsilon, generator)
    if family == "warp":
        return WarpTrigger(num_candidates, image_size, max_shift=warp_max_shift, generator=generator)
    if family == "periodic":
        raise ValueError("the periodic family has no learnable trigger; build it with PeriodicTrigger.dictionary")
    raise ValueError(f"unknown image trigger family {family!r}; use one of {IMAGE_FAMILIES}")
