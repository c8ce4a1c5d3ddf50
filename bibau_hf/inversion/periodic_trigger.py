"""A dictionary of periodic image triggers (2-D sinusoids), searched exhaustively instead of by gradient descent.

SIG-style backdoors (a faint sinusoid or other periodic signal added to the whole image) answer only near the
attacker's amplitude, and a gradient search from noise in an L∞ ball does not fall into that narrow basin: within a
small ball it reaches nothing, within a large one it reaches every concept through adversarial noise
(docs/METHOD_NOTES.md §22, §25). A periodic trigger has few degrees of freedom, though, so every one can be tried: the
family is a fixed dictionary of sinusoids with whole numbers of periods across the image, in every direction and
two phases, all at one amplitude. Its "sweep" is a forward pass per atom, and the cost of reaching concept k is the
cheapest atom's cross-entropy toward k; the anomaly score and the gates then read it like any other family's.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .image_trigger import ImageTriggerFamily

PERIODIC_AMPLITUDE = 0.1
"""Default amplitude of the periodic family's sinusoids, in image units ([0, 1]); see ``BIBAUConfig``."""
PERIODIC_MAX_FREQUENCY = 8
"""Default highest number of periods across the image along either axis."""
PHASES = (0.0, math.pi / 2)


def periodic_atoms(
    image_size: tuple[int, int], max_frequency: int = PERIODIC_MAX_FREQUENCY
) -> tuple[torch.Tensor, list[tuple[int, int, float]]]:
    """Unit-amplitude sinusoids ``sin(2π (fx·j/W + fy·i/H) + φ)`` for every direction up to ``max_frequency``.

    Each (fx, fy) with ``0 <= fx <= max_frequency`` and ``|fy| <= max_frequency`` is taken once (``fx = 0`` only with
    ``fy > 0``: the opposite direction is the same wave), at phases 0 and π/2, which any other phase is a mix of.

    Returns:
        ``[A, 1, H, W]`` signals (the same for every colour channel) and the ``(fx, fy, phase)`` of each.
    """
    if max_frequency < 1:
        raise ValueError(f"max_frequency must be >= 1, got {max_frequency}")
    h, w = image_size
    rows = torch.arange(h, dtype=torch.float32).view(h, 1) / h
    cols = torch.arange(w, dtype=torch.float32).view(1, w) / w
    signals, atoms = [], []
    for fx in range(max_frequency + 1):
        for fy in range(-max_frequency, max_frequency + 1):
            if fx == 0 and fy <= 0:
                continue
            for phase in PHASES:
                signals.append(torch.sin(2 * math.pi * (fx * cols + fy * rows) + phase))
                atoms.append((fx, fy, phase))
    return torch.stack(signals).unsqueeze(1), atoms


class PeriodicTrigger(ImageTriggerFamily):
    """T(x) = clip(x + a · s, 0, 1) for fixed sinusoids s (one per candidate) at amplitude a.

    It has no parameters: :meth:`dictionary` builds every atom, and the inverter keeps the cheapest atom per concept.
    """

    family = "periodic"

    def __init__(
        self, signals: torch.Tensor, amplitude: float, atoms: list[tuple[int, int, float]]
    ) -> None:
        super().__init__(len(signals), tuple(signals.shape[-2:]))
        if len(atoms) != len(signals):
            raise ValueError(f"{len(signals)} signals but {len(atoms)} atom descriptions")
        self.amplitude = float(amplitude)
        self.atoms = list(atoms)
        self.register_buffer("signals", signals.detach().clone())

    @classmethod
    def dictionary(
        cls, image_size: tuple[int, int], amplitude: float = PERIODIC_AMPLITUDE,
        max_frequency: int = PERIODIC_MAX_FREQUENCY,
    ) -> PeriodicTrigger:
        """Every atom of :func:`periodic_atoms` as one candidate."""
        signals, atoms = periodic_atoms(image_size, max_frequency)
        return cls(signals, amplitude, atoms)

    def prior_cost(self) -> torch.Tensor:
        # The amplitude is fixed, so every atom is equally likely a priori.
        return torch.zeros(self.num_candidates, device=self.signals.device)

    def size(self) -> torch.Tensor:
        return torch.full((self.num_candidates,), self.amplitude)

    def apply_one(self, images: torch.Tensor, index: int, strength: torch.Tensor | None = None) -> torch.Tensor:
        """Add candidate ``index``'s sinusoid to ``images``; ``strength`` ``[B]`` scales each image's amplitude."""
        signal = self.amplitude * self.signals[index].to(images.device, images.dtype)
        if strength is not None:
            signal = strength.view(-1, 1, 1, 1).to(signal) * signal
        return (images + signal).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        signals = self.amplitude * self.signals.to(images.device, images.dtype)
        return (images.unsqueeze(0) + signals.unsqueeze(1)).clamp(0, 1)

    def select(self, indices: list[int]) -> PeriodicTrigger:
        return PeriodicTrigger(self.signals[indices], self.amplitude, [self.atoms[i] for i in indices])

    def describe(self, index: int) -> dict[str, Any]:
        fx, fy, phase = self.atoms[index]
        return {"family": self.family, "amplitude": self.amplitude, "periods_x": fx, "periods_y": fy,
                "phase_radians": round(phase, 4)}
