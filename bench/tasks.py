"""Task benchmark (issue Step 7): dense against the default mode at 50% on the paper's other tasks.

Packaged MiniLM-L6, data from $SENSIBERT_DATA_DIR. This machine has no QNLI/MNLI/SQuAD
training split, so each task's train and eval splits are **carved** out of its dev file,
disjoint by a key (QNLI: question, MNLI: premise, SQuAD: article; 20% of the key's values held
out, seed 0). Carved scores are not comparable to published ones (trained on the full train
sets): the table states the anchors' numbers beside them only as context.

Each row is one ``sensibert run`` (``toolchain.pipeline.run``) with the recipe in ``RECIPES``
(chosen once, the same for dense and trimmed): it fine-tunes the dense model, reads the
sensitivity from it, trims to 50% of the trimmable encoder while distilling from it (the
default mode), then shrinks, exports, quantises to int8 and scores both ONNX artifacts on the
carved eval split. One result file per task and allocation: bench/results/tasks/<task>-<allocation>.json
(the rows made before ``proportional`` became the default are ``<task>-global.json``).

    OMP_NUM_THREADS=1 python bench/tasks.py --tasks qnli          # -> qnli-<run's default allocation>.json
    OMP_NUM_THREADS=1 python bench/tasks.py --tasks qnli --seed 1 # -> qnli-<allocation>-s1.json (another carve)
    OMP_NUM_THREADS=1 python bench/tasks.py --retrain-free qnli   # from that run's dense model
    OMP_NUM_THREADS=2 python bench/tasks.py --tasks squad
    OMP_NUM_THREADS=2 python bench/tasks.py --dense-longer squad   # dense at the 50% row's total schedule
    OMP_NUM_THREADS=1 python bench/tasks.py --dense-longer squad --factor 3   # dense for 3x the recipe's epochs
    OMP_NUM_THREADS=1 python bench/tasks.py --from-teacher squad   # trim from the x2 dense model (a longer teacher)
    OMP_NUM_THREADS=1 python bench/tasks.py --dense-longer squad-all   # recipe squad-all: every carved question
    OMP_NUM_THREADS=1 python bench/tasks.py --tasks squad-all          # -> squad-all-<allocation>.json
    python bench/tasks.py --table            # Markdown table from the committed results
    python bench/tasks.py --docs             # the table into docs/accuracy.md (table:tasks)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402
from _results import (DOCS, add_table_flags, md_row, md_table, read_result, read_results,  # noqa: E402
                      tables_mode, write_result)

RESULTS = _results.RESULTS / "tasks"
DOC = DOCS / "accuracy.md"
WORK = Path(os.environ.get("SENSIBERT_BENCH_WORK", "/tmp/sensibert-bench-tasks"))
KEEP = 0.5
COMMON = {"batch_size": 32, "lr": 1e-4, "seed": 0, "eval_fraction": 0.2, "train_from": "dev"}
RECIPES = {
    "qnli": {**COMMON, "holdout_by": "question", "max_length": 128, "epochs": 2.0},
    "mnli": {**COMMON, "holdout_by": "premise", "max_length": 128, "epochs": 1.0},
    "squad": {**COMMON, "holdout_by": "article", "max_length": 256, "doc_stride": 128, "epochs": 1.0,
              "max_train_samples": 4000, "max_eval_samples": 1000},
}
# SQuAD on every carved training question (about 8,400, not a 4,000 subset): a recipe of its own, so its rows
# (``squad-all-...``) never pair with the 4,000-question ones; the task it runs is ``squad``.
RECIPES["squad-all"] = {k: v for k, v in RECIPES["squad"].items() if k != "max_train_samples"}
TASK_OF = {"squad-all": "squad"}


def task_of(recipe: str) -> str:
    """Return the task a recipe runs (a recipe is named after its task unless ``TASK_OF`` says otherwise)."""
    return TASK_OF.get(recipe, recipe)

ANCHORS = {  # full training sets; MiniLM paper (Wang et al. 2020), MiniLM-L6-H384 distilled from BERT-base
    "qnli": "MiniLM-L6-H384: QNLI 90.5 (full train set)",
    "mnli": "MiniLM-L6-H384: MNLI-m 83.3 (full train set)",
    "squad": "BERT-base: SQuAD v1.1 EM 80.8 / F1 88.5 (full train set)",
}


def _pytorch_scores(folder: Path) -> dict:
    """Return every dev score of a fine-tuned folder's kept checkpoint (metrics.json)."""
    best = json.loads((folder / "metrics.json").read_text())["best"]
    return best.get("scores") or {"accuracy": best["accuracy"]}


def _onnx_scores(report: dict, name: str) -> dict:
    """Return {precision: {score: value}} of the dense or trimmed ONNX models of a report."""
    scores = report["accuracy"].get(f"{name}_onnx_scores")
    return scores or {p: {"accuracy": v} for p, v in report["accuracy"][f"{name}_onnx"].items()}


def result_name(task: str, allocation: str | None, seed: int = 0) -> str:
    """Return the name of a task's run folder and result file, ``<task>-<allocation>`` (``None``:
    run's default allocation), so that every table row says how its plan was made; another seed
    than the recipe's 0 adds ``-s<seed>`` (the seed draws the carve and the training order)."""
    from toolchain.pipeline import TEACHER_FIRST

    return f"{task}-{allocation or TEACHER_FIRST['allocation']}" + (f"-s{seed}" if seed else "")


def run_task(task: str, allocation: str | None = None, seed: int = 0) -> dict:
    """Run dense + default (teacher-first, 50%) on one task; return the result record.

    ``allocation`` overrides run's default for the 50% row; the dense stages of an existing run
    folder of the task are reused when copied into the new one (same settings, same keys).
    """
    from toolchain.pipeline import RunConfig, run

    config = RunConfig(out=str(WORK / result_name(task, allocation, seed)), task=task_of(task), keep=KEEP, max_attempts=1,
                       bench_runs=10, allocation=allocation, **(RECIPES[task] | {"seed": seed}))
    run(config)
    return collect(task, allocation, seed)


def collect(task: str, allocation: str | None = None, seed: int = 0, name: str | None = None) -> dict:
    """Return the result record of the finished run of ``task`` in the work folder (``name``: its
    folder, default ``result_name``)."""
    out = WORK / (name or result_name(task, allocation, seed))
    report = json.loads((out / "report.json").read_text())
    timings = report["stage_timings_s"]
    data = report["data"]
    return {
        "task": task_of(task), "recipe_name": task, "keep": KEEP, "recipe": RECIPES[task] | {"seed": seed}, "seed": seed, "data": data, "metric": report.get("metric", "accuracy"),
        "split_sizes": {"train": data.get("train_rows"), "eval": data.get("eval_rows")},
        "anchor": ANCHORS[task_of(task)],
        "made_by": report["mode"],  # mode, sensitivity method and allocation of the 50% row
        "rows": [
            {"mode": "dense", "pytorch": _pytorch_scores(out / "dense" / "finetuned"),
             "onnx": _onnx_scores(report, "dense"),
             "params": report["before"]["total_params"], "flops": report["before"]["flops"],
             "finetune_s": timings.get("dense/finetune")},
            {"mode": "sensitivity+teacher", "pytorch": _pytorch_scores(out / "attempt-1" / "finetuned"),
             "onnx": _onnx_scores(report, "trimmed"),
             "params": report["after"]["total_params"], "flops": report["after"]["flops"],
             "analysis_s": timings.get("analyze"), "finetune_s": timings.get("attempt-1/finetune"),
             "heads": report["after"]["heads"], "ffn": report["after"]["ffn"]},
        ],
        "int8": report.get("int8"),  # the shipped variant, its preset, what chose it (and what was refused)
        "schedule_epochs": 2 * RECIPES[task]["epochs"],  # dense fine-tuning, then as long again trimming
        "wall_time_s": report["wall_time_s"],
        "package_versions": report["package_versions"],
    }


def longer_name(task: str, factor: float, seed: int = 0) -> str:
    """Return the work folder and result stem of a dense model fine-tuned ``factor`` × the recipe's
    epochs (another seed than 0 adds ``-s<seed>``, as ``result_name`` does)."""
    return f"{task}-dense-x{factor:g}" + (f"-s{seed}" if seed else "")


def teacher_name(task: str, factor: float, allocation: str | None = None, seed: int = 0) -> str:
    """Return the work folder and result stem of the 50% row trimmed from the ``factor`` dense model."""
    return f"{result_name(task, allocation)}-teacher-x{factor:g}" + (f"-s{seed}" if seed else "")


def run_from_teacher(task: str, factor: float = 2.0, allocation: str | None = None, seed: int = 0) -> dict:
    """Run the default mode at 50% from the dense model ``--dense-longer --factor F`` fine-tuned
    (on the same seed's carve): that model is adopted as the dense row, the teacher and the weights trimming
    starts from, and the student trains for the recipe's epochs. Why: a one-epoch SQuAD teacher
    (F1 42.7) is far from converged and caps what distillation can give the student."""
    from toolchain.pipeline import RunConfig, run

    teacher = WORK / longer_name(task, factor, seed)
    if not (teacher / "config.json").is_file():
        raise SystemExit(f"error: {teacher} holds no fine-tuned dense model; run --dense-longer {task} "
                         f"--factor {factor:g} --seed {seed} first")
    longer = read_result(RESULTS / "longer" / f"{longer_name(task, factor, seed)}.json")
    name = teacher_name(task, factor, allocation, seed)
    run(RunConfig(out=str(WORK / name), model=str(teacher), task=task_of(task), keep=KEEP, max_attempts=1, bench_runs=10,
                  allocation=allocation, **(RECIPES[task] | {"seed": seed})))
    record = collect(task, allocation, seed, name=name)
    record["rows"][0]["pytorch"] = longer["pytorch"]  # the adopted model's every score, from its own run
    record["rows"][0]["finetune_s"] = longer["finetune_s"]
    return record | {"teacher": {"epochs": longer["epochs"], "from": f"longer/{longer_name(task, factor, seed)}.json"},
                     "schedule_epochs": longer["epochs"] + RECIPES[task]["epochs"]}


RETRAIN_FREE_KEEPS = (0.7, 0.5)


def run_retrain_free(task: str, keep: float, source: str | None = None) -> dict:
    """Run the retraining-free mode from the dense model a finished run of ``task`` fine-tuned
    (``source``: that run's result name, default the task's), on the same carved splits: its
    calibration examples come from the carved train split, its scores from the carved eval split."""
    from toolchain.pipeline import RunConfig, run

    dense = WORK / (source or result_name(task, None)) / "dense" / "finetuned"
    if not (dense / "config.json").is_file():
        raise SystemExit(f"error: {dense} holds no fine-tuned dense model; run --tasks {task} first")
    recipe = {k: v for k, v in RECIPES[task].items() if k not in ("epochs", "batch_size", "lr")}
    out = WORK / f"{task}-retrain-free-k{round(100 * keep)}"
    run(RunConfig(out=str(out), model=str(dense), task=task, keep=keep, finetune=False, max_attempts=1,
                  bench_runs=10, **recipe))
    report = json.loads((out / "report.json").read_text())
    timings = report["stage_timings_s"]
    return {"task": task, "keep": keep, "mode": "retrain-free", "metric": report.get("metric", "accuracy"),
            "from": str(dense.relative_to(WORK)),
            "recipe": recipe, "data": report["data"], "made_by": report["mode"],
            "dense": {"pytorch": report["accuracy"]["dense_pytorch"], "onnx": _onnx_scores(report, "dense")},
            "trimmed": {"pytorch": report["accuracy"]["trimmed_pytorch"], "onnx": _onnx_scores(report, "trimmed")},
            "params": report["after"]["total_params"], "flops": report["after"]["flops"],
            "heads": report["after"]["heads"], "ffn": report["after"]["ffn"],
            "stage_timings_s": timings, "wall_time_s": report["wall_time_s"],
            "package_versions": report["package_versions"]}


def run_dense_longer(task: str, factor: float = 2.0, seed: int = 0) -> dict:
    """Fine-tune only the dense model, for ``factor`` × the recipe's epochs (the total schedule the
    default mode's 50% model gets: the dense run, then as long again from its weights)."""
    from toolchain.tasks import CarveConfig, get_task, load_task_data
    from toolchain.finetune import FinetuneConfig, finetune
    from toolchain.models import load_task_model, load_tokenizer, resolve_model_dir
    from toolchain.plan import dense_plan
    from toolchain.sensitivity import model_shape

    recipe, spec = RECIPES[task] | {"seed": seed}, get_task(task_of(task))
    path = resolve_model_dir(None)
    model = load_task_model(path, spec, seed=recipe["seed"])
    data = load_task_data(spec.name, load_tokenizer(path), max_length=recipe["max_length"], seed=recipe["seed"],
                          max_train_samples=recipe.get("max_train_samples"),
                          max_eval_samples=recipe.get("max_eval_samples"),
                          carve=CarveConfig(by=recipe["holdout_by"], eval_fraction=recipe["eval_fraction"],
                                            source_split=recipe["train_from"]),
                          **({"doc_stride": recipe["doc_stride"]} if "doc_stride" in recipe else {}))
    epochs = recipe["epochs"] * factor
    out = WORK / longer_name(task, factor, seed)
    res = finetune(model, dense_plan(model_shape(model)), data.train, data.eval, data.collator,
                   FinetuneConfig(epochs=epochs, batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"]),
                   out, scorer=data.scorer(), label_keys=data.label_keys)  # the last checkpoint is kept, as in run
    return {"task": spec.name, "recipe_name": task, "mode": "dense", "epochs": epochs, "factor": factor, "seed": seed, "recipe": recipe,
            "dev_accuracy_per_epoch": list(res.dev_accuracy), "dev_accuracy": res.best_accuracy,
            "pytorch": _pytorch_scores(out), "finetune_s": res.wall_time_s, "data": data.carved}


def _label(stem: str, task: str) -> str:
    """Return a result file's table label: ``squad (proportional)`` for ``squad-proportional``."""
    return f"{task} ({stem[len(task) + 1:]})"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def seeds_table() -> list[str]:
    """Return the mean and spread over seeds of the 50% − dense differences, for every task and
    allocation with more than one seed (each seed its own carve and training order)."""
    groups: dict[str, list[dict]] = {}
    for path in sorted(RESULTS.glob("*.json")):
        groups.setdefault(re.sub(r"-s\d+$", "", path.stem), []).append(read_result(path))
    rows = []
    for name, results in groups.items():
        if len(results) < 2:
            continue
        task = results[0]["task"]
        for metric in results[0]["rows"][0]["pytorch"]:
            def deltas(kind: str) -> list[float]:
                if kind == "pytorch":
                    return [100 * (r["rows"][1]["pytorch"][metric] - r["rows"][0]["pytorch"][metric]) for r in results]
                return [100 * (r["rows"][1]["onnx"]["int8"][metric] - r["rows"][0]["onnx"]["int8"][metric])
                        for r in results]
            cells = [f"{statistics.fmean(d):+.2f} ± {statistics.stdev(d):.2f}" for d in (deltas("pytorch"),
                                                                                       deltas("int8"))]
            shipped = [100 * r["rows"][1]["onnx"]["int8"][metric] for r in results]
            rows.append([_label(name, task), len(results), metric, *cells, f"{statistics.fmean(shipped):.2f}"])
    if not rows:
        return []
    return ["", "Over seeds (`--seed N`: each seed carves its own split and trains in its own order; mean ± sd):",
            "", *md_table(["task (carved)", "seeds", "score", "50% − dense, PyTorch", "50% − dense, int8 files",
                           "50% int8 file (mean)"], rows)]


def _made(r: dict) -> str:
    """How a row's shipped file and kept checkpoint were chosen: rows made before Step 12 record no
    int8 variant (they shipped dynamic-per-channel) and, with two epochs, kept the best epoch on the
    carved eval split; later rows keep the last checkpoint (nothing reads eval to choose)."""
    if r.get("int8"):
        return f"{r['int8']['variant']} ({r['int8']['preset']}); last"
    multi = r["recipe"].get("epochs", 1) > 1
    return "dynamic-per-channel; " + ("best on the eval split" if multi else "last (one epoch)")


def table() -> str:
    """Return the Markdown table of every committed task result (one line per task and score)."""
    lines = md_table(["task (carved)", "split sizes train / eval", "score", "dense PyTorch", "dense int8 ONNX",
                      "50% PyTorch", "50% int8 ONNX", "50% − dense (int8)", "params dense → 50%",
                      "fine-tune s dense / 50%", "int8 shipped; checkpoint kept"])
    for path in sorted(RESULTS.glob("*.json")):
        r = read_result(path)
        dense, trimmed = r["rows"]
        sizes = r["split_sizes"]
        label = _label(path.stem, r["task"])
        for metric in dense["pytorch"]:
            d8, t8 = dense["onnx"]["int8"].get(metric), trimmed["onnx"]["int8"].get(metric)
            delta = "–" if None in (d8, t8) else f"{100 * (t8 - d8):+.2f}"
            lines.append(md_row([
                label, f"{sizes['train']} / {sizes['eval']}", metric, _pct(dense["pytorch"][metric]), _pct(d8),
                _pct(trimmed["pytorch"][metric]), _pct(t8), delta,
                f"{dense['params'] / 1e6:.1f}M → {trimmed['params'] / 1e6:.1f}M",
                f"{dense['finetune_s'] or 0:.0f} / {trimmed['finetune_s'] or 0:.0f}", _made(r)]))
    lines += ["", "Dense fine-tuned for the 50% model's total schedule (twice the recipe's epochs; `--dense-longer`, "
              "`bench/results/tasks/longer/`). Its **last** epoch is the comparison (what `run` keeps now: nothing "
              "chose it); its best epoch on the carved eval split (what the first records kept) stands beside it, "
              "never compared:", "",
              *md_table(["task (carved)", "score", "dense, equal schedule, last epoch (PyTorch)", "50% PyTorch",
                         "50% shipped int8 file", "50% − dense (PyTorch)", "50% int8 file − dense",
                         "dense, best epoch on eval (not compared)", "epochs", "fine-tune s"])]
    over_seeds: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for longer in read_results(RESULTS / "longer", "*-dense-x*.json"):
        # the kept checkpoint's every score: the last epoch's where the record has them (``pytorch``), the best
        # epoch's on the eval split in the records first committed (``dev_accuracy`` only)
        kept = longer.get("pytorch") or {"accuracy": longer["dev_accuracy"]}
        per_epoch = longer.get("dev_accuracy_per_epoch") or [longer["dev_accuracy"]]
        for main in sorted(RESULTS.glob(f"{longer['task']}*.json")):  # the task's 50% rows, each allocation
            result = read_result(main)
            if result.get("seed", 0) != longer.get("seed", 0):  # a dense-longer row shares its seed's carve only
                continue
            if result.get("schedule_epochs", 2 * result["recipe"]["epochs"]) != longer["epochs"]:
                continue  # only a dense model of the 50% row's own total schedule compares with it
            if result["recipe"].get("max_train_samples") != longer["recipe"].get("max_train_samples"):
                continue  # nor one trained on another number of questions
            trimmed, shipped = result["rows"][1]["pytorch"], result["rows"][1]["onnx"]["int8"]
            label = _label(main.stem, longer["task"])
            primary = result.get("metric", "accuracy")
            for metric, value in kept.items():
                # per-epoch records hold the primary score; where the last epoch was the best, every score is known
                last_is_best = per_epoch[-1] == max(per_epoch)
                if "pytorch" in longer:
                    last, best = value, max(per_epoch) if metric == primary else (value if last_is_best else None)
                else:
                    best = value
                    last = value if last_is_best else (per_epoch[-1] if metric == primary else None)

                def minus(x):
                    return "–" if None in (x, last) else f"{100 * (x - last):+.2f}"

                lines.append(md_row([label, metric, _pct(last), _pct(trimmed.get(metric)), _pct(shipped.get(metric)),
                                     minus(trimmed.get(metric)), minus(shipped.get(metric)), _pct(best),
                                     f"{longer['epochs']:g}", f"{longer['finetune_s']:.0f}"]))
                if None not in (last, trimmed.get(metric), shipped.get(metric)):
                    over_seeds.setdefault((re.sub(r"-s\d+$", "", main.stem), metric), []).append(
                        (100 * (trimmed[metric] - last), 100 * (shipped[metric] - last)))
    summary = [[_label(stem, stem.split("-")[0]), len(d), metric,
                *(f"{statistics.fmean(x):+.2f} ± {statistics.stdev(x):.2f}" for x in zip(*d))]
               for (stem, metric), d in sorted(over_seeds.items()) if len(d) > 1]
    if summary:
        lines += ["", "Against the equal-schedule dense model, over seeds (each seed its own carve; mean ± sd):", "",
                  *md_table(["task (carved)", "seeds", "score", "50% − dense (PyTorch)", "50% int8 file − dense"],
                            summary)]
    lines += seeds_table()
    free = sorted(read_results(RESULTS / "retrain_free"), key=lambda r: (r["task"], -r["keep"]))
    if free:
        lines += ["", "Retraining-free mode from the dense model of the task's default-allocation run above "
                  "(`--retrain-free TASK`, `bench/results/tasks/retrain_free/`; Fisher masks on the carved train "
                  "split, least-squares scales, no gradient step; scored on the same carved eval split):", "",
                  *md_table(["task (carved)", "keep", "score", "dense PyTorch", "retrain-free PyTorch",
                             "retrain-free int8 ONNX", "Δ vs dense (PyTorch)", "params", "retraining-free stage s"])]
        for r in free:
            metric = r.get("metric", "accuracy")
            dense, trimmed = r["dense"]["pytorch"], r["trimmed"]["pytorch"]
            stage = sum(v for k, v in r["stage_timings_s"].items() if k.startswith("attempt-1/")
                        and not k.endswith(("export", "evaluate", "measure")))
            lines.append(md_row([r["task"], f"{r['keep']:.0%}", metric, _pct(dense), _pct(trimmed),
                                 _pct(r["trimmed"]["onnx"]["int8"].get(metric)), f"{100 * (trimmed - dense):+.2f}",
                                 f"{r['params'] / 1e6:.1f}M", f"{stage:.0f}"]))
    made = {}
    for path in sorted(RESULTS.glob("*.json")):
        m = read_result(path).get("made_by")
        if m:
            made.setdefault(f"{m['mode']}, {m['method']} sensitivity, `{m['allocation']}` allocation",
                            []).append(path.stem)
    lines += ["", "Anchors on the full training sets (not comparable to carved splits): "
              + "; ".join(ANCHORS.values()) + "."]
    if made:
        lines += ["", "50% rows made by: " + "; ".join(f"{how} ({', '.join(tasks)})" for how, tasks in made.items())
                  + "."]
    return "\n".join(lines)



def _write(path: Path, record: dict) -> None:
    """Write one result file atomically (a killed run leaves the committed one intact)."""
    write_result(path, record)
    print(f"[bench tasks] {record['task']}: wrote {path}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=[], choices=sorted(RECIPES))
    parser.add_argument("--collect", nargs="*", default=[], choices=sorted(RECIPES),
                        help="write the result file of an already finished run in the work folder")
    parser.add_argument("--dense-longer", nargs="*", default=[], choices=sorted(RECIPES),
                        help="fine-tune only the dense model for --factor x the recipe's epochs")
    parser.add_argument("--factor", type=float, default=2.0,
                        help="--dense-longer: epochs as a multiple of the recipe's; --from-teacher: that model")
    parser.add_argument("--from-teacher", nargs="*", default=[], choices=sorted(RECIPES),
                        help="the 50%% row trimmed from (and distilled from) the --dense-longer --factor model")
    parser.add_argument("--allocation", default=None,
                        help="the 50%% row's allocation (default: run's); results go to <task>-<allocation>.json")
    parser.add_argument("--retrain-free", nargs="*", default=[], choices=sorted(RECIPES),
                        help="the retraining-free mode at 70%% and 50%% from the task's finished dense model")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the carve and the training (not 0: results go to <task>-<allocation>-s<seed>.json)")
    add_table_flags(parser, DOC)
    args = parser.parse_args()
    for task in args.tasks + args.collect:
        record = (run_task(task, args.allocation, args.seed) if task in args.tasks
                  else collect(task, args.allocation, args.seed))
        _write(RESULTS / f"{result_name(task, args.allocation, args.seed)}.json", record)
    for task in args.dense_longer:
        _write(RESULTS / "longer" / f"{longer_name(task, args.factor, args.seed)}.json",
               run_dense_longer(task, args.factor, args.seed))
    for task in args.from_teacher:
        record = run_from_teacher(task, args.factor, args.allocation, args.seed)
        _write(RESULTS / f"{teacher_name(task, args.factor, args.allocation, args.seed)}.json", record)
    for task in args.retrain_free:
        for keep in RETRAIN_FREE_KEEPS:
            record = run_retrain_free(task, keep, result_name(task, args.allocation))
            _write(RESULTS / "retrain_free" / f"{task}-k{round(100 * keep)}.json", record)
    tables_mode(args, DOC, lambda: {"table:tasks": table()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
