"""The ``sensibert`` command: one subcommand per stage, each a thin module in this package.

A subcommand module defines ``register(subparsers)`` (adding its parser with
``set_defaults(func=run)``) and ``run(args) -> int``. Heavy imports happen inside ``run`` so
that ``sensibert --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order is the order of ``sensibert --help``.
COMMANDS = ("profiles", "budget", "analyze", "plan", "finetune", "shrink", "export", "inspect",
            "run", "sweep")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    from deploy.cli import Parser
    from toolchain import __version__

    parser = Parser(prog="sensibert", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sensibert {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' own output (warnings, logs, their progress bars)")
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
    args = list(argv) if argv is not None else sys.argv[1:]
    if "--verbose" not in args:
        quiet_libraries()
    return dispatch(build_parser(), args, interrupted="interrupted; re-run the same command to resume")


def quiet_libraries() -> None:
    """Keep the console to our lines: the libraries' warnings, info logs and their own progress
    bars (tokenising, loading) off; ours (one per long stage, with an ETA) stay."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("transformers", "datasets", "optimum", "onnxruntime", "torch", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
