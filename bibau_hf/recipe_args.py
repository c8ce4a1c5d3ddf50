"""Command-line parsing shared by the recipes: ``HfArgumentParser`` plus ``--config file.yaml``.

Values from the YAML file are defaults; flags given on the command line override them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import BIBAUError


def parse_recipe_args(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    description: str | None = None,
) -> tuple[Any, ...]:
    """Parse ``argv`` into instances of ``dataclass_types``, reading ``--config file.yaml`` first if given.

    Args:
        dataclass_types: the argument dataclasses, in the order their instances are returned.
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: program name shown by ``--help`` (default: the script's name).
        description: text shown by ``--help`` above the arguments.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(list(dataclass_types), prog=prog, description=description)
    # Declared for --help only: the option is taken out of argv below, before the dataclasses are parsed, and
    # SUPPRESS keeps it out of the parsed namespace (which must hold dataclass fields only).
    parser.add_argument(
        "--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
        help="YAML file of argument values; they act as defaults, and flags given on the command line override them.",
    )
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
        known = {f.dest for f in parser._actions} - {"config", "help"}
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
