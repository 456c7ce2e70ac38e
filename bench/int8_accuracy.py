"""The shipped int8 file against its own fp32 file (issue Step 12): every int8 candidate on the
trained models of each task, accuracy (F1 for SQuAD), fidelity and latency.

Models (``MODELS``), those still on this machine: SST-2's from the Step 6 and Step 11 benchmarks
(the seed-0 dense teacher, the 50% and 30% Step 6 rows of seed 0, and the four Step 11
latency-priced 50%-class rows of seeds 0 and 1), and the dense and 50% models of the carved-task
runs of ``bench/tasks.py`` (MNLI seed 1, QNLI and SQuAD seed 0, from $SENSIBERT_BENCH_WORK); each
is exported once per candidate:

- ``dynamic``, ``dynamic-per-channel``, ``static-qdq``, ``static-smooth`` (static QDQ after
  SmoothQuant migration, toolchain/smooth_quant.py), ``dynamic-smooth`` (the migration before
  dynamic-per-channel, the fused attention's input too): deploy.int8's variants;
  ``static-qdq+spread``: static-qdq calibrated on a length-spread selection (toolchain/calibration.py)
  of 1,024 training inputs (the 128 calibration inputs and 896 others, none of them validation's);
- ``mixed``: dynamic-per-channel with the matmuls whose measured int8 error is largest kept fp32
  within ``--int8-fp32-share`` (toolchain/mixed_precision.py) at 0.05 and 0.10 of the MACs (the
  0.10 row reuses the 0.05 row's probes: the same measurement, a larger allowance); ``mixed-smooth``:
  the registered variant (0.10 of the MACs) on dynamic-smooth's graph, unchecked here as mixed-0.10 is
  (the ``per-model`` rows are the export's check: see ``PER_MODEL``);
- ``qat`` (``--qat``): a quantisation-aware phase on the trimmed model (``FinetuneConfig.fake_quant``
  dynamic-per-channel, avx2 weights; ``QAT`` below: 4,000 other training sentences, one epoch,
  distilled from the seed-0 dense teacher as the Step 6 recipe distils, weights baked onto the int8
  grid), then exported dynamic-per-channel. Its fidelity is measured against the *original* model's
  fp32 file like every other candidate's; its own fp32 file is reported beside it. Timed in its own
  pass beside the original fp32 and dynamic-per-channel files.

Calibration and probe inputs: 128 *training* inputs (seeded; a carved task's from its carved
train split). Which candidate is best is decided on **validation** inputs: 1,000 other training
inputs (no label read), by the candidate's agreement with its own fp32 file and the mean KL of its
probabilities from fp32's (SQuAD: identical answers, and 1 − F1 of its answers against fp32's).
Every int8 file is scored as deploy/ runs it, one input per call. Reported beside it, and never
used to choose: the dev split's score (SST-2 dev, 872; a carved
task's eval split) of fp32 and int8 and their agreement. Latency: mean per input over the first
300 dev inputs at their own lengths, batch 1, one thread, every file of a model interleaved in one
process (``speed.time_all``).

    OMP_NUM_THREADS=1 python bench/int8_accuracy.py            # every model on this machine (minutes each)
    OMP_NUM_THREADS=1 python bench/int8_accuracy.py --models mnli-dense/s1 mnli-50/s1
    OMP_NUM_THREADS=1 python bench/int8_accuracy.py --qat      # the quantisation-aware row of each
    OMP_NUM_THREADS=1 python bench/int8_accuracy.py --rescore  # kept files scored again, one input per int8 call
    OMP_NUM_THREADS=1 python bench/int8_accuracy.py --models squad-x2-50/s0 --shares 0.25 0.5  # more fp32
    OMP_NUM_THREADS=1 python bench/int8_accuracy.py --add static-smooth   # a candidate registered later
    OMP_NUM_THREADS=1 python bench/int8_accuracy.py --alphas 0.3 0.5 0.65 0.8 0.9 1  # dynamic-smooth's α (validation)
    OMP_NUM_THREADS=1 python bench/int8_accuracy.py --retime   # the kept files timed again, on a quiet machine
    python bench/int8_accuracy.py --docs                      # the tables into docs/accuracy.md
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402
from _results import DOCS, add_table_flags, md_table, read_result, read_results, tables_mode, write_result  # noqa: E402

RESULTS = _results.RESULTS / "int8"
DOC = DOCS / "accuracy.md"
WORK = Path("/tmp/sensibert-bench-int8")
MODES, LAT = Path("/tmp/sensibert-bench-modes"), Path("/tmp/sensibert-bench-latency")
TASK_RUNS = Path(os.environ.get("SENSIBERT_BENCH_WORK", "/tmp/sensibert-bench-tasks"))  # bench/tasks.py's


@dataclass(frozen=True)
class Source:
    """A trained model and where its inputs come from: SST-2's train and dev files, or the carved
    train and eval splits of the ``bench/tasks.py`` run of ``task`` and ``seed`` that trained it
    (``recipe``: that run's recipe where it is not named after the task, as ``squad-all``)."""

    path: Path
    task: str = "sst2"
    seed: int = 0
    recipe: str = ""

    @property
    def carve(self) -> str:
        """The bench/tasks.py recipe whose carve the model's inputs come from (SST-2: ``sst2``)."""
        return self.recipe or self.task


def _task_run(task: str, seed: int, model: str) -> Source:
    return Source(TASK_RUNS / f"{task}-proportional{f'-s{seed}' if seed else ''}" / model / "trimmed", task, seed)


MODELS = {
    "dense/s0": Source(MODES / "dense-s0" / "trimmed"),
    "flops-50/s0": Source(MODES / "sensitivity_teacher-k50-s0" / "trimmed"),
    "flops-50/s1": Source(MODES / "sensitivity_teacher-k50-s1" / "trimmed"),
    "flops-30/s0": Source(MODES / "sensitivity_teacher-k30-s0" / "trimmed"),
    "flops-30/s1": Source(MODES / "sensitivity_teacher-k30-s1" / "trimmed"),
    "latency-proportional/s0": Source(LAT / "s0" / "latency-proportional-trained" / "trimmed"),
    "latency-proportional/s1": Source(LAT / "s1" / "latency-proportional-trained" / "trimmed"),
    "latency-greedy/s0": Source(LAT / "s0" / "latency-greedy-trained" / "trimmed"),
    "latency-greedy/s1": Source(LAT / "s1" / "latency-greedy-trained" / "trimmed"),
    **{f"{task}-{row}/s{seed}": _task_run(task, seed, folder) for task, seed in (("mnli", 1), ("qnli", 0), ("squad", 0))
       for row, folder in (("dense", "dense"), ("50", "attempt-1"))},
    # the SQuAD 50% model trimmed from (and distilled from) the two-epoch dense model (tasks.py --from-teacher)
    "squad-x2-50/s0": Source(TASK_RUNS / "squad-proportional-teacher-x2" / "attempt-1" / "trimmed", "squad"),
    "squad-x2-50/s1": Source(TASK_RUNS / "squad-proportional-teacher-x2-s1" / "attempt-1" / "trimmed", "squad", 1),
    # added in the sixth session, after the default was chosen on the 15 above: QNLI's longer-teacher recipe
    **{f"qnli-x2-{row}/s0": Source(TASK_RUNS / "qnli-proportional-teacher-x2" / folder / "trimmed", "qnli")
       for row, folder in (("dense", "dense"), ("50", "attempt-1"))},
    # added in the seventh session, for the per-model α choice (--alpha-choice): the one-epoch-teacher rows of QNLI
    # seed 2 and MNLI seed 0 (re-run)
    **{f"{task}-{row}/s{seed}": _task_run(task, seed, folder) for task, seed in (("qnli", 2), ("mnli", 0))
       for row, folder in (("dense", "dense"), ("50", "attempt-1"))},
    # and the dense models of the longer schedules (tasks.py --dense-longer qnli [--factor 3]), on the same carves
    "qnli-dense-x3/s0": Source(TASK_RUNS / "qnli-dense-x3", "qnli"),
    "qnli-dense-x2/s2": Source(TASK_RUNS / "qnli-dense-x2-s2", "qnli", 2),
    # added in the eighth session: SQuAD on every carved question, the two-epoch dense model and the 50% model
    # trimmed from it (tasks.py --dense-longer squad-all, --from-teacher squad-all)
    "squad-all-dense-x2/s0": Source(TASK_RUNS / "squad-all-dense-x2", "squad", recipe="squad-all"),
    "squad-all-x2-50/s0": Source(TASK_RUNS / "squad-all-proportional-teacher-x2" / "attempt-1" / "trimmed", "squad",
                                 recipe="squad-all"),
    # added in the ninth session: the three-epoch dense model (tasks.py --dense-longer squad-all --factor 3)
    "squad-all-dense-x3/s0": Source(TASK_RUNS / "squad-all-dense-x3", "squad", recipe="squad-all"),
}
SPREAD = "+spread"  # a candidate calibrated on a length-spread selection (toolchain/calibration.py)
CANDIDATES = ("dynamic", "dynamic-per-channel", "static-qdq", "static-smooth", f"static-qdq{SPREAD}", "mixed-0.05",
              "mixed-0.10", "dynamic-smooth", "mixed-smooth")
ALL = CANDIDATES + ("qat",)
# chosen per model, not once for all: of each pair, the one whose int8 file agrees best with the model's
# fp32 file on the validation inputs (then the least divergence), the export's check of the mixed
# variants (``mixed``, ``mixed-smooth``); derived rows, from the same files
PER_MODEL = {"per-model": ("dynamic-per-channel", "mixed-0.10"),
             "per-model-smooth": ("dynamic-smooth", "mixed-smooth")}
SHIPPED = "dynamic-smooth"  # the row of run's default variant (deploy.int8.DEFAULT_VARIANT; before: per-model)
CALIBRATION, VALIDATION, TIMED = 128, 1000, 300
ONE_PER_CALL = "one input per int8 call"  # how the int8 files were scored (deploy.predict.rows_per_call)
MAX_LENGTH = 64   # the Step 6 recipe's
TEACHER = MODES / "dense-s0" / "finetuned"
QAT = {"train_sentences": 4000, "epochs": 1.0, "lr": 1e-5, "batch_size": 32, "warmup_ratio": 0.06,
       "variant": "dynamic-per-channel", "preset": "avx2"}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@functools.lru_cache(maxsize=None)
def _splits(task: str, seed: int) -> tuple[list, list[int], list, list]:
    """Return (training inputs, their seeded order, reported inputs, reported labels) of a model's
    task: SST-2's train and dev files, or the carve of a carved task's bench run."""
    import numpy as np

    from toolchain.tasks import load_split

    if task == "sst2":
        train, _ = load_split("sst2", "train")
        dev, _ = load_split("sst2", "dev")
        texts = list(train["sentence"])
        items, labels = list(dev["sentence"]), list(dev["label"])
    else:
        from tasks import RECIPES, WORK, result_name, task_of

        from toolchain.models import default_model_dir, load_tokenizer
        from toolchain.pipeline import RunConfig
        from toolchain.tasks import load_task_data

        config = RunConfig(out=str(WORK / result_name(task, None, seed)), task=task_of(task),
                           **(RECIPES[task] | {"seed": seed}))
        data = load_task_data(task_of(task), load_tokenizer(default_model_dir()), max_length=config.max_length,
                              max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples,
                              seed=seed, carve=config.carve(), doc_stride=config.stride)
        texts = list(data.train_texts)
        if data.qa is not None:  # SQuAD: (question, context) and each question's gold answers
            items, labels = [(e.question, e.context) for e in data.qa.examples], [list(e.answers) for e in data.qa.examples]
        else:
            items, labels = data.eval_items()
    return texts, [int(i) for i in np.random.default_rng(0).permutation(len(texts))], items, labels


def inputs(task: str = "sst2", seed: int = 0, qat: bool = False):
    """Return (calibration, validation) training inputs, disjoint and seeded, and the reported
    split's inputs and labels; with ``qat`` also the quantisation-aware phase's (sentences, labels),
    disjoint from both (SST-2 only). A carved task's come from the carve of its bench run."""
    texts, order, items, labels = _splits(task, seed)
    n = CALIBRATION + VALIDATION
    picked = [texts[i] for i in order[:n]]
    out = (picked[:CALIBRATION], picked[CALIBRATION:], items, labels)
    if not qat:
        return out
    from toolchain.tasks import load_split

    train, _ = load_split("sst2", "train")
    rows = order[n:n + QAT["train_sentences"]]
    return out + ([train["sentence"][i] for i in rows], [int(train["label"][i]) for i in rows])


def calibration_pool(task: str = "sst2", seed: int = 0) -> list:
    """Return the calibration inputs followed by other training inputs, none of them validation
    inputs: the pool a ``+spread`` candidate's selection (``toolchain.calibration``) chooses from."""
    from toolchain.calibration import pool_size

    texts, order, _, _ = _splits(task, seed)
    n = CALIBRATION + VALIDATION
    extra = pool_size("length-spread", CALIBRATION) - CALIBRATION
    return inputs(task, seed)[0] + [texts[i] for i in order[n:n + extra]]


def probabilities(artifact: Path, precision: str, items: list):
    """Return the class probabilities of one ONNX file of an artifact on ``items`` (deploy/)."""
    import numpy as np

    from deploy.predict import PredictConfig, Predictor

    predictor = Predictor(artifact, PredictConfig(precision=precision, batch_size=64, threads=1))
    return np.concatenate([predictor.probabilities(items[s:s + 64])[0] for s in range(0, len(items), 64)])


def outputs(artifact: Path, precision: str, items: list, task: str):
    """Return what one ONNX file says on ``items``: class probabilities, or for QA the answer texts
    (deploy/'s windows and span extraction)."""
    if task != "squad":
        return probabilities(artifact, precision, items)
    from deploy.predict import PredictConfig, Predictor

    predictor = Predictor(artifact, PredictConfig(precision=precision, batch_size=32, threads=1))
    return [a["text"] for a in predictor.answers(items)]


def _squad(predictions: list[str], golds: list) -> dict[str, float]:
    from deploy.qa import squad_metrics

    return squad_metrics({str(i): p for i, p in enumerate(predictions)}, {str(i): g for i, g in enumerate(golds)})


def score(out, labels: list, task: str) -> float:
    """The task's primary score of ``outputs`` against the labels: accuracy, or SQuAD F1 (``labels``:
    each question's gold answers)."""
    if task == "squad":
        return _squad(out, labels)["f1"]
    return float((out.argmax(1) == labels).mean())


def fidelity(o32, o8, task: str = "sst2") -> dict:
    """How closely the int8 file follows fp32: agreement of labels (QA: identical answers), and the
    mean KL of int8's probabilities from fp32's (QA: ``f1_gap``, 1 − F1 of int8's answers taking fp32's
    as the gold)."""
    import numpy as np

    from toolchain import mixed_precision as mp

    if task == "squad":
        return {"agreement": float(np.mean([a == b for a, b in zip(o32, o8)])),
                "f1_gap": 1.0 - _squad(o8, [[a] for a in o32])["f1"]}
    # log-probabilities are logits whose softmax is the probabilities: the export's own measures apply
    ref, cand = [{"p": np.log(np.clip(o32, 1e-12, 1))}], [{"p": np.log(np.clip(o8, 1e-12, 1))}]
    return {"agreement": mp.agreement(ref, cand), "kl": mp.output_error(ref, cand)}


def divergence(f: dict) -> float:
    """The second key of the choice: KL for classifiers, 1 − F1 against fp32's answers for QA."""
    return f["kl"] if "kl" in f else f["f1_gap"]


def max_length(task: str) -> int:
    """The sequence length the model was trained at (its recipe's)."""
    if task == "sst2":
        return MAX_LENGTH
    from tasks import RECIPES

    return RECIPES[task]["max_length"]


def export_candidates(src: Path, work: Path, calibration: list, task: str = "sst2",
                      names: tuple[str, ...] = CANDIDATES, pool: list | None = None,
                      overrides: dict | None = None) -> dict[str, Path]:
    """Export ``src`` once per candidate of ``names`` (kept in ``work``: a re-run reuses them); a
    ``+spread`` candidate calibrates on ``pool`` (``calibration_pool``); ``overrides``: further
    ``ExportConfig`` fields of every candidate (``--alphas``: the migration strength)."""
    from toolchain.export import ExportConfig, export
    from toolchain.mixed_precision import NodeProbe, choose

    base = ExportConfig(optimize=True, quantize="int8", task=task, seq_len=max_length(task), **(overrides or {}))
    out = {}
    for name in names:
        folder = work / name
        out[name] = folder
        if (folder / "sensibert.json").exists():
            continue
        if name == "mixed-0.10":  # the 0.05 row's probes, a larger allowance
            probes = [NodeProbe(**p) for p in read_result(work / "mixed-0.05" / "export.json")["int8"]["probes"]]
            config = ExportConfig(**{**base.__dict__, "int8_variant": "dynamic-per-channel",
                                     "int8_fp32_nodes": choose(probes, 0.10)})
        elif name == "mixed-0.05":
            config = ExportConfig(**{**base.__dict__, "int8_variant": "mixed", "int8_fp32_share": 0.05})
        elif name.endswith(SPREAD):  # the same variant calibrated on a length-spread selection of a larger pool
            config = ExportConfig(**{**base.__dict__, "int8_variant": name[:-len(SPREAD)],
                                     "calibration_selection": "length-spread"})
        else:  # a registered variant as it is (mixed-smooth: run's fp32 share, 0.10; no held-out inputs to check on)
            config = ExportConfig(**{**base.__dict__, "int8_variant": name})
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        export(src, folder, config, calibration=pool if name.endswith(SPREAD) else calibration, progress=True)
        _log(f"  exported {name} in {time.perf_counter() - t0:.0f} s")
    return out


def int8_row(cand: str, folder: Path, fp32: tuple, data: tuple, task: str, fp32_row: dict) -> dict:
    """Return one int8 file's result: its fidelity to the fp32 file's outputs ``fp32`` (validation,
    dev) on ``data`` (validation inputs, dev inputs, dev labels), its dev score, fp32 nodes and size."""
    (p32_val, p32_dev), (validation, dev, labels) = fp32, data
    p8_val, p8_dev = outputs(folder, "int8", validation, task), outputs(folder, "int8", dev, task)
    record = read_result(folder / "export.json")["int8"]
    row = {"validation": fidelity(p32_val, p8_val, task), "dev": fidelity(p32_dev, p8_dev, task),
           "dev_accuracy": score(p8_dev, labels, task), "fp32_nodes": record.get("fp32_nodes", []),
           "size_bytes": (folder / "model.int8.onnx").stat().st_size}
    _log(f"  {cand}: dev {row['dev_accuracy']:.4f} (fp32 {fp32_row['dev_accuracy']:.4f}), "
         f"validation agreement {row['validation']['agreement']:.4f}, {len(row['fp32_nodes'])} fp32 nodes")
    return row


def timed(files: dict[str, Path], dev: list) -> dict[str, dict]:
    """Time ONNX files (name -> path) interleaved in one run: mean per input over the first
    ``TIMED`` dev inputs at their own lengths, one thread (``speed.time_all``)."""
    import speed

    from deploy.manifest import read_manifest
    from deploy.predict import load_tokenizer

    tokenizer = load_tokenizer(read_manifest(next(iter(files.values())).parent, verify=False))
    return speed.time_all({k: {"file": str(v)} for k, v in files.items()}, tokenizer, dev[:TIMED], threads=1)


def scored_rows(folders: dict[str, Path], source: Source) -> dict[str, dict]:
    """Return the fp32 row and each candidate's row (``int8_row``) of one model's exported files,
    the fp32 file being the first candidate's."""
    _, validation, dev, labels = inputs(source.carve, source.seed)
    first, task = next(iter(folders.values())), source.task
    p32_val, p32_dev = outputs(first, "fp32", validation, task), outputs(first, "fp32", dev, task)
    rows = {"fp32": {"dev_accuracy": score(p32_dev, labels, task)}}
    for cand, folder in folders.items():
        rows[cand] = int8_row(cand, folder, (p32_val, p32_dev), (validation, dev, labels), task, rows["fp32"])
    return rows


def run_model(name: str, source: Source) -> None:
    """Export every candidate of one model, score it on validation and dev, and time it."""
    out = RESULTS / f"{name.replace('/', '-')}.json"
    if out.exists():
        return
    _log(f"{name}: {source.path}")
    calibration, validation, dev, _ = inputs(source.carve, source.seed)
    folders = export_candidates(source.path, WORK / name.replace("/", "-"), calibration, source.task,
                                pool=calibration_pool(source.carve, source.seed))
    first = next(iter(folders.values()))
    rows = scored_rows(folders, source)
    timing = timed({"fp32": first / "model.onnx"} | {c: f / "model.int8.onnx" for c, f in folders.items()}, dev)
    for cand in rows:
        rows[cand]["real_mean_ms"] = timing[cand]["real_mean_ms"]
    write_result(out, {"model": name, "task": source.task, "seed": source.seed, "source": str(source.path),
                       "calibration": CALIBRATION, "validation": len(validation),
                       "timed_inputs": TIMED, "threads": 1, "rows": rows, "when": time.strftime("%Y-%m-%d"),
                       "int8_calls": ONE_PER_CALL})


def rescore_model(name: str, source: Source) -> bool:
    """Score again every candidate file of one model still in the work folder, as deploy/ runs an
    int8 file now (one input per call, ``deploy.predict.rows_per_call``); the files, their sizes,
    fp32 nodes and timings (always one input at a time) are kept. A model scored before that rule
    had its int8 files scored in batches of 64 (32 for SQuAD), where an input's activation scales
    depended on its batch-mates. Return False where a candidate's file is gone."""
    out = RESULTS / f"{name.replace('/', '-')}.json"
    body, work = read_result(out), WORK / name.replace("/", "-")
    folders = {c: work / c for c in CANDIDATES if c in body["rows"]}
    if not all((f / "model.int8.onnx").is_file() for f in folders.values()):
        return False
    _log(f"{name}: scoring again, one input per int8 call")
    rows = {c: body["rows"][c] | row for c, row in scored_rows(folders, source).items()}  # timings kept
    dropped = [c for c in body["rows"] if c not in rows]  # qat: its files are gone, its scores were batched
    write_result(out, {**body, "rows": rows, "int8_calls": ONE_PER_CALL, "rescored": time.strftime("%Y-%m-%d"),
                       **({"dropped_rows": dropped} if dropped else {})})
    return True


def scaled_ms(timing: dict[str, dict], cand: str, body: dict) -> float:
    """Return a file's time from a later pass of its own, on the scale of the model's committed run:
    its ratio to the per-channel file timed beside it, times per-channel's committed time."""
    return timing[cand]["real_mean_ms"] / timing["dynamic-per-channel"]["real_mean_ms"] \
        * body["rows"]["dynamic-per-channel"]["real_mean_ms"]


def add_candidate(name: str, source: Source, cand: str) -> None:
    """Add the row of candidate ``cand`` to a model's committed result (a candidate registered after
    the model was measured): exported and scored as the others were (on the same inputs; the fp32
    outputs from its own fp32 file, the same graph), timed interleaved with the kept per-channel and
    static files and scaled by per-channel's committed time."""
    out = RESULTS / f"{name.replace('/', '-')}.json"
    body, work = read_result(out), WORK / name.replace("/", "-")
    if cand in body["rows"]:
        return
    kept = {c: work / c / "model.int8.onnx" for c in ("dynamic-per-channel", "static-qdq")}
    if body.get("int8_calls") != ONE_PER_CALL or not all(f.is_file() for f in kept.values()):
        _log(f"{name}: its files are gone or were scored in batches; {cand} not added")
        return
    _log(f"{name}: adding {cand}")
    calibration, _, dev, _ = inputs(source.carve, source.seed)
    folders = export_candidates(source.path, work, calibration, source.task, names=(cand,),
                                pool=calibration_pool(source.carve, source.seed) if cand.endswith(SPREAD) else None)
    row = scored_rows(folders, source)[cand]
    timing = timed(kept | {cand: folders[cand] / "model.int8.onnx"}, dev)
    row["real_mean_ms"] = scaled_ms(timing, cand, body)
    row["timing_pass"] = timing
    body["rows"][cand] = row
    write_result(out, body)


RETIMED = ("dynamic-per-channel", "mixed-0.10", "dynamic-smooth", "mixed-smooth")


def retime_model(name: str, source: Source) -> None:
    """Time a model's kept files of ``RETIMED`` again, interleaved in one run (``timed``): the
    candidates added later were timed while training jobs shared the cores, and a latency goal of
    a few per cent needs a quieter pass. Written apart (``retime/``), the scores untouched."""
    from deploy.calibrate import host_description

    stem = name.replace("/", "-")
    files = {c: WORK / stem / c / "model.int8.onnx" for c in RETIMED}
    if not all(f.is_file() for f in files.values()):
        _log(f"{name}: a file of {', '.join(RETIMED)} is gone; not timed again")
        return
    _log(f"{name}: timing {', '.join(RETIMED)} again")
    timing = timed(files, inputs(source.carve, source.seed)[2])
    write_result(RESULTS / "retime" / f"{stem}.json",
                 {"model": name, "task": source.task, "timed_inputs": TIMED, "threads": 1, "timing": timing,
                  "host": host_description(), "load_1min": os.getloadavg()[0], "when": time.strftime("%Y-%m-%d %H:%M")})


ALPHA_MODELS = ("flops-50/s0", "mnli-50/s1", "qnli-50/s0", "squad-x2-50/s0")  # one of each task


def alphas_model(name: str, source: Source, alphas: list[float]) -> None:
    """Export ``dynamic-smooth`` at each migration strength of ``alphas`` and score it against the
    model's fp32 file on the **validation** inputs only (what chose the variant's α; dev is not read)."""
    from deploy.errors import ParityError

    stem = name.replace("/", "-")
    calibration, validation, _, _ = inputs(source.carve, source.seed)
    fp32 = outputs(WORK / stem / "dynamic-per-channel", "fp32", validation, source.task)
    rows = {}
    for alpha in alphas:
        try:
            folder = export_candidates(source.path, WORK / stem / f"alpha-{alpha:g}", calibration, source.task,
                                       names=("dynamic-smooth",), overrides={"int8_smooth_alphas": (alpha,)}
                                       )["dynamic-smooth"]
        except ParityError as exc:  # the export's gate refused the file: a result too
            rows[f"{alpha:g}"] = {"refused": str(exc)[:300]}
            _log(f"  α {alpha:g}: refused by the export gate")
            continue
        rows[f"{alpha:g}"] = fidelity(fp32, outputs(folder, "int8", validation, source.task), source.task)
        _log(f"  α {alpha:g}: validation agreement {rows[f'{alpha:g}']['agreement']:.4f}")
    write_result(RESULTS / "alpha" / f"{stem}.json",
                 {"model": name, "task": source.task, "validation": len(validation), "rows": rows,
                  "per_channel": read_result(RESULTS / f"{stem}.json")["rows"]["dynamic-per-channel"]["validation"],
                  "when": time.strftime("%Y-%m-%d")})


def alpha_table() -> str:
    """The ``--alphas`` sweep: validation agreement (and KL, or 1 − F1 against fp32) per α and model."""
    results = read_results(RESULTS / "alpha")
    if not results:
        return "(no α sweep yet)\n"
    alphas = sorted({a for r in results for a in r["rows"]}, key=float)

    def cell(row: dict | None) -> str:
        if row is None:
            return "–"
        if "refused" in row:
            return "refused by the gate"
        return f"{row['agreement'] * 100:.1f}% / {divergence(row):.2e}"

    return "\n".join(md_table(["model", "per-channel", *[f"α {a}" for a in alphas]],
                               [[r["model"], cell(r["per_channel"]), *[cell(r["rows"].get(a)) for a in alphas]]
                                for r in results])) + "\n"


# what the export's α choice counted as agreeing on QA (toolchain.mixed_precision.agreement): the answer span
# since the ninth session; results without the key were chosen by start and end tokens judged apart
QA_AGREEMENT = "answer span"
ALPHA_CHOICES = (0.9, 0.65, 0.8, 1.0)  # --alpha-choice's default: the variant's α first (a tie keeps it), then the
# sweep's best elsewhere (results/int8/alpha/: 0.65 on the QNLI 50% model, 0.8 and 1.0 on the dense one)


def alpha_choice_model(name: str, source: Source, alphas: tuple[float, ...]) -> None:
    """The export choosing the α per model (``--int8-smooth-alpha`` with several): each is quantised
    and checked against fp32 on the validation inputs (training inputs), the closest ships. Compared
    on **dev** with dynamic-smooth at its fixed α, both exported from the same calibration inputs;
    the choice's validation fidelity is biased (it chose on those inputs), its dev score is not."""
    stem = name.replace("/", "-")
    out = RESULTS / "alpha_choice" / f"{stem}.json"
    if out.exists():
        return fresh_check(out, source)
    calibration, validation, dev, labels = inputs(source.carve, source.seed)
    fixed = export_candidates(source.path, WORK / stem, calibration, source.task, names=("dynamic-smooth",))
    chose = export_candidates(source.path, WORK / stem / "alpha-choice", calibration + validation, source.task,
                              names=("dynamic-smooth",), overrides={"int8_smooth_alphas": tuple(alphas),
                                                                    "calibration_samples": CALIBRATION})
    rows = scored_rows({"fixed": fixed["dynamic-smooth"], "chosen": chose["dynamic-smooth"]}, source)
    check = read_result(chose["dynamic-smooth"] / "export.json")["int8"]["alpha_check"]
    write_result(out, {"model": name, "task": source.task, "seed": source.seed, "source": str(source.path),
                       "fixed_alpha": read_result(fixed["dynamic-smooth"] / "export.json")["int8"]["smoothing"]["alpha"],
                       "alphas": list(alphas), "alpha_check": check, "calibration": CALIBRATION,
                       "validation": len(validation), "rows": rows, "int8_calls": ONE_PER_CALL,
                       "qa_agreement": QA_AGREEMENT, "when": time.strftime("%Y-%m-%d")})
    _log(f"{name}: α {check['chosen']:g} chosen; dev {rows['chosen']['dev_accuracy']:.4f} vs "
         f"{rows['fixed']['dev_accuracy']:.4f} at the fixed α (fp32 {rows['fp32']['dev_accuracy']:.4f})")
    fresh_check(out, source)


def fresh_inputs(task: str, seed: int) -> list:
    """Training inputs that neither calibrated nor chose (the next ``VALIDATION`` in the seeded
    order after calibration and validation): where the per-model α choice and the fixed α are
    compared without dev and without the choice's own inputs."""
    texts, order, _, _ = _splits(task, seed)
    start = CALIBRATION + VALIDATION
    return [texts[i] for i in order[start:start + VALIDATION]]


def fresh_check(out: Path, source: Source) -> None:
    """Add to an ``--alpha-choice`` result the fidelity of both files to fp32 on ``fresh_inputs``."""
    body = read_result(out)
    if "fresh" in body:
        return
    stem = body["model"].replace("/", "-")
    folders = {"fixed": WORK / stem / "dynamic-smooth", "chosen": WORK / stem / "alpha-choice" / "dynamic-smooth"}
    if not all((f / "model.int8.onnx").is_file() for f in folders.values()):
        _log(f"{body['model']}: its files are gone; no fresh check")
        return
    items = fresh_inputs(source.carve, source.seed)
    fp32 = outputs(folders["fixed"], "fp32", items, source.task)
    body["fresh"] = {"inputs": len(items), **{k: fidelity(fp32, outputs(f, "int8", items, source.task), source.task)
                                              for k, f in folders.items()}}
    write_result(out, body)
    _log(f"{body['model']}: fresh agreement {body['fresh']['fixed']['agreement']:.4f} fixed, "
         f"{body['fresh']['chosen']['agreement']:.4f} chosen")


def alpha_choice_table() -> str:
    """``--alpha-choice``: dev score of the file the per-model α choice ships against the fixed-α one."""
    results = read_results(RESULTS / "alpha_choice")
    if not results:
        return "(no α-choice results yet)\n"
    rows, gaps = [], {"fixed": [], "chosen": []}
    for r in sorted(results, key=lambda r: (r["task"] != "sst2", r["task"], r["model"])):
        fp32 = r["rows"]["fp32"]["dev_accuracy"]
        for k in gaps:
            gaps[k].append((r["rows"][k]["dev_accuracy"] - fp32) * 100)
        fresh = r.get("fresh")

        def agree(k: str) -> str:
            return f"{fresh[k]['agreement'] * 100:.1f} / {divergence(fresh[k]):.2e}" if fresh else "–"
        rule = "" if r["task"] != "squad" or r.get("qa_agreement") == QA_AGREEMENT else " (chosen by start/end tokens)"
        rows.append([r["task"], r["model"] + rule, f"{fp32 * 100:.2f}",
                     f"{(r['rows']['fixed']['dev_accuracy'] - fp32) * 100:+.2f}",
                     f"{r['alpha_check']['chosen']:g}", f"{(r['rows']['chosen']['dev_accuracy'] - fp32) * 100:+.2f}",
                     f"{r['rows']['fixed']['validation']['agreement'] * 100:.1f}",
                     f"{r['rows']['chosen']['validation']['agreement'] * 100:.1f}", agree("fixed"), agree("chosen")])
    within = {k: sum(abs(g) <= 0.2 for g in v) for k, v in gaps.items()}
    fresh = [r["fresh"] for r in results if "fresh" in r]
    better = sum(closest({k: f[k] for k in ("fixed", "chosen")}) == "chosen" for f in fresh)  # a tie keeps the first
    worse = sum(closest({k: f[k] for k in ("chosen", "fixed")}) == "fixed" for f in fresh)
    def overall(k: str) -> str:
        return (f"{statistics.fmean(gaps[k]):+.2f} (mean abs {statistics.fmean(abs(g) for g in gaps[k]):.2f}; "
                f"{within[k]} within 0.2)")
    rows.append(["all", f"{len(results)} models", "", overall("fixed"), "", overall("chosen"), "", "",
                 *([f"{statistics.fmean(f['fixed']['agreement'] for f in fresh) * 100:.2f}",
                    f"{statistics.fmean(f['chosen']['agreement'] for f in fresh) * 100:.2f} (closer on {better} of "
                    f"{len(fresh)}, further on {worse})"] if fresh else ["–", "–"])])
    alphas = ", ".join(f"{a:g}" for a in results[0]["alphas"])
    return "\n".join(md_table(["task", "model", "fp32 file dev score", f"α {results[0]['fixed_alpha']:g}: dev − fp32",
                               f"α chosen of {alphas}", "chosen: dev − fp32",
                               "validation agreement % (fixed)", "validation agreement % (chosen; biased)",
                               "fresh training inputs: agreement % / KL, QA 1 − F1 (fixed)", "fresh: (chosen)"],
                              rows)) + "\n"


def shares_model(name: str, source: Source, shares: list[float]) -> None:
    """More fp32 for one model: the mixed-0.05 export's probes choose the fp32 nodes at each larger
    MACs share (dynamic-per-channel elsewhere); validation and dev fidelity and score of each.
    An exploration of how much fp32 a model's int8 loss needs back, not a candidate. Timed against
    the plain per-channel file, interleaved in one run."""
    from toolchain.export import ExportConfig, export
    from toolchain.mixed_precision import NodeProbe, choose

    out = RESULTS / "shares" / f"{name.replace('/', '-')}.json"
    work = WORK / name.replace("/", "-")
    if not (work / "mixed-0.05" / "export.json").exists():
        raise SystemExit(f"error: {work} has no mixed-0.05 export; run --models {name} first")
    calibration, validation, dev, labels = inputs(source.carve, source.seed)
    task, first = source.task, work / "dynamic-per-channel"
    probes = [NodeProbe(**p) for p in read_result(work / "mixed-0.05" / "export.json")["int8"]["probes"]]
    base = ExportConfig(optimize=True, quantize="int8", task=task, seq_len=max_length(task),
                        int8_variant="dynamic-per-channel")
    p32_val, p32_dev = outputs(first, "fp32", validation, task), outputs(first, "fp32", dev, task)
    rows = {"fp32": {"dev_accuracy": score(p32_dev, labels, task)}}
    for share in shares:
        folder = work / f"share-{share:g}"
        nodes = choose(probes, share)
        shutil.rmtree(folder, ignore_errors=True)
        export(source.path, folder, ExportConfig(**{**base.__dict__, "int8_fp32_nodes": nodes}),
               calibration=calibration, progress=True)
        rows[f"{share:g}"] = int8_row(f"share {share:g}", folder, (p32_val, p32_dev), (validation, dev, labels),
                                      task, rows["fp32"])
    timing = timed({"dynamic-per-channel": first / "model.int8.onnx"}
                   | {k: work / f"share-{k}" / "model.int8.onnx" for k in rows if k != "fp32"}, dev)
    for k in rows:
        if k != "fp32":
            rows[k]["real_mean_ms"] = timing[k]["real_mean_ms"]
    rows["dynamic-per-channel"] = {"real_mean_ms": timing["dynamic-per-channel"]["real_mean_ms"]}
    write_result(out, {"model": name, "task": task, "timed_inputs": TIMED, "threads": 1, "rows": rows,
                       "when": time.strftime("%Y-%m-%d"), "int8_calls": ONE_PER_CALL})


def qat_model(name: str, source: Source) -> None:
    """The quantisation-aware row of one model: fake-quantised fine-tuning, export, scores, timing."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from toolchain.export import ExportConfig, export
    from toolchain.finetune import FinetuneConfig
    from toolchain.models import load_classifier, load_teacher, load_tokenizer as hf_tokenizer
    from toolchain.qat import quantisation_aware

    out = RESULTS / f"{name.replace('/', '-')}.json"
    body = read_result(out)
    if "qat" in body["rows"]:
        return
    if source.task != "sst2":
        _log(f"{name}: the quantisation-aware row is SST-2's only; skipped")
        return
    src = source.path
    _log(f"{name}: quantisation-aware phase")
    calibration, validation, dev, labels, texts, ys = inputs(qat=True)
    work = WORK / name.replace("/", "-")
    tok = hf_tokenizer(src)

    def tokenised(items, targets):
        return Dataset.from_dict({**tok(items, truncation=True, max_length=MAX_LENGTH), "labels": targets})

    model = load_classifier(src, num_labels=2, id2label={0: "negative", 1: "positive"})
    teacher = load_teacher(TEACHER, ["negative", "positive"])
    config = FinetuneConfig(epochs=QAT["epochs"], lr=QAT["lr"], batch_size=QAT["batch_size"],
                            warmup_ratio=QAT["warmup_ratio"], fake_quant=QAT["variant"],
                            fake_quant_preset=QAT["preset"], seed=0, progress=True)
    for folder in ("qat-model", "qat"):
        shutil.rmtree(work / folder, ignore_errors=True)
    t0 = time.perf_counter()
    quantisation_aware(model, tokenised(texts, ys), tokenised(dev, labels), DataCollatorWithPadding(tok), config,
                       work / "qat-model", teacher=teacher)
    wall = time.perf_counter() - t0
    export(work / "qat-model", work / "qat", ExportConfig(optimize=True, quantize="int8", task="sst2",
                                                          seq_len=MAX_LENGTH, int8_variant=QAT["variant"]),
           progress=True)
    first, qat = work / CANDIDATES[0], work / "qat"
    p32_val, p32_dev = probabilities(first, "fp32", validation), probabilities(first, "fp32", dev)
    p8_val, p8_dev = probabilities(qat, "int8", validation), probabilities(qat, "int8", dev)
    own = probabilities(qat, "fp32", dev)
    timing = timed({"fp32": first / "model.onnx", "dynamic-per-channel": work / "dynamic-per-channel" / "model.int8.onnx",
                    "qat": qat / "model.int8.onnx"}, dev)
    body["rows"]["qat"] = {
        "validation": fidelity(p32_val, p8_val), "dev": fidelity(p32_dev, p8_dev),
        "dev_accuracy": float((p8_dev.argmax(1) == labels).mean()),
        "own_fp32_dev_accuracy": float((own.argmax(1) == labels).mean()), "fp32_nodes": [],
        "size_bytes": (qat / "model.int8.onnx").stat().st_size, "phase_wall_s": round(wall, 1),
        "real_mean_ms": scaled_ms(timing, "qat", body),
        "timing_pass": timing, "recipe": QAT}
    _log(f"  qat: dev {body['rows']['qat']['dev_accuracy']:.4f} (own fp32 {body['rows']['qat']['own_fp32_dev_accuracy']:.4f}, "
         f"original fp32 {body['rows']['fp32']['dev_accuracy']:.4f}), validation agreement "
         f"{body['rows']['qat']['validation']['agreement']:.4f}")
    write_result(out, body)


def choice(results: list[dict]) -> str:
    """The candidate the validation inputs choose: the most agreement with fp32 (mean over the
    models), then the least KL; dev never enters."""
    # not the per-model row: it picks per model on these same validation inputs, so its validation
    # agreement is biased upward and cannot be ranked against the fixed candidates here
    return closest({c: {"agreement": statistics.fmean(r["rows"][c]["validation"]["agreement"] for r in results),
                        "kl": statistics.fmean(divergence(r["rows"][c]["validation"]) for r in results)}
                    for c in ALL if all(c in r["rows"] for r in results)})


def per_model(rows: dict, pair: tuple[str, str]) -> str:
    """The candidate of ``pair`` (plain, mixed) that the validation inputs choose for one model (dev
    never enters): the export's own rule (``toolchain.mixed_precision.closest``)."""
    return closest({c: rows[c]["validation"] for c in pair})


def closest(fidelities: dict[str, dict]) -> str:
    """The export's rule (``toolchain.mixed_precision.closest``) over ``fidelity`` records: the most
    agreement, then the least divergence; a tie keeps the one listed first."""
    from toolchain import mixed_precision as mp

    return mp.closest({k: {"agreement": f["agreement"], "kl": divergence(f)} for k, f in fidelities.items()})


def with_per_model(result: dict) -> dict:
    """Return ``result`` with each derived row of ``PER_MODEL`` whose pair it has: the choice's own row."""
    rows = dict(result["rows"])
    for derived, pair in PER_MODEL.items():
        if all(c in rows for c in pair):
            rows[derived] = {**rows[per_model(rows, pair)], "chosen": per_model(rows, pair)}
    return {**result, "rows": rows}


def blocks() -> dict[str, str]:
    every = [with_per_model(r) for r in read_results(RESULTS)]
    # one way of scoring in a table: a model whose int8 files were scored in batches (before
    # rows_per_call) and could not be scored again (its files are gone) is named, not averaged in
    results = [r for r in every if r.get("int8_calls") == ONE_PER_CALL]
    batched = [r["model"] for r in every if r.get("int8_calls") != ONE_PER_CALL]
    if not results:
        return {"table:int8": "(no results yet)\n"}
    cands = tuple(c for c in ALL if any(c in r["rows"] for r in results))
    out = []
    for task in sorted({r.get("task", "sst2") for r in results}, key=lambda t: (t != "sst2", t)):
        of_task = [r for r in results if r.get("task", "sst2") == task]
        score = "F1" if task == "squad" else "accuracy"
        rows = []
        for c in cands + tuple(PER_MODEL):
            per = [r["rows"] for r in of_task if c in r["rows"]]
            if not per:
                continue
            gap = [(p[c]["dev_accuracy"] - p["fp32"]["dev_accuracy"]) * 100 for p in per]
            slow = [p[c]["real_mean_ms"] / p["dynamic-per-channel"]["real_mean_ms"] for p in per]
            rows.append([c, len(per),
                         f"{statistics.fmean(p[c]['validation']['agreement'] for p in per) * 100:.2f}",
                         f"{statistics.fmean(divergence(p[c]['validation']) for p in per):.2e}",
                         f"{statistics.fmean(p[c]['dev']['agreement'] for p in per) * 100:.2f}",
                         f"{statistics.fmean(gap):+.2f} (worst {min(gap):+.2f})",
                         f"{statistics.fmean(slow):.3f}×"])
        out += [f"**{task}** ({len(of_task)} models; chosen on validation: **{choice(of_task)}**)", "",
                *md_table(["int8 candidate", "models", "validation agreement with fp32 %",
                           "validation KL" if task != "squad" else "validation 1 − F1 vs fp32",
                           "dev agreement %", f"dev {score} − fp32 file (points)", "latency vs dynamic-per-channel"],
                          rows), ""]
    per_model = []
    for r in results:
        fp32 = r["rows"]["fp32"]["dev_accuracy"] * 100
        qat = r["rows"].get("qat")
        per_model.append([r.get("task", "sst2"), r["model"], f"{fp32:.2f}"]
                         + [f"{r['rows'][c]['dev_accuracy'] * 100:.2f}" if c in r["rows"] else "–" for c in cands]
                         + ([f"{qat['own_fp32_dev_accuracy'] * 100:.2f}" if qat else "–"] if "qat" in cands else [])
                         + [f"{r['rows'][d]['dev_accuracy'] * 100:.2f} ({r['rows'][d]['chosen']})"
                            if d in r["rows"] else "–" for d in PER_MODEL]
                         + [f"{r['rows'][SHIPPED]['real_mean_ms']:.2f} / {r['rows']['fp32']['real_mean_ms']:.2f}"
                            if SHIPPED in r["rows"] else "–"])
    detail = md_table(["task", "model", "fp32 file dev score", *cands,
                       *(["qat's own fp32 file"] if "qat" in cands else []), *[f"{d} choice" for d in PER_MODEL],
                       f"shipped ({SHIPPED}) / fp32 file, ms per input (real lengths, 1 thread)"], per_model)
    note = (f"Chosen on validation (agreement, then KL; training inputs, no labels) over every model: "
            f"**{choice(results)}**. Calibration and probes: {CALIBRATION} training inputs; validation: "
            f"{VALIDATION} others; dev (SST-2 dev, 872; a carved task's eval split): reported only. Latency: mean "
            f"per input, first {TIMED} dev inputs at their own lengths, one thread, the files of a model "
            f"interleaved in one run. "
            + "; ".join(f"`{d}`: for each model, whichever of {' and '.join(pair)} agrees best with its fp32 file "
                        "on that model's validation inputs" for d, pair in PER_MODEL.items())
            + " (derived from the same files, as the export's check chooses; not ranked with the others on "
            "validation, where their own choice biases them). Every int8 file runs one input per "
            f"call, as deploy/ runs it (`deploy.predict.rows_per_call`). `run` ships {SHIPPED} (`per-model` "
            "until 2026-12-07's fifth session). The last column of the per-model table: the shipped file's and the "
            "fp32 file's mean time per input, timed in that model's own run (hosts and load differ between models: "
            "compare within a row)."
            + (f" Not in these tables: {', '.join(batched)}, scored in batches before that rule, their files no "
               "longer on the machine that measured them (their result files keep the batched scores)."
               if batched else "") + "\n")
    return {"table:int8": "\n".join(out) + "\n" + note + "\n" + "\n".join(detail) + "\n",
            "table:int8-retime": retime_table({r["model"]: r for r in results}), "table:int8-alpha": alpha_table(),
            "table:int8-alpha-choice": alpha_choice_table()}


def retime_table(results: dict[str, dict]) -> str:
    """The ``--retime`` pass: each file's mean time per input as a ratio to per-channel's in the same
    run, mean (worst) per task; the per-model rows take the file their check chose (``results``)."""
    timings = read_results(RESULTS / "retime")
    if not timings:
        return "(no retimed results yet)\n"
    rows = []
    for task in sorted({t["task"] for t in timings}, key=lambda t: (t != "sst2", t)):
        of_task = [t for t in timings if t["task"] == task]
        for cand in RETIMED[1:] + tuple(PER_MODEL):
            ratios = []
            for t in of_task:
                chosen = results[t["model"]]["rows"][cand]["chosen"] if cand in PER_MODEL else cand
                ratios.append(t["timing"][chosen]["real_mean_ms"] / t["timing"][RETIMED[0]]["real_mean_ms"])
            rows.append([task, cand, len(ratios), f"{statistics.fmean(ratios):.3f}×", f"{max(ratios):.3f}×"])
    hosts = sorted({t["host"] for t in timings})
    load = max(t["load_1min"] for t in timings)
    return "\n".join(md_table(["task", "int8 file", "models", "time per input vs dynamic-per-channel (mean)", "worst"],
                               rows)) + (f"\n\nHost: {'; '.join(hosts)}; highest 1-minute load average at a "
                                         f"model's start: {load:.2f}.\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, choices=list(MODELS),
                        help="default: every model (--alphas: one of each task)")
    parser.add_argument("--qat", action="store_true", help="add the quantisation-aware row to each model's result")
    parser.add_argument("--rescore", action="store_true",
                        help="score the kept files of --models again, one input per int8 call (a model whose "
                             "files are gone is measured again from its source where that is on this machine)")
    parser.add_argument("--add", choices=CANDIDATES, default=None,
                        help="add one candidate's row to the committed results of --models (files still here)")
    parser.add_argument("--retime", action="store_true",
                        help=f"time the kept files of {', '.join(RETIMED)} of --models again, interleaved "
                             "(results/int8/retime/); run it on an otherwise idle machine")
    parser.add_argument("--alphas", type=float, nargs="*", default=[],
                        help="dynamic-smooth at each migration strength, scored on validation inputs only "
                             f"(results/int8/alpha/; models: {', '.join(ALPHA_MODELS)} unless --models names others)")
    parser.add_argument("--alpha-choice", type=float, nargs="*", default=None,
                        help="the export choosing dynamic-smooth's α per model among these (default "
                             f"{' '.join(f'{a:g}' for a in ALPHA_CHOICES)}), against the fixed α, scored on dev "
                             "(results/int8/alpha_choice/)")
    parser.add_argument("--shares", type=float, nargs="*", default=[],
                        help="explore larger fp32 shares of the MACs on --models (results/int8/shares/)")
    add_table_flags(parser, DOC)
    args = parser.parse_args()
    if tables_mode(args, DOC, blocks):
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.models or (ALPHA_MODELS if args.alphas else list(MODELS)):
        result = RESULTS / f"{name.replace('/', '-')}.json"
        if args.rescore and result.exists() and read_result(result).get("int8_calls") != ONE_PER_CALL:
            if rescore_model(name, MODELS[name]):
                continue
            if (MODELS[name].path / "config.json").exists():
                result.unlink()  # measured again below; git keeps the batched one
        if not (MODELS[name].path / "config.json").exists():
            _log(f"{name}: {MODELS[name].path} is not on this machine; skipped")
            continue
        if args.shares:
            shares_model(name, MODELS[name], args.shares)
            continue
        if args.retime:
            retime_model(name, MODELS[name])
            continue
        if args.alphas:
            alphas_model(name, MODELS[name], args.alphas)
            continue
        if args.alpha_choice is not None:
            alpha_choice_model(name, MODELS[name], tuple(args.alpha_choice or ALPHA_CHOICES))
            continue
        if args.add:
            if result.exists():
                add_candidate(name, MODELS[name], args.add)
            continue
        run_model(name, MODELS[name])
        if args.qat:
            qat_model(name, MODELS[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
