"""Backdoor attacks: triggers (image and text) and dataset poisoning."""

from bibau_hf.attacks.poison import PoisonResult, poison_pairs
from bibau_hf.attacks.triggers import (
    BadNetsTrigger,
    BlendedTrigger,
    FunctionTrigger,
    SIGTrigger,
    TextTrigger,
    Trigger,
    WaNetTrigger,
    available_triggers,
    build_trigger,
    register_trigger,
)

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
    "PoisonResult",
    "poison_pairs",
]
