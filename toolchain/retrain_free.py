"""Retraining-free trimming of a fine-tuned classifier (after Kwon et al. 2022, "A Fast
Post-Training Pruning Framework for Transformers"): no gradient step on any weight.

``retrain_free(model, budget, calibration, collator, RetrainFreeConfig(), out_dir)``:

1. **Fisher of the unit masks** on a few thousand task examples: per-batch gradients of the
   loss w.r.t. every head and neuron mask (``sensitivity.mask_gradients``).
2. **Mask search** under the budget (parameters, FLOPs or the device's): the registered
   allocation ``global`` ranks every unit by diagonal Fisher per unit of cost, which for
   heads and neurons of fixed cost is Kwon's search; then each group keeps its top units.
3. **Mask rearrangement**: within each group, with the count fixed, the removed set is
   re-chosen greedily to minimise ½·Σ_b (Σ_{i∈R} g_bi)², the empirical-Fisher estimate of
   the loss increase including interactions between units; kept only where it beats the
   diagonal choice on that objective.
4. **Least-squares tuning**: layer by layer (attention, then FFN), the kept units' output
   scales are solved so that the layer's sublayer output matches the dense layer's on the
   trimmed model's own inputs (so errors do not compound); the scales are folded into W_o
   columns and W_2 columns, so the trimmed model has no extra operation.

The output folder has the layout of ``sensibert finetune``'s (``finetune.write_masked_dir``:
model, tokenizer, masks.json, plan.json, metrics.json), so shrink, export and measurement
follow unchanged.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from deploy.artifacts import package_versions
from toolchain.errors import InputError
from toolchain.scoring import accuracy_scorer

SCALE_LIMIT = 10.0  # |scale| bound, as Kwon et al. clamp the least-squares solution


@dataclass(frozen=True)
class RetrainFreeConfig:
    """Settings of one retraining-free run."""

    samples: int = 2048          # calibration examples (Fisher and least squares)
    batch_size: int = 8          # examples per Fisher gradient (more batches: better off-diagonal estimate)
    allocation: str = "global"   # mask search: importance per cost over all units
    rearrange: bool = True
    tune: bool = True            # least-squares scales
    ridge: float = 1e-6          # relative ridge on the normal equations (numerical safety only)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"retrain-free {name} {value!r} is out of range; choose a whole number >= 1")
        if not self.ridge >= 0:
            raise InputError(f"retrain-free ridge {self.ridge!r} is out of range; choose a value >= 0")
        from toolchain.plan import get_allocation

        get_allocation(self.allocation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RetrainFreeResult:
    """What a run produced: the folder, the plan's unit counts, and what each step measured."""

    out_dir: Path
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    dev_accuracy: float
    dev_accuracy_untuned: float
    reconstruction: dict[str, dict[str, float]]
    wall_time_s: float
    details: dict[str, Any] = field(default_factory=dict)


def retrain_free(model: Any, budget: Any, calibration: Any, eval_dataset: Any, collator: Any,
                 config: RetrainFreeConfig, out_dir: str | Path, *,
                 provenance: Mapping[str, Any] | None = None, scorer: Any = None,
                 label_keys: Sequence[str] = ("labels",)) -> RetrainFreeResult:
    """Return the result of trimming the fine-tuned ``model`` to ``budget`` without training; write ``out_dir``.

    ``model`` must be a dense task model with a trained head; its weights are changed in place
    (kept units rescaled). Raises InfeasibleBudget when the search cannot meet the budget.
    ``scorer`` (``toolchain.scoring.Scorer``; default accuracy) scores the eval split and
    ``label_keys`` names the batch columns that are targets; both come from the caller's task
    (``TaskData.scorer()``, ``TaskData.label_keys``): this mode knows no task.
    """
    from toolchain.masks import attach_masks, top_units_masks
    from toolchain.plan import PlanConfig, allocate
    from toolchain.sensitivity import Sensitivity, fisher_result, mask_gradients, model_shape

    start = time.perf_counter()
    shape = model_shape(model)
    plan_config = PlanConfig(allocation=config.allocation)
    steps = max(1, -(-min(config.samples, len(calibration)) // config.batch_size))
    head_g, ffn_g = mask_gradients(model, calibration, collator, steps, config.batch_size, config.seed,
                                   desc="retrain-free fisher")
    scored = fisher_result(shape, head_g.pow(2).sum(dim=0), ffn_g.pow(2).sum(dim=0), steps)
    sens = Sensitivity(method="fisher", settings={"retrain_free": config.to_dict()}, shape=shape,
                       scores=scored.scores, importance=scored.importance, importance_kind="fisher",
                       details=scored.details, model_hash=str((provenance or {}).get("model_hash", "")),
                       task=str((provenance or {}).get("task", "")),
                       data_hash=str((provenance or {}).get("data_hash", "")),
                       wall_time_s=round(time.perf_counter() - start, 3), package_versions=package_versions())
    plan = allocate(sens, shape, budget, plan_config)
    masks = top_units_masks(sens, plan)
    swapped = 0
    if config.rearrange:
        masks, swapped = rearrange(masks, head_g, ffn_g)
    handle = attach_masks(model, masks)
    model.eval()
    scorer = scorer or accuracy_scorer()
    untuned = torch_score(model, eval_dataset, collator, scorer)
    reconstruction: dict[str, dict[str, float]] = {}
    if config.tune:
        reconstruction = tune_scales(model, handle, calibration, collator, config, label_keys)
    tuned = torch_score(model, eval_dataset, collator, scorer)
    wall = time.perf_counter() - start
    metrics = {
        "mode": "retrain-free", "metric": scorer.metric, "dev_accuracy": [{"epoch": 0, "step": 0, "accuracy": tuned, "masks_final": True}],
        "best": {"accuracy": tuned, "epoch": 0, "step": 0}, "dev_accuracy_untuned": untuned,
        "steps": 0, "wall_time_s": round(wall, 3), "train_samples": min(config.samples, len(calibration)),
        "eval_samples": len(eval_dataset), "settings": config.to_dict(), "swapped_units": swapped,
        "reconstruction": reconstruction,
        "plan": {"heads": list(plan.heads), "ffn": list(plan.ffn), "allocation": plan.allocation},
        **dict(provenance or {}), "package_versions": package_versions(),
    }
    handle.remove()
    from toolchain.finetune import write_masked_dir

    write_masked_dir(Path(out_dir), model, masks, plan, metrics, [], getattr(collator, "tokenizer", None))
    sens.save(Path(out_dir) / "sensitivity.json")  # the mode's own analysis: what the report shows
    attach_masks(model, masks)
    return RetrainFreeResult(out_dir=Path(out_dir), heads=plan.heads, ffn=plan.ffn, dev_accuracy=tuned,
                             dev_accuracy_untuned=untuned, reconstruction=reconstruction,
                             wall_time_s=round(wall, 3), details={"swapped_units": swapped})


# ---------------------------------------------------------------- mask rearrangement

def fisher_increase(grads: Any, removed: list[int]) -> float:
    """Return ½·Σ_b (Σ_{i∈removed} g_bi)²: the empirical-Fisher loss increase of removing those units."""
    if not removed:
        return 0.0
    return 0.5 * float(grads[:, removed].sum(dim=1).pow(2).sum())


def greedy_removal(grads: Any, count: int) -> list[int]:
    """Return ``count`` units to remove, chosen one at a time to minimise ``fisher_increase``."""
    import torch

    units = grads.shape[1]
    running = torch.zeros(grads.shape[0], dtype=grads.dtype)
    colsq = grads.pow(2).sum(dim=0)
    removed: list[int] = []
    taken = torch.zeros(units, dtype=torch.bool)
    for _ in range(count):
        # Σ_b (s_b + g_bi)² − Σ_b s_b² = 2·sᵀg_i + ‖g_i‖²
        cost = 2.0 * (running @ grads) + colsq
        cost[taken] = float("inf")
        i = int(torch.argmin(cost))
        removed.append(i)
        taken[i] = True
        running += grads[:, i]
    return removed


def rearrange(masks: Any, head_grads: Any, ffn_grads: Any) -> tuple[Any, int]:
    """Return (masks, units swapped): per group, the greedy removed set where it beats the given one."""
    from toolchain.masks import MaskSet

    kept = {"attn": [list(h) for h in masks.kept_heads], "ffn": [list(f) for f in masks.kept_ffn]}
    swapped = 0
    for kind, grads, size in (("attn", head_grads, masks.num_heads), ("ffn", ffn_grads, masks.ffn_size)):
        for layer in range(len(kept[kind])):
            g = grads[:, layer, :]
            current = sorted(set(range(size)) - set(kept[kind][layer]))
            if not current or len(current) == size:
                continue
            greedy = greedy_removal(g, len(current))
            if fisher_increase(g, greedy) < fisher_increase(g, current):
                swapped += len(set(greedy) - set(current))
                kept[kind][layer] = sorted(set(range(size)) - set(greedy))
    return MaskSet.from_lists(masks.num_heads, masks.ffn_size, kept["attn"], kept["ffn"]), swapped


# ---------------------------------------------------------------- least-squares scales

class _Captured(Exception):
    """Raised by a capture hook to stop the forward pass once the layer of interest is seen."""


def _batches(dataset: Any, collator: Any, samples: int, batch_size: int = 32):
    from toolchain.sensitivity import _model_inputs_only

    data = _model_inputs_only(dataset)
    n = min(samples, len(data))
    for start in range(0, n, batch_size):
        yield collator([data[i] for i in range(start, min(n, start + batch_size))])


def _normal_equations(model: Any, layer: int, kind: str, calibration: Any, collator: Any,
                      samples: int, label_keys: Sequence[str] = ("labels",)) -> tuple[Any, Any, float]:
    """Return (A, r, ‖t‖²) of min_m ‖Σ_i m_i·c_i − t‖² over real tokens, for every unit i of a group.

    c_i is unit i's contribution to the sublayer output (head: its context slice through its
    W_o columns; neuron: its activation times its W_2 column), t = Σ_i c_i the dense output.
    Inputs are taken from the current (trimmed, earlier layers tuned) model.
    """
    import torch

    from toolchain.families import forward_inputs, layer_parts

    block = layer_parts(model)[layer]
    linear = block.attn_out if kind == "attn" else block.ffn_out
    weight = linear.weight.detach().double()                 # (hidden, units·width)
    width = block.head_size if kind == "attn" else 1
    units = weight.shape[1] // width
    w = weight.t().reshape(units, width, -1)                 # (units, width, hidden)
    state: dict[str, Any] = {"A": torch.zeros(units, units, dtype=torch.float64)}

    def hook(module, args):
        x = args[0].detach()[state["mask"]]                  # unmasked input at real tokens, (n, units·width)
        if kind == "attn":                                   # A_uv = Σ_n c_u(n)·c_v(n), c_u = W_u x_u
            c = torch.einsum("nuw,uwh->nuh", x.double().reshape(x.shape[0], units, width), w)
            state["A"] += torch.einsum("nuh,nvh->uv", c, c)
        else:                                                # Σ_n a_i a_j, times W_2 column products below
            state["A"] += (x.t() @ x).double()
        raise _Captured

    handle = linear.register_forward_pre_hook(hook, prepend=True)  # before the mask hook: all units seen
    try:
        with torch.no_grad():
            for batch in _batches(calibration, collator, samples):
                state["mask"] = batch["attention_mask"].bool()
                inputs = {k: v for k, v in batch.items() if k not in label_keys}
                try:
                    model(**forward_inputs(model, inputs))
                except _Captured:
                    pass
    finally:
        handle.remove()
    A = state["A"] if kind == "attn" else state["A"] * (weight.t() @ weight)
    r = A.sum(dim=1)          # r_i = c_i · Σ_j c_j
    total = float(A.sum())    # ‖Σ_j c_j‖²
    return A, r, total


def solve_scales(A: Any, r: Any, total: float, kept: list[int], ridge: float) -> tuple[Any, float, float]:
    """Return (scales of the kept units, relative error at scale 1, relative error at the solution).

    Error(m) = mᵀA_KK m − 2 r_Kᵀ m + ‖t‖², relative to ‖t‖². The solution is clamped to
    ±SCALE_LIMIT; if clamping made it worse than scale 1, scale 1 is kept.
    """
    import torch

    idx = torch.tensor(kept, dtype=torch.long)
    a = A[idx][:, idx]
    b = r[idx]
    ones = torch.ones(len(kept), dtype=torch.float64)

    def error(m: Any) -> float:
        return float(m @ a @ m - 2 * b @ m + total) / max(total, 1e-30)

    reg = ridge * float(torch.diagonal(a).mean()) if len(kept) else 0.0
    m = torch.linalg.solve(a + reg * torch.eye(len(kept), dtype=torch.float64), b).clamp(-SCALE_LIMIT, SCALE_LIMIT)
    before, after = error(ones), error(m)
    if after > before:
        return ones, before, before
    return m, before, after


def tune_scales(model: Any, handle: Any, calibration: Any, collator: Any,
                config: RetrainFreeConfig, label_keys: Sequence[str] = ("labels",)) -> dict[str, dict[str, float]]:
    """Fold least-squares scales of the kept units into W_o / W_2, layer by layer; return the errors.

    ``label_keys``: the batch columns that are targets, kept out of the forward passes.

    Returns, per group key, the relative reconstruction error of the sublayer output before
    and after tuning (on the calibration tokens).
    """
    import torch

    from toolchain.families import layer_parts
    from toolchain.progress import batches_bar

    out: dict[str, dict[str, float]] = {}
    masks = handle.masks
    groups = [(layer, block, kind) for layer, block in enumerate(layer_parts(model)) for kind in ("attn", "ffn")]
    # one pass over the calibration examples per sublayer: minutes at pair lengths, so a bar with an ETA
    for layer, block, kind in batches_bar(groups, "retrain-free least squares", unit="sublayer"):
        kept = list(masks.kept_heads[layer] if kind == "attn" else masks.kept_ffn[layer])
        if not kept:
            continue
        A, r, total = _normal_equations(model, layer, kind, calibration, collator, config.samples, label_keys)
        scales, before, after = solve_scales(A, r, total, kept, config.ridge)
        linear = block.attn_out if kind == "attn" else block.ffn_out
        width = block.head_size if kind == "attn" else 1
        with torch.no_grad():
            for unit, scale in zip(kept, scales.tolist()):
                linear.weight[:, unit * width:(unit + 1) * width] *= scale
        out[f"layer{layer}.{kind}"] = {"before": before, "after": after}
    return out


# ---------------------------------------------------------------- evaluation and output

def torch_predictions(model: Any, dataset: Any, collator: Any, batch_size: int = 64) -> tuple[Any, Any]:
    """Return (predictions, label ids) of a PyTorch task model on a tokenised split, as the
    Trainer's evaluation gives them: logits, or (start, end) logits padded with -1e4 to one
    length; labels, or (start, end) positions."""
    import numpy as np
    import torch

    from toolchain.families import forward_inputs
    from toolchain.sensitivity import _model_inputs_only

    data = _model_inputs_only(dataset)
    qa = hasattr(model, "qa_outputs")
    was_training = model.training
    model.eval()
    outs: list[list[Any]] = [[], []] if qa else [[]]
    labels: list[list[Any]] = [[], []] if qa else [[]]
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = collator([data[i] for i in range(start, min(len(data), start + batch_size))])
            targets = [batch.pop(k) for k in (("start_positions", "end_positions") if qa else ("labels",))]
            out = model(**forward_inputs(model, batch))
            for i, t in enumerate((out.start_logits, out.end_logits) if qa else (out.logits,)):
                outs[i].append(t.double().numpy())
                labels[i].append(targets[i].numpy())
    model.train(was_training)
    if qa:
        width = max(a.shape[1] for a in outs[0])
        padded = [np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1e4)
                                  for a in o]) for o in outs]
        return tuple(padded), tuple(np.concatenate(lab) for lab in labels)
    return np.concatenate(outs[0]), np.concatenate(labels[0])


def torch_score(model: Any, dataset: Any, collator: Any, scorer: Any = None, batch_size: int = 64) -> float:
    """Return the primary score (``scorer.metric``; default accuracy) of a PyTorch task model."""
    scorer = scorer or accuracy_scorer()
    predictions, label_ids = torch_predictions(model, dataset, collator, batch_size)
    return scorer.fn(predictions, label_ids)[scorer.metric]


def torch_accuracy(model: Any, dataset: Any, collator: Any, batch_size: int = 64) -> float:
    """Return the accuracy of a PyTorch classifier on a tokenised split (its masks as attached)."""
    return torch_score(model, dataset, collator, batch_size=batch_size)


__all__ = ["RetrainFreeConfig", "RetrainFreeResult", "fisher_increase", "greedy_removal", "rearrange",
           "retrain_free", "solve_scales", "torch_accuracy", "torch_predictions", "torch_score", "tune_scales"]
