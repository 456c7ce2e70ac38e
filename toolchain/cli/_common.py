"""Helpers shared by the subcommands: flag definitions and argument loading, defined once."""

from __future__ import annotations

import argparse
import json
from typing import Any

from deploy.cli import whole_number


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="local Hugging Face BERT directory (default: the packaged MiniLM-L6)")


def add_data_args(parser: argparse.ArgumentParser, task_required: bool = True) -> None:
    parser.add_argument("--task", required=task_required, default=None if task_required else "sst2",
                        help="task name: sst2, qnli, mnli, qqp, squad")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder of GLUE-format TSV files (default: $SENSIBERT_DATA_DIR, then the demo set)")
    parser.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens")
    parser.add_argument("--max-train-samples", type=int, default=None, help="use a fixed random subset")
    parser.add_argument("--max-eval-samples", type=int, default=None, help="use a fixed random subset")
    parser.add_argument("--doc-stride", type=int, default=None,
                        help="squad: tokens of overlap between context windows (default min(128, max-length/2))")
    add_carve_args(parser)


positive_int = whole_number(1)  # argparse type: a whole number > 0


def add_carve_args(parser: argparse.ArgumentParser) -> None:
    """Flags that carve train and eval splits out of one labelled file, disjoint by a key."""
    parser.add_argument("--train-from", choices=["train", "dev"], default="train",
                        help="file the training rows come from (dev: carve both splits out of the dev file; "
                             "needs --holdout-by; results are labelled carved)")
    parser.add_argument("--holdout-by", default=None, metavar="KEY",
                        help="key kept disjoint between carved splits: a text column (question, premise, "
                             "sentence) or, for squad, article, context or question")
    parser.add_argument("--eval-fraction", type=float, default=0.2,
                        help="share of the key's values held out for eval when carving (default 0.2)")


def add_validation_arg(parser: argparse.ArgumentParser) -> None:
    """The flag of the commands that fine-tune: which split may choose a checkpoint."""
    parser.add_argument("--validation-fraction", type=float, default=0.0, metavar="F",
                        help="carve this share of the training texts (by the first text field) as a "
                             "validation split that chooses the best epoch; the eval split only reports "
                             "(default 0: the last checkpoint is kept)")


def carve_from_args(args: argparse.Namespace) -> Any:
    """Return the CarveConfig the carving flags describe, or None (checked before any work)."""
    from toolchain.tasks import CarveConfig
    from toolchain.errors import InputError

    if args.holdout_by is None:
        if args.train_from != "train":
            raise InputError(f"--train-from {args.train_from} carves splits out of one file and needs --holdout-by KEY")
        return None
    return CarveConfig(by=args.holdout_by, eval_fraction=float(args.eval_fraction), source_split=args.train_from)


def doc_stride_from_args(args: argparse.Namespace) -> int:
    """Return the QA window overlap the flags give (default ``deploy.qa.default_doc_stride``)."""
    stride = getattr(args, "doc_stride", None)
    from deploy.qa import default_doc_stride

    return stride if stride is not None else default_doc_stride(args.max_length)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))
