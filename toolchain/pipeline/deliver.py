"""Delivery of one masked model: shrink → (vocabulary) → export → ONNX scores → measurement,
and the device check of the deployed precision."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from deploy.predict import rows_per_call
from toolchain.calibration import DEFAULT_SELECTION
from toolchain.errors import InputError
from toolchain.tasks import get_task
from toolchain.pipeline.book import Stages
from toolchain.pipeline.context import RunContext, extra_dev_sources, load_data
from toolchain.pipeline.records import Delivered


REAL_LENGTH_INPUTS = 200  # dev inputs timed when the profile judges latency at real lengths


def deliver(ctx: RunContext, st: Stages, prefix: str, folder: Path, masked: Path, upstream: str,
             shrink_first: bool = True, teacher: Path | None = None) -> tuple[dict[str, Any], str]:
    """Shrink, (with ``--qat``: a quantisation-aware phase distilled from ``teacher``), export
    (fp32 optimised, plus int8 when deployed in int8), score and measure one model."""
    from deploy.measure import BenchConfig, measure, write_bench
    from toolchain.export import ExportConfig, export, int8_choice
    from toolchain.shrink import shrink_dir

    c = ctx.config
    trimmed, artifact = folder / "trimmed", folder / "artifact"
    quantize = "int8" if ctx.precision == "int8" else None
    _, key = st.run(f"{prefix}shrink", {}, [trimmed / "config.json"],
                    lambda: summary(shrink_dir(masked, trimmed)), upstream)
    if c.vocab == "task" and prefix != "dense/":  # the baseline keeps the full vocabulary
        from toolchain.vocab import trim_vocab

        def vocab() -> dict[str, Any]:
            load_data(ctx)
            return trim_vocab(trimmed, folder / "trimmed-vocab", ctx.data.train_texts or [],
                              ctx.data.eval_texts()).to_dict()

        _, key = st.run(f"{prefix}vocab", {"vocab": c.vocab}, [folder / "trimmed-vocab" / "config.json"], vocab, key)
        trimmed = folder / "trimmed-vocab"
    export_config = ExportConfig(optimize=True, quantize=quantize, task=c.task, seq_len=c.max_length,
                                 profile=ctx.profile.path, int8_variant=c.int8_variant,
                                 calibration_selection=c.calibration_selection)
    variant, preset, _ = int8_choice(export_config, ctx.profile, calibrated=True)  # the training split calibrates
    if c.qat and quantize:
        from toolchain.qat import QAT_ROWS, phase_config

        qat_config = phase_config(variant.name, preset, c.batch_size, c.seed, c.distill_hidden)

        def qat() -> dict[str, Any]:
            from toolchain.models import load_teacher
            from toolchain.qat import quantisation_aware

            load_data(ctx)
            spec = ctx.data.task
            rows = ctx.data.train.shuffle(seed=c.seed).select(range(min(QAT_ROWS, len(ctx.data.train))))
            return quantisation_aware(load_teacher(trimmed, spec.label_names, qa=spec.qa), rows, ctx.data.eval,
                                      ctx.data.collator, qat_config, folder / "qat",
                                      load_teacher(teacher, spec.label_names, qa=spec.qa) if teacher else None,
                                      scorer=ctx.data.scorer(), label_keys=ctx.data.label_keys)

        _, key = st.run(f"{prefix}qat", {"qat": dataclasses.asdict(qat_config), "rows": QAT_ROWS,
                                         "teacher": str(teacher) if teacher else None},
                        [folder / "qat" / "config.json"], qat, key)
        trimmed = folder / "qat"

    def export_stage() -> dict[str, Any]:
        calibration = None
        if quantize:  # ranges or probes from the task's training inputs, never dev; also the fallback's
            load_data(ctx)
            calibration = list(ctx.data.train_texts or [])
            if not calibration and variant.calibrated:
                raise InputError(f"int8 variant {variant.name} needs calibration inputs and the data has no "
                                 "training split; choose --int8-variant dynamic-per-channel")
        if not quantize:
            return export_summary(export(trimmed, artifact, export_config, progress=True))
        result, refused = export_with_fallback(trimmed, artifact, export_config,
                                               int8_candidates(variant.name, bool(calibration)), calibration)
        return {**export_summary(result), "int8_refused": refused}

    int8_key = {"int8_variant": variant.name, "int8_preset": preset} if quantize else {}
    if quantize and variant.smooth_choices:  # the α the export chooses among (an earlier export used one)
        int8_key["int8_smooth_choices"] = list(variant.smooth_choices)
    if quantize and c.calibration_selection != DEFAULT_SELECTION:  # the default leaves earlier runs' keys as they were
        int8_key["calibration_selection"] = c.calibration_selection
    exported, key = st.run(f"{prefix}export", {"quantize": quantize, "max_length": c.max_length, **int8_key},
                           [artifact / "sensibert.json"], export_stage, key)

    def evaluate() -> dict[str, Any]:
        load_data(ctx)
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
        extra_dev = {"extra_dev": extra_dev_sources(ctx)}
    # how deploy/ runs an int8 file is part of what its score means: a run scored before int8 ran
    # one input per call is scored again when resumed
    calls = {"int8_rows_per_call": rows_per_call("int8", 64)}
    evaluated, key = st.run(f"{prefix}evaluate", {**c.data_settings(), **extra_dev, **calls},
                            [artifact / "sensibert.json"], evaluate, key)
    metric = get_task(c.task).metric
    accuracy = {p: s[metric] for p, s in evaluated["scores"].items()}

    real = ctx.profile.budget.latency_measure == "real" and get_task(c.task).kind != "qa"

    def bench() -> dict[str, Any]:
        from deploy.lengths import LengthBenchConfig, describe, device_estimate, measure_lengths

        from toolchain.progress import batches_bar

        results = {}
        if real:
            load_data(ctx)
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
    return Delivered(export=exported, onnx_accuracy=accuracy, onnx_scores=evaluated["scores"],
                     data=evaluated.get("data"), bench=benches), key


def int8_candidates(first: str, calibrated: bool = False) -> list[str]:
    """Return the int8 variants ``run`` tries, in order: the chosen one, then the other dynamic
    ones, those that need calibration inputs (mixed precision, smoothing) only where they are at
    hand (a static variant is tried only when chosen: its format is a device's choice, not a
    fallback)."""
    from deploy.int8 import INT8_VARIANTS

    return [first] + [name for name, v in INT8_VARIANTS.items()
                      if name != first and not v.static and (calibrated or not v.calibrated)]


def export_with_fallback(model_dir: Path, out: Path, config: Any, candidates: list[str],
                         calibration: list | None = None) -> tuple[Any, list[dict[str, str]]]:
    """Export with the first int8 variant of ``candidates`` whose gate passes; when none does,
    export fp32 alone. Return (the export result, the variants refused, each with why).

    A failed int8 gate is right to refuse that file, but it need not sink a whole run: another
    variant may pass, and the fp32 artifact always can (its own parity gate still stands: a
    failure there is raised, as ``sensibert export`` raises it)."""
    from toolchain.errors import ParityError
    from toolchain.export import export

    refused = []
    for name in candidates:
        # the first candidate is the config's own choice: exported as configured, its record says
        # what chose it (flag, profile or default); the fallbacks are named
        chosen = config if not refused and config.int8_variant in (None, name) else \
            dataclasses.replace(config, int8_variant=name)
        try:
            return export(model_dir, out, chosen, calibration=calibration, progress=True), refused
        except ParityError as exc:
            if "(int8)" not in str(exc) or "(fp32)" in str(exc):  # the fp32 model itself is wrong
                raise
            refused.append({"variant": name, "why": str(exc).split("; nothing was written")[0]})
            print(f"[sensibert run] int8 {name} refused by its gate; "
                  + (f"trying {candidates[len(refused)]}" if len(refused) < len(candidates) else "shipping fp32"),
                  flush=True)
    return export(model_dir, out, dataclasses.replace(config, quantize=None), progress=True), refused


def summary(report: Any) -> dict[str, Any]:
    return report.to_dict() if hasattr(report, "to_dict") else {"done": True}


def export_summary(res: Any) -> dict[str, Any]:
    return {"models": dict(res.models), "sizes": dict(res.sizes), "sha256": dict(res.sha256),
            "op_counts": res.op_counts, "encoder_params_onnx": res.encoder_params_onnx,
            "encoder_params_expected": res.encoder_params_expected,
            "attention_num_heads": list(res.attention_num_heads),
            "parity": {p: summary(r) for p, r in res.parity.items()}, "int8": res.int8, "notes": list(res.notes)}


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


def device_check(ctx: RunContext, delivered: Delivered) -> dict[str, Any]:
    """Return what the deployed precision's measurement says about the device's targets
    (``deploy.measure.budget_checks``, the verdict ``sensibert-deploy check`` gives)."""
    from deploy.measure import BenchResult, DeviceEstimate, budget_checks

    bench = dict(delivered.bench[delivered.shipped])
    real = bench.pop("real_lengths", None)
    result = BenchResult.from_dict(bench)
    estimate = DeviceEstimate(**real["estimate"]) if real else None
    measure = real["measure"] if real else f"{result.seq_len} tokens, batch {result.batch}"
    memory, latency = budget_checks(result, ctx.profile, ctx.config.latency_ms, estimate=estimate, measure=measure)
    return {"precision": delivered.shipped, "latency_estimate_ms": latency.value, "latency_target_ms": latency.limit,
            "latency_ok": latency.passed, "latency_tag": (estimate or result.estimate).tag,
            "latency_method": (estimate or result.estimate).method, "latency_measure": measure,
            "peak_rss_bytes": memory.value, "memory_limit_bytes": memory.limit, "memory_ok": memory.passed,
            "host_p50_ms": real["p50_ms"] if real else result.p50_ms}
