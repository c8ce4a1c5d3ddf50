"""Command-line parsing shared by the recipes: ``HfArgumentParser`` plus ``--config file.yaml``.

Values from the YAML file are defaults; flags given on the command line override them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import BIBAUError


def parse_recipe_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``argv`` into instances of ``dataclass_types``, reading ``--config file.yaml`` first if given."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(list(dataclass_types))
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise BIBAUError("--config needs a path to a YAML file")
        config_path = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise BIBAUError(f"config file {path} not found")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise BIBAUError(f"{path} must hold a mapping of argument names to values")
        known = {f.dest for f in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BIBAUError(f"{path} has unknown arguments: {', '.join(unknown)}")
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=argv)


def run_main(main_fn, argv: Sequence[str] | None = None) -> int:
    """Run a recipe's ``main``; turn user errors into one line on stderr and exit status 2 (no stack trace)."""
    try:
        main_fn(argv)
    except BIBAUError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
