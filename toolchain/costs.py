"""Cost model of a (trimmed) BERT encoder: parameters, matmul FLOPs and inference memory.

Pure arithmetic on an ``EncoderShape``; no torch, no I/O. Formulas are those of
shared/docs/METHOD.md (multiply-add = 2 FLOPs). ``shape_from_config`` reads a Hugging Face
BERT config or our per-layer ``sensibert`` config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from deploy.latency_table import layer_removed

COST_MODELS = ("flops", "latency")  # what a plan prices units by: FLOPs, or a device's measured latency table
BYTES_PER_WEIGHT = {"fp32": 4, "int8": 1}
BYTES_PER_ACTIVATION = 4  # onnxruntime CPU keeps activations in fp32 under fp32 and dynamic int8


@dataclass(frozen=True)
class EncoderShape:
    """Everything the costs depend on: per-layer kept heads and FFN widths plus the fixed parts."""

    hidden: int
    head_size: int
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    num_labels: int = 0  # 0: a bare encoder (BertModel), no classifier
    pooler: bool = True
    embedding_size: int = 0  # 0: the hidden size; else ELECTRA's narrower embeddings and their projection

    def __post_init__(self) -> None:
        if len(self.heads) != len(self.ffn):
            raise ValueError(f"heads ({len(self.heads)}) and ffn ({len(self.ffn)}) need one entry per layer")
        if any(h < 0 for h in self.heads) or any(f < 0 for f in self.ffn):
            raise ValueError("head counts and FFN widths must be >= 0")

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden

    @property
    def projection_weights(self) -> int:
        """Return the embeddings-to-hidden projection's weight count (0 when the widths are equal)."""
        width = self.embedding_width
        return 0 if width == self.hidden else width * self.hidden

    @property
    def projection_params(self) -> int:
        """Return the projection's weights and bias."""
        return self.projection_weights + (self.hidden if self.projection_weights else 0)

    def with_units(self, heads: Sequence[int], ffn: Sequence[int]) -> "EncoderShape":
        """Return the same model with other per-layer head counts and FFN widths."""
        return replace(self, heads=tuple(int(h) for h in heads), ffn=tuple(int(f) for f in ffn))


def shape_from_config(config: Any, num_labels: int | None = None, pooler: bool | None = None) -> EncoderShape:
    """Return the EncoderShape of a BertConfig-like object (per-layer lists where present).

    ``config`` is in BERT's terms: another family's config goes through
    ``toolchain.families.canonical_config`` first. ``pooler`` defaults to what the architecture
    has: a question-answering model has none.
    """
    if pooler is None:
        pooler = not _is_qa(config)
    layers = config.num_hidden_layers
    head_size = config.hidden_size // config.num_attention_heads
    if getattr(config, "heads_per_layer", None):
        heads = list(config.heads_per_layer)
    else:
        pruned = getattr(config, "pruned_heads", None) or {}
        heads = [config.num_attention_heads - len(pruned.get(i, pruned.get(str(i), ())))
                 for i in range(layers)]
    ffn = getattr(config, "ffn_per_layer", None) or [config.intermediate_size] * layers
    if num_labels is None:
        num_labels = config.num_labels if _is_classifier(config) else 0
    return EncoderShape(hidden=config.hidden_size, head_size=head_size, heads=tuple(heads),
                        ffn=tuple(ffn), vocab_size=config.vocab_size,
                        max_positions=config.max_position_embeddings,
                        type_vocab_size=config.type_vocab_size, num_labels=num_labels, pooler=pooler,
                        embedding_size=int(getattr(config, "embedding_size", None) or 0))


HEADS = {"SequenceClassification": "classification", "QuestionAnswering": "qa"}


def head_of(architectures: Any) -> str | None:
    """Return the task head named by a config's ``architectures``: classification, qa, or None."""
    for arch in architectures or []:
        for marker, kind in HEADS.items():
            if marker in arch:
                return kind
    return None


def _is_classifier(config: Any) -> bool:
    """True for a task model (sequence classifier or span head): its head's parameters count."""
    return head_of(getattr(config, "architectures", None)) is not None


def _is_qa(config: Any) -> bool:
    return head_of(getattr(config, "architectures", None)) == "qa"


# ---------------------------------------------------------------- parameters

def unit_params(shape: EncoderShape, kind: str) -> int:
    """Return the parameters one unit removes: a head (4·H·d + 3·d) or a neuron (2·H + 1)."""
    if kind == "attn":
        return 4 * shape.hidden * shape.head_size + 3 * shape.head_size
    if kind == "ffn":
        return 2 * shape.hidden + 1
    raise ValueError(f"unknown unit kind {kind!r}; choose attn or ffn")


def layer_params(shape: EncoderShape, layer: int) -> dict[str, int]:
    """Return attention, FFN and LayerNorm parameters of one layer (none for a removed layer: with
    no head and no neuron it is the identity and keeps not even its biases and LayerNorms)."""
    if layer_removed(shape.heads[layer], shape.ffn[layer]):
        return {"attn": 0, "ffn": 0, "layernorm": 0}
    hid, width = shape.hidden, shape.heads[layer] * shape.head_size
    return {"attn": 4 * hid * width + 3 * width + hid,
            "ffn": 2 * hid * shape.ffn[layer] + shape.ffn[layer] + hid,
            "layernorm": 4 * hid}


def encoder_params(shape: EncoderShape) -> int:
    """Return the parameters of all encoder layers (attention, FFN, LayerNorms)."""
    return sum(sum(layer_params(shape, i).values()) for i in range(shape.num_layers))


def trimmable_params(shape: EncoderShape) -> int:
    """Return the encoder parameters that belong to heads and neurons (what a plan can remove)."""
    return sum(h * unit_params(shape, "attn") + f * unit_params(shape, "ffn")
               for h, f in zip(shape.heads, shape.ffn))


def fixed_params(shape: EncoderShape) -> int:
    """Return the parameters no plan removes: embeddings, biases kept per layer, LayerNorms, heads."""
    return total_params(shape) - trimmable_params(shape)


def embedding_params(shape: EncoderShape) -> int:
    """Return word, position and token-type embeddings plus their LayerNorm (and ELECTRA's projection)."""
    return embedding_table_params(shape) + 2 * shape.embedding_width + shape.projection_params


def head_params(shape: EncoderShape) -> int:
    """Return pooler and classifier parameters."""
    pooler = shape.hidden * shape.hidden + shape.hidden if shape.pooler else 0
    classifier = shape.hidden * shape.num_labels + shape.num_labels if shape.num_labels else 0
    return pooler + classifier


def total_params(shape: EncoderShape) -> int:
    """Return the exact parameter count (equals ``sum(p.numel())`` of the torch model)."""
    return embedding_params(shape) + encoder_params(shape) + head_params(shape)


# ---------------------------------------------------------------- FLOPs

def layer_flops(shape: EncoderShape, layer: int, batch: int, seq: int) -> int:
    """Return matmul FLOPs of one layer: 8·B·S·H·A + 4·B·S²·A + 4·B·S·H·f."""
    width = shape.heads[layer] * shape.head_size
    bs = batch * seq
    return 8 * bs * shape.hidden * width + 4 * bs * seq * width + 4 * bs * shape.hidden * shape.ffn[layer]


def unit_flops(shape: EncoderShape, kind: str, batch: int, seq: int) -> int:
    """Return the matmul FLOPs one unit removes (``layer_flops`` per head or per neuron):
    a head 8·B·S·H·d + 4·B·S²·d, a neuron 4·B·S·H."""
    bs = batch * seq
    if kind == "attn":
        return shape.head_size * (8 * bs * shape.hidden + 4 * bs * seq)
    if kind == "ffn":
        return 4 * bs * shape.hidden
    raise ValueError(f"unknown unit kind {kind!r}; choose attn or ffn")


def encoder_flops(shape: EncoderShape, batch: int, seq: int) -> int:
    """Return matmul FLOPs of all encoder layers."""
    return sum(layer_flops(shape, i, batch, seq) for i in range(shape.num_layers))


def head_flops(shape: EncoderShape, batch: int) -> int:
    """Return matmul FLOPs of pooler and classifier (they see one token per sequence)."""
    pooler = 2 * batch * shape.hidden * shape.hidden if shape.pooler else 0
    return pooler + 2 * batch * shape.hidden * shape.num_labels


def total_flops(shape: EncoderShape, batch: int, seq: int) -> int:
    """Return matmul FLOPs of one forward pass (embedding lookups are memory traffic, not FLOPs)."""
    return encoder_flops(shape, batch, seq) + projection_flops(shape, batch, seq) + head_flops(shape, batch)


def projection_flops(shape: EncoderShape, batch: int, seq: int) -> int:
    """Return the FLOPs of ELECTRA's embeddings projection (0 for the other families)."""
    return 2 * batch * seq * shape.projection_weights


def flops_polynomial(shape: EncoderShape) -> dict[str, int]:
    """Return the coefficients of total_flops(B, S) = B·(per_token·S + per_token_pair·S² + per_sequence).

    The artifact manifest carries them, so the torch-free runner can price any sequence length
    without a copy of this cost model.
    """
    width = [h * shape.head_size for h in shape.heads]
    return {"per_token": sum(8 * shape.hidden * a + 4 * shape.hidden * f for a, f in zip(width, shape.ffn))
            + projection_flops(shape, 1, 1),
            "per_token_pair": sum(4 * a for a in width),
            "per_sequence": head_flops(shape, 1)}


# ---------------------------------------------------------------- memory

@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak resident memory of a process running one inference session.

    Two moments compete for the peak: creating the session (the weights once plus a transient
    of onnxruntime's own) and running it (the resident copy of the weights plus activations).
    """

    weight_bytes: int
    resident_weight_bytes: int
    activation_bytes: int
    overhead_bytes: int
    load_transient_bytes: int = 0

    @property
    def load_peak_bytes(self) -> int:
        return self.overhead_bytes + self.weight_bytes + self.load_transient_bytes

    @property
    def run_peak_bytes(self) -> int:
        return self.overhead_bytes + self.resident_weight_bytes + self.activation_bytes

    @property
    def total_bytes(self) -> int:
        return max(self.load_peak_bytes, self.run_peak_bytes)


def embedding_table_params(shape: EncoderShape) -> int:
    """Return the word, position and token-type embedding tables (without their LayerNorm)."""
    return (shape.vocab_size + shape.max_positions + shape.type_vocab_size) * shape.embedding_width


def weight_bytes(shape: EncoderShape, precision: str) -> int:
    """Return bytes of weights as they ship: int8 stores the encoder's matmul weights and the
    embedding tables in 1 byte (export quantises both); biases, LayerNorms and the head stay fp32."""
    if precision not in BYTES_PER_WEIGHT:
        raise ValueError(f"unknown precision {precision!r}; choose fp32 or int8")
    matmul = sum(4 * shape.hidden * h * shape.head_size + 2 * shape.hidden * f
                 for h, f in zip(shape.heads, shape.ffn))
    quantised = matmul + embedding_table_params(shape) + shape.projection_weights
    return (total_params(shape) - quantised) * 4 + quantised * BYTES_PER_WEIGHT[precision]


def fixed_weight_bytes(shape: EncoderShape, precision: str) -> int:
    """Return bytes of the parts no head or neuron owns, as they ship (embeddings int8 under int8,
    biases, LayerNorms and the head fp32): ``weight_bytes`` less every unit's weights and bias.
    Budgets take it of the dense shape, so a plan that empties a layer (and drops its 6·H biases
    and LayerNorm parameters too) stays on the safe side of its budget."""
    total = weight_bytes(shape, precision)  # refuses an unknown precision
    per = BYTES_PER_WEIGHT[precision]
    head = 4 * shape.hidden * shape.head_size * per + 3 * shape.head_size * 4
    neuron = 2 * shape.hidden * per + 4
    return total - sum(h * head + f * neuron for h, f in zip(shape.heads, shape.ffn))


def activation_bytes(shape: EncoderShape, batch: int, seq: int) -> int:
    """Return peak live activations: max over layers of the attention and FFN phases.

    Attention ≈ B·S·H + 3·B·S·A + 2·B·h·S² + B·S·A; FFN ≈ 2·B·S·H + 2·B·S·f (values, fp32).
    """
    peak = 0
    for h, f in zip(shape.heads, shape.ffn):
        width = h * shape.head_size
        attn = batch * seq * (shape.hidden + 4 * width) + 2 * batch * h * seq * seq
        ffn = 2 * batch * seq * (shape.hidden + f)
        peak = max(peak, attn, ffn)
    return peak * BYTES_PER_ACTIVATION


def max_weight_bytes(memory_bytes: int, resident_factor: float, overhead_bytes: int, activation_bytes: int,
                     load_transient_bytes: int = 0) -> int:
    """Return the largest weight footprint whose ``memory_estimate`` fits ``memory_bytes`` (its
    inverse): both the load peak and the run peak must fit."""
    return int(min((memory_bytes - overhead_bytes - activation_bytes) / resident_factor,
                   memory_bytes - overhead_bytes - load_transient_bytes))


def memory_estimate(shape: EncoderShape, precision: str, batch: int, seq: int,
                    resident_factor: float, overhead_bytes: int, load_transient_bytes: int = 0) -> MemoryEstimate:
    """Return the predicted peak RSS: overhead + max(weights + load transient, resident_factor·weights + activations)."""
    weights = weight_bytes(shape, precision)
    return MemoryEstimate(weight_bytes=weights, resident_weight_bytes=int(weights * resident_factor),
                          activation_bytes=activation_bytes(shape, batch, seq),
                          overhead_bytes=overhead_bytes, load_transient_bytes=load_transient_bytes)
