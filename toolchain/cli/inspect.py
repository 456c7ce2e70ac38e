"""``sensibert inspect ARTIFACT``: per-layer heads, FFN width, parameters and FLOPs of a model."""

from __future__ import annotations

import argparse

from toolchain.cli._common import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="per-layer heads, FFN widths, parameters and FLOPs of a model or .onnx")
    p.add_argument("artifact", metavar="ARTIFACT", help="checkpoint directory or .onnx file from sensibert export")
    p.add_argument("--seq-len", type=positive_int, default=128, help="sequence length for FLOPs (default 128)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from toolchain.cli._common import print_json
    from toolchain.inspect_artifact import format_table, inspect

    report = inspect(args.artifact, seq_len=args.seq_len)
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_table(report))
    return 0
