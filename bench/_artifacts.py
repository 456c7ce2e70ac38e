"""Shared by the latency and memory benchmarks: trimmed MiniLM artifacts built from plans.

Latency and memory do not depend on trained weights, so each plan is applied to the
pre-trained MiniLM (units chosen by the sensitivity file's importance) and exported through
the same code path as ``sensibert export`` (fused fp32 + int8). Artifacts are cached in a
work folder keyed by the plan.
"""

from __future__ import annotations

import json
from pathlib import Path

from _results import ROOT

HOST_PROFILE = ROOT / "bench" / "host-x86-2core.yaml"


def plans(sensitivity_path: Path, keeps=(0.7, 0.5, 0.3), round_to=(16,)) -> dict[str, object]:
    """Return named plans: dense, uniform and sensitivity-driven at each keep (and rounded variants)."""
    from toolchain.budget import budget_from_keep
    from toolchain.plan import PlanConfig, allocate
    from toolchain.sensitivity import Sensitivity

    sens = Sensitivity.load(sensitivity_path)
    shape = sens.shape
    out = {"dense": allocate(sens, shape, budget_from_keep(shape, 1.0), PlanConfig(allocation="uniform"))}
    for keep in keeps:
        budget = budget_from_keep(shape, keep, seq_len=128)
        pct = int(round(keep * 100))
        out[f"uniform-{pct}"] = allocate(sens, shape, budget, PlanConfig(allocation="uniform"))
        out[f"sensitivity-{pct}"] = allocate(sens, shape, budget, PlanConfig(allocation="proportional"))
        for r in round_to:
            out[f"sensitivity-{pct}-round{r}"] = allocate(sens, shape, budget,
                                                           PlanConfig(allocation="proportional", round_to=r))
    return out


def build(name: str, plan, sensitivity_path: Path, work: Path) -> Path:
    """Return the artifact folder for ``plan`` (built once, then reused)."""
    from toolchain.export import ExportConfig, export
    from toolchain.masks import top_units_masks
    from toolchain.models import default_model_dir, load_classifier, load_tokenizer
    from toolchain.sensitivity import Sensitivity
    from toolchain.shrink import shrink

    artifact = work / name / "artifact"
    stamp = work / name / "plan.json"
    if (artifact / "sensibert.json").is_file() and stamp.is_file() and \
            json.loads(stamp.read_text())["heads"] == list(plan.heads) and \
            json.loads(stamp.read_text())["ffn"] == list(plan.ffn):
        return artifact
    sens = Sensitivity.load(sensitivity_path)
    model_dir = default_model_dir()
    model = load_classifier(model_dir, 2, seed=0, id2label={0: "negative", 1: "positive"})
    masks = top_units_masks(sens, plan)
    small = shrink(model, masks)
    ckpt = work / name / "checkpoint"
    small.save_pretrained(ckpt)
    load_tokenizer(model_dir).save_pretrained(ckpt)
    export(ckpt, artifact, ExportConfig(optimize=True, quantize="int8", task="sst2", seq_len=128))
    plan.save(stamp)
    return artifact
