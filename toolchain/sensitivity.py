"""Stage 1: how much each tensor group (per layer: attention, FFN) matters, and each unit in it.

``analyse(model, train_dataset, collator, SensitivityConfig())`` returns a ``Sensitivity``:
one score per group keyed ``"layer{l}.attn"`` / ``"layer{l}.ffn"`` and one importance per
unit (head or FFN neuron) under the same keys, saved as ``sensitivity.json``. Scorers live
in an explicit registry (``@register_scorer``); see shared/docs/METHOD.md "Stage 1".

Importing this module is cheap: torch and transformers load inside the scorers, so the
pure allocator (toolchain.plan) can read a ``Sensitivity`` without them.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from deploy.artifacts import package_versions, read_json, sha256_json, write_json
from toolchain.costs import EncoderShape, unit_params
from toolchain.errors import InputError
from toolchain.registry import Registry

SENSITIVITY_SCHEMA = "sensibert.sensitivity"
SENSITIVITY_VERSION = 1
KINDS = ("attn", "ffn")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")


def group_key(layer: int, kind: str) -> str:
    """Return the stable name of a tensor group, e.g. ``layer3.ffn``."""
    return f"layer{layer}.{kind}"


def group_keys(num_layers: int) -> list[str]:
    """Return every group key of an encoder in layer order, attention before FFN."""
    return [group_key(layer, kind) for layer in range(num_layers) for kind in KINDS]


@dataclass(frozen=True)
class SensitivityConfig:
    """Settings of one sensitivity run; saved with its result so the run can be redone."""

    method: str = "density"
    density: float = 0.5       # density: fraction of trimmable weights the global mask keeps
    steps: int = 200           # density: fine-tuning steps; fisher: batches accumulated (one pass at most)
    batch_size: int = 16
    learning_rate: float = 5e-5
    mask_interval: int = 10    # density: recompute the global mask every k steps
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.density < 1:
            raise InputError(f"--density {self.density} is out of range; choose a fraction in (0, 1)")
        for name in ("steps", "batch_size", "mask_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} {value} is out of range; choose an integer >= 1")
        if not self.learning_rate > 0:
            raise InputError(f"--learning-rate {self.learning_rate} is out of range; choose a value > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sensitivity:
    """Group scores and unit importances of one model on one task, with their provenance."""

    method: str
    settings: dict[str, Any]
    shape: EncoderShape
    scores: dict[str, float]
    importance: dict[str, tuple[float, ...]]
    importance_kind: str                      # "weight_norm" or "fisher"
    model_hash: str = ""
    data_hash: str = ""
    task: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    package_versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_sensitivity(self)

    def to_dict(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        shape = asdict(self.shape)
        shape["heads"], shape["ffn"] = list(self.shape.heads), list(self.shape.ffn)
        doc["shape"] = shape
        doc["importance"] = {k: list(v) for k, v in self.importance.items()}
        return doc

    def content_hash(self) -> str:
        """Return the sha256 of the saved content: what a plan records as its sensitivity."""
        return sha256_json(self.to_dict())

    def save(self, path: str | Path) -> Path:
        """Write sensitivity.json atomically."""
        return write_json(path, SENSITIVITY_SCHEMA, SENSITIVITY_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Sensitivity":
        """Read sensitivity.json; a malformed file is one InputError naming it."""
        body = read_json(path, SENSITIVITY_SCHEMA, SENSITIVITY_VERSION)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise InputError(f"{path}: malformed sensitivity file (unknown keys {unknown}); "
                             "regenerate it with sensibert analyze")
        try:
            shape = dict(body["shape"])
            shape["heads"], shape["ffn"] = tuple(shape["heads"]), tuple(shape["ffn"])
            body["shape"] = EncoderShape(**shape)
            body["importance"] = {str(k): tuple(float(x) for x in v) for k, v in body["importance"].items()}
            body["scores"] = {str(k): float(v) for k, v in body["scores"].items()}
            return cls(**body)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}: malformed sensitivity file ({type(exc).__name__}: {exc}); "
                             "regenerate it with sensibert analyze") from None

    def check_model(self, model_hash: str, origin: str = "sensitivity file") -> None:
        """Raise InputError when this analysis was made on another model than ``model_hash``."""
        if self.model_hash != model_hash:
            raise InputError(f"{origin} was made for model {self.model_hash[:12] or '<unknown>'} but --model "
                             f"is {model_hash[:12]}; run sensibert analyze on this model or drop --model")


def check_sensitivity(sens: Sensitivity) -> None:
    """Raise InputError unless every group has a finite score >= 0 and one importance per unit."""
    shape = sens.shape
    expected = group_keys(shape.num_layers)
    if sorted(sens.scores) != sorted(expected) or sorted(sens.importance) != sorted(expected):
        missing = sorted(set(expected) - set(sens.scores) | set(expected) - set(sens.importance))
        extra = sorted(set(sens.scores) - set(expected) | set(sens.importance) - set(expected))
        raise InputError(f"malformed sensitivity (groups missing {missing[:4]}, unexpected {extra[:4]} for "
                         f"{shape.num_layers} layers); regenerate it with sensibert analyze")
    for key in expected:
        score = sens.scores[key]
        if not isinstance(score, (int, float)) or not math.isfinite(score) or score < 0:
            raise InputError(f"malformed sensitivity: score of {key} is {score!r}; scores must be finite "
                             "and >= 0; regenerate it with sensibert analyze")
        layer, kind = _parse_key(key)
        units = shape.heads[layer] if kind == "attn" else shape.ffn[layer]
        values = sens.importance[key]
        if len(values) != units:
            raise InputError(f"malformed sensitivity: {key} has {len(values)} unit importances but the "
                             f"model has {units} units; regenerate it with sensibert analyze")
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise InputError(f"malformed sensitivity: {key} has a negative or non-finite unit importance; "
                             "regenerate it with sensibert analyze")


def _parse_key(key: str) -> tuple[int, str]:
    layer, kind = key.split(".")
    return int(layer.removeprefix("layer")), kind


# ---------------------------------------------------------------- scorer registry

@dataclass(frozen=True)
class ScorerResult:
    """What a scorer returns: group scores, unit importances and method-specific details."""

    scores: dict[str, float]
    importance: dict[str, tuple[float, ...]]
    importance_kind: str
    details: dict[str, Any] = field(default_factory=dict)


Scorer = Callable[[Any, Any, Any, SensitivityConfig, EncoderShape], ScorerResult]
SCORERS: Registry[Scorer] = Registry("sensitivity method")
register_scorer = SCORERS.register  # the value of --method
get_scorer = SCORERS.lookup


# ---------------------------------------------------------------- the verb

def analyse(model: Any, train_dataset: Any, collator: Any, config: SensitivityConfig = SensitivityConfig(),
            *, model_hash: str | None = None, data_hash: str | None = None, task: str = "") -> Sensitivity:
    """Return the sensitivity of ``model`` on ``train_dataset``; the model's weights are left unchanged.

    ``model_hash``/``data_hash`` identify the inputs in the result (the CLI passes the model
    directory's and the data's hashes); when absent they are computed from the tensors.

    Example:
        >>> sens = analyse(model, data.train, data.collator, SensitivityConfig(method="fisher", steps=8))
        >>> sens.save("sensitivity.json")
    """
    scorer = get_scorer(config.method)
    shape = model_shape(model)
    start = time.perf_counter()
    result = scorer(model, train_dataset, collator, config, shape)
    wall = time.perf_counter() - start
    return Sensitivity(
        method=config.method, settings=config.to_dict(), shape=shape, scores=result.scores,
        importance=result.importance, importance_kind=result.importance_kind,
        model_hash=model_hash if model_hash is not None else _tensor_hash(model),
        data_hash=data_hash if data_hash is not None else _dataset_hash(train_dataset),
        task=task, details=result.details, wall_time_s=round(wall, 3), package_versions=package_versions())


def model_shape(model: Any) -> EncoderShape:
    """Return the dense shape of a BERT classifier; uneven (already trimmed) models are refused."""
    from toolchain.costs import shape_from_config

    from toolchain.families import canonical_view, family_of

    num_labels = model.config.num_labels if hasattr(model, "classifier") or hasattr(model, "qa_outputs") else 0
    shape = shape_from_config(canonical_view(model.config), num_labels=num_labels,
                              pooler=family_of(model).has_pooler(model))
    if len(set(shape.heads)) != 1 or len(set(shape.ffn)) != 1:
        raise InputError(f"sensitivity analysis needs a dense model, but this one is already trimmed "
                         f"(heads {list(shape.heads)}, FFN {list(shape.ffn)}); pass the pre-trained model")
    return shape


def _layer_modules(model: Any) -> list[dict[str, list[Any]]]:
    """Return, per layer, the Linear modules of each group (attn: Q, K, V, O; ffn: W1, W2)."""
    from toolchain.families import layer_parts

    return [{"attn": parts.attn, "ffn": parts.ffn} for parts in layer_parts(model)]


def weight_norm_importance(model: Any, shape: EncoderShape) -> dict[str, tuple[float, ...]]:
    """Return the L2 norm of each unit's parameters (``masks.unit_weight_norms``: a head's Q, K, V
    rows and biases + W_o columns; a neuron's W1 row and bias + W2 column), what removing it removes."""
    from toolchain.families import layer_parts
    from toolchain.masks import unit_weight_norms

    out: dict[str, tuple[float, ...]] = {}
    for layer, block in enumerate(layer_parts(model)):
        for kind in KINDS:
            out[group_key(layer, kind)] = tuple(float(x) for x in unit_weight_norms(block, kind))
    return out


def _model_inputs_only(dataset: Any) -> Any:
    """Return the dataset with only the columns the model takes (text columns would break collation)."""
    names = getattr(dataset, "column_names", None)
    if names is None:
        return dataset
    extra = [c for c in names if c not in MODEL_INPUTS]
    if "labels" not in names and "label" not in names and "start_positions" not in names:
        raise InputError("the training data has no labels column; pass a tokenised dataset with labels "
                         "(or start/end positions for QA)")
    return dataset.remove_columns(extra) if extra else dataset


# ---------------------------------------------------------------- density (SENet-style)

@register_scorer("density")
def density_scorer(model: Any, dataset: Any, collator: Any, config: SensitivityConfig,
                   shape: EncoderShape) -> ScorerResult:
    """Return group scores = fraction of each group's weights kept by a global magnitude mask after a short run.

    Every trimmable weight matrix gets a per-weight mask applied in the forward pass; a
    ``transformers.Trainer`` fine-tunes a copy of the model and a callback recomputes one
    global top-``density`` |w| mask every ``mask_interval`` steps. Masked weights contribute
    nothing to the forward pass but receive the dense (straight-through) gradient, so a weight
    the task needs can grow back into the global top-d at the next recompute: the competition
    that makes the surviving fraction a sensitivity signal. The copy is discarded.
    """
    import torch
    from torch.nn.utils import parametrize
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class MaskedWeight(torch.nn.Module):
        """Parametrization w -> w·m whose gradient reaches masked weights unchanged (straight-through)."""

        def __init__(self, mask: Any) -> None:
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, weight: Any) -> Any:
            m = self.mask.to(weight.dtype)
            return weight * m + (weight - weight.detach()) * (1 - m)

    importance = weight_norm_importance(model, shape)  # of the pre-trained weights
    work = copy.deepcopy(model)
    work.train()
    groups: dict[str, list[Any]] = {}
    for layer, mods in enumerate(_layer_modules(work)):
        for kind in KINDS:
            groups[group_key(layer, kind)] = []
            for module in mods[kind]:
                mask = torch.ones_like(module.weight, dtype=torch.bool)
                parametrize.register_parametrization(module, "weight", MaskedWeight(mask))
                groups[group_key(layer, kind)].append(module)

    def recompute() -> None:
        with torch.no_grad():
            mags = [m.parametrizations.weight.original.detach().abs() for ms in groups.values() for m in ms]
            flat = torch.cat([x.flatten() for x in mags])
            keep = max(1, int(round(config.density * flat.numel())))
            threshold = torch.kthvalue(flat.float(), flat.numel() - keep + 1).values
            for module, mag in zip((m for ms in groups.values() for m in ms), mags):
                module.parametrizations.weight[0].mask.copy_(mag >= threshold)

    def kept() -> dict[str, float]:
        out = {}
        for key, modules in groups.items():
            masks = [m.parametrizations.weight[0].mask for m in modules]
            out[key] = float(sum(int(x.sum()) for x in masks) / sum(x.numel() for x in masks))
        return out

    class MaskCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % config.mask_interval == 0 or state.global_step == state.max_steps:
                recompute()

    recompute()
    initial = kept()
    with tempfile.TemporaryDirectory(prefix="sensibert-density-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=config.steps, per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate, seed=config.seed, data_seed=config.seed,
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=False,
            dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available())
        trainer = Trainer(model=work, args=args, train_dataset=_model_inputs_only(dataset),
                          data_collator=collator, callbacks=[MaskCallback()])
        from toolchain.progress import one_bar

        one_bar(trainer)
        trainer.train()
    final = kept()
    del work, trainer
    return ScorerResult(scores=final, importance=importance, importance_kind="weight_norm",
                        details={"initial_kept": initial, "final_kept": final})


# ---------------------------------------------------------------- fisher (Michel et al. 2019, Kwon et al. 2022)

def mask_gradients(model: Any, dataset: Any, collator: Any, steps: int, batch_size: int, seed: int,
                   desc: str = "fisher") -> tuple[Any, Any]:
    """Return per-batch gradients of the loss w.r.t. every unit mask, all masks at 1 (no dropout).

    Shapes (steps, layers, heads) and (steps, layers, neurons), float64 on the CPU. Their
    squares summed over batches are the diagonal Fisher; kept per batch they give the
    off-diagonal terms the retraining-free mode's mask rearrangement needs.
    """
    import torch

    from toolchain.families import forward_inputs
    from toolchain.masks import MaskSet, attach_masks
    from toolchain.progress import batches_bar

    shape = model_shape(model)
    was_training = model.training
    model.eval()  # no dropout: the gradient of the mask, not of a random sub-network
    handle = attach_masks(model, MaskSet.dense(shape.num_layers, shape.heads[0], shape.ffn[0]))
    masks = handle.head_masks + handle.ffn_masks
    for m in masks:
        m.requires_grad_(True)
    layers = shape.num_layers
    heads = torch.zeros(steps, layers, shape.heads[0], dtype=torch.float64)
    ffn = torch.zeros(steps, layers, shape.ffn[0], dtype=torch.float64)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(_model_inputs_only(dataset), batch_size=batch_size,
                                         shuffle=True, generator=generator, collate_fn=collator)
    try:
        batches = iter(loader)
        for step in batches_bar(range(steps), desc):
            try:
                batch = next(batches)
            except StopIteration:  # fewer batches than --steps: start another pass
                batches = iter(loader)
                batch = next(batches)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**forward_inputs(model, batch)).loss
            grads = torch.autograd.grad(loss, masks)
            heads[step] = torch.stack([g.detach().double().cpu() for g in grads[:layers]])
            ffn[step] = torch.stack([g.detach().double().cpu() for g in grads[layers:]])
    finally:
        handle.remove()
        model.train(was_training)
    return heads, ffn


def fisher_result(shape: EncoderShape, head_fisher: Any, ffn_fisher: Any, batches: int) -> ScorerResult:
    """Return unit importances (diagonal Fisher, per layer) and group scores from them.

    Group score = the group's total importance per trimmable parameter, normalised to sum
    to 1 over groups: the group's share of importance per unit of cost.
    """
    importance = {}
    for layer in range(shape.num_layers):
        importance[group_key(layer, "attn")] = tuple(float(x) for x in head_fisher[layer])
        importance[group_key(layer, "ffn")] = tuple(float(x) for x in ffn_fisher[layer])
    per_cost = {}
    for key, values in importance.items():
        _, kind = _parse_key(key)
        per_cost[key] = sum(values) / (len(values) * unit_params(shape, kind)) if values else 0.0
    total = sum(per_cost.values())
    scores = {k: (v / total if total > 0 else 1.0 / len(per_cost)) for k, v in per_cost.items()}
    return ScorerResult(scores=scores, importance=importance, importance_kind="fisher",
                        details={"group_importance": {k: sum(v) for k, v in importance.items()},
                                 "batches": batches})


@register_scorer("fisher")
def fisher_scorer(model: Any, dataset: Any, collator: Any, config: SensitivityConfig,
                  shape: EncoderShape) -> ScorerResult:
    """Return unit importance = Σ over batches of (∂loss/∂mask)² with every unit mask fixed at 1.

    At most one pass over the data: with dropout off, a second pass re-reads the same examples
    and adds compute, not information (a small carved split would otherwise be read many times).
    """
    steps = min(config.steps, -(-len(dataset) // config.batch_size))
    heads, ffn = mask_gradients(model, dataset, collator, steps, config.batch_size, config.seed)
    return fisher_result(shape, heads.pow(2).sum(dim=0), ffn.pow(2).sum(dim=0), steps)


# ---------------------------------------------------------------- provenance fallbacks

def _tensor_hash(model: Any) -> str:
    """Return a sha256 over the model's parameters (used when no model directory hash is given)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _dataset_hash(dataset: Any) -> str:
    """Return a sha256 over the model-input columns of a dataset (used when no data hash is given)."""
    names = [c for c in getattr(dataset, "column_names", []) if c in MODEL_INPUTS + ("label",)]
    if names:
        return sha256_json(dataset.select_columns(sorted(names)).to_dict())
    return sha256_json([dict(row) for row in dataset])
