"""``sensibert shrink MASKED_DIR --out DIR``: stage 4, cut masked heads and neurons out for good."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shrink", help="stage 4: remove masked heads/neurons; write a smaller checkpoint")
    p.add_argument("masked_dir", metavar="MASKED_DIR", help="directory written by sensibert finetune")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest logit difference allowed against the masked model (default 1e-4)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from toolchain.cli._common import print_json
    from toolchain.shrink import shrink_dir

    report = shrink_dir(args.masked_dir, args.out, atol=args.atol)
    if args.json:
        print_json(report.to_dict())
        return 0
    print(f"wrote {report.out_dir}: heads {list(report.heads)}, FFN {list(report.ffn)}")
    print(f"  parameters {report.params_before:,} -> {report.params_after:,} "
          f"(encoder {report.encoder_params_after:,}); logits max abs diff vs masked "
          f"{report.max_abs_diff:.2g} (limit {report.tolerance:g})")
    return 0
