"""The E-step: blind inversion of image/text triggers, target posterior, backdoor score, and ``scan``."""

from .blind_inversion import (
    CONFIDENCE_GAP_THRESHOLD,
    IMAGE_THRESHOLD,
    PERIODIC_THRESHOLD,
    TEXT_THRESHOLD,
    BlindInverter,
    InversionConfig,
    InvertedTrigger,
    ScanResult,
    gate_threshold,
    passes_gates,
    scan,
    text_vetoed_families,
)
from .image_trigger import (
    IMAGE_FAMILIES,
    WARP_MAX_SHIFT,
    AdditiveTrigger,
    ImageTriggerFamily,
    MaskPatternTrigger,
    WarpTrigger,
    build_image_trigger,
)
from .patch_completion import complete_patch
from .periodic_trigger import PERIODIC_AMPLITUDE, PERIODIC_MAX_FREQUENCY, PeriodicTrigger, periodic_atoms
from .text_trigger import SoftTokenTrigger

__all__ = [
    "IMAGE_FAMILIES",
    "CONFIDENCE_GAP_THRESHOLD",
    "IMAGE_THRESHOLD",
    "PERIODIC_AMPLITUDE",
    "PERIODIC_MAX_FREQUENCY",
    "PERIODIC_THRESHOLD",
    "TEXT_THRESHOLD",
    "WARP_MAX_SHIFT",
    "AdditiveTrigger",
    "BlindInverter",
    "ImageTriggerFamily",
    "InversionConfig",
    "InvertedTrigger",
    "MaskPatternTrigger",
    "PeriodicTrigger",
    "ScanResult",
    "SoftTokenTrigger",
    "WarpTrigger",
    "build_image_trigger",
    "complete_patch",
    "gate_threshold",
    "passes_gates",
    "periodic_atoms",
    "scan",
    "text_vetoed_families",
]
