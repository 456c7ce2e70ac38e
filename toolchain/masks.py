"""Structured unit masks: which heads and FFN neurons of each layer are kept.

``MaskSet`` is the saved form (``masks.json``); ``attach_masks`` makes masked units contribute
nothing to a BERT forward pass. A head's mask multiplies its slice of the context vector just
before the output projection W_o; a neuron's mask multiplies its activation just before W_2.
So masking all heads of a layer leaves LayerNorm(x + b_o): exactly what the shrunk layer with
no heads computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from deploy.artifacts import read_json, write_json
from toolchain.errors import InputError

MASKS_SCHEMA = "sensibert.masks"
MASKS_VERSION = 1


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
        """Read masks.json; a malformed file is an InputError naming it."""
        body = read_json(path, MASKS_SCHEMA, MASKS_VERSION)
        try:
            return cls.from_lists(body["num_heads"], body["ffn_size"], body["kept_heads"], body["kept_ffn"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: malformed masks file ({exc}); regenerate it with sensibert finetune") from None


def encoder_layers(model: Any) -> Any:
    """Return the ``nn.ModuleList`` of encoder layers of a BERT model or classifier."""
    base = getattr(model, "bert", model)
    return base.encoder.layer


class MaskHandle:
    """Live masks on a model: tensors the hooks read, updatable in place, removable."""

    def __init__(self, model: Any, masks: MaskSet) -> None:
        import torch

        layers = encoder_layers(model)
        if len(layers) != len(masks.kept_heads):
            raise InputError(f"masks have {len(masks.kept_heads)} layers but the model has {len(layers)}; "
                             "use the masks saved with this model")
        self.head_size = layers[0].attention.self.attention_head_size
        self.head_masks = [torch.zeros(masks.num_heads) for _ in layers]
        self.ffn_masks = [torch.zeros(masks.ffn_size) for _ in layers]
        self._hooks = []
        for i, layer in enumerate(layers):
            self._hooks.append(layer.attention.output.dense.register_forward_pre_hook(self._head_hook(i)))
            self._hooks.append(layer.output.dense.register_forward_pre_hook(self._ffn_hook(i)))
        self.set(masks)

    def set(self, masks: MaskSet) -> None:
        """Replace the kept sets (in place, so hooks see the change at the next forward)."""
        for i, (heads, ffn) in enumerate(zip(masks.kept_heads, masks.kept_ffn)):
            self.head_masks[i].zero_()
            self.head_masks[i][list(heads)] = 1.0
            self.ffn_masks[i].zero_()
            self.ffn_masks[i][list(ffn)] = 1.0
        self.masks = masks

    def _head_hook(self, layer: int):
        def hook(module, args):
            mask = self.head_masks[layer].to(args[0].dtype).repeat_interleave(self.head_size)
            return (args[0] * mask,) + tuple(args[1:])
        return hook

    def _ffn_hook(self, layer: int):
        def hook(module, args):
            return (args[0] * self.ffn_masks[layer].to(args[0].dtype),) + tuple(args[1:])
        return hook

    def remove(self) -> None:
        """Detach the hooks: the model computes densely again."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def attach_masks(model: Any, masks: MaskSet) -> MaskHandle:
    """Attach ``masks`` to ``model``'s forward pass; return the handle that updates or removes them."""
    return MaskHandle(model, masks)
