"""``sensibert run`` / ``sweep``: model + task + device → a checked, measured ONNX artifact.

The pipeline chains the stage verbs (analyse → allocate → finetune → shrink → export →
ONNX accuracy → measure → report). Every stage writes its files into ``--out`` and records a
key (a hash of its settings and of the stage before it) in ``state.json``: a re-run skips the
stages whose key is unchanged and whose files exist, and an interrupted run resumes at the
stage it was in. Closed loop: when the artifact misses the device's latency or memory target,
the budget is tightened by the measured ratio and trimming is redone, up to ``max_attempts``.
"""

from __future__ import annotations

import dataclasses
import errno
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from deploy.artifacts import read_json, sha256_json, write_json
from toolchain.errors import InfeasibleBudget, InputError
from toolchain.tasks import get_task


STATE_SCHEMA, STATE_VERSION = "sensibert.run_state", 1
REPORT_SCHEMA, REPORT_VERSION = "sensibert.report", 1
TIGHTEN_MARGIN = 0.95  # aim a little under the target when the loop tightens a budget

# Defaults per mode, chosen by measurement (docs/accuracy.md: bench/allocation_proxy.py and
# bench/accuracy_modes.py). Teacher-first reads sensitivity from the fine-tuned dense model;
# the paper's mode (--teacher none) from the pre-trained encoder with a fresh head.
# proportional: at 30% of the trimmable encoder 88.69% mean over 3 seeds against global's 87.92%
# and balanced's 88.07%; equal to global at 70% and 50% (bench/accuracy_modes.py, 2 seeds)
TEACHER_FIRST = {"method": "fisher", "allocation": "proportional"}
PAPER = {"method": "density", "allocation": "proportional"}
RETRAIN_FREE = {"method": "fisher", "allocation": "global"}  # Kwon et al.'s search: Fisher per unit of cost
MODES = ("teacher-first", "no-teacher", "retrain-free")
REAL_LENGTH_INPUTS = 200  # dev inputs timed when the profile judges latency at real lengths


@dataclass(frozen=True)
class RunConfig:
    """Everything ``sensibert run`` needs; the saved form of a run's settings."""

    out: str
    model: str | None = None
    task: str = "sst2"
    data_dir: str | None = None
    profile: str = "rpi4-4gb"
    keep: float | None = None          # explicit budgets override the profile's (the profile still measures)
    params: int | None = None
    flops: int | None = None
    latency_ms: float | None = None    # override of the profile's latency target
    seq_len: int | None = None         # budget sequence length (default: the profile's; pairs and QA: max_length)
    precision: str | None = None       # deployed precision (default: the profile's)
    method: str | None = None         # default: TEACHER_FIRST / PAPER by mode
    sensitivity_steps: int = 100
    allocation: str | None = None     # default: TEACHER_FIRST / PAPER by mode
    teacher: str = "dense"            # "dense" (the run's dense model), "none" (the paper's mode), or a directory
    distill_hidden: float = 1.0       # weight of the hidden-state distillation term
    finetune: bool = True             # False: the retraining-free mode (needs a fine-tuned --model)
    calibration_samples: int = 2048   # retraining-free: examples for Fisher and least squares
    min_keep: float = 0.0
    round_to: int = 1
    epochs: float = 2.0
    batch_size: int = 32
    lr: float = 1e-4
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    train_from: str = "train"          # "dev": carve train and eval out of the dev file (needs holdout_by)
    holdout_by: str | None = None      # key column kept disjoint between carved splits
    eval_fraction: float = 0.2         # share of the key's values held out for eval when carving
    doc_stride: int | None = None      # QA: tokens of overlap between windows (default: min(128, max_length // 2))
    vocab: str = "full"                # "task": keep only the word pieces the task's training texts use
    int8_variant: str | None = None    # deploy.int8 variant (default: the profile's runtime.int8_variant)
    seed: int = 0
    dense_baseline: bool = True
    max_attempts: int = 3
    bench_runs: int = 30
    force: bool = False

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.keep, self.params, self.flops)) > 1:
            raise InputError("give at most one of --keep, --params, --flops")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InputError(f"--max-attempts {self.max_attempts} is out of range; choose 1 or more")
        for flag, value in (("--epochs", self.epochs), ("--lr", self.lr)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise InputError(f"{flag} {value} is out of range; choose a value > 0")
        if not self.distill_hidden >= 0:
            raise InputError(f"--distill-hidden {self.distill_hidden} is out of range; choose a value >= 0")
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise InputError(f"--calibration-samples {self.calibration_samples} is out of range; choose 1 or more")
        if not self.teacher:
            raise InputError("--teacher is empty; choose dense, none, or a fine-tuned classifier directory")
        if self.train_from != "train" and self.holdout_by is None:
            raise InputError(f"--train-from {self.train_from} carves splits out of one file and needs --holdout-by "
                             "KEY (e.g. question for qnli, premise for mnli, article for squad)")
        if self.int8_variant is not None:
            from deploy.int8 import get_variant

            get_variant(self.int8_variant)
        self.carve()  # its own checks
        if self.doc_stride is not None and not (isinstance(self.doc_stride, int)
                                                and 0 <= self.doc_stride < self.max_length):
            raise InputError(f"--doc-stride {self.doc_stride} is out of range; choose 0 <= stride < --max-length "
                             f"({self.max_length})")
        from toolchain.vocab import VOCAB_CHOICES

        if self.vocab not in VOCAB_CHOICES:
            raise InputError(f"--vocab {self.vocab!r} is unknown; choose one of: {', '.join(VOCAB_CHOICES)}")
        if self.holdout_by is not None:
            from toolchain.tasks import check_carve_key

            check_carve_key(get_task(self.task), self.holdout_by)

    @property
    def stride(self) -> int:
        """Return the QA window overlap in effect: --doc-stride, else ``deploy.qa.default_doc_stride``."""
        from deploy.qa import default_doc_stride

        return self.doc_stride if self.doc_stride is not None else default_doc_stride(self.max_length)

    def carve(self) -> Any:
        """Return the CarveConfig when train and eval are carved out of one file, else None."""
        if self.holdout_by is None:
            return None
        from toolchain.tasks import CarveConfig

        return CarveConfig(by=self.holdout_by, eval_fraction=float(self.eval_fraction), source_split=self.train_from)

    def data_settings(self) -> dict[str, Any]:
        """Return the settings that decide which rows and tokens every stage sees."""
        return {"task": self.task, "data_dir": self.data_dir, "max_length": self.max_length,
                "max_train_samples": self.max_train_samples, "max_eval_samples": self.max_eval_samples,
                "train_from": self.train_from, "holdout_by": self.holdout_by,
                "eval_fraction": self.eval_fraction if self.holdout_by else None, "seed": self.seed,
                **({"doc_stride": self.stride} if self.task == "squad" else {})}

    @property
    def mode(self) -> str:
        """Return how the trimmed model is made: teacher-first (default), no-teacher, or retrain-free."""
        if not self.finetune:
            return "retrain-free"
        return "no-teacher" if self.teacher == "none" else "teacher-first"

    def defaults(self) -> dict[str, str]:
        """Return the sensitivity method and allocation in effect (flags, else the mode's defaults)."""
        base = {"no-teacher": PAPER, "retrain-free": RETRAIN_FREE}.get(self.mode, TEACHER_FIRST)
        return {"method": self.method or base["method"], "allocation": self.allocation or base["allocation"]}

    def settings(self) -> dict[str, Any]:
        """Return the settings that shape results (not where they go, not --force)."""
        body = asdict(self)
        body.pop("out")
        body.pop("force")
        return body


# ---------------------------------------------------------------- stage bookkeeping

class Stages:
    """The run's ``state.json``: which stage ran with which key, what it returned, how long it took."""

    def __init__(self, out: Path, identity: dict[str, Any], force: bool) -> None:
        self.out = out
        self.path = out / "state.json"
        self.force = force
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []
        self.ran: list[str] = []
        if self.path.is_file():
            state = read_json(self.path, STATE_SCHEMA, STATE_VERSION)
            if state.get("identity") != identity:
                if not force:
                    raise InputError(f"{out} holds another run's files (model {state['identity'].get('model_hash', '?')[:12]}, "
                                     f"task {state['identity'].get('task')}); choose a new --out or pass --force "
                                     "to replace them")
                self._clear()
                state = {}
        else:
            if out.is_dir() and any(out.iterdir()):
                if not force:
                    raise InputError(f"{out} is not empty and holds no sensibert run; choose a new --out "
                                     "or pass --force to replace its contents")
                self._clear()
            state = {}
        self.identity = identity
        self.stages: dict[str, Any] = state.get("stages", {})
        self._save()

    def _clear(self) -> None:
        for child in self.out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    def _save(self) -> None:
        write_json(self.path, STATE_SCHEMA, STATE_VERSION, {"identity": self.identity, "stages": self.stages})

    def run(self, name: str, settings: dict[str, Any], outputs: list[Path], fn: Callable[[], dict[str, Any]],
            upstream: str = "") -> tuple[dict[str, Any], str]:
        """Return (result, key) of a stage, running ``fn`` unless an identical run is recorded."""
        key = sha256_json({"settings": settings, "upstream": upstream})
        rec = self.stages.get(name)
        if not self.force and rec and rec.get("key") == key and rec.get("done") \
                and all(p.exists() for p in outputs):
            self.skipped.append(name)
            self.timings[name] = rec.get("wall_s", 0.0)
            print(f"[sensibert run] stage {name}: unchanged, skipped", flush=True)  # resuming is normal, not a warning
            return rec["result"], key
        self.stages[name] = {"key": key, "done": False, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._save()
        print(f"[sensibert run] stage {name} ...", flush=True)
        start = time.perf_counter()
        try:
            result = fn()
        except OSError as exc:
            raise _io_error(exc, name) from None
        wall = round(time.perf_counter() - start, 2)
        self.stages[name] = {"key": key, "done": True, "wall_s": wall, "result": result}
        self.timings[name] = wall
        self.ran.append(name)
        self._save()
        return result, key


def _io_error(exc: OSError, stage: str) -> InputError:
    what = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
            errno.ENOTDIR: "a path component is not a folder"}.get(exc.errno, exc.strerror or str(exc))
    return InputError(f"stage {stage} cannot write {exc.filename or '--out'}: {what}; free space or choose a "
                      "writable --out (files of earlier stages are intact)")


# ---------------------------------------------------------------- the run

@dataclass
class _Context:
    config: RunConfig
    out: Path
    model_dir: Path
    model_hash: str
    profile: Any
    shape: Any
    precision: str
    finetuned_input: bool = False      # --model already holds a classifier fine-tuned on the task
    seq_len: int = 128                 # the budget's (and, for pairs and QA, the measurement's) length
    teacher_dir: Path | None = None    # --teacher DIR (else the run's dense model)
    data: Any = None
    tokenizer: Any = None
    eval_items: list = field(default_factory=list)
    eval_labels: list = field(default_factory=list)


def _prepare(config: RunConfig) -> tuple[_Context, Any]:
    """Return the context and the device budget; refuse infeasible devices before any training."""
    from deploy.profile import load_profile
    from toolchain.budget import derive_budget
    from toolchain.models import dir_shape
    from toolchain.models import check_task_head, is_classifier, model_hash

    spec = get_task(config.task)
    profile = load_profile(config.profile)
    model_dir, shape = dir_shape(config.model, num_labels=len(spec.label_names), pooler=not spec.qa)
    finetuned = is_classifier(model_dir)
    if finetuned:
        check_task_head(model_dir, spec.label_names, qa=spec.qa)
    if config.mode == "retrain-free" and not finetuned:
        raise InputError(f"--no-finetune needs a classifier already fine-tuned on {spec.name}, but {model_dir} is an "
                         "encoder with no task head; drop --no-finetune, or pass --model a fine-tuned classifier")
    teacher_dir = _check_teacher_dir(config, model_dir, spec) if config.teacher not in ("dense", "none") else None
    from toolchain.plan import get_allocation
    from toolchain.sensitivity import get_scorer

    get_scorer(config.defaults()["method"])  # unknown names refused before any work
    get_allocation(config.defaults()["allocation"])
    precision = config.precision or profile.runtime.precision
    # Pairs and QA windows are longer than the sentences a profile's seq_len describes: their
    # budget (and measurement) is at the task's own length unless --seq-len says otherwise.
    default_seq = profile.budget.seq_len if spec.kind == "single" else config.max_length
    seq_len = min(config.seq_len or default_seq, shape.max_positions)
    device = derive_budget(profile, shape, precision=precision, seq_len=seq_len,
                           latency_ms=config.latency_ms)
    if not device.feasible:
        raise InfeasibleBudget(device.infeasible_reason())
    ctx = _Context(config=config, out=Path(config.out), model_dir=model_dir, model_hash=model_hash(model_dir),
                   profile=profile, shape=shape, precision=precision, finetuned_input=finetuned,
                   seq_len=seq_len,
                   teacher_dir=teacher_dir)
    return ctx, device


def _check_teacher_dir(config: RunConfig, model_dir: Path, spec: Any) -> Path:
    """Return the --teacher directory once it is known to fit the model and the task (no weights loaded)."""
    from types import SimpleNamespace

    from toolchain.finetune import check_teacher
    from toolchain.models import check_task_head, is_classifier, read_model_config, resolve_model_dir

    try:
        path = resolve_model_dir(config.teacher)
    except InputError as exc:
        raise InputError(f"--teacher: {str(exc).split(';')[0]}; pass --teacher dense, none, or the directory "
                         "of a dense classifier fine-tuned on the task") from None
    if not is_classifier(path):
        raise InputError(f"teacher {path} has no trained classification head; pass a dense classifier "
                         "fine-tuned on the task, or --teacher dense to use the run's own dense model")
    check_task_head(path, spec.label_names, role="teacher", qa=spec.qa)
    teacher, student = (SimpleNamespace(**{"num_labels": len(spec.label_names), "id2label": None,
                                           **read_model_config(d)}) for d in (path, model_dir))
    teacher.num_labels = student.num_labels = len(spec.label_names)
    check_teacher(teacher, student, hidden=config.distill_hidden > 0)
    return path


def _load_data(ctx: _Context) -> None:
    """Tokenise the task's data once per process (cheap next to training, needed by several stages)."""
    if ctx.data is not None:
        return
    from toolchain.tasks import load_task_data
    from toolchain.models import load_tokenizer

    c = ctx.config
    ctx.tokenizer = load_tokenizer(ctx.model_dir)
    ctx.data = load_task_data(c.task, ctx.tokenizer, data_dir=c.data_dir, max_length=c.max_length,
                              max_train_samples=c.max_train_samples, max_eval_samples=c.max_eval_samples,
                              seed=c.seed, carve=c.carve(), doc_stride=c.stride)
    if ctx.data.qa is None:
        ctx.eval_items, ctx.eval_labels = ctx.data.eval_items()


def _extra_dev_sources(ctx: _Context) -> dict[str, str]:
    """Return the sources of the task's further dev splits present, without tokenising anything
    (a resumed run whose evaluation is done must not pay for the data)."""
    if ctx.data is not None:
        return ctx.data.extra_sources
    from toolchain.tasks import load_extra_dev

    c = ctx.config
    return load_extra_dev(get_task(c.task), c.data_dir, c.max_eval_samples, c.seed)[1]


def _where(ctx: _Context, path: Path, outside: str | None = None) -> str:
    """Return ``path`` as a stage key records it: relative inside ``--out`` (a moved run folder
    still resumes), else ``outside`` or the path itself."""
    if path.is_relative_to(ctx.out):
        return str(path.relative_to(ctx.out))
    return outside if outside is not None else str(path)


def _analyze(ctx: _Context, st: Stages, source: Path, upstream: str = "") -> tuple[Any, str]:
    """Sensitivity of the model in ``source``: the pre-trained encoder with a fresh head (the
    paper's mode) or the dense fine-tuned model (teacher-first), whose head knows the task."""
    from toolchain.sensitivity import Sensitivity, SensitivityConfig, analyse

    c = ctx.config
    method = c.defaults()["method"]
    path = ctx.out / "sensitivity.json"
    settings = {"model": ctx.model_hash, "source": _where(ctx, source, "input"), **c.data_settings(),
                "method": method, "steps": c.sensitivity_steps}

    def work() -> dict[str, Any]:
        from toolchain.models import load_task_model
        from toolchain.plots import sensitivity_heatmap

        _load_data(ctx)
        model = load_task_model(source, ctx.data.task, seed=c.seed)
        sens = analyse(model, ctx.data.train, ctx.data.collator,
                       SensitivityConfig(method=method, steps=c.sensitivity_steps, seed=c.seed),
                       model_hash=ctx.model_hash, data_hash=ctx.data.data_hash, task=c.task)
        sens.save(path)
        sensitivity_heatmap(sens, path.with_suffix(".png"))
        return {"wall_time_s": sens.wall_time_s, "data_hash": ctx.data.data_hash, "data_source": ctx.data.source}

    result, key = st.run("analyze", settings, [path], work, upstream)
    return Sensitivity.load(path), key


def _trim(ctx: _Context, st: Stages, name: str, plan: Any, folder: Path, upstream: str,
          start: Path, teacher: Path | None) -> tuple[dict, str]:
    """Make the masked model of ``plan`` in ``folder``/finetuned from the weights in ``start`` by
    budgeted fine-tuning (distilling from ``teacher`` when given)."""
    c = ctx.config
    out = folder / "finetuned"
    common = {"plan": plan.to_dict(), **c.data_settings(), "mode": c.mode}
    from toolchain.finetune import FinetuneConfig, finetune

    ft_config = FinetuneConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, seed=c.seed,
                               distill_hidden=c.distill_hidden)

    def work() -> dict[str, Any]:
        from toolchain.models import load_task_model, load_teacher

        _load_data(ctx)
        spec = ctx.data.task
        model = load_task_model(start, spec, seed=c.seed)
        res = finetune(model, plan, ctx.data.train, ctx.data.eval, ctx.data.collator, ft_config, out,
                       teacher=load_teacher(teacher, spec.label_names, qa=spec.qa) if teacher is not None else None,
                       provenance={**_provenance(ctx), "mode": c.mode, "teacher": str(teacher) if teacher else None},
                       scorer=ctx.data.scorer(), label_keys=ctx.data.label_keys)
        return {"dev_accuracy": res.best_accuracy, "dev_accuracy_per_epoch": list(res.dev_accuracy),
                "steps": res.steps, "wall_time_s": res.wall_time_s}

    settings = {**common, "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr,
                "distill_hidden": c.distill_hidden if teacher is not None else None,
                "teacher": None if teacher is None else _where(ctx, teacher)}
    return st.run(name, settings, [out / "masks.json"], work, upstream)


def _retrain_free(ctx: _Context, st: Stages, name: str, budget: Any, folder: Path, upstream: str,
                  start: Path) -> tuple[dict, str]:
    """Make the masked model in ``folder``/finetuned from the fine-tuned weights in ``start`` with
    no gradient step; its own Fisher pass is the run's analysis (no separate sensitivity stage)."""
    from toolchain.retrain_free import RetrainFreeConfig, retrain_free

    c = ctx.config
    out = folder / "finetuned"
    rf_config = RetrainFreeConfig(samples=c.calibration_samples, allocation=c.defaults()["allocation"], seed=c.seed)

    def work() -> dict[str, Any]:
        from toolchain.models import load_teacher

        _load_data(ctx)
        model = load_teacher(start, ctx.data.task.label_names, qa=ctx.data.task.qa)
        res = retrain_free(model, budget, ctx.data.train, ctx.data.eval, ctx.data.collator, rf_config, out,
                           provenance=_provenance(ctx), scorer=ctx.data.scorer(), label_keys=ctx.data.label_keys)
        return {"dev_accuracy": res.dev_accuracy, "dev_accuracy_untuned": res.dev_accuracy_untuned,
                "heads": list(res.heads), "ffn": list(res.ffn), "steps": 0, "wall_time_s": res.wall_time_s}

    settings = {"budget": budget.to_dict(), **c.data_settings(), "mode": c.mode, "retrain_free": rf_config.to_dict()}
    return st.run(name, settings, [out / "masks.json", out / "plan.json", out / "sensitivity.json"], work, upstream)


def _deliver(ctx: _Context, st: Stages, prefix: str, folder: Path, masked: Path, upstream: str,
             shrink_first: bool = True) -> tuple[dict[str, Any], str]:
    """Shrink, export (fp32 optimised, plus int8 when deployed in int8), score and measure one model."""
    from deploy.measure import BenchConfig, measure, write_bench
    from toolchain.export import ExportConfig, export, int8_choice
    from toolchain.shrink import shrink_dir

    c = ctx.config
    trimmed, artifact = folder / "trimmed", folder / "artifact"
    quantize = "int8" if ctx.precision == "int8" else None
    _, key = st.run(f"{prefix}shrink", {}, [trimmed / "config.json"],
                    lambda: _summary(shrink_dir(masked, trimmed)), upstream)
    if c.vocab == "task" and prefix != "dense/":  # the baseline keeps the full vocabulary
        from toolchain.vocab import trim_vocab

        def vocab() -> dict[str, Any]:
            _load_data(ctx)
            return trim_vocab(trimmed, folder / "trimmed-vocab", ctx.data.train_texts or [],
                              ctx.data.eval_texts()).to_dict()

        _, key = st.run(f"{prefix}vocab", {"vocab": c.vocab}, [folder / "trimmed-vocab" / "config.json"], vocab, key)
        trimmed = folder / "trimmed-vocab"
    export_config = ExportConfig(optimize=True, quantize=quantize, task=c.task, seq_len=c.max_length,
                                 profile=ctx.profile.path, int8_variant=c.int8_variant)
    variant, preset, _ = int8_choice(export_config, ctx.profile)

    def export_stage() -> dict[str, Any]:
        calibration = None
        if quantize and variant.static:  # activation ranges from the task's training inputs, never dev
            _load_data(ctx)
            calibration = list(ctx.data.train_texts or [])
            if not calibration:
                raise InputError(f"int8 variant {variant.name} needs calibration inputs and the data has no "
                                 "training split; choose --int8-variant dynamic-per-channel")
        return _export_summary(export(trimmed, artifact, export_config, calibration=calibration, progress=True))

    int8_key = {"int8_variant": variant.name, "int8_preset": preset} if quantize else {}
    exported, key = st.run(f"{prefix}export", {"quantize": quantize, "max_length": c.max_length, **int8_key},
                           [artifact / "sensibert.json"], export_stage, key)

    def evaluate() -> dict[str, Any]:
        _load_data(ctx)
        if ctx.data.qa is not None:
            from toolchain.tasks.qa import onnx_qa_scores

            scores = {p: onnx_qa_scores(artifact, p, ctx.data.qa) for p in exported["models"]}
        else:  # the main dev split, then the task's further dev splits present (MNLI mismatched)
            extra = ctx.data.extra_eval_items()
            scores = {p: {"accuracy": onnx_accuracy(artifact, p, ctx.eval_items, ctx.eval_labels),
                          **{f"accuracy_{name}": onnx_accuracy(artifact, p, items, labels)
                             for name, (items, labels) in extra.items()}}
                      for p in exported["models"]}
        from toolchain.report import data_record

        return {"scores": scores, "data": data_record(c, ctx.data)}  # what was scored, for resumed reports

    extra_dev = {}
    if get_task(c.task).extra_dev:  # which further dev splits exist decides what is scored
        extra_dev = {"extra_dev": _extra_dev_sources(ctx)}
    evaluated, key = st.run(f"{prefix}evaluate", {**c.data_settings(), **extra_dev}, [artifact / "sensibert.json"],
                            evaluate, key)
    metric = get_task(c.task).metric
    accuracy = {p: s[metric] for p, s in evaluated["scores"].items()}

    real = ctx.profile.budget.latency_measure == "real" and get_task(c.task).kind != "qa"

    def bench() -> dict[str, Any]:
        from deploy.lengths import LengthBenchConfig, describe, device_estimate, measure_lengths

        from toolchain.progress import batches_bar

        results = {}
        if real:
            _load_data(ctx)
        for p in batches_bar(list(exported["models"]), "measure", unit="model"):
            seq = None if get_task(c.task).kind == "single" else min(ctx.seq_len, c.max_length)
            res = measure(artifact, ctx.profile, BenchConfig(precision=p, runs=c.bench_runs, seq_len=seq))
            write_bench(res, folder / f"bench-{p}.json")
            results[p] = res.to_dict()
            if real:  # the profile judges latency on the task's own inputs at their lengths
                lengths = measure_lengths(artifact, ctx.eval_items[:REAL_LENGTH_INPUTS], ctx.profile.runtime,
                                          LengthBenchConfig(precision=p), source="the task's dev inputs")
                results[p]["real_lengths"] = {**lengths.to_dict(), "measure": describe(lengths),
                                              "estimate": dataclasses.asdict(device_estimate(lengths, ctx.profile))}
        return results

    benches, key = st.run(f"{prefix}measure", {"runs": c.bench_runs, "profile": ctx.profile.to_dict(), "real": real,
                                               **({} if get_task(c.task).kind == "single"
                                                  else {"seq_len": ctx.seq_len})},
                          [folder / f"bench-{p}.json" for p in exported["models"]], bench, key)
    return {"export": exported, "onnx_accuracy": accuracy, "onnx_scores": evaluated["scores"],
            "data": evaluated.get("data"), "bench": benches}, key


def _summary(report: Any) -> dict[str, Any]:
    return report.to_dict() if hasattr(report, "to_dict") else {"done": True}


def _export_summary(res: Any) -> dict[str, Any]:
    return {"models": dict(res.models), "sizes": dict(res.sizes), "sha256": dict(res.sha256),
            "op_counts": res.op_counts, "encoder_params_onnx": res.encoder_params_onnx,
            "encoder_params_expected": res.encoder_params_expected,
            "attention_num_heads": list(res.attention_num_heads),
            "parity": {p: _summary(r) for p, r in res.parity.items()}, "int8": res.int8}


def onnx_accuracy(artifact: Path, precision: str, items: list, labels: list[int]) -> float:
    """Return dev accuracy of one ONNX model of an artifact, run by onnxruntime through deploy/."""
    import numpy as np

    from deploy.predict import PredictConfig, Predictor

    from toolchain.progress import batches_bar

    predictor = Predictor(artifact, PredictConfig(precision=precision, batch_size=64))
    correct = 0
    for start in batches_bar(range(0, len(items), 64), f"score {precision} ONNX"):
        probs, _ = predictor.probabilities(items[start:start + 64])
        correct += int((np.argmax(probs, axis=1) == np.asarray(labels[start:start + 64])).sum())
    return correct / len(items)


def _provenance(ctx: _Context) -> dict[str, Any]:
    """Return what a masked-model folder records about where it came from (export reads the task)."""
    c = ctx.config
    body = {"task": c.task, "task_kind": ctx.data.task.kind, "max_length": c.max_length,
            "data_hash": ctx.data.data_hash, "model_hash": ctx.model_hash, "carved": ctx.data.carved}
    if ctx.data.qa is not None:
        body |= {"doc_stride": c.stride, "skipped_examples": len(ctx.data.qa.skipped),
                 "train_features": ctx.data.qa.train_stats}
    return body


def _device_check(ctx: _Context, delivered: dict[str, Any]) -> dict[str, Any]:
    """Return what the deployed precision's measurement says about the device's targets
    (``deploy.measure.budget_checks``, the verdict ``sensibert-deploy check`` gives)."""
    from deploy.measure import BenchResult, DeviceEstimate, budget_checks

    bench = dict(delivered["bench"][ctx.precision])
    real = bench.pop("real_lengths", None)
    result = BenchResult.from_dict(bench)
    estimate = DeviceEstimate(**real["estimate"]) if real else None
    measure = real["measure"] if real else f"{result.seq_len} tokens, batch {result.batch}"
    memory, latency = budget_checks(result, ctx.profile, ctx.config.latency_ms, estimate=estimate, measure=measure)
    return {"precision": ctx.precision, "latency_estimate_ms": latency.value, "latency_target_ms": latency.limit,
            "latency_ok": latency.passed, "latency_tag": (estimate or result.estimate).tag,
            "latency_method": (estimate or result.estimate).method, "latency_measure": measure,
            "peak_rss_bytes": memory.value, "memory_limit_bytes": memory.limit, "memory_ok": memory.passed,
            "host_p50_ms": real["p50_ms"] if real else result.p50_ms}


def _tighten(budget: Any, plan: Any, check: dict[str, Any]) -> Any:
    """Return the budget scaled by the measured miss (latency ratio on FLOPs, memory ratio on params)."""
    from toolchain.budget import Budget

    flops, params = budget.max_encoder_flops, budget.max_trimmable_params
    if not check["latency_ok"]:
        ratio = check["latency_target_ms"] / check["latency_estimate_ms"] * TIGHTEN_MARGIN
        flops = int(plan.cost["encoder_flops"] * ratio)
    if not check["memory_ok"]:
        ratio = check["memory_limit_bytes"] / max(check["peak_rss_bytes"], 1) * TIGHTEN_MARGIN
        params = int(plan.cost["trimmable_params"] * ratio)
    return Budget(max_trimmable_params=params, max_encoder_flops=flops, seq_len=budget.seq_len,
                  batch=budget.batch, source={**budget.source, "tightened": True})


def _initial_budget(ctx: _Context, device: Any) -> Any:
    from toolchain.budget import budget_from_flops, budget_from_keep, budget_from_params

    c = ctx.config
    seq = device.seq_len
    if c.keep is not None:
        return budget_from_keep(ctx.shape, c.keep, seq_len=seq)
    if c.params is not None:
        return budget_from_params(ctx.shape, c.params, seq_len=seq)
    if c.flops is not None:
        return budget_from_flops(ctx.shape, c.flops, seq_len=seq)
    return device.to_budget()


def _sources(ctx: _Context, dense: dict[str, Any] | None) -> tuple[Path, Path | None]:
    """Return (weights to start trimming from, teacher to distil from) for the run's mode."""
    c = ctx.config
    if c.mode == "no-teacher":
        return ctx.model_dir, None
    tuned = ctx.out / dense["masked_dir"]
    if c.mode == "retrain-free":
        return tuned, None
    return tuned, ctx.teacher_dir or tuned


def _plan(ctx: _Context, st: Stages, name: str, budget: Any, sens: Any, path: Path, upstream: str) -> tuple[Any, str]:
    """Return (the plan allocated from ``sens`` under ``budget``, its stage key); saved at ``path``."""
    from toolchain.plan import Plan, PlanConfig, allocate

    c = ctx.config
    plan_cfg = PlanConfig(allocation=c.defaults()["allocation"], min_keep=c.min_keep, round_to=c.round_to)

    def work() -> dict[str, Any]:
        plan = allocate(sens, sens.shape, budget, plan_cfg)
        plan = dataclasses.replace(plan, settings={**plan.settings, "precision": ctx.precision})
        plan.save(path)
        return {"heads": list(plan.heads), "ffn": list(plan.ffn)}

    _, key = st.run(name, {"budget": budget.to_dict(), "plan": plan_cfg.to_dict()}, [path], work, upstream)
    return Plan.load(path), key


def _attempts(ctx: _Context, st: Stages, sens: Any, sens_key: str, device: Any, prefix: str,
              dense: dict[str, Any] | None) -> list[dict]:
    """Run plan → finetune → deliver (or retrain-free → deliver), tightening the budget until the
    device's targets are met."""
    from toolchain.plan import Plan

    c = ctx.config
    budget = _initial_budget(ctx, device)
    attempts = []
    for attempt in range(1, c.max_attempts + 1):
        folder = ctx.out / f"{prefix}attempt-{attempt}"
        name = f"{prefix}attempt-{attempt}/"
        start, teacher = _sources(ctx, dense)
        try:
            if c.mode == "retrain-free":  # its own Fisher search chooses the units and writes the plan shipped
                tuned, key = _retrain_free(ctx, st, f"{name}retrain-free", budget, folder, sens_key, start)
                plan = Plan.load(folder / "finetuned" / "plan.json")
            else:
                plan, key = _plan(ctx, st, f"{name}plan", budget, sens, folder / "plan.json", sens_key)
                tuned, key = _trim(ctx, st, f"{name}finetune", plan, folder, key, start, teacher)
        except InfeasibleBudget as exc:
            if not attempts:
                raise
            print(f"[sensibert run] cannot tighten further: {exc}", flush=True)
            break
        delivered, key = _deliver(ctx, st, name, folder, folder / "finetuned", key)
        check = _device_check(ctx, delivered)
        attempts.append({"attempt": attempt, "folder": str(folder.relative_to(ctx.out)), "budget": budget.to_dict(),
                         "plan": plan.to_dict(), "finetune": tuned, **delivered, "check": check})
        if check["latency_ok"] and check["memory_ok"]:
            break
        if attempt < c.max_attempts:
            print(f"[sensibert run] attempt {attempt} misses the target (latency {check['latency_estimate_ms']:.1f} "
                  f"ms vs {check['latency_target_ms']:g} ms, memory {check['peak_rss_bytes'] / 2**20:.0f} MiB vs "
                  f"{check['memory_limit_bytes'] / 2**20:.0f} MiB): tightening the budget", flush=True)
            try:
                budget = _tighten(budget, plan, check)
            except ValueError:
                break
    return attempts


def _dense(ctx: _Context, st: Stages) -> tuple[dict[str, Any], str]:
    """Return the dense model's record and stage key: fine-tuned with the run's recipe, or, when
    --model is already fine-tuned on the task, that model as it is. It is the baseline, and in
    the teacher-first and retraining-free modes the teacher and the weights trimming starts from."""
    from toolchain.plan import Plan, dense_plan

    folder = ctx.out / "dense"
    plan_path = folder / "plan.json"

    def make_plan() -> dict[str, Any]:
        dense_plan(ctx.shape, ctx.model_hash).save(plan_path)
        return {}

    _, key = st.run("dense/plan", {"model": ctx.model_hash}, [plan_path], make_plan)
    plan = Plan.load(plan_path)
    if ctx.finetuned_input:
        tuned, key = _adopt(ctx, st, plan, folder, key)
    else:
        tuned, key = _trim(dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, teacher="none")),
                           st, "dense/finetune", plan, folder, key, ctx.model_dir, None)
    delivered, _ = _deliver(ctx, st, "dense/", folder, folder / "finetuned", key)
    return {"plan": plan.to_dict(), "finetune": tuned, "masked_dir": "dense/finetuned", **delivered}, key


def _adopt(ctx: _Context, st: Stages, plan: Any, folder: Path, upstream: str) -> tuple[dict, str]:
    """Take a fine-tuned --model as the dense model: saved with dense masks, scored on dev."""
    out = folder / "finetuned"

    def work() -> dict[str, Any]:
        from toolchain.finetune import write_masked_dir
        from toolchain.masks import MaskSet
        from toolchain.models import load_teacher
        from toolchain.retrain_free import torch_score

        _load_data(ctx)
        model = load_teacher(ctx.model_dir, ctx.data.task.label_names, qa=ctx.data.task.qa)
        accuracy = torch_score(model, ctx.data.eval, ctx.data.collator, ctx.data.scorer())
        masks = MaskSet.dense(ctx.shape.num_layers, ctx.shape.heads[0], ctx.shape.ffn[0])
        metrics = {"mode": "adopted", "best": {"accuracy": accuracy, "epoch": 0, "step": 0}, "steps": 0,
                   "source": str(ctx.model_dir), "model_hash": ctx.model_hash}
        write_masked_dir(out, model, masks, plan, metrics, [], ctx.tokenizer)
        return {"dev_accuracy": accuracy, "steps": 0, "wall_time_s": 0.0, "adopted": True}

    return st.run("dense/adopt", ctx.config.data_settings(), [out / "masks.json"], work, upstream)


def _analysis_and_dense(ctx: _Context, st: Stages) -> tuple[Any, str, dict[str, Any] | None]:
    """Return (sensitivity, its key, dense record) in the order the mode needs them."""
    c = ctx.config
    if c.mode == "no-teacher":
        sens, key = _analyze(ctx, st, ctx.model_dir)
        dense = _dense(ctx, st)[0] if c.dense_baseline or ctx.finetuned_input else None
        return sens, key, dense
    dense, dense_key = _dense(ctx, st)  # teacher and warm start: always needed
    if c.mode == "retrain-free":  # its Fisher pass is done inside the mode, once per budget
        return None, dense_key, dense
    sens, key = _analyze(ctx, st, ctx.out / dense["masked_dir"], dense_key)
    return sens, key, dense


def _identity(ctx: _Context) -> dict[str, Any]:
    return {"model_hash": ctx.model_hash, "task": ctx.config.task}


def _open_out(ctx: _Context) -> Stages:
    """Return the stage book of ``--out``, creating the folder; unwritable folders are one clear line."""
    try:
        ctx.out.mkdir(parents=True, exist_ok=True)
        return Stages(ctx.out, _identity(ctx), ctx.config.force)
    except OSError as exc:
        raise _io_error(exc, "setup") from None


def run(config: RunConfig) -> dict[str, Any]:
    """Return the report of a full run (also written as report.json / report.md in ``config.out``)."""
    ctx, device = _prepare(config)
    st = _open_out(ctx)
    started = time.perf_counter()
    sens, sens_key, dense = _analysis_and_dense(ctx, st)
    attempts = _attempts(ctx, st, sens, sens_key, device, prefix="", dense=dense)
    from toolchain.report import build_report, write_report

    if sens is None:  # retrain-free: the analysis of the shipped attempt
        from toolchain.sensitivity import Sensitivity

        sens = Sensitivity.load(ctx.out / attempts[-1]["folder"] / "finetuned" / "sensitivity.json")
    report = build_report(ctx, device, sens, dense, attempts, st, time.perf_counter() - started)
    write_report(report, ctx.out, sens)
    return report


def sweep(config: RunConfig, keeps: list[float]) -> dict[str, Any]:
    """Return the Pareto table of runs at several keep fractions sharing one sensitivity analysis."""
    if not keeps or any(not 0 < k <= 1 for k in keeps):
        raise InputError(f"--budgets {keeps} must be fractions in (0, 1], e.g. 0.3,0.5,0.7")
    ctx, device = _prepare(config)
    st = _open_out(ctx)
    sens, sens_key, dense = _analysis_and_dense(ctx, st)
    points = []
    for keep in sorted(set(keeps)):
        sub = dataclasses.replace(config, keep=keep, params=None, flops=None, max_attempts=1)
        sub_ctx = dataclasses.replace(ctx, config=sub)
        attempt = _attempts(sub_ctx, st, sens, sens_key, device, prefix=f"keep-{int(round(keep * 100))}/",
                            dense=dense)[0]
        points.append({"keep": keep, **attempt})
    from toolchain.report import write_sweep

    return write_sweep(ctx, dense, points)
