"""Exceptions raised by bibau_hf.

Every error a user can trigger with bad input derives from :class:`BIBAUError`, so callers (and the command line)
can tell "you gave me something wrong" apart from a bug, and every message says what to do about it.
"""


class BIBAUError(Exception):
    """Base class for all user-facing bibau_hf errors."""


class UnsafeCheckpointError(BIBAUError):
    """A checkpoint would have to be unpickled (``.bin``/``.pt``/``.pth``); only safetensors are read."""


class ModelFormatError(BIBAUError):
    """A model folder or Hub id is not a transformers CLIP or open_clip model in native format."""


class DataError(BIBAUError):
    """A dataset is missing, malformed, or lacks a required column."""


class AttackSpecError(BIBAUError):
    """An attack/trigger specification is unknown or invalid."""


class OutputDirError(BIBAUError):
    """The output folder exists and is not empty, and overwriting was not asked for."""


class HubError(BIBAUError):
    """A push to (or a read from) the Hugging Face Hub failed: repo id, token, permissions or network."""
