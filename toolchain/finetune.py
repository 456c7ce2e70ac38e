"""Stage 3: budgeted fine-tuning. Masks ramp from dense to the plan, then training goes on.

Built on the Hugging Face ``Trainer`` so that the same code runs on one CPU, one GPU, or
several processes under ``torchrun`` / ``accelerate launch`` (DDP): nothing here is a
hand-made training loop. ``MaskRamp`` (toolchain/masks.py) is driven from a
``TrainerCallback``: Fisher statistics before each optimizer step, masked weights restored
after it, masks stepped down at the step's end.

The stage knows no task: its caller (``pipeline``, ``cli/finetune``) passes what the task
provides, the tokenised splits, the ``scorer`` (``toolchain.scoring.Scorer``) and the target
columns (``label_keys``), from ``toolchain.tasks.TaskData``.

Checkpoint selection never reads the split whose score is reported. Without a ``validation``
split the last checkpoint is kept (the dev split is scored at every epoch end as a curve, and
chooses nothing). With one (carved from the training data by the caller's task), the validation
split is scored at every epoch end, checkpoints are ranked by ``score_at_plan``, the primary
validation score (accuracy; F1 for QA) when the masks equal the plan and -1 while the ramp is still
running, and the kept model is then scored once on dev. So an epoch that ended mid-ramp (possible
when ``ramp_fraction · epochs > 1``) can never be the kept model, the last evaluation always
qualifies (the ramp ends by the last step), and the saved model's masks are the plan's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from deploy.artifacts import atomic_path, package_versions, read_json, sha256_json, write_json
from toolchain.costs import shape_from_config
from toolchain.families import canonical_view, family_of, forward_inputs
from toolchain.errors import InputError
from toolchain.masks import MaskHandle, MaskRamp, MaskSet, RampConfig, attach_masks
from toolchain.plan import Plan
from toolchain.progress import one_bar
from toolchain.scoring import Scorer, accuracy_scorer

METRICS_SCHEMA = "sensibert.finetune_metrics"
METRICS_VERSION = 1
SELECT_METRIC = "score_at_plan"  # the task's primary score once masks equal the plan, -1 before
REPORT_PREFIX = "dev"             # the kept checkpoint's one dev evaluation when validation chose it


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one budgeted fine-tuning run (all CLI flags of ``sensibert finetune``)."""

    epochs: float = 3.0
    batch_size: int = 32          # global: split across processes under DDP
    eval_batch_size: int = 64
    lr: float = 5e-5              # AdamW, linear warm-up then linear decay
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    ramp_fraction: float = 0.3    # share of steps over which masks fall from dense to the plan
    importance: str = "fisher"    # unit ranking during the ramp: fisher | norm
    ema_decay: float = 0.9
    distill_alpha: float = 0.5    # weight of the KL term when a teacher is given
    temperature: float = 2.0
    distill_hidden: float = 1.0   # weight of the hidden-state term when a teacher is given (0: logits only)
    seed: int = 0
    logging_steps: int = 50
    progress: bool = True         # Trainer's tqdm bar (ETA, loss, dev accuracy)
    fake_quant: str | None = None  # quantisation-aware: train as int8 variant NAME computes (fake_quant.py)
    fake_quant_preset: str = "avx2"  # its weight type (deploy.int8 presets); weights baked onto its grid

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise InputError(f"epochs must be > 0, got {self.epochs}")
        for name in ("batch_size", "eval_batch_size", "logging_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InputError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise InputError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if not self.distill_hidden >= 0:
            raise InputError(f"distill_hidden must be >= 0, got {self.distill_hidden}")
        self.ramp_config()  # validates ramp_fraction, importance, ema_decay
        if self.fake_quant is not None:
            from toolchain.fake_quant import check_variant

            from deploy.int8 import PRESETS

            check_variant(self.fake_quant)
            if self.fake_quant_preset not in PRESETS:
                raise InputError(f"fake_quant_preset must be one of {', '.join(PRESETS)}, got {self.fake_quant_preset!r}")

    def ramp_config(self) -> RampConfig:
        """Return the mask-ramp part of these settings."""
        return RampConfig(ramp_fraction=self.ramp_fraction, importance=self.importance,
                          ema_decay=self.ema_decay)


@dataclass(frozen=True)
class FinetuneResult:
    """What a run produced: where it is, the final masks, and dev accuracy per epoch."""

    out_dir: Path
    masks: MaskSet
    dev_accuracy: tuple[float, ...]
    best_accuracy: float
    best_epoch: float
    steps: int
    wall_time_s: float
    handle: MaskHandle | None = field(default=None, compare=False, repr=False)


def finetune(model: Any, plan: Plan, train_dataset: Any, eval_dataset: Any, collator: Any,
             config: FinetuneConfig, out_dir: str | Path, teacher: Any = None, *,
             provenance: Mapping[str, Any] | None = None, scorer: Scorer | None = None,
             label_keys: Sequence[str] = ("labels",), validation: Any = None,
             validation_scorer: Scorer | None = None) -> FinetuneResult:
    """Return the result of fine-tuning ``model`` in place down to ``plan``; write ``out_dir``.

    ``train_dataset`` / ``eval_dataset`` are tokenised ``datasets.Dataset`` s with ``labels``;
    ``collator`` pads batches (its ``tokenizer`` is saved with the model). ``teacher``: a
    dense classifier to distil from (KL on logits at ``temperature`` + CE, ``distill_alpha``;
    plus ``distill_hidden`` × the hidden states' relative error, layer by matching layer).
    ``provenance`` (``data_hash``, ``model_hash``, task ...) is recorded in metrics.json.
    ``scorer`` turns the eval predictions into the task's scores (default: accuracy of labels);
    its ``metric`` is the primary one that selects the checkpoint (``dev_accuracy`` holds it).
    ``label_keys`` names the batch columns that are targets, kept from the teacher's inputs.
    Both come from the caller's task (``TaskData.scorer()``, ``TaskData.label_keys``): this
    stage knows no task.
    ``validation``: a tokenised split carved from the training data that chooses the best
    epoch's checkpoint (None: the last is kept); ``eval_dataset`` then only reports.
    ``validation_scorer`` scores it where the eval split's scorer cannot (QA: other examples);
    default ``scorer``.
    On return the model holds the kept checkpoint's weights with the plan's masks attached
    (``result.handle``). ``out_dir`` appears complete or not at all.

    Example:
        >>> res = finetune(model, Plan.load("plan.json"), data.train, data.eval,  # doctest: +SKIP
        ...                data.collator, FinetuneConfig(epochs=2), "out/ft")
    """
    out_dir = Path(out_dir)
    _check_inputs(model, plan, train_dataset, eval_dataset, teacher if teacher is None else (teacher, config),
                  validation)
    scorer = scorer or accuracy_scorer()
    work = out_dir.parent / f".{out_dir.name}.checkpoints"
    args = _training_args(config, work, select=validation is not None)
    ramp = MaskRamp(plan.heads, plan.ffn, config.ramp_config())
    callback = _RampCallback(ramp)
    trainer_cls = _DistilTrainer if teacher is not None else Trainer
    extra = {"teacher": teacher, "alpha": config.distill_alpha, "temperature": config.temperature,
             "hidden": config.distill_hidden, "label_keys": tuple(label_keys)} if teacher is not None else {}
    main = args.process_index == 0
    quantised = None
    if config.fake_quant is not None:
        from deploy.int8 import unsigned_weights
        from toolchain import fake_quant

        quantised = fake_quant.attach(model, config.fake_quant, unsigned_weights(config.fake_quant_preset))
    with args.main_process_first(local=False, desc="clear stale checkpoints"):
        if main and work.exists():
            shutil.rmtree(work)
    try:
        trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset, data_collator=collator,
                              eval_dataset=eval_dataset if validation is None else validation,
                              compute_metrics=_metrics_fn(ramp, scorer if validation is None
                                                          else validation_scorer or scorer),
                              callbacks=[callback], **extra)
        if config.progress:
            one_bar(trainer, scorer.metric)
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        # every process has loaded the best checkpoint before the main one may delete it
        trainer.accelerator.wait_for_everyone()
        masks = ramp.detach()
        _check_final_masks(masks, plan, args.world_size)
        if quantised is not None:  # the kept weights onto the int8 grid: fp32 and int8 files then agree
            quantised.detach(bake=True)
        if validation is not None:  # the kept checkpoint, chosen on validation, scored once on dev
            trainer.compute_metrics = _metrics_fn(ramp, scorer)
            trainer.evaluate(eval_dataset, metric_key_prefix=REPORT_PREFIX)
        metrics, evals, best = _collect_metrics(trainer, config, plan, wall, teacher is not None, provenance,
                                                scorer.metric, eval_dataset, validation)
        if main:
            write_masked_dir(out_dir, model, masks, plan, metrics, callback.records,
                          getattr(collator, "tokenizer", None))
            shutil.rmtree(work, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()  # out_dir is complete when any process returns
    finally:
        if quantised is not None:
            quantised.detach()
        if ramp.handle is not None:
            ramp.detach()
        if main:
            shutil.rmtree(work, ignore_errors=True)
    handle = attach_masks(model, masks)
    model.eval()
    key = f"eval_{scorer.metric}"
    return FinetuneResult(out_dir=out_dir, masks=masks,
                          dev_accuracy=tuple(e[key] for e in evals),
                          best_accuracy=best[key], best_epoch=best["epoch"],
                          steps=metrics["steps"], wall_time_s=metrics["wall_time_s"], handle=handle)


def load_masked(path: str | Path) -> tuple[Any, MaskHandle]:
    """Return ``(model, handle)``: a fine-tuned output directory reloaded with its masks attached."""
    from toolchain.models import head_kind, load_classifier, read_model_config

    path = Path(path)
    if not (path / "masks.json").is_file():
        raise InputError(f"{path}: no masks.json; pass a directory written by sensibert finetune")
    masks = MaskSet.load(path / "masks.json")
    config = read_model_config(path)
    id2label = config.get("id2label") or {}
    model = load_classifier(path, num_labels=len(id2label) or int(config.get("num_labels", 2)),
                            id2label={int(k): v for k, v in id2label.items()} or None,
                            qa=head_kind(path) == "qa")
    return model.eval(), attach_masks(model, masks)


def read_metrics(path: str | Path) -> dict[str, Any]:
    """Return the body of a metrics.json written by ``finetune``."""
    return read_json(path, METRICS_SCHEMA, METRICS_VERSION)


# ---------------------------------------------------------------- checks

def check_plan(model: Any, plan: Plan) -> None:
    """Raise InputError unless ``model`` is dense and ``plan`` was made for its architecture."""
    shape = shape_from_config(canonical_view(model.config))
    if len(set(shape.heads)) > 1 or len(set(shape.ffn)) > 1:
        raise InputError(f"fine-tuning needs the dense pre-trained model, but this one is already trimmed "
                         f"(heads {list(shape.heads)}, ffn {list(shape.ffn)}); pass the original --model")
    plan.check_architecture(shape)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in plan.heads + plan.ffn):
        raise InputError(f"plan unit counts must be whole numbers (heads {list(plan.heads)}, ffn "
                         f"{list(plan.ffn)}); regenerate it with sensibert plan")
    for i, (h, f) in enumerate(zip(plan.heads, plan.ffn)):
        if not (0 <= h <= shape.heads[i] and 0 <= f <= shape.ffn[i]):
            raise InputError(f"plan layer {i} keeps {h} heads and {f} neurons, outside [0, {shape.heads[i]}] "
                             f"and [0, {shape.ffn[i]}]; regenerate it with sensibert plan")


def _check_inputs(model: Any, plan: Plan, train_dataset: Any, eval_dataset: Any, teacher: Any,
                  validation: Any = None) -> None:
    """Raise InputError for a plan, data or teacher (a ``(model, config)`` pair) that does not fit."""
    check_plan(model, plan)
    num_labels = model.config.num_labels
    splits = (("training", train_dataset), ("evaluation", eval_dataset))
    for split, ds in splits + ((("validation", validation),) if validation is not None else ()):
        if ds is None or len(ds) == 0:
            raise InputError(f"the {split} split is empty; check --data-dir and the task's files "
                             "(or raise --max-train-samples/--max-eval-samples)")
        if hasattr(model, "qa_outputs"):
            if not {"start_positions", "end_positions"} <= set(ds.column_names):
                raise InputError(f"the {split} split has no start/end positions (columns: "
                                 f"{', '.join(ds.column_names)}); build it with toolchain.tasks.load_task_data")
            continue
        if "labels" not in ds.column_names:
            raise InputError(f"the {split} split has no 'labels' column (columns: {', '.join(ds.column_names)}); "
                             "tokenise it with toolchain.tasks.load_task_data")
        labels = ds["labels"]
        low, high = min(labels), max(labels)
        if low < 0 or high >= num_labels:
            raise InputError(f"{split} labels span [{low}, {high}] but the model has {num_labels} labels; "
                             "the data does not match --task (a regression or unlabelled split?)")
    if teacher is not None:
        teacher, config = teacher
        check_teacher(teacher.config, model.config, hidden=config.distill_hidden > 0)


def check_teacher(teacher_config: Any, student_config: Any, hidden: bool = True) -> None:
    """Raise InputError unless the teacher shares the student's vocabulary, labels and (for the
    hidden-state term) hidden size: distillation compares their outputs position by position."""
    teacher_family, student_family = family_of(teacher_config).name, family_of(student_config).name
    if teacher_family != student_family:
        raise InputError(f"teacher is a {teacher_family} model and the student a {student_family} model: their "
                         "tokenizers and layers do not correspond, so distillation cannot map them; pass a dense "
                         f"{student_family} teacher fine-tuned on the task")
    if teacher_config.vocab_size != student_config.vocab_size:
        raise InputError(f"teacher vocabulary ({teacher_config.vocab_size} tokens) differs from the model's "
                         f"({student_config.vocab_size}); the teacher must share the model's tokenizer")
    if teacher_config.num_labels != student_config.num_labels:
        raise InputError(f"teacher has {teacher_config.num_labels} labels, the task {student_config.num_labels}; "
                         "pass a dense teacher fine-tuned on this task")
    from toolchain.models import named_labels

    names = [named_labels(getattr(c, "id2label", None)) for c in (teacher_config, student_config)]
    if all(names) and names[0] != names[1]:
        raise InputError(f"teacher labels {names[0]} differ from the task's {names[1]}; pass a teacher "
                         "fine-tuned on this task (same labels in the same order)")
    t_hidden, s_hidden = canonical_view(teacher_config).hidden_size, canonical_view(student_config).hidden_size
    if hidden and t_hidden != s_hidden:
        raise InputError(f"teacher hidden size {t_hidden} differs from the model's "
                         f"{s_hidden}; the hidden-state term compares them (pass "
                         "--distill-hidden 0 for logits only, or a teacher of the same width)")


# ---------------------------------------------------------------- trainer glue

def _training_args(config: FinetuneConfig, work: Path, select: bool = False) -> TrainingArguments:
    """Return the Trainer settings: AdamW + linear schedule, eval and save each epoch; with
    ``select`` (a validation split is evaluated) the best is kept, else the last."""
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    cpu_ddp = world > 1 and not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(work), num_train_epochs=config.epochs, learning_rate=config.lr,
        per_device_train_batch_size=math.ceil(config.batch_size / world),
        per_device_eval_batch_size=max(1, math.ceil(config.eval_batch_size / world)),
        weight_decay=config.weight_decay, warmup_ratio=config.warmup_ratio,
        lr_scheduler_type="linear", optim="adamw_torch", max_grad_norm=config.max_grad_norm,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1, save_only_model=True,
        load_best_model_at_end=select, metric_for_best_model=SELECT_METRIC if select else None,
        greater_is_better=True if select else None,
        logging_strategy="steps", logging_steps=config.logging_steps, report_to="none",
        seed=config.seed, data_seed=config.seed, disable_tqdm=not config.progress,
        dataloader_num_workers=0, ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs an accelerator (else a warning)
        # Several processes without CUDA: accelerate needs use_cpu to set up DDP over gloo.
        use_cpu=cpu_ddp, ddp_backend="gloo" if cpu_ddp else None,
    )


def _check_final_masks(masks: MaskSet, plan: Plan, world_size: int) -> None:
    """Raise RuntimeError (a bug, not bad input) unless the masks keep the plan's counts everywhere."""
    if masks.heads != plan.heads or masks.ffn != plan.ffn:
        raise RuntimeError(f"final masks keep heads {masks.heads}, ffn {masks.ffn}; plan says {plan.heads}, {plan.ffn}")
    if world_size > 1:  # every process must have masked the same units
        seen: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(seen, sha256_json(masks.to_dict()))
        if len(set(seen)) != 1:
            raise RuntimeError(f"processes chose different masks ({len(set(seen))} distinct sets)")


def _collect_metrics(trainer: Trainer, config: FinetuneConfig, plan: Plan, wall: float, distill: bool,
                     provenance: Mapping[str, Any] | None, metric: str = "accuracy", eval_dataset: Any = None,
                     validation: Any = None) -> tuple[dict[str, Any], list[dict], dict]:
    """Return (metrics.json body, the per-epoch dev records, the kept one).

    ``accuracy`` in the records is the task's primary score (``metric``: accuracy, or F1 for
    QA); every score the scorer returned is kept under ``scores``. With ``validation`` the
    per-epoch records are the validation split's (under ``selection``) and the dev record is the
    kept checkpoint's single evaluation; without, the kept model is the last epoch's.
    """
    state, args = trainer.state, trainer.args
    key = f"eval_{metric}"
    evals = [e for e in state.log_history if key in e]

    def scores(e: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in e.items() if k.startswith(f"{prefix}_") and k[n:] not in _EVAL_BOOKKEEPING}

    def record(e: dict[str, Any], prefix: str = "eval") -> dict[str, Any]:
        return {"epoch": e["epoch"], "step": e["step"], "accuracy": e[f"{prefix}_{metric}"],
                "scores": scores(e, prefix), "masks_final": e.get(f"eval_{SELECT_METRIC}", 0) >= 0}

    if validation is None:
        kept = evals[-1]
        dev, best = [record(e) for e in evals], evals[-1]
        selection = {"split": None, "kept": "last checkpoint"}
    else:
        kept = next((e for e in evals if e["step"] == state.best_global_step), evals[-1])
        report = next(e for e in reversed(state.log_history) if f"{REPORT_PREFIX}_{metric}" in e)
        best = {**{f"eval_{k}": v for k, v in scores(report, REPORT_PREFIX).items()},
                "epoch": kept["epoch"], "step": kept["step"]}
        dev = [{**record(report, REPORT_PREFIX), "epoch": kept["epoch"], "step": kept["step"]}]
        selection = {"split": "validation", "samples": len(validation), "kept": "best validation score",
                     "per_epoch": [record(e) for e in evals]}
    metrics = {
        "metric": metric,
        "dev_accuracy": dev,
        "best": {"accuracy": best[key], "scores": {k[5:]: v for k, v in best.items() if k.startswith("eval_")
                                                   and k[5:] not in _EVAL_BOOKKEEPING},
                 "epoch": kept["epoch"], "step": kept["step"]},
        "selection": selection,
        "steps": state.global_step, "wall_time_s": round(wall, 3),
        "train_samples": len(trainer.train_dataset),
        "eval_samples": len(eval_dataset if eval_dataset is not None else trainer.eval_dataset),
        "settings": {**asdict(config), "world_size": args.world_size,
                     "effective_batch_size": args.per_device_train_batch_size * args.world_size,
                     "device": str(args.device), "distill": distill},
        "plan": {"heads": list(plan.heads), "ffn": list(plan.ffn), "plan_hash": sha256_json(plan.to_dict()),
                 "allocation": plan.allocation},
        "data_hash": "", "model_hash": "",
        **dict(provenance or {}),
        "package_versions": package_versions(),
    }
    return metrics, [{key: r["accuracy"], "epoch": r["epoch"]} for r in dev], {**best, key: best[key]}


_EVAL_BOOKKEEPING = {"loss", "runtime", "samples_per_second", "steps_per_second", SELECT_METRIC}


def _metrics_fn(ramp: MaskRamp, scorer: Scorer):
    """Return compute_metrics: the task's scores, and the selection metric (-1 while masks ramp)."""
    def compute(pred) -> dict[str, float]:
        scores = scorer.fn(pred.predictions, pred.label_ids)
        return {**scores, SELECT_METRIC: scores[scorer.metric] if ramp.finished else -1.0}
    return compute


class _RampCallback(TrainerCallback):
    """Drive a MaskRamp from the Trainer's events and keep a JSON-lines training log."""

    def __init__(self, ramp: MaskRamp) -> None:
        self.ramp = ramp
        self.records: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.ramp.attach(model, state.max_steps)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.ramp.before_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.ramp.apply()

    def on_step_end(self, args, state, control, **kwargs):
        if self.ramp.update(state.global_step):
            masks = self.ramp.masks
            self.records.append({"step": state.global_step, "event": "masks", "heads": list(masks.heads),
                                 "ffn": list(masks.ffn)})

    def on_log(self, args, state, control, logs=None, **kwargs):
        masks = self.ramp.masks if self.ramp.handle is not None else None
        self.records.append({"step": state.global_step, "epoch": state.epoch, **(logs or {}),
                             **({"kept_heads": sum(masks.heads), "kept_ffn": sum(masks.ffn)} if masks else {})})


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Return (student, teacher) indices into ``hidden_states`` (0: embeddings) of matching layers.

    Equal depths pair layer l with layer l (trimming keeps every layer); a deeper teacher's
    layers are taken evenly, the last with the last (as TinyBERT and CoFi map them).
    """
    return [(s, round(s * teacher_layers / student_layers)) for s in range(1, student_layers + 1)]


def hidden_distill_loss(student_hidden: Any, teacher_hidden: Any, attention_mask: Any,
                        pairs: list[tuple[int, int]]) -> Any:
    """Return the mean over layer pairs of ‖h_s − h_t‖² / ‖h_t‖² over the real (unpadded) tokens.

    Relative, so that the term is on the same scale whatever a model's activation magnitude.
    """
    mask = attention_mask.unsqueeze(-1).to(student_hidden[0].dtype)
    total = 0.0
    for s, t in pairs:
        hs, ht = student_hidden[s], teacher_hidden[t]
        total = total + ((hs - ht).pow(2) * mask).sum() / ((ht.pow(2) * mask).sum() + 1e-12)
    return total / len(pairs)


def distill_kl(student: Any, teacher: Any, attention_mask: Any, temperature: float) -> Any:
    """Return T²·KL(teacher ‖ student) at temperature T: over the labels for a classifier; for a
    QA model over the tokens, start and end distributions averaged, padding excluded."""
    def kl(s_logits: Any, t_logits: Any) -> Any:
        return F.kl_div(F.log_softmax(s_logits / temperature, dim=-1), F.softmax(t_logits / temperature, dim=-1),
                        reduction="batchmean") * temperature * temperature

    if getattr(student, "start_logits", None) is None:
        return kl(student.logits, teacher.logits)
    pad = (attention_mask == 0) if attention_mask is not None else None
    terms = []
    for name in ("start_logits", "end_logits"):
        s, t = getattr(student, name), getattr(teacher, name)
        if pad is not None:
            s, t = s.masked_fill(pad, -1e4), t.masked_fill(pad, -1e4)
        terms.append(kl(s, t))
    return (terms[0] + terms[1]) / 2


class _DistilTrainer(Trainer):
    """Trainer whose loss is alpha·T²·KL(teacher || student at T) + (1-alpha)·CE + hidden·(hidden-state term)."""

    def __init__(self, *args: Any, teacher: Any, alpha: float, temperature: float, hidden: float,
                 label_keys: tuple[str, ...] = ("labels",), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature, self.hidden = alpha, temperature, hidden
        self.label_keys = label_keys
        self.pairs = layer_map(canonical_view(self.model.config).num_hidden_layers,
                               canonical_view(teacher.config).num_hidden_layers)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # hidden states only while training: at evaluation they would be gathered as predictions
        hidden = self.hidden > 0 and model.training
        outputs = model(**inputs, output_hidden_states=hidden)
        with torch.no_grad():
            t_inputs = forward_inputs(self.teacher, {k: v for k, v in inputs.items() if k not in self.label_keys})
            t_out = self.teacher(**t_inputs, output_hidden_states=hidden)
        kl = distill_kl(outputs, t_out, inputs.get("attention_mask"), self.temperature)
        loss = self.alpha * kl + (1.0 - self.alpha) * outputs.loss
        if hidden:
            loss = loss + self.hidden * hidden_distill_loss(outputs.hidden_states, t_out.hidden_states,
                                                            inputs["attention_mask"], self.pairs)
            outputs.hidden_states = None
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------- output

def write_masked_dir(out_dir: Path, model: Any, masks: MaskSet, plan: Plan, metrics: dict[str, Any],
                     records: list[dict[str, Any]], tokenizer: Any) -> None:
    """Write a masked-model folder atomically: model, tokenizer, masks, plan, metrics, log.

    The one layout ``shrink`` reads, whoever made the masks (fine-tuning, the retraining-free
    mode, or a fine-tuned input adopted as the dense model).
    """
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        masks.save(tmp / "masks.json")
        plan.save(tmp / "plan.json")
        write_json(tmp / "metrics.json", METRICS_SCHEMA, METRICS_VERSION, metrics)
        with open(tmp / "train_log.jsonl", "w") as fh:
            for rec in records:
                fh.write(json.dumps(rec, default=str) + "\n")


__all__ = ["FinetuneConfig", "FinetuneResult", "check_plan", "distill_kl", "check_teacher", "finetune", "hidden_distill_loss",
           "layer_map", "load_masked", "read_metrics", "write_masked_dir"]
