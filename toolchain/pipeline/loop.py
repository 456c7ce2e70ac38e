"""The closed loop: plan, trim and deliver under a budget; when the artifact misses the device's
latency or memory target, tighten the budget by the measured ratio and try again."""

from __future__ import annotations

from typing import Any

from toolchain.errors import InfeasibleBudget
from toolchain.pipeline.book import Stages
from toolchain.pipeline.context import RunContext, initial_budget
from toolchain.pipeline.deliver import deliver, device_check
from toolchain.pipeline.records import Attempt, DenseModel
from toolchain.pipeline.stages import plan_stage, retrain_free_stage, sources, trim


TIGHTEN_MARGIN = 0.95  # aim a little under the target when the loop tightens a budget


def tighten(budget: Any, plan: Any, check: dict[str, Any]) -> Any:
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


def closed_loop(ctx: RunContext, st: Stages, sens: Any, sens_key: str, device: Any, prefix: str,
              dense: DenseModel | None, keep: float | None = None) -> list[Attempt]:
    """Run plan → finetune → deliver (or retrain-free → deliver), tightening the budget until the
    device's targets are met."""
    from toolchain.plan import Plan

    c = ctx.config
    budget = initial_budget(ctx, device)
    latency_ms = c.latency_ms  # the latency allocation's cap (None: the profile's target)
    attempts = []
    for attempt in range(1, c.max_attempts + 1):
        folder = ctx.out / f"{prefix}attempt-{attempt}"
        name = f"{prefix}attempt-{attempt}/"
        start, teacher = sources(ctx, dense)
        try:
            if c.mode == "retrain-free":  # its own Fisher search chooses the units and writes the plan shipped
                tuned, key = retrain_free_stage(ctx, st, f"{name}retrain-free", budget, folder, sens_key, start)
                plan = Plan.load(folder / "finetuned" / "plan.json")
            else:
                plan, key = plan_stage(ctx, st, f"{name}plan", budget, sens, folder / "plan.json", sens_key,
                                       latency_ms=latency_ms)
                tuned, key = trim(ctx, st, f"{name}finetune", plan, folder, key, start, teacher)
        except InfeasibleBudget as exc:
            if not attempts:
                raise
            print(f"[sensibert run] cannot tighten further: {exc}", flush=True)
            break
        delivered, key = deliver(ctx, st, name, folder, folder / "finetuned", key, teacher=teacher)
        check = device_check(ctx, delivered)
        attempts.append(Attempt(attempt=attempt, folder=str(folder.relative_to(ctx.out)), budget=budget.to_dict(),
                                plan=plan.to_dict(), finetune=tuned, delivered=delivered, check=check, keep=keep))
        if attempts[-1].met:
            break
        if attempt < c.max_attempts:
            print(f"[sensibert run] attempt {attempt} misses the target (latency {check['latency_estimate_ms']:.1f} "
                  f"ms vs {check['latency_target_ms']:g} ms, memory {check['peak_rss_bytes'] / 2**20:.0f} MiB vs "
                  f"{check['memory_limit_bytes'] / 2**20:.0f} MiB): tightening the budget", flush=True)
            try:
                budget = tighten(budget, plan, check)
            except ValueError:
                break
            if "predicted_latency_ms" in plan.cost and not check["latency_ok"]:  # the table's cap, by the miss
                latency_ms = plan.cost["latency_model"]["max_ms"] * check["latency_target_ms"] \
                    / check["latency_estimate_ms"] * TIGHTEN_MARGIN
    return attempts
