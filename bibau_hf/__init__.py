"""bibau_hf: Blind Inversion - Backdoor Adversarial Unlearning for CLIP-like models."""

__version__ = "0.1.0"
