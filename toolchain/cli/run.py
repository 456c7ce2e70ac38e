"""``sensibert run``: one command from model and device to a measured artifact."""

from __future__ import annotations

import argparse

from deploy.int8 import INT8_VARIANTS

from toolchain.calibration import DEFAULT_SELECTION, SELECTIONS
from toolchain.cli._common import add_carve_args, add_validation_arg, positive_int
from toolchain.pipeline import PAPER, RETRAIN_FREE, TEACHER_FIRST


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Add the flags shared by ``run`` and ``sweep``."""
    p.add_argument("--model", default=None, metavar="DIR", help="local BERT directory (default: packaged MiniLM-L6)")
    p.add_argument("--task", default="sst2", help="sst2, qnli, mnli, qqp or squad (default sst2)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="GLUE TSV folder (default: $SENSIBERT_DATA_DIR, then the sst2 demo set)")
    p.add_argument("--profile", default="rpi4-4gb", help="device profile id or file (default rpi4-4gb)")
    p.add_argument("--latency-ms", type=float, default=None, help="override the profile's latency target")
    p.add_argument("--seq-len", type=positive_int, default=None, help="budget sequence length (default: profile's)")
    p.add_argument("--precision", choices=["fp32", "int8"], default=None, help="deployed precision (default: profile's)")
    p.add_argument("--teacher", default="dense", metavar="dense|none|DIR",
                   help="dense (default): fine-tune the dense model first, read sensitivity from it, start "
                        "trimming from its weights and distil from it; none: the paper's mode (pre-trained "
                        "start, no teacher); DIR: distil from this fine-tuned classifier instead")
    p.add_argument("--distill-hidden", type=float, default=1.0,
                   help="weight of the hidden-state distillation term (default 1; 0: logits only)")
    p.add_argument("--no-finetune", action="store_true",
                   help="retraining-free mode for a --model already fine-tuned on the task (Fisher mask search, "
                        "mask rearrangement, least-squares scales; no gradient step on the weights)")
    p.add_argument("--calibration-samples", type=positive_int, default=2048,
                   help="retraining-free: task examples for Fisher and least squares (default 2048)")
    p.add_argument("--method", choices=["density", "fisher"], default=None,
                   help=f"sensitivity method (default: {TEACHER_FIRST['method']}, or {PAPER['method']} with --teacher none)")
    p.add_argument("--sensitivity-steps", type=positive_int, default=100, help="steps of the sensitivity analysis")
    p.add_argument("--allocation", default=None,
                   help=f"proportional, balanced, uniform, global or latency (default: {TEACHER_FIRST['allocation']}; "
                        f"{PAPER['allocation']} with --teacher none; {RETRAIN_FREE['allocation']} with --no-finetune)")
    from toolchain.costs import COST_MODELS

    p.add_argument("--cost-model", choices=list(COST_MODELS), default=COST_MODELS[0],
                   help="what prices each plan: flops (default), or latency: the --profile's measured latency table "
                        "(sensibert-deploy calibrate --latency-table); --allocation latency implies it")
    p.add_argument("--min-keep", type=float, default=0.0, help="smallest keep fraction of any group")
    p.add_argument("--round-to", type=positive_int, default=1, help="FFN widths in multiples of N")
    p.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs (default 2)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--max-length", type=positive_int, default=128,
                   help="truncate inputs to N tokens (squad: the window length, e.g. 384)")
    p.add_argument("--doc-stride", type=int, default=None,
                   help="squad: tokens of overlap between windows of a long context (default min(128, max-length/2))")
    p.add_argument("--max-train-samples", type=positive_int, default=None, help="fixed random training subset")
    p.add_argument("--max-eval-samples", type=positive_int, default=None, help="fixed random dev subset")
    p.add_argument("--vocab", choices=["full", "task"], default="full",
                   help="task: keep only the word pieces the task's training texts use (plus special and "
                        "single-character pieces) in the trimmed artifact's embedding table")
    p.add_argument("--int8-variant", default=None, choices=list(INT8_VARIANTS),
                   help="int8 variant shipped (default: the profile's runtime.int8_variant, else mixed: "
                        "measured per matmul on training inputs); static-qdq calibrates on them")
    p.add_argument("--calibration-selection", default=DEFAULT_SELECTION, choices=sorted(SELECTIONS),
                   help="which training inputs calibrate int8 (static ranges, mixed precision's probes): the "
                        "first ones, or length-spread (evenly spaced token lengths)")
    p.add_argument("--qat", action="store_true",
                   help="a short quantisation-aware phase on the trimmed model before export (int8 only)")
    add_carve_args(p)
    add_validation_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-dense-baseline", action="store_true", help="skip fine-tuning the untrimmed baseline")
    p.add_argument("--bench-runs", type=positive_int, default=30, help="timed runs per artifact")
    p.add_argument("--out", default="runs/latest", metavar="DIR", help="output folder (default runs/latest)")
    p.add_argument("--force", action="store_true", help="redo every stage; replace another run's files in --out")


def config_from_args(args: argparse.Namespace, **extra):
    """Return the RunConfig the flags describe."""
    from toolchain.pipeline import RunConfig

    return RunConfig(
        out=args.out, model=args.model, task=args.task, data_dir=args.data_dir, profile=args.profile,
        latency_ms=args.latency_ms, seq_len=args.seq_len, precision=args.precision, method=args.method,
        sensitivity_steps=args.sensitivity_steps, allocation=args.allocation, cost_model=args.cost_model,
        min_keep=args.min_keep,
        round_to=args.round_to, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        max_length=args.max_length, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, seed=args.seed, dense_baseline=not args.no_dense_baseline,
        bench_runs=args.bench_runs, force=args.force, teacher=args.teacher, distill_hidden=args.distill_hidden,
        finetune=not args.no_finetune, calibration_samples=args.calibration_samples,
        train_from=args.train_from, holdout_by=args.holdout_by, eval_fraction=args.eval_fraction,
        validation_fraction=args.validation_fraction,
        doc_stride=args.doc_stride, vocab=args.vocab, int8_variant=args.int8_variant, qat=args.qat,
        calibration_selection=args.calibration_selection, **extra)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole pipeline: analyse, plan, fine-tune, shrink, export, measure, report")
    add_run_args(p)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--keep", type=float, default=None, help="explicit budget: fraction of trimmable params")
    budget.add_argument("--params", type=positive_int, default=None, help="explicit budget: total parameters")
    budget.add_argument("--flops", type=positive_int, default=None, help="explicit budget: FLOPs at --seq-len")
    p.add_argument("--max-attempts", type=positive_int, default=3,
                   help="closed loop: how many times to tighten and redo when a target is missed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from toolchain.pipeline import run as run_pipeline

    report = run_pipeline(config_from_args(args, keep=args.keep, params=args.params, flops=args.flops,
                                           max_attempts=args.max_attempts))
    from toolchain.report import describe_mode, headline, int8_not_shipped, verdict

    print(f"[sensibert run] made by: {describe_mode(report['mode'])}")
    if report["data"].get("carved"):
        print(f"[sensibert run] data: carved from the {report['data']['train_from']} file by "
              f"{report['data']['holdout_by']} (not comparable to official-split results)")
    print(f"[sensibert run] artifact {report['artifact']}")
    print(f"[sensibert run] report {args.out}/report.md; {headline(report)}")
    print(f"[sensibert run] {verdict(report)}")
    if report.get("int8_refused") and report["precision"] == "fp32":  # the last line says why, and what to try
        print(f"[sensibert run] {int8_not_shipped(report['int8_refused'])}")
    return 0 if report["target_met"] else 1
