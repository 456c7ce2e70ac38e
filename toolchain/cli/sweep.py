"""``sensibert sweep``: the same run at several budgets sharing one sensitivity analysis."""

from __future__ import annotations

import argparse

from toolchain.cli.run import add_run_args, config_from_args


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions like 0.3,0.5,0.7, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="runs at several keep fractions; Pareto table and plot")
    p.add_argument("--budgets", type=_fractions, required=True, help="keep fractions, e.g. 0.3,0.5,0.7")
    add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from toolchain.pipeline import sweep

    body = sweep(config_from_args(args), args.budgets)
    for row in body["rows"]:
        print(f"{row['name']:<10} acc {100 * row['accuracy_onnx']:.2f}%  host p50 {row['host_p50_ms']:.2f} ms"
              f"{'  (Pareto)' if row['pareto'] else ''}")
    print(f"wrote {args.out}/sweep.md")
    return 0
