"""The stages that make a masked model: sensitivity, plan, budgeted fine-tuning (or the
retraining-free search), and the dense baseline; each one ``Stages.run`` unit with its settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from toolchain.pipeline.book import Stages
from toolchain.pipeline.context import RunContext, load_data, provenance, where
from toolchain.pipeline.deliver import deliver
from toolchain.pipeline.records import DenseModel


def analyze(ctx: RunContext, st: Stages, source: Path, upstream: str = "") -> tuple[Any, str]:
    """Sensitivity of the model in ``source``: the pre-trained encoder with a fresh head (the
    paper's mode) or the dense fine-tuned model (teacher-first), whose head knows the task."""
    from toolchain.sensitivity import Sensitivity, SensitivityConfig, analyse

    c = ctx.config
    method = c.defaults()["method"]
    path = ctx.out / "sensitivity.json"
    settings = {"model": ctx.model_hash, "source": where(ctx, source, "input"), **c.data_settings(),
                "method": method, "steps": c.sensitivity_steps}

    def work() -> dict[str, Any]:
        from toolchain.models import load_task_model
        from toolchain.plots import sensitivity_heatmap

        load_data(ctx)
        model = load_task_model(source, ctx.data.task, seed=c.seed)
        sens = analyse(model, ctx.data.train, ctx.data.collator,
                       SensitivityConfig(method=method, steps=c.sensitivity_steps, seed=c.seed),
                       model_hash=ctx.model_hash, data_hash=ctx.data.data_hash, task=c.task)
        sens.save(path)
        sensitivity_heatmap(sens, path.with_suffix(".png"))
        return {"wall_time_s": sens.wall_time_s, "data_hash": ctx.data.data_hash, "data_source": ctx.data.source}

    result, key = st.run("analyze", settings, [path], work, upstream)
    return Sensitivity.load(path), key


def trim(ctx: RunContext, st: Stages, name: str, plan: Any, folder: Path, upstream: str,
          start: Path, teacher: Path | None) -> tuple[dict, str]:
    """Make the masked model of ``plan`` in ``folder``/finetuned from the weights in ``start`` by
    budgeted fine-tuning (distilling from ``teacher`` when given)."""
    c = ctx.config
    out = folder / "finetuned"
    common = {"plan": plan.to_dict(), **c.data_settings(), "mode": c.mode}
    from toolchain.finetune import finetune

    ft_config = c.finetune_config()

    def work() -> dict[str, Any]:
        from toolchain.models import load_task_model, load_teacher

        load_data(ctx)
        spec = ctx.data.task
        model = load_task_model(start, spec, seed=c.seed)
        res = finetune(model, plan, ctx.data.train, ctx.data.eval, ctx.data.collator, ft_config, out,
                       teacher=load_teacher(teacher, spec.label_names, qa=spec.qa) if teacher is not None else None,
                       provenance={**provenance(ctx), "mode": c.mode, "teacher": str(teacher) if teacher else None},
                       scorer=ctx.data.scorer(), label_keys=ctx.data.label_keys, validation=ctx.data.validation,
                       validation_scorer=ctx.data.validation_scorer())
        return {"dev_accuracy": res.best_accuracy, "dev_accuracy_per_epoch": list(res.dev_accuracy),
                "steps": res.steps, "wall_time_s": res.wall_time_s}

    settings = {**common, "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr,
                "distill_hidden": c.distill_hidden if teacher is not None else None,
                "teacher": None if teacher is None else where(ctx, teacher)}
    return st.run(name, settings, [out / "masks.json"], work, upstream)


def retrain_free_stage(ctx: RunContext, st: Stages, name: str, budget: Any, folder: Path, upstream: str,
                  start: Path) -> tuple[dict, str]:
    """Make the masked model in ``folder``/finetuned from the fine-tuned weights in ``start`` with
    no gradient step; its own Fisher pass is the run's analysis (no separate sensitivity stage)."""
    from toolchain.retrain_free import retrain_free

    c = ctx.config
    out = folder / "finetuned"
    rf_config = c.retrain_free_config()

    def work() -> dict[str, Any]:
        from toolchain.models import load_teacher

        load_data(ctx)
        model = load_teacher(start, ctx.data.task.label_names, qa=ctx.data.task.qa)
        res = retrain_free(model, budget, ctx.data.train, ctx.data.eval, ctx.data.collator, rf_config, out,
                           provenance=provenance(ctx), scorer=ctx.data.scorer(), label_keys=ctx.data.label_keys)
        return {"dev_accuracy": res.dev_accuracy, "dev_accuracy_untuned": res.dev_accuracy_untuned,
                "heads": list(res.heads), "ffn": list(res.ffn), "steps": 0, "wall_time_s": res.wall_time_s}

    settings = {"budget": budget.to_dict(), **c.data_settings(), "mode": c.mode, "retrain_free": rf_config.to_dict()}
    return st.run(name, settings, [out / "masks.json", out / "plan.json", out / "sensitivity.json"], work, upstream)


def plan_stage(ctx: RunContext, st: Stages, name: str, budget: Any, sens: Any, path: Path, upstream: str,
               latency_ms: float | None = None) -> tuple[Any, str]:
    """Return (the plan allocated from ``sens`` under ``budget``, its stage key); saved at ``path``.
    The latency allocation prices it with the profile's table under ``latency_ms`` (default: the
    profile's target)."""
    from toolchain.plan import Plan, allocate

    c = ctx.config
    plan_cfg = c.plan_config()
    latency = ctx.latency  # the profile's measured table prices a latency plan (None: FLOPs do)
    if latency is not None and latency_ms is not None:  # the closed loop's tightened cap
        latency = dataclasses.replace(latency, max_ms=float(latency_ms))

    def work() -> dict[str, Any]:
        plan = allocate(sens, sens.shape, budget, plan_cfg, latency=latency)
        plan = dataclasses.replace(plan, settings={**plan.settings, "precision": ctx.precision})
        plan.save(path)
        return {"heads": list(plan.heads), "ffn": list(plan.ffn)}

    priced = {"latency": {**latency.describe(), "table": latency.table.to_dict()}} if latency else {}
    _, key = st.run(name, {"budget": budget.to_dict(), "plan": plan_cfg.to_dict(), **priced}, [path], work, upstream)
    return Plan.load(path), key


def dense_stage(ctx: RunContext, st: Stages) -> tuple[dict[str, Any], str]:
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
        tuned, key = adopt(ctx, st, plan, folder, key)
    else:
        tuned, key = trim(dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, teacher="none")),
                           st, "dense/finetune", plan, folder, key, ctx.model_dir, None)
    delivered, _ = deliver(ctx, st, "dense/", folder, folder / "finetuned", key,
                           teacher=folder / "finetuned")  # --qat: the dense model distils from itself
    return DenseModel(plan=plan.to_dict(), finetune=tuned, masked_dir="dense/finetuned", delivered=delivered), key


def adopt(ctx: RunContext, st: Stages, plan: Any, folder: Path, upstream: str) -> tuple[dict, str]:
    """Take a fine-tuned --model as the dense model: saved with dense masks, scored on dev."""
    out = folder / "finetuned"

    def work() -> dict[str, Any]:
        from toolchain.finetune import write_masked_dir
        from toolchain.masks import MaskSet
        from toolchain.models import load_teacher
        from toolchain.retrain_free import torch_score

        load_data(ctx)
        model = load_teacher(ctx.model_dir, ctx.data.task.label_names, qa=ctx.data.task.qa)
        accuracy = torch_score(model, ctx.data.eval, ctx.data.collator, ctx.data.scorer())
        masks = MaskSet.dense(ctx.shape.num_layers, ctx.shape.heads[0], ctx.shape.ffn[0])
        metrics = {"mode": "adopted", "best": {"accuracy": accuracy, "epoch": 0, "step": 0}, "steps": 0,
                   "source": str(ctx.model_dir), "model_hash": ctx.model_hash}
        write_masked_dir(out, model, masks, plan, metrics, [], ctx.tokenizer)
        return {"dev_accuracy": accuracy, "steps": 0, "wall_time_s": 0.0, "adopted": True}

    return st.run("dense/adopt", ctx.config.data_settings(), [out / "masks.json"], work, upstream)


def analysis_and_dense(ctx: RunContext, st: Stages) -> tuple[Any, str, DenseModel | None]:
    """Return (sensitivity, its key, dense record) in the order the mode needs them."""
    c = ctx.config
    if c.mode == "no-teacher":
        sens, key = analyze(ctx, st, ctx.model_dir)
        dense = dense_stage(ctx, st)[0] if c.dense_baseline or ctx.finetuned_input else None
        return sens, key, dense
    dense, dense_key = dense_stage(ctx, st)  # teacher and warm start: always needed
    if c.mode == "retrain-free":  # its Fisher pass is done inside the mode, once per budget
        return None, dense_key, dense
    sens, key = analyze(ctx, st, ctx.out / dense.masked_dir, dense_key)
    return sens, key, dense


def sources(ctx: RunContext, dense: DenseModel | None) -> tuple[Path, Path | None]:
    """Return (weights to start trimming from, teacher to distil from) for the run's mode."""
    c = ctx.config
    if c.mode == "no-teacher":
        return ctx.model_dir, None
    tuned = ctx.out / dense.masked_dir
    if c.mode == "retrain-free":
        return tuned, None
    return tuned, ctx.teacher_dir or tuned
