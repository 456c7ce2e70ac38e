"""Which allocation to make the default (issue Step 6): a cheap proxy measured on every allocator.

Fine-tuning each allocator at each budget costs ~10 minutes a row on these cores; this proxy
costs seconds: take the dense fine-tuned SST-2 model (the teacher of bench/accuracy_modes.py),
compute Fisher sensitivity on it, let each registered allocation plan 70/50/30% of the
trimmable encoder, keep in each group the units of highest Fisher importance, and score the
masked model on SST-2 dev with no retraining. An allocator that starves a group shows it at
once; the one with the best mean is the teacher-first default (its fine-tuned rows are in
docs/accuracy.md).

    OMP_NUM_THREADS=1 python bench/allocation_proxy.py --teacher /tmp/sensibert-bench-modes/dense-s0/finetuned
    python bench/allocation_proxy.py --table
    python bench/allocation_proxy.py --docs     # the table into docs/accuracy.md (table:proxy)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import DOCS, RESULTS, add_table_flags, md_table, read_result, tables_mode, write_result  # noqa: E402

RESULT = RESULTS / "allocation_proxy.json"
DOC = DOCS / "accuracy.md"
KEEPS = (0.7, 0.5, 0.3)
ALLOCATIONS = ("uniform", "proportional", "balanced", "global")
FISHER = {"method": "fisher", "steps": 64, "batch_size": 16}


def run(teacher: Path, train_samples: int, seed: int) -> dict:
    import torch

    from toolchain.budget import budget_from_keep
    from toolchain.tasks import load_task_data
    from toolchain.masks import attach_masks, top_units_masks
    from toolchain.models import load_teacher, load_tokenizer
    from toolchain.plan import PlanConfig, allocate
    from toolchain.retrain_free import torch_accuracy
    from toolchain.sensitivity import SensitivityConfig, analyse

    torch.set_num_threads(1)
    tokenizer = load_tokenizer(teacher)
    data = load_task_data("sst2", tokenizer, max_length=64, max_train_samples=train_samples, seed=seed)
    model = load_teacher(teacher, data.task.label_names)
    sens = analyse(model, data.train, data.collator, SensitivityConfig(seed=seed, **FISHER), task="sst2")
    rows = [{"allocation": "dense", "keep": 1.0, "dev_accuracy": torch_accuracy(model, data.eval, data.collator)}]
    for keep in KEEPS:
        budget = budget_from_keep(sens.shape, keep)
        for allocation in ALLOCATIONS:
            plan = allocate(sens, sens.shape, budget, PlanConfig(allocation=allocation))
            handle = attach_masks(model, top_units_masks(sens, plan))
            acc = torch_accuracy(model, data.eval, data.collator)
            handle.remove()
            rows.append({"allocation": allocation, "keep": keep, "heads": list(plan.heads), "ffn": list(plan.ffn),
                         "dev_accuracy": acc})
            print(f"[{time.strftime('%H:%M:%S')}] keep {keep} {allocation}: {acc:.4f} heads {plan.heads} "
                  f"ffn {plan.ffn}", flush=True)
    body = {"teacher": str(teacher), "fisher": FISHER, "train_samples": train_samples, "seed": seed,
            "sensitivity_wall_s": sens.wall_time_s, "rows": rows}
    write_result(RESULT, body)
    return body


def table() -> str:
    body = read_result(RESULT)
    dense = body["rows"][0]["dev_accuracy"]
    rows = []
    for allocation in ALLOCATIONS:
        accs = [next(r["dev_accuracy"] for r in body["rows"] if r["allocation"] == allocation and r["keep"] == k)
                for k in KEEPS]
        rows.append([allocation, *(f"{100 * a:.2f}" for a in accs), f"{100 * sum(accs) / len(accs):.2f}"])
    lines = [f"Masked dense model, no retraining (dense {100 * dense:.2f}%):", "",
             *md_table(["allocation", *(f"{k:.0%}" for k in KEEPS), "mean"], rows)]
    return "\n".join(lines) + "\n"



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path)
    parser.add_argument("--train-samples", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    add_table_flags(parser, DOC)
    args = parser.parse_args()
    if tables_mode(args, DOC, lambda: {"table:proxy": table()}):
        return 0
    run(args.teacher, args.train_samples, args.seed)
    sys.stdout.write(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
