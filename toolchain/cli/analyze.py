"""``sensibert analyze``: stage 1, how sensitive each layer's attention and FFN are on a task.

Writes sensitivity.json (schema ``sensibert.sensitivity``) and a heatmap PNG beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from toolchain.cli._common import add_carve_args, add_model_arg, carve_from_args, doc_stride_from_args, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="stage 1: per-layer sensitivity of attention and FFN on a task")
    add_model_arg(p)
    p.add_argument("--task", required=True, help="task name: sst2, qnli, mnli, qqp, squad")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder of GLUE-format TSV files (default: $SENSIBERT_DATA_DIR, then the demo set)")
    p.add_argument("--method", default="density",
                   help="density (global magnitude mask during a short fine-tune; default) or fisher "
                        "(squared gradient of the loss w.r.t. unit masks)")
    p.add_argument("--density", type=float, default=0.5,
                   help="density: fraction of trimmable weights the global mask keeps (default 0.5)")
    p.add_argument("--steps", type=positive_int, default=200,
                   help="density: fine-tuning steps; fisher: batches accumulated, one pass over the data at most (default 200)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--learning-rate", type=float, default=5e-5, help="density: AdamW learning rate")
    p.add_argument("--mask-interval", type=positive_int, default=10,
                   help="density: recompute the global mask every k steps (default 10)")
    p.add_argument("--max-length", type=positive_int, default=128, help="truncate inputs to this many tokens")
    p.add_argument("--doc-stride", type=int, default=None,
                   help="squad: tokens of overlap between context windows (default min(128, max-length/2))")
    p.add_argument("--max-train-samples", type=positive_int, default=None,
                   help="use a fixed random subset of the training split")
    add_carve_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="FILE", help="sensitivity.json to write (heatmap: same name, .png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from toolchain.tasks import load_task_data
    from toolchain.models import load_task_model, load_tokenizer, model_hash, resolve_model_dir
    from toolchain.plots import sensitivity_heatmap
    from toolchain.sensitivity import SensitivityConfig, analyse, get_scorer

    config = SensitivityConfig(method=args.method, density=args.density, steps=args.steps,
                               batch_size=args.batch_size, learning_rate=args.learning_rate,
                               mask_interval=args.mask_interval, seed=args.seed)
    get_scorer(config.method)  # refuse an unknown method before loading anything
    carve = carve_from_args(args)
    path = resolve_model_dir(args.model)
    data = load_task_data(args.task, load_tokenizer(path), data_dir=args.data_dir, max_length=args.max_length,
                          max_train_samples=args.max_train_samples, seed=args.seed, need_train=True,
                          carve=carve, doc_stride=doc_stride_from_args(args))
    model = load_task_model(path, data.task, seed=args.seed)
    sens = analyse(model, data.train, data.collator, config, model_hash=model_hash(path),
                   data_hash=data.data_hash, task=data.task.name)
    sens = dataclasses.replace(sens, details={**sens.details, "data_source": data.source,
                                              "carved": data.carved, "train_rows": len(data.train)})
    out = sens.save(args.out)
    png = sensitivity_heatmap(sens, Path(args.out).with_suffix(".png"))
    print_sensitivity(sens)
    print(f"wrote {out} and {png}")
    return 0


def print_sensitivity(sens) -> None:
    """Print the group scores as a per-layer table."""
    from toolchain.sensitivity import group_key

    print(f"sensitivity ({sens.method}, task {sens.task or '?'}, {sens.wall_time_s:.1f} s)")
    print(f"{'layer':>5}  {'attn':>8}  {'ffn':>8}")
    for layer in range(sens.shape.num_layers):
        print(f"{layer:>5}  {sens.scores[group_key(layer, 'attn')]:>8.4f}  {sens.scores[group_key(layer, 'ffn')]:>8.4f}")
