"""Plain clean fine-tuning: the CLIP loss on the defender's clean pairs, nothing else (superficial safety).

The implementation is the library's own :func:`bibau_hf.clean_pipeline.clean_finetune`, the one the cleaning recipe
times BI-BAU against: it takes BI-BAU's config and uses its pairs, epochs, batch size, learning rate and schedule.
It is re-exported here so every method of the benchmark is found in one place.
"""

from __future__ import annotations

from bibau_hf.clean_pipeline import clean_finetune

__all__ = ["clean_finetune"]
