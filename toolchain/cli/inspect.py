"""``sensibert inspect ARTIFACT``: per-layer heads, FFN width, parameters and FLOPs of a model."""

from __future__ import annotations

import argparse

from toolchain.cli._common import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="per-layer heads, FFN widths, parameters and FLOPs of a model or .onnx")
    p.add_argument("artifact", metavar="ARTIFACT", help="checkpoint directory or .onnx file from sensibert export")
    p.add_argument("--seq-len", type=positive_int, default=128, help="sequence length for FLOPs and --profile-run (default 128)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--profile-run", action="store_true",
                   help="run an artifact folder under onnxruntime's profiler and report time per operator type")
    from deploy.cli import add_ops_args

    add_ops_args(p.add_argument_group("--profile-run settings"), artifact=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from toolchain.cli._common import print_json
    from toolchain.inspect_artifact import format_table, inspect

    if args.profile_run:  # the same profile as `sensibert-deploy ops` on the device
        from deploy.cli import run_ops

        return run_ops(args)

    report = inspect(args.artifact, seq_len=args.seq_len)
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_table(report))
    return 0
