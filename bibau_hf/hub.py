"""Publish a bibau_hf output folder on the Hugging Face Hub: the native model, its card, report, triggers and plots.

What goes up is chosen by an allow-list, not a deny-list: weights only as safetensors, configs and tokenizer files,
``README.md``, ``unlearning_report.json``, ``inverted_triggers.safetensors``, ``plots/*.png`` and an optional
``lora_adapter/``. Pickles (``*.bin``, ``*.pt``, ``*.pth``, ``training_args.bin``, optimizer states), code and
``checkpoint-*/`` folders never leave the machine: whoever downloads a *purified* model must not have to trust a
pickle to use it.

The folder must hold a model in native format, so that the Hub repo loads with plain
``CLIPModel.from_pretrained(repo)`` or ``open_clip.create_model_and_transforms("hf-hub:" + repo)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import HubError, ModelFormatError, UnsafeCheckpointError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

# File names of the native formats (the same as bibau_hf.models uses; kept here so that pushing does not import
# torch). open_clip's "hf-hub:" loader reads exactly these two names.
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
MODEL_CARD = "README.md"
REPORT_FILE = "unlearning_report.json"
TRIGGERS_FILE = "inverted_triggers.safetensors"
PLOTS_DIR = "plots"
LORA_DIR = "lora_adapter"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy")
# Top-level files that may be published, by suffix (weights, configs, tokenizer vocabularies and merges,
# sentencepiece models, which are protobuf, not pickle).
_TOP_LEVEL_SUFFIXES = (".safetensors", ".json", ".txt", ".model")
_LORA_SUFFIXES = (".safetensors", ".json")

DEFAULT_COMMIT_MESSAGE = "Upload model purified with BI-BAU (bibau_hf)"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path} must hold a JSON object")
    return value


def _pickles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)


def _refuse_missing_weights(folder: Path, expected: str, backend: str) -> None:
    pickles = _pickles(folder)
    if pickles:
        raise UnsafeCheckpointError(
            f"{folder} has no {expected}, only pickle checkpoints ({', '.join(pickles)}). bibau_hf publishes "
            "safetensors only, because a pickle runs code when loaded. Save the model in native format first "
            "(adapter.save_native(dir), or model.save_pretrained(dir, safe_serialization=True))."
        )
    raise ModelFormatError(
        f"{folder} looks like a {backend} model but has no {expected}; push the folder written by bibau_hf "
        "(BIBAUTrainer.save_model or adapter.save_native) after it finished saving."
    )


def check_native_folder(folder: str | Path) -> str:
    """Check that ``folder`` holds a model in native format and say which: ``"hf"`` or ``"open_clip"``.

    transformers: ``config.json`` and ``model.safetensors`` (or a safetensors index with all its shards).
    open_clip: ``open_clip_config.json`` with ``model_cfg``, and ``open_clip_model.safetensors`` — what
    ``open_clip.create_model_and_transforms("hf-hub:...")`` reads.

    Raises:
        ModelFormatError: the folder is missing, or is not a native model.
        UnsafeCheckpointError: its only weights are pickles.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFormatError(f"{folder} is not a folder; pass the output folder of a bibau_hf run")
    if (folder / OPEN_CLIP_CONFIG).is_file():
        config = _read_json(folder / OPEN_CLIP_CONFIG)
        if not isinstance(config.get("model_cfg"), dict):
            raise ModelFormatError(
                f"{folder / OPEN_CLIP_CONFIG} lacks 'model_cfg'; open_clip's hf-hub loader needs it to build the "
                "model. Re-save the model with bibau_hf (adapter.save_native)."
            )
        if not (folder / OPEN_CLIP_WEIGHTS).is_file():
            _refuse_missing_weights(folder, OPEN_CLIP_WEIGHTS, "open_clip")
        return "open_clip"
    if (folder / HF_CONFIG).is_file():
        _read_json(folder / HF_CONFIG)
        if (folder / HF_WEIGHTS).is_file():
            return "hf"
        if (folder / HF_WEIGHTS_INDEX).is_file():
            shards = set(_read_json(folder / HF_WEIGHTS_INDEX).get("weight_map", {}).values())
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if not shards or missing:
                raise ModelFormatError(f"{folder} has a sharded safetensors index but lacks shards: {missing}")
            return "hf"
        _refuse_missing_weights(folder, HF_WEIGHTS, "transformers")
    pickles = _pickles(folder)
    if pickles:
        raise UnsafeCheckpointError(
            f"{folder} holds only pickle files ({', '.join(pickles)}) and no native model; bibau_hf never publishes "
            "pickles. Push a folder written by bibau_hf (config + *.safetensors)."
        )
    raise ModelFormatError(
        f"{folder} holds neither {HF_CONFIG} + {HF_WEIGHTS} (transformers) nor {OPEN_CLIP_CONFIG} + "
        f"{OPEN_CLIP_WEIGHTS} (open_clip); push the output folder of a bibau_hf run."
    )


def collect_push_files(folder: str | Path) -> list[str]:
    """The files of ``folder`` that may be published, as POSIX paths relative to it (sorted).

    Everything not on the allow-list is left out and logged: pickles, ``checkpoint-*/``, ``runs/``, code.
    """
    folder = Path(folder)
    chosen: list[str] = []
    skipped: list[str] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder)
        parts = rel.parts
        if any(part.startswith(".") for part in parts):
            allowed = False  # hidden files and folders (.git, .cache): never part of a model
        elif len(parts) == 1:
            allowed = rel.suffix in _TOP_LEVEL_SUFFIXES or rel.name == MODEL_CARD
        elif len(parts) == 2 and parts[0] == PLOTS_DIR:
            allowed = rel.suffix == ".png"
        elif len(parts) == 2 and parts[0] == LORA_DIR:
            allowed = rel.suffix in _LORA_SUFFIXES or rel.name == MODEL_CARD
        else:
            allowed = False
        (chosen if allowed else skipped).append(rel.as_posix())
    if skipped:
        logger.info("not uploading %d file(s) outside the allow-list: %s", len(skipped), ", ".join(skipped[:20]))
    return chosen


def default_api() -> HfApi:
    """An ``HfApi`` for the configured endpoint (``HF_ENDPOINT``), tagged with bibau_hf's name and version."""
    from huggingface_hub import HfApi

    return HfApi(library_name="bibau_hf", library_version=__version__)


def _is_hub_failure(err: BaseException) -> bool:
    """Whether ``err`` is a Hub-side or connection problem the user must fix (not a bug in bibau_hf)."""
    module = type(err).__module__.split(".")[0]
    return isinstance(err, (OSError, ValueError)) or module in ("httpx", "httpx2", "requests", "huggingface_hub")


def commit_files(
    folder: str | Path,
    files: Sequence[str],
    repo_id: str,
    *,
    path_in_repo: str = "",
    extra: Sequence[tuple[str | Path, str]] = (),
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Commit ``files`` (relative to ``folder``) plus ``extra`` ``(local file, path in repo)`` pairs in one commit.

    The repo must exist. Returns the commit URL.
    """
    from huggingface_hub import CommitOperationAdd

    api = api or default_api()
    prefix = path_in_repo.strip("/")
    operations = [
        CommitOperationAdd(path_in_repo=f"{prefix}/{rel}" if prefix else rel, path_or_fileobj=str(Path(folder) / rel))
        for rel in files
    ]
    operations += [CommitOperationAdd(path_in_repo=dest, path_or_fileobj=str(src)) for src, dest in extra]
    try:
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        # create_commit rather than upload_folder: the allow-list above decides what goes up, and one commit
        # carries it all (upload_folder may split a folder into several commits).
        info = api.create_commit(
            repo_id, operations, commit_message=commit_message or DEFAULT_COMMIT_MESSAGE, token=token,
            revision=revision,
        )
    except Exception as err:
        if not _is_hub_failure(err):
            raise
        raise HubError(f"could not push to {repo_id!r} on {api.endpoint} ({type(err).__name__}: {err})") from err
    return info.commit_url


def create_repo(
    repo_id: str, *, private: bool | None = None, token: str | None = None, api: HfApi | None = None
) -> str:
    """Create the model repo ``repo_id`` if it does not exist; returns its full id (namespace included)."""
    api = api or default_api()
    try:
        return api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    except Exception as err:
        if not _is_hub_failure(err):
            raise
        raise HubError(
            f"could not create or reach the repo {repo_id!r} on {api.endpoint} ({type(err).__name__}: {err}). "
            "Check the repo id, your token (HF_TOKEN or --token) and that HF_HUB_OFFLINE is not set."
        ) from err


def push_output_dir(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Push a bibau_hf output folder to a Hub model repo (created if needed), in one commit.

    Uploads the native model files (weights as safetensors, configs, tokenizer and processor files), ``README.md``,
    ``unlearning_report.json``, ``inverted_triggers.safetensors``, ``plots/*.png`` and ``lora_adapter/`` where
    present; never a pickle, never ``checkpoint-*/``.

    Args:
        folder: the output folder (``BIBAUConfig.output_dir`` of a finished run, or any folder written by
            ``adapter.save_native``).
        repo_id: ``namespace/name`` of the model repo (a bare name goes to the token owner's namespace).
        private: create the repo private (no effect on an existing repo).
        token: Hub token with write access; default: ``HF_TOKEN`` or the saved login.
        revision: branch to commit to (created from ``main`` if missing); default ``main``.
        commit_message: the commit's summary.
        api: the ``HfApi`` to use (e.g. with a custom endpoint); default: one for ``HF_ENDPOINT``.

    Returns:
        The URL of the commit.

    Raises:
        ModelFormatError: ``folder`` is not a native model (see :func:`check_native_folder`).
        UnsafeCheckpointError: its only weights are pickles.
        HubError: the Hub refused or could not be reached.
    """
    folder = Path(folder)
    backend = check_native_folder(folder)
    files = collect_push_files(folder)
    if MODEL_CARD not in files:
        logger.warning("%s has no %s: the Hub page will be blank (`bibau-hf report %s` renders one from the report)",
                       folder, MODEL_CARD, folder)
    api = api or default_api()
    full_id = create_repo(repo_id, private=private, token=token, api=api)
    url = commit_files(folder, files, full_id, token=token, revision=revision, commit_message=commit_message, api=api)
    logger.info("pushed %d files of a %s model from %s to %s", len(files), backend, folder, url)
    return url


__all__ = ["check_native_folder", "collect_push_files", "commit_files", "create_repo", "push_output_dir"]
