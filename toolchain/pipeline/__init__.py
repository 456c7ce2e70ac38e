"""``sensibert run`` / ``sweep``: model + task + device → a checked, measured ONNX artifact.

The pipeline chains the stage verbs (analyse → allocate → finetune → shrink → export →
ONNX accuracy → measure → report). Every stage writes its files into ``--out`` and records a
key (a hash of its settings and of the stage before it) in ``state.json``: a re-run skips the
stages whose key is unchanged and whose files exist, and an interrupted run resumes at the
stage it was in. Closed loop: when the artifact misses the device's latency or memory target,
the budget is tightened by the measured ratio and trimming is redone, up to ``max_attempts``.

The package: ``config`` (RunConfig and the modes' defaults), ``book`` (state.json),
``context`` (what stages share), ``stages`` (analysis, plan, fine-tuning, the dense baseline),
``deliver`` (shrink → export → score → measure), ``loop`` (the closed loop), ``records``
(what stages hand each other and the report reads); ``run`` and ``sweep`` here.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from toolchain.errors import InputError
from toolchain.pipeline.config import MODES, PAPER, RETRAIN_FREE, TEACHER_FIRST, RunConfig
from toolchain.pipeline.context import open_out, prepare
from toolchain.pipeline.stages import analysis_and_dense
from toolchain.pipeline.deliver import onnx_accuracy
from toolchain.pipeline.loop import closed_loop
from toolchain.pipeline.records import Attempt, Delivered, DenseModel

__all__ = ["MODES", "PAPER", "RETRAIN_FREE", "TEACHER_FIRST", "Attempt", "Delivered", "DenseModel", "RunConfig",
           "onnx_accuracy", "run", "sweep"]


def run(config: RunConfig) -> dict[str, Any]:
    """Return the report of a full run (also written as report.json / report.md in ``config.out``)."""
    ctx, device = prepare(config)
    st = open_out(ctx)
    started = time.perf_counter()
    sens, sens_key, dense = analysis_and_dense(ctx, st)
    attempts = closed_loop(ctx, st, sens, sens_key, device, prefix="", dense=dense)
    from toolchain.report import build_report, write_report

    if sens is None:  # retrain-free: the analysis of the shipped attempt
        from toolchain.sensitivity import Sensitivity

        sens = Sensitivity.load(ctx.out / attempts[-1].folder / "finetuned" / "sensitivity.json")
    report = build_report(ctx, device, sens, dense, attempts, st, time.perf_counter() - started)
    write_report(report, ctx.out, sens)
    return report


def sweep(config: RunConfig, keeps: list[float]) -> dict[str, Any]:
    """Return the Pareto table of runs at several keep fractions sharing one sensitivity analysis."""
    if not keeps or any(not 0 < k <= 1 for k in keeps):
        raise InputError(f"--budgets {keeps} must be fractions in (0, 1], e.g. 0.3,0.5,0.7")
    ctx, device = prepare(config, one_budget=False)
    st = open_out(ctx)
    sens, sens_key, dense = analysis_and_dense(ctx, st)
    points = []
    for keep in sorted(set(keeps)):
        sub = dataclasses.replace(config, keep=keep, params=None, flops=None, max_attempts=1)
        sub_ctx = dataclasses.replace(ctx, config=sub)
        points.append(closed_loop(sub_ctx, st, sens, sens_key, device, prefix=f"keep-{int(round(keep * 100))}/",
                                  dense=dense, keep=keep)[0])
    from toolchain.report import write_sweep

    return write_sweep(ctx, dense, points)
