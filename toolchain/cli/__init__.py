"""The ``sensibert`` command: one subcommand per stage, each a thin module in this package.

A subcommand module defines ``register(subparsers)`` (adding its parser with
``set_defaults(func=run)``) and ``run(args) -> int``. Heavy imports happen inside ``run`` so
that ``sensibert --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os

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
    """Run the ``sensibert`` CLI; a SensibertError becomes one ``error: ...`` line and exit code 2."""
    from deploy.cli import dispatch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return dispatch(build_parser(), argv, interrupted="interrupted; re-run the same command to resume")
