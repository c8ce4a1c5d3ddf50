"""The suspect model's outputs on the clean pairs, computed once per pair and reused by every M-step.

The M-step's retention prior and representation invariance compare the model being trained with the frozen suspect
model on the *clean* inputs. Those inputs never change (the trainer's collator does no augmentation) and neither does
the suspect model, so its outputs are a function of the pair's index: computing them afresh each step would cost one
extra image and text forward per step for nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ReferenceFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


class ReferenceOutputCache:
    """Per-pair outputs of a frozen model, filled lazily: a batch computes only the pairs not seen before.

    Args:
        size: number of pairs (indices run over ``range(size)``).
        compute: the frozen model's outputs for a batch, ``(pixel_values, input_ids) -> {name: [B, ...] or
            [layers, B, ...]}``; ``image_class_states`` is the one output batched along its second dimension.
    """

    BATCH_SECOND = ("image_class_states",)

    def __init__(self, size: int, compute: ReferenceFn) -> None:
        self.size = int(size)
        self.compute = compute
        self._store: dict[str, torch.Tensor] = {}
        self._filled: torch.Tensor | None = None
        self.forwarded = 0  # pairs computed so far (each at most once)

    def __call__(self, index: torch.Tensor, pixel_values: torch.Tensor, input_ids: torch.Tensor):
        """The outputs for the batch's pairs ``index``, in batch order."""
        index = index.long()
        if self._filled is None:
            self._filled = torch.zeros(self.size, dtype=torch.bool, device=index.device)
        missing = ~self._filled[index]
        if bool(missing.any()):
            rows = missing.nonzero().flatten()
            with torch.no_grad():
                fresh = self.compute(pixel_values[rows], input_ids[rows])
            for name, value in fresh.items():
                if value.dim() == 0:  # scalars such as the logit scale are not per pair
                    continue
                second = name in self.BATCH_SECOND
                if name not in self._store:
                    shape = (value.shape[0], self.size, *value.shape[2:]) if second else (self.size, *value.shape[1:])
                    self._store[name] = torch.empty(shape, dtype=value.dtype, device=value.device)
                if second:
                    self._store[name][:, index[rows]] = value.detach()
                else:
                    self._store[name][index[rows]] = value.detach()
            self._filled[index[rows]] = True
            self.forwarded += len(rows)
        return {name: (value[:, index] if name in self.BATCH_SECOND else value[index])
                for name, value in self._store.items()}


__all__ = ["ReferenceOutputCache"]
