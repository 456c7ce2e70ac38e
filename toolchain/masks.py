"""Structured unit masks: which heads and FFN neurons of each layer are kept.

``MaskSet`` is the saved form (``masks.json``); ``attach_masks`` makes masked units contribute
nothing to a BERT forward pass. A head's mask multiplies its slice of the context vector just
before the output projection W_o; a neuron's mask multiplies its activation just before W_2.
So masking all heads of a layer leaves LayerNorm(x + b_o): exactly what the shrunk layer with
no heads computes. A layer left with no head and no neuron is skipped (its output is its input):
the shrunk model and its ONNX graph drop it whole (``deploy.latency_table.layer_removed``).

``MaskRamp`` is the training-time lifecycle (stage 3 of METHOD.md): ``attach`` → per optimizer
step ``before_step`` / ``optimizer.step()`` / ``apply`` / ``update(step)`` → ``detach``. It
ramps each group's kept count from dense to the plan on ``cubic_schedule`` (a pure function),
masking the currently least important kept units at each step down (nested: a masked unit
never returns), and keeps masked units out of training: their gradients are zeroed by a hook
and their weights are restored after every optimizer step, since AdamW's momentum and weight
decay would otherwise still move them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from deploy.artifacts import read_versioned, write_json
from deploy.latency_table import layer_removed
from toolchain.errors import InputError
from toolchain.families import encoder_layers, layer_parts
from toolchain.registry import Registry

MASKS_SCHEMA = "sensibert.masks"
MASKS_VERSION = 2  # 2: a layer left with no head and no neuron is skipped (1: it computed its two LayerNorms)


@dataclass(frozen=True)
class MaskSet:
    """Kept head and neuron indices per layer (sorted), with the dense sizes they index into."""

    num_heads: int
    ffn_size: int
    kept_heads: tuple[tuple[int, ...], ...]
    kept_ffn: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.kept_heads) != len(self.kept_ffn):
            raise ValueError("kept_heads and kept_ffn need one entry per layer")
        for layer, (heads, ffn) in enumerate(zip(self.kept_heads, self.kept_ffn)):
            if any(not 0 <= h < self.num_heads for h in heads) or len(set(heads)) != len(heads):
                raise ValueError(f"layer {layer}: head indices must be distinct and in [0, {self.num_heads})")
            if any(not 0 <= n < self.ffn_size for n in ffn) or len(set(ffn)) != len(ffn):
                raise ValueError(f"layer {layer}: neuron indices must be distinct and in [0, {self.ffn_size})")

    @classmethod
    def dense(cls, num_layers: int, num_heads: int, ffn_size: int) -> "MaskSet":
        """Return the mask set that keeps everything."""
        return cls(num_heads, ffn_size, tuple(tuple(range(num_heads)) for _ in range(num_layers)),
                   tuple(tuple(range(ffn_size)) for _ in range(num_layers)))

    @classmethod
    def from_lists(cls, num_heads: int, ffn_size: int, heads: Sequence[Sequence[int]],
                   ffn: Sequence[Sequence[int]]) -> "MaskSet":
        """Return a MaskSet from any sequences of indices (sorted and frozen here)."""
        return cls(num_heads, ffn_size, tuple(tuple(sorted(int(i) for i in h)) for h in heads),
                   tuple(tuple(sorted(int(i) for i in f)) for f in ffn))

    @property
    def heads(self) -> tuple[int, ...]:
        """Return kept head counts per layer."""
        return tuple(len(h) for h in self.kept_heads)

    @property
    def ffn(self) -> tuple[int, ...]:
        """Return kept FFN widths per layer."""
        return tuple(len(f) for f in self.kept_ffn)

    def to_dict(self) -> dict[str, Any]:
        return {"num_heads": self.num_heads, "ffn_size": self.ffn_size,
                "kept_heads": [list(h) for h in self.kept_heads],
                "kept_ffn": [list(f) for f in self.kept_ffn]}

    def save(self, path: str | Path) -> Path:
        """Write masks.json atomically."""
        return write_json(path, MASKS_SCHEMA, MASKS_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "MaskSet":
        """Read masks.json; a malformed file is an InputError naming it. A version-1 file means the
        same today unless it empties a layer, which its model was trained to compute as two
        LayerNorms and which is now removed: that one is refused (fine-tune again)."""
        version, body = read_versioned(path, MASKS_SCHEMA, (1, MASKS_VERSION))
        try:
            masks = cls.from_lists(body["num_heads"], body["ffn_size"], body["kept_heads"], body["kept_ffn"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: malformed masks file ({exc}); regenerate it with sensibert finetune") from None
        emptied = [i for i, (h, f) in enumerate(zip(masks.heads, masks.ffn)) if layer_removed(h, f)]
        if version == 1 and emptied:
            raise InputError(f"{path}: made before a layer with no heads and no neurons was removed whole (layer "
                             f"{', '.join(map(str, emptied))}), so its model was trained for another function; "
                             "fine-tune it again (sensibert finetune, or sensibert run --force)")
        return masks


def top_units_masks(sensitivity: Any, plan: Any) -> MaskSet:
    """Return the masks that keep, in each group, the plan's count of units of highest importance.

    ``sensitivity`` is a ``Sensitivity`` (its ``importance`` per group key and dense ``shape``);
    ties go to the lower index, so the same inputs always give the same masks.
    """
    shape = sensitivity.shape
    kept: dict[str, list[list[int]]] = {"attn": [], "ffn": []}
    for layer, counts in enumerate(zip(plan.heads, plan.ffn)):
        for kind, count in zip(("attn", "ffn"), counts):
            values = sensitivity.importance[f"layer{layer}.{kind}"]
            kept[kind].append(sorted(sorted(range(len(values)), key=lambda i: (-values[i], i))[:count]))
    return MaskSet.from_lists(max(shape.heads), max(shape.ffn), kept["attn"], kept["ffn"])


class MaskHandle:
    """Live masks on a model: tensors the hooks read, updatable in place, removable."""

    def __init__(self, model: Any, masks: MaskSet) -> None:
        import torch

        layers = layer_parts(model)
        if len(layers) != len(masks.kept_heads):
            raise InputError(f"masks have {len(masks.kept_heads)} layers but the model has {len(layers)}; "
                             "use the masks saved with this model")
        for i, layer in enumerate(layers):
            have = (layer.num_heads, layer.ffn_in.out_features)
            if have != (masks.num_heads, masks.ffn_size):
                raise InputError(f"masks index {masks.num_heads} heads and {masks.ffn_size} neurons per layer but "
                                 f"layer {i} of the model has {have[0]} and {have[1]}; masks apply to the dense "
                                 "model they were made for")
        device = next(model.parameters()).device
        self.head_size = layers[0].head_size
        # On the model's device so that an all-reduce of their gradients works under NCCL too.
        self.head_masks = [torch.zeros(masks.num_heads, device=device) for _ in layers]
        self.ffn_masks = [torch.zeros(masks.ffn_size, device=device) for _ in layers]
        self.removed = [False] * len(layers)
        self._hooks = []
        for i, (layer, module) in enumerate(zip(layers, encoder_layers(model))):
            self._hooks.append(layer.attn_out.register_forward_pre_hook(self._head_hook(i)))
            self._hooks.append(layer.ffn_out.register_forward_pre_hook(self._ffn_hook(i)))
            self._hooks.append(module.register_forward_hook(self._skip_hook(i), with_kwargs=True))
        self.set(masks)

    def set(self, masks: MaskSet) -> None:
        """Replace the kept sets (in place, so hooks see the change at the next forward)."""
        import torch

        if (masks.num_heads, masks.ffn_size, len(masks.kept_heads)) != \
                (self.head_masks[0].numel(), self.ffn_masks[0].numel(), len(self.head_masks)):
            raise InputError("masks do not fit the model they are set on; use the masks saved with this model")
        with torch.no_grad():  # the mask tensors may require grad (Fisher importance)
            for i, (heads, ffn) in enumerate(zip(masks.kept_heads, masks.kept_ffn)):
                self.head_masks[i].zero_()
                self.head_masks[i][list(heads)] = 1.0
                self.ffn_masks[i].zero_()
                self.ffn_masks[i][list(ffn)] = 1.0
        self.removed = [layer_removed(len(h), len(f)) for h, f in zip(masks.kept_heads, masks.kept_ffn)]
        self.masks = masks

    def requires_grad_(self, flag: bool = True) -> None:
        """Track (or stop tracking) the gradient of the loss w.r.t. every unit's mask."""
        for m in self.head_masks + self.ffn_masks:
            m.requires_grad_(flag)
            if not flag:
                m.grad = None

    def _head_hook(self, layer: int):
        def hook(module, args):
            mask = self.head_masks[layer].to(args[0].device, args[0].dtype).repeat_interleave(self.head_size)
            return (args[0] * mask,) + tuple(args[1:])
        return hook

    def _ffn_hook(self, layer: int):
        def hook(module, args):
            return (args[0] * self.ffn_masks[layer].to(args[0].device, args[0].dtype),) + tuple(args[1:])
        return hook

    def _skip_hook(self, layer: int):
        """Return a hook that makes a removed layer the identity: its output hidden states (the
        tuple element shaped like its input) are replaced by its input."""
        def hook(module, args, kwargs, output):
            if not self.removed[layer]:
                return output
            x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))  # DistilBERT: x
            if not isinstance(output, tuple):
                return x
            at = next(i for i, o in enumerate(output) if hasattr(o, "shape") and o.shape == x.shape)
            return output[:at] + (x,) + output[at + 1:]
        return hook

    def remove(self) -> None:
        """Detach the hooks: the model computes densely again."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def attach_masks(model: Any, masks: MaskSet) -> MaskHandle:
    """Attach ``masks`` to ``model``'s forward pass; return the handle that updates or removes them."""
    return MaskHandle(model, masks)


# ---------------------------------------------------------------- ramp schedule (pure)

def cubic_schedule(step: int, total_steps: int, ramp_fraction: float, full: int, final: int) -> int:
    """Return the kept count after ``step`` of ``total_steps`` optimizer steps.

    ``final + (full - final)·(1 - step/ramp)³`` with ``ramp = ramp_fraction·total_steps``, rounded
    up, then ``final`` from ``step >= ramp`` on (Zhu & Gupta's cubic sparsity schedule, applied to
    unit counts): most units go early, while the model still adapts well; the last few go
    gently. ``step`` 0 keeps ``full``; a zero ramp gives ``final`` at once.
    """
    if total_steps < 0 or step < 0:
        raise ValueError(f"step ({step}) and total_steps ({total_steps}) must be >= 0")
    if not 0.0 <= ramp_fraction <= 1.0:
        raise ValueError(f"ramp_fraction must be in [0, 1], got {ramp_fraction}")
    if not 0 <= final <= full:
        raise ValueError(f"need 0 <= final <= full, got final {final}, full {full}")
    ramp = ramp_fraction * total_steps
    if step >= ramp:
        return final
    left = 1.0 - step / ramp
    # round() first so that float noise (2.0000000001) does not add a unit
    return final + math.ceil(round((full - final) * left ** 3, 9))


def ramp_end_step(total_steps: int, ramp_fraction: float) -> int:
    """Return the first step count at which ``cubic_schedule`` gives the final count."""
    return math.ceil(ramp_fraction * total_steps - 1e-9)


# ---------------------------------------------------------------- unit importance

ImportanceFn = Callable[["MaskRamp", int, str], Any]
_IMPORTANCE: Registry[ImportanceFn] = Registry("importance")
_NEEDS_MASK_GRADS: set[str] = set()


def register_importance(name: str, needs_mask_grads: bool = False) -> Callable[[ImportanceFn], ImportanceFn]:
    """Register ``fn(ramp, layer, kind) -> scores`` (one score per unit; higher = keep) as ``name``."""
    if needs_mask_grads:
        _NEEDS_MASK_GRADS.add(name)
    return _IMPORTANCE.register(name)


def importance_methods() -> tuple[str, ...]:
    """Return the registered unit-importance names."""
    return tuple(sorted(_IMPORTANCE))


get_importance = _IMPORTANCE.lookup


@register_importance("fisher", needs_mask_grads=True)
def fisher_importance(ramp: "MaskRamp", layer: int, kind: str) -> Any:
    """Return the EMA of the squared loss gradient w.r.t. each unit's mask (Michel et al. 2019)."""
    return ramp.fisher[kind][layer]


@register_importance("norm")
def norm_importance(ramp: "MaskRamp", layer: int, kind: str) -> Any:
    """Return the L2 norm of each unit's weights (Q/K/V rows + W_o columns, or W_1 row + W_2 column)."""
    return unit_weight_norms(layer_parts(ramp.model)[layer], kind)


def _unit_tensors(layer: Any, kind: str) -> list[tuple[Any, int]]:
    """Return (parameter, axis) pairs of a layer's ``LayerParts`` whose slices along ``axis``
    belong to one unit each."""
    if kind == "attn":
        qkv = (layer.query, layer.key, layer.value)
        out = [(lin.weight, 0) for lin in qkv]
        out += [(lin.bias, 0) for lin in qkv if lin.bias is not None]
        return out + [(layer.attn_out.weight, 1)]
    if kind == "ffn":
        out = [(layer.ffn_in.weight, 0), (layer.ffn_out.weight, 1)]
        return out + ([(layer.ffn_in.bias, 0)] if layer.ffn_in.bias is not None else [])
    raise ValueError(f"unknown unit kind {kind!r}; choose attn or ffn")


def unit_weight_norms(layer: Any, kind: str) -> Any:
    """Return one L2 norm per head (``kind='attn'``) or per FFN neuron (``'ffn'``) of a layer's
    ``LayerParts``."""
    import torch

    width = layer.head_size if kind == "attn" else 1
    with torch.no_grad():
        total = 0
        for param, axis in _unit_tensors(layer, kind):
            sq = param.detach().float() ** 2
            per_row = sq.sum(dim=1 - axis) if sq.dim() == 2 else sq
            total = total + per_row
        return total.reshape(-1, width).sum(dim=1).sqrt().cpu()


# ---------------------------------------------------------------- the training-time lifecycle

@dataclass(frozen=True)
class RampConfig:
    """How masks fall from dense to the plan during fine-tuning."""

    ramp_fraction: float = 0.3   # share of optimizer steps over which kept counts fall
    importance: str = "fisher"   # unit ranking: see importance_methods()
    ema_decay: float = 0.9       # weight of the past in the EMA of squared mask gradients

    def __post_init__(self) -> None:
        if not 0.0 <= self.ramp_fraction <= 1.0:
            raise InputError(f"ramp_fraction must be in [0, 1], got {self.ramp_fraction}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.importance not in _IMPORTANCE:
            raise InputError(f"unknown importance {self.importance!r}; choose one of: "
                             f"{', '.join(importance_methods())}")


class MaskRamp:
    """Masks ramped from dense to target counts while training, with masked units frozen.

    Per optimizer step: ``before_step()`` (Fisher statistics) → ``optimizer.step()`` →
    ``apply()`` (restore masked weights) → ``update(step)`` (maybe mask more units).
    Under torch.distributed every process must drive it identically; mask gradients are
    all-reduced so that all processes choose the same units.

    Example:
        >>> ramp = MaskRamp(heads=(2, 1), ffn=(20, 9))          # doctest: +SKIP
        >>> ramp.attach(model, total_steps=100); ...; final = ramp.detach()
    """

    def __init__(self, heads: Sequence[int], ffn: Sequence[int], config: RampConfig = RampConfig()) -> None:
        if len(heads) != len(ffn):
            raise ValueError(f"heads ({len(heads)}) and ffn ({len(ffn)}) need one entry per layer")
        self.config = config
        self.target_heads = tuple(int(h) for h in heads)
        self.target_ffn = tuple(int(f) for f in ffn)
        # runtime state, set by attach()
        self.model: Any = None
        self.handle: MaskHandle | None = None
        self.total_steps = 0
        self.fisher: dict[str, list[Any]] = {}
        self._frozen: dict[int, tuple[Any, int, Any, Any]] = {}  # id(param) -> (param, axis, rows, values)
        self._grad_hooks: list[Any] = []
        self._tracking = False

    # -- lifecycle

    def attach(self, model: Any, total_steps: int) -> MaskHandle:
        """Put dense masks on ``model`` (hooks on forward and on gradients); return the handle."""
        import torch

        if self.handle is not None:
            raise RuntimeError("MaskRamp is already attached; detach() it first")
        layers = layer_parts(model)
        num_heads = layers[0].num_heads
        ffn_size = layers[0].ffn_in.out_features
        if len(layers) != len(self.target_heads):
            raise InputError(f"target has {len(self.target_heads)} layers but the model has {len(layers)}; "
                             "make a plan for this model with sensibert plan")
        for i, (h, f) in enumerate(zip(self.target_heads, self.target_ffn)):
            if not (0 <= h <= num_heads and 0 <= f <= ffn_size):
                raise InputError(f"layer {i}: target keeps {h} heads and {f} neurons but the model has "
                                 f"{num_heads} and {ffn_size}; make a plan for this model with sensibert plan")
        self.model, self.total_steps = model, int(total_steps)
        self.handle = attach_masks(model, MaskSet.dense(len(layers), num_heads, ffn_size))
        self._tracking = self.config.importance in _NEEDS_MASK_GRADS and not self.finished
        if self._tracking:
            self.handle.requires_grad_(True)
            self.fisher = {"attn": [torch.zeros(num_heads) for _ in layers],
                           "ffn": [torch.zeros(ffn_size) for _ in layers]}
        for i, layer in enumerate(layers):
            for kind in ("attn", "ffn"):
                for param, axis in _unit_tensors(layer, kind):
                    self._grad_hooks.append(param.register_hook(self._grad_hook(i, kind, param.dim(), axis)))
        self.update(0)
        return self.handle

    def before_step(self) -> None:
        """Fold this step's mask gradients into the Fisher EMA (call before ``optimizer.step()``)."""
        import torch

        self._require_attached()
        if not self._tracking:
            return
        masks = self.handle.head_masks + self.handle.ffn_masks
        flat = torch.cat([m.grad if m.grad is not None else torch.zeros_like(m) for m in masks]).detach()
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(flat)
            flat /= torch.distributed.get_world_size()
        parts = iter(flat.cpu().split([m.numel() for m in masks]))
        decay = self.config.ema_decay
        for kind in ("attn", "ffn"):
            for i, ema in enumerate(self.fisher[kind]):
                ema.mul_(decay).add_(next(parts) ** 2, alpha=1.0 - decay)
        for m in masks:
            m.grad = None

    def apply(self) -> None:
        """Restore masked units' weights to their values when masked (call after ``optimizer.step()``)."""
        import torch

        self._require_attached()
        with torch.no_grad():
            for param, axis, index, values in self._frozen.values():
                param.index_copy_(axis, index, values)

    def update(self, step: int) -> bool:
        """Mask the least important kept units down to the schedule's counts at ``step``; True if any."""
        import torch

        self._require_attached()
        masks = self.handle.masks
        heads, ffn = [list(h) for h in masks.kept_heads], [list(f) for f in masks.kept_ffn]
        changed = False
        score = get_importance(self.config.importance)
        for kind, kept, targets, full in (("attn", heads, self.target_heads, masks.num_heads),
                                          ("ffn", ffn, self.target_ffn, masks.ffn_size)):
            for i, target in enumerate(targets):
                want = cubic_schedule(step, self.total_steps, self.config.ramp_fraction, full, target)
                drop = len(kept[i]) - want
                if drop <= 0:
                    continue
                scores = torch.as_tensor(score(self, i, kind)).detach().float().cpu()
                candidates = torch.tensor(kept[i])
                # stable sort: ties go to the lower index, identically on every process
                order = torch.argsort(scores[candidates], stable=True)
                gone = set(candidates[order[:drop]].tolist())
                kept[i] = [u for u in kept[i] if u not in gone]
                changed = True
        if changed:
            self.handle.set(MaskSet.from_lists(masks.num_heads, masks.ffn_size, heads, ffn))
            self._snapshot()
        if self._tracking and self.finished:
            self.handle.requires_grad_(False)  # masks are final: stop paying for their gradients
            self._tracking = False
        return changed

    def detach(self) -> MaskSet:
        """Remove every hook (the model computes densely again); return the final masks."""
        self._require_attached()
        masks = self.handle.masks
        for h in self._grad_hooks:
            h.remove()
        self._grad_hooks.clear()
        self.handle.requires_grad_(False)
        self.handle.remove()
        self.handle, self.model, self._frozen, self._tracking = None, None, {}, False
        return masks

    # -- state

    @property
    def masks(self) -> MaskSet:
        """Return the current kept sets."""
        self._require_attached()
        return self.handle.masks

    @property
    def finished(self) -> bool:
        """Return True once every group keeps exactly its target count."""
        return self.handle is not None and self.handle.masks.heads == self.target_heads \
            and self.handle.masks.ffn == self.target_ffn

    def _require_attached(self) -> None:
        if self.handle is None:
            raise RuntimeError("MaskRamp is not attached; call attach(model, total_steps) first")

    def _keep(self, layer: int, kind: str) -> Any:
        """Return a bool vector over the rows/columns of ``kind`` in ``layer`` (True = kept)."""
        if kind == "attn":
            return self.handle.head_masks[layer].detach().repeat_interleave(self.handle.head_size) > 0
        return self.handle.ffn_masks[layer].detach() > 0

    def _grad_hook(self, layer: int, kind: str, ndim: int, axis: int):
        shape = [1] * ndim
        shape[axis] = -1

        def hook(grad):
            keep = self._keep(layer, kind)
            if bool(keep.all()):
                return grad
            return grad * keep.to(grad.device, grad.dtype).view(shape)
        return hook

    def _snapshot(self) -> None:
        """Remember the masked rows' current weights: what ``apply`` restores them to.

        Units masked earlier were restored after every step, so their rows still hold the
        values they had when masked; newly masked units are frozen at today's values.
        """
        import torch

        self._frozen = {}
        for i, layer in enumerate(layer_parts(self.model)):
            for kind in ("attn", "ffn"):
                keep = self._keep(i, kind)
                if bool(keep.all()):
                    continue
                for param, axis in _unit_tensors(layer, kind):
                    index = torch.nonzero(~keep).flatten().to(param.device)
                    self._frozen[id(param)] = (param, axis, index, param.detach().index_select(axis, index))
