"""Fake quantisation of an encoder's matmuls, matching what onnxruntime's dynamic int8 computes.

A quantisation-aware phase trains the model while each encoder ``Linear`` (Q, K, V, the attention
output, both FFN matmuls: exactly the matmuls the exported int8 graph quantises) sees what the
deployed kernel sees: its input rounded to uint8 with one scale per tensor from the tensor's own
range (dynamic quantisation), and its weight rounded to int8, symmetric, with one scale per output
feature (``dynamic-per-channel``) or per tensor (``dynamic``). Gradients pass straight through
the rounding (torch's fake-quantize ops). Pooler and classifier stay fp32, as in the int8 graph.

``attach`` replaces the forward of those modules on this one model; ``FakeQuantHandle.detach``
restores them. Parameters stay the fp32 leaves the optimiser updates; nothing is saved differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from toolchain.errors import InputError

FAKE_QUANT_VARIANTS = {"dynamic": False, "dynamic-per-channel": True}  # variant -> per-channel weights


def check_variant(name: str) -> bool:
    """Return whether ``name`` quantises weights per channel; refuse a variant without a fake-quant
    equivalent here (static ranges, mixed precision: chosen after training) in one line."""
    if name not in FAKE_QUANT_VARIANTS:
        raise InputError(f"int8 variant {name!r} has no fake-quant equivalent for the quantisation-aware phase; "
                         f"choose one of: {', '.join(FAKE_QUANT_VARIANTS)} (a mixed artifact can start from "
                         "dynamic-per-channel)")
    return FAKE_QUANT_VARIANTS[name]


def variant_for(int8_variant: str) -> str:
    """Return the fake-quant variant that imitates int8 variant ``int8_variant``: itself, or for
    mixed precision and the dynamic smoothed variants dynamic-per-channel (which nodes stay fp32,
    and the smoothing scales, are measured on the trained model, after the phase)."""
    from deploy.int8 import get_variant

    v = get_variant(int8_variant)
    name = "dynamic-per-channel" if (v.mixed or v.smooth) and not v.static else int8_variant
    check_variant(name)
    return name


def fake_quant_input(x: torch.Tensor) -> torch.Tensor:
    """uint8, one scale and zero point from the tensor's range (0 always representable)."""
    if x.numel() == 0:
        return x
    lo = torch.clamp(x.detach().min(), max=0.0)
    hi = torch.clamp(x.detach().max(), min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
    zero = int(torch.clamp(torch.round(-lo / scale), 0, 255))
    return torch.fake_quantize_per_tensor_affine(x, float(scale), zero, 0, 255)


def fake_quant_weight(w: torch.Tensor, per_channel: bool, unsigned: bool = False) -> torch.Tensor:
    """Symmetric weights as onnxruntime's quantiser rounds them (``quant_utils.compute_scale_zp``):
    int8 in [-127, 127] with scale absmax / 127, or (``unsigned``, the avx2 preset's uint8 weights)
    [0, 255] around 128 with scale 2 absmax / 255; one scale per output feature (a Linear weight's
    row) or per tensor."""
    lo, hi, zp, span = (0, 255, 128, 255.0) if unsigned else (-127, 127, 0, 254.0)
    if per_channel:
        scale = torch.clamp(2.0 * w.detach().abs().amax(dim=1) / span, min=1e-8)
        zero = torch.full((w.shape[0],), zp, dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, lo, hi)
    scale = float(torch.clamp(2.0 * w.detach().abs().max() / span, min=1e-8))
    return torch.fake_quantize_per_tensor_affine(w, scale, zp, lo, hi)


@dataclass
class FakeQuantHandle:
    """The modules whose forward was replaced; ``detach`` gives them their own back."""

    per_channel: bool
    unsigned: bool
    modules: list[torch.nn.Module] = field(default_factory=list)

    def detach(self, bake: bool = False) -> None:
        """Restore the modules' forward; with ``bake``, first round their weights onto the int8
        grid, so that the fp32 export holds the weights its int8 file will hold (the quantiser
        re-derives the same scales from them: the weight rounding then costs nothing)."""
        with torch.no_grad():
            for m in self.modules:
                if bake:
                    per_channel = self.per_channel and isinstance(m, torch.nn.Linear)
                    m.weight.copy_(fake_quant_weight(m.weight, per_channel, self.unsigned))
                    if isinstance(m, torch.nn.LayerNorm):
                        m.bias.copy_(fake_quant_weight(m.bias, False, self.unsigned))
                m.__dict__.pop("forward", None)
        self.modules.clear()


def attach(model: Any, variant: str, unsigned: bool = False) -> FakeQuantHandle:
    """Make every Linear inside the encoder layers of ``model`` compute as int8 ``variant`` would
    (``unsigned``: the preset stores uint8 weights, ``deploy.int8.unsigned_weights``)."""
    from toolchain.families import encoder_layers

    per_channel = check_variant(variant)
    handle = FakeQuantHandle(per_channel, unsigned)
    for block in model.modules():  # the embedding block: tables and its LayerNorm's gamma and beta,
        children = list(block.children())  # one scale each, as QEmbedLayerNormalization stores them
        if not any(isinstance(c, torch.nn.Embedding) for c in children):
            continue
        for module in children:
            if isinstance(module, torch.nn.Embedding):
                def lookup(ids: torch.Tensor, m: torch.nn.Embedding = module) -> torch.Tensor:
                    return F.embedding(ids, fake_quant_weight(m.weight, False, unsigned), m.padding_idx)

                module.forward = lookup
                handle.modules.append(module)
            elif isinstance(module, torch.nn.LayerNorm):
                def norm(x: torch.Tensor, m: torch.nn.LayerNorm = module) -> torch.Tensor:
                    return F.layer_norm(x, m.normalized_shape, fake_quant_weight(m.weight, False, unsigned),
                                        fake_quant_weight(m.bias, False, unsigned), m.eps)

                module.forward = norm
                handle.modules.append(module)
    for layer in encoder_layers(model):
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.numel() > 0:  # a removed block has none
                def forward(x: torch.Tensor, m: torch.nn.Linear = module) -> torch.Tensor:
                    return F.linear(fake_quant_input(x), fake_quant_weight(m.weight, per_channel, unsigned), m.bias)

                module.forward = forward
                handle.modules.append(module)
    return handle
