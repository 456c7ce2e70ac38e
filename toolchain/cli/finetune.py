"""``sensibert finetune``: stage 3, fine-tune on a task while masks ramp down to the plan.

Writes a directory: the masked model (safetensors), tokenizer, masks.json, plan.json,
metrics.json and train_log.jsonl. Runs unchanged under ``torchrun`` / ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import os

from toolchain.cli._common import (add_data_args, add_model_arg, add_validation_arg, carve_from_args,
                                   doc_stride_from_args, positive_int)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="stage 3: fine-tune with head/FFN masks ramped down to a plan")
    add_model_arg(p)
    add_data_args(p)
    add_validation_arg(p)
    p.add_argument("--plan", required=True, metavar="FILE", help="plan.json from sensibert plan")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    p.add_argument("--epochs", type=float, default=3.0, help="training epochs (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="global batch size (default 32)")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW peak learning rate (default 5e-5)")
    p.add_argument("--warmup-ratio", type=float, default=0.06, help="share of steps of linear warm-up")
    p.add_argument("--ramp-fraction", type=float, default=0.3,
                   help="share of steps over which masks fall from dense to the plan (default 0.3)")
    p.add_argument("--importance", default="fisher",
                   help="unit ranking during the ramp: fisher (EMA of squared mask gradients; default) or norm")
    p.add_argument("--teacher", default=None, metavar="DIR",
                   help="dense classifier fine-tuned on the task to distil from (off by default)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation KL term (with --teacher)")
    p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (with --teacher)")
    p.add_argument("--distill-hidden", type=float, default=1.0,
                   help="weight of the hidden-state term (relative error, layer by layer; with --teacher; 0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from toolchain.errors import InputError
    from toolchain.finetune import FinetuneConfig, check_plan, finetune
    from toolchain.masks import get_importance
    from toolchain.models import load_task_model, load_teacher, load_tokenizer, model_hash, resolve_model_dir
    from toolchain.plan import Plan
    from toolchain.tasks import get_task, load_task_data
    from toolchain.tasks.base import check_validation_fraction

    get_importance(args.importance)  # refuse an unknown name before loading anything
    try:
        config = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                warmup_ratio=args.warmup_ratio, ramp_fraction=args.ramp_fraction,
                                importance=args.importance, distill_alpha=args.alpha,
                                temperature=args.temperature, distill_hidden=args.distill_hidden,
                                seed=args.seed, progress=not args.no_progress)
    except InputError as exc:  # the config names the value; the CLI adds where to fix it
        raise InputError(f"bad setting: {exc}; fix the flag") from None
    carve = carve_from_args(args)
    check_validation_fraction(args.validation_fraction, get_task(args.task))
    path = resolve_model_dir(args.model)
    plan = Plan.load(args.plan)
    mhash = model_hash(path)  # a plan binds an architecture (checked below), not one checkpoint
    task = get_task(args.task)
    model = load_task_model(path, task, seed=args.seed)
    check_plan(model, plan)  # before the (slower) data loading
    teacher, teacher_path = None, None
    if args.teacher:
        teacher_path = resolve_model_dir(args.teacher)
        teacher = load_teacher(teacher_path, task.label_names, qa=task.qa)
    data = load_task_data(task.name, load_tokenizer(path), data_dir=args.data_dir, max_length=args.max_length,
                          max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                          seed=args.seed, need_train=True, carve=carve, doc_stride=doc_stride_from_args(args),
                          validation_fraction=args.validation_fraction)
    provenance = {"task": data.task.name, "task_kind": data.task.kind, "max_length": args.max_length,
                  "data_source": data.source, "carved": data.carved, "data_hash": data.data_hash,
                  "validation": data.validation_record, "model_dir": str(path), "model_hash": mhash,
                  "teacher_hash": model_hash(teacher_path) if teacher_path else "",
                  **task.handler.provenance(data)}  # QA: the window stride the exporter reads
    result = finetune(model, plan, data.train, data.eval, data.collator, config, args.out, teacher=teacher,
                      provenance=provenance, scorer=data.scorer(), label_keys=data.label_keys,
                      validation=data.validation, validation_scorer=data.validation_scorer())
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun the main process reports
    accs = ", ".join(f"{a:.4f}" for a in result.dev_accuracy)
    chose = "chosen on validation" if data.validation is not None else "the last"
    print(f"dev accuracy per epoch: {accs}; kept {result.best_accuracy:.4f} (epoch {result.best_epoch:g}, "
          f"{chose}), {result.steps} steps, {result.wall_time_s:.1f} s")
    print(f"kept heads {list(result.masks.heads)}, FFN {list(result.masks.ffn)}")
    print(f"wrote {result.out_dir}")
    return 0
