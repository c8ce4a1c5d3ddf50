"""The defenses BI-BAU is benchmarked against, each written from its paper, all under BI-BAU's training budget.

``benchmarks/`` is not part of the installed package: put ``benchmarks/`` on ``sys.path`` (as the benchmark scripts
and ``tests/test_baselines.py`` do) and ``import baselines``.
"""

from .bibau_variants import ALIASES, VARIANTS, run_bibau, variant_config
from .clean_finetune import clean_finetune
from .cleanclip import augment_captions, augment_images, cleanclip, in_modal_loss
from .common import Batch, Budget, train_with_budget
from .ibau import IBAUResult, class_embeddings, ibau, universal_pgd

__all__ = [
    "ALIASES",
    "Batch",
    "Budget",
    "IBAUResult",
    "VARIANTS",
    "augment_captions",
    "augment_images",
    "class_embeddings",
    "clean_finetune",
    "cleanclip",
    "ibau",
    "in_modal_loss",
    "run_bibau",
    "train_with_budget",
    "universal_pgd",
    "variant_config",
]
