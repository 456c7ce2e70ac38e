"""What every stage of one run shares: the resolved model, profile, shapes and the data,
prepared (and checked) before any stage runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.errors import InfeasibleBudget, InputError
from toolchain.tasks import get_task
from toolchain.pipeline.config import RunConfig
from toolchain.pipeline.book import Stages, io_error


@dataclass
class RunContext:
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
    latency: Any = None                # the latency-priced plans' cap and table (checked in prepare)
    data: Any = None
    tokenizer: Any = None
    eval_items: list = field(default_factory=list)
    eval_labels: list = field(default_factory=list)


def prepare(config: RunConfig, one_budget: bool = True) -> tuple[RunContext, Any]:
    """Return the context and the device budget; refuse infeasible devices, and latency targets
    no plan reaches, before any training (``one_budget`` False: a sweep, whose budgets vary, so a
    target the dense model meets is judged per budget at its plan)."""
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
    teacher_dir = check_teacher_dir(config, model_dir, spec) if config.teacher not in ("dense", "none") else None
    precision = config.precision or profile.runtime.precision
    # Pairs and QA windows are longer than the sentences a profile's seq_len describes: their
    # budget (and measurement) is at the task's own length unless --seq-len says otherwise.
    default_seq = profile.budget.seq_len if spec.kind == "single" else config.max_length
    seq_len = min(config.seq_len or default_seq, shape.max_positions)
    device = derive_budget(profile, shape, precision=precision, seq_len=seq_len,
                           latency_ms=config.latency_ms)
    if not device.feasible:
        raise InfeasibleBudget(device.infeasible_reason())
    ctx = RunContext(config=config, out=Path(config.out), model_dir=model_dir, model_hash=model_hash(model_dir),
                   profile=profile, shape=shape, precision=precision, finetuned_input=finetuned,
                   seq_len=seq_len,
                   teacher_dir=teacher_dir)
    plan_config = config.plan_config()
    if plan_config.cost_model == "latency":
        # a plan's allowed units follow from the shape alone: a table for another model, or a target
        # below the smallest plan, is refused now rather than after the dense fine-tuning
        from toolchain.budget import latency_budget
        from toolchain.plan import check_latency_target

        budget = initial_budget(ctx, device)
        ctx.latency = latency_budget(profile, precision, budget.seq_len, config.latency_ms)
        check_latency_target(shape, budget, ctx.latency, plan_config, dense_side=one_budget)
    if config.validation_fraction:
        # whether the carve leaves both training and validation data is known only from the rows:
        # read them before any stage writes (otherwise they are read when a stage first needs them)
        load_data(ctx)
    return ctx, device


def initial_budget(ctx: RunContext, device: Any) -> Any:
    """Return the run's first budget: --keep, --params or --flops, else the device profile's."""
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


def check_teacher_dir(config: RunConfig, model_dir: Path, spec: Any) -> Path:
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


def load_data(ctx: RunContext) -> None:
    """Tokenise the task's data once per process (cheap next to training, needed by several stages)."""
    if ctx.data is not None:
        return
    from toolchain.tasks import load_task_data
    from toolchain.models import load_tokenizer

    c = ctx.config
    ctx.tokenizer = load_tokenizer(ctx.model_dir)
    ctx.data = load_task_data(c.task, ctx.tokenizer, data_dir=c.data_dir, max_length=c.max_length,
                              max_train_samples=c.max_train_samples, max_eval_samples=c.max_eval_samples,
                              seed=c.seed, carve=c.carve(), doc_stride=c.stride,
                              validation_fraction=c.validation_fraction)
    if ctx.data.qa is None:
        ctx.eval_items, ctx.eval_labels = ctx.data.eval_items()


def extra_dev_sources(ctx: RunContext) -> dict[str, str]:
    """Return the sources of the task's further dev splits present, without tokenising anything
    (a resumed run whose evaluation is done must not pay for the data)."""
    if ctx.data is not None:
        return ctx.data.extra_sources
    from toolchain.tasks import load_extra_dev

    c = ctx.config
    return load_extra_dev(get_task(c.task), c.data_dir, c.max_eval_samples, c.seed)[1]


def where(ctx: RunContext, path: Path, outside: str | None = None) -> str:
    """Return ``path`` as a stage key records it: relative inside ``--out`` (a moved run folder
    still resumes), else ``outside`` or the path itself."""
    if path.is_relative_to(ctx.out):
        return str(path.relative_to(ctx.out))
    return outside if outside is not None else str(path)


def provenance(ctx: RunContext) -> dict[str, Any]:
    """Return what a masked-model folder records about where it came from (export reads the task)."""
    c = ctx.config
    body = {"task": c.task, "task_kind": ctx.data.task.kind, "max_length": c.max_length,
            "data_hash": ctx.data.data_hash, "model_hash": ctx.model_hash, "carved": ctx.data.carved,
            "validation": ctx.data.validation_record}
    if ctx.data.qa is not None:
        body |= {"doc_stride": c.stride, "skipped_examples": len(ctx.data.qa.skipped),
                 "train_features": ctx.data.qa.train_stats}
    return body


def identity(ctx: RunContext) -> dict[str, Any]:
    return {"model_hash": ctx.model_hash, "task": ctx.config.task}


def open_out(ctx: RunContext) -> Stages:
    """Return the stage book of ``--out``, creating the folder; unwritable folders are one clear line."""
    try:
        ctx.out.mkdir(parents=True, exist_ok=True)
        return Stages(ctx.out, identity(ctx), ctx.config.force)
    except OSError as exc:
        raise io_error(exc, "setup") from None
