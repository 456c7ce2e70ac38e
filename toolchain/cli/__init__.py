"""The ``sensibert`` command: one subcommand per stage, each a thin module in this package.

A subcommand module defines ``register(subparsers)`` (adding its parser with
``set_defaults(func=run)``) and ``run(args) -> int``. Heavy imports happen inside ``run`` so
that ``sensibert --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from deploy.errors import SensibertError

# Order is the order of ``sensibert --help``.
COMMANDS = ("profiles", "budget", "analyze", "plan", "finetune", "shrink", "export", "inspect",
            "run", "sweep")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    from toolchain import __version__

    parser = argparse.ArgumentParser(prog="sensibert", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sensibert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"toolchain.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"toolchain.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a SensibertError becomes one ``error: ...`` line and exit code 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SensibertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
