"""Accuracy benchmark (issue Step 2): dense vs sensitivity-driven vs uniform vs global trimming.

SST-2 (train subset and full dev from $SENSIBERT_DATA_DIR), packaged MiniLM-L6, one fixed
recipe for every row. Each (row, seed) writes bench/results/accuracy/<row>-s<seed>.json as
soon as it finishes, so the run can be interrupted and resumed; `--table` prints the Markdown
table from whatever results exist.

    python bench/accuracy.py --seeds 0 1            # run (skips rows already done)
    python bench/accuracy.py --table
    python bench/accuracy.py --docs     # the table into docs/accuracy.md (table:accuracy)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402
from _results import DOCS, add_table_flags, md_table, read_results, tables_mode, write_result  # noqa: E402

RESULTS = _results.RESULTS / "accuracy"
DOC = DOCS / "accuracy.md"
RECIPE = {
    "task": "sst2", "train_samples": 4000, "subset_seed": 0, "max_length": 64,
    "epochs": 2.0, "batch_size": 32, "lr": 1e-4, "warmup_ratio": 0.06, "ramp_fraction": 0.3,
    "importance": "fisher", "torch_threads": 1,
    "density": {"method": "density", "density": 0.5, "steps": 100, "batch_size": 16},
    "fisher": {"method": "fisher", "steps": 64, "batch_size": 16},
}
KEEPS = (0.3, 0.5, 0.7)
# (row name, sensitivity method, allocation, FFN widths rounded to multiples of)
METHODS = (("density+proportional", "density", "proportional", 1), ("fisher+proportional", "fisher", "proportional", 1),
           ("uniform", "density", "uniform", 1), ("global", "fisher", "global", 1))
# the accuracy cost of `plan --round-to 16` (CPU-friendly FFN widths), run after the main rows
ROUNDED = (("density+proportional+round16", "density", "proportional", 16),)


def _rows():
    yield "dense", 1.0, "density", "uniform", 1
    for keep in KEEPS:
        for name, method, allocation, round_to in METHODS:
            yield name, keep, method, allocation, round_to
    for keep in (0.5, 0.3):
        for name, method, allocation, round_to in ROUNDED:
            yield name, keep, method, allocation, round_to


def _row_id(name: str, keep: float) -> str:
    return f"{name.replace('+', '_')}-k{int(round(keep * 100))}"


def run(seeds: list[int], work: Path, only: set[str] | None) -> None:
    import torch

    from toolchain.budget import budget_from_keep
    from toolchain.tasks import load_task_data
    from toolchain.finetune import FinetuneConfig, finetune
    from toolchain.models import default_model_dir, load_classifier, load_tokenizer, model_hash
    from toolchain.plan import PlanConfig, allocate
    from toolchain.sensitivity import SensitivityConfig, analyse
    from toolchain.costs import total_flops, total_params, encoder_params, trimmable_params

    torch.set_num_threads(1)  # one core each: the other stays free, so timings are not oversubscribed
    model_dir = default_model_dir()
    mhash = model_hash(model_dir)
    tokenizer = load_tokenizer(model_dir)
    data = load_task_data(RECIPE["task"], tokenizer, max_length=RECIPE["max_length"],
                          max_train_samples=RECIPE["train_samples"], seed=RECIPE["subset_seed"])
    labels = dict(enumerate(data.task.label_names))
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        sens = {}
        for method in ("density", "fisher"):
            path = work / f"sensitivity-{method}-s{seed}.json"
            if path.exists():
                from toolchain.sensitivity import Sensitivity
                sens[method] = Sensitivity.load(path)
                continue
            settings = {k: v for k, v in RECIPE[method].items()}
            model = load_classifier(model_dir, len(labels), seed=seed, id2label=labels)
            sens[method] = analyse(model, data.train, data.collator, SensitivityConfig(seed=seed, **settings),
                                   model_hash=mhash, data_hash=data.data_hash, task=RECIPE["task"])
            sens[method].save(path)
        for name, keep, method, allocation, round_to in _rows():
            row = _row_id(name, keep)
            out = RESULTS / f"{row}-s{seed}.json"
            if out.exists() or (only and row not in only):
                continue
            model = load_classifier(model_dir, len(labels), seed=seed, id2label=labels)
            shape = sens[method].shape
            plan = allocate(sens[method], shape, budget_from_keep(shape, keep, seq_len=128),
                            PlanConfig(allocation=allocation, round_to=round_to))
            config = FinetuneConfig(epochs=RECIPE["epochs"], batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
                                    warmup_ratio=RECIPE["warmup_ratio"], ramp_fraction=RECIPE["ramp_fraction"],
                                    importance=RECIPE["importance"], seed=seed, progress=False)
            print(f"[{time.strftime('%H:%M:%S')}] {row} seed {seed}: heads {plan.heads} ffn {plan.ffn}",
                  flush=True)
            res = finetune(model, plan, data.train, data.eval, data.collator, config, work / f"{row}-s{seed}")
            kept = shape.with_units(plan.heads, plan.ffn)
            body = {
                "row": name, "keep": keep, "seed": seed, "sensitivity": method, "allocation": allocation,
                "round_to": round_to,
                "heads": list(plan.heads), "ffn": list(plan.ffn),
                "dev_accuracy_best": res.best_accuracy, "dev_accuracy_per_epoch": list(res.dev_accuracy),
                "params_total": total_params(kept), "params_encoder": encoder_params(kept),
                "params_trimmable": trimmable_params(kept), "flops_seq128": total_flops(kept, 1, 128),
                "analysis_wall_s": sens[method].wall_time_s if name != "dense" else 0.0,
                "finetune_wall_s": res.wall_time_s, "steps": res.steps,
                "recipe": RECIPE, "data_hash": data.data_hash, "model_hash": mhash,
                "package_versions": sens[method].package_versions,
            }
            write_result(out, body)
            print(f"    dev accuracy {res.best_accuracy:.4f}  ({res.wall_time_s:.0f} s)", flush=True)


def table() -> str:
    """Return the Markdown table of all results present."""
    runs = read_results(RESULTS)
    if not runs:
        return "no results yet\n"
    dense = [r["dev_accuracy_best"] for r in runs if r["row"] == "dense"]
    dense_mean = statistics.mean(dense) if dense else float("nan")
    rows = []
    order = [(n, k) for n, k, _, _, _ in _rows()]
    for name, keep in order:
        rs = [r for r in runs if r["row"] == name and r["keep"] == keep]
        if not rs:
            continue
        accs = [100 * r["dev_accuracy_best"] for r in rs]
        mean = statistics.mean(accs)
        spread = (max(accs) - min(accs)) / 2 if len(accs) > 1 else 0.0
        rows.append([f"{keep:.0%}", name, f"{mean:.2f} ± {spread:.2f}", len(rs), f"{mean - 100 * dense_mean:+.2f}",
                     f"{rs[0]['params_total'] / 1e6:.2f}M", f"{rs[0]['flops_seq128'] / 1e9:.3f}",
                     f"{statistics.mean(r['analysis_wall_s'] for r in rs):.0f}",
                     f"{statistics.mean(r['finetune_wall_s'] for r in rs):.0f}"])
    header = ["encoder trimmable params kept", "method", "dev accuracy % (mean ± spread)", "seeds", "Δ vs dense",
              "params (total)", "GFLOP @128", "analysis s", "fine-tune s"]
    return "\n".join(md_table(header, rows)) + "\n"



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sensibert-bench-accuracy"))
    parser.add_argument("--only", nargs="*", default=None, help="row ids to run (e.g. uniform-k30)")
    add_table_flags(parser, DOC)
    args = parser.parse_args()
    if tables_mode(args, DOC, lambda: {"table:accuracy": table()}):
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    run(args.seeds, args.work, set(args.only) if args.only else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
