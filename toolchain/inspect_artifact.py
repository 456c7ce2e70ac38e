"""What is in an artifact: per-layer heads, FFN width, parameters and FLOPs, read from the file.

``inspect`` takes a checkpoint directory (dense, masked or trimmed) or an ONNX file written by
``sensibert export``. For ONNX, heads and widths are read from the graph itself (initializer
shapes, Reshape constants and fused Attention ``num_heads`` attributes), not from the metadata
we stamp into it, so the report shows what the runtime will actually execute; the metadata
only says the file is ours and carries what the graph cannot (vocabulary size and the like).

(Named ``inspect_artifact`` rather than ``inspect``: a module called ``inspect`` would shadow
the standard library for any script run from inside the package directory.)

Layers of an ONNX graph are found by counting LayerNorm-type nodes along each path: the
embedding LayerNorm opens layer 0's attention, and every later LayerNorm closes one attention
or FFN sub-layer. This holds for the plain export (opset >= 17, one LayerNormalization node)
and for onnxruntime's fused graph (SkipLayerNormalization / EmbedLayerNormalization).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.errors import InputError

ONNX_META_KEY = "sensibert"
ONNX_META_SCHEMA = "sensibert.onnx"
ONNX_META_VERSION = 1

LN_OPS = {"LayerNormalization": 1, "SkipLayerNormalization": 2, "EmbedLayerNormalization": 5,
          "QEmbedLayerNormalization": 5,
          "SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2}  # op -> scale input
LINEAR_OPS = {"MatMul", "Gemm", "MatMulInteger", "FusedMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
ATTENTION_OPS = {"Attention", "QAttention"}
REPORTED_OPS = ("Attention", "QAttention", "SkipLayerNormalization", "LayerNormalization",
                "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "MatMul", "MatMulInteger", "Gemm")
_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_INT8_TYPES = {2, 3}  # UINT8, INT8


@dataclass(frozen=True)
class LayerReport:
    """One encoder layer: kept units and what they cost."""

    index: int
    heads: int
    ffn: int
    params: int
    flops: int
    attention_num_heads: int | None = None  # fused Attention attribute (ONNX only)
    onnx_params: int | None = None          # float initializer elements (fp32 ONNX only)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class InspectReport:
    """Per-layer shape and costs of one artifact, with file size and graph op counts."""

    path: Path
    kind: str  # "checkpoint" or "onnx"
    model_type: str
    precision: str
    seq_len: int
    hidden: int
    head_size: int
    layers: tuple[LayerReport, ...]
    total_params: int
    encoder_params: int
    total_flops: int
    file_size_bytes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        body = {k: v for k, v in self.__dict__.items() if k != "layers"}
        body["path"] = str(self.path)
        body["layers"] = [layer.to_dict() for layer in self.layers]
        body["notes"] = list(self.notes)
        return body


# ---------------------------------------------------------------- ONNX graph reading

@dataclass(frozen=True)
class OnnxLayer:
    """One layer as the graph computes it."""

    heads: int
    ffn: int
    attention_num_heads: int | None
    attn_params: int
    ffn_params: int


@dataclass(frozen=True)
class OnnxGraphInfo:
    """Shapes and counts read from an ONNX graph of a BERT classifier."""

    hidden: int
    head_size: int | None
    layers: tuple[OnnxLayer, ...]
    embedding_params: int
    head_params: int
    op_counts: dict[str, int]
    quantized: bool
    opset: int
    metadata: dict[str, Any]

    @property
    def encoder_params(self) -> int:
        """Return float initializer elements of all encoder layers (meaningful for fp32 graphs)."""
        return sum(layer.attn_params + layer.ffn_params for layer in self.layers)

    @property
    def heads(self) -> tuple[int, ...]:
        return tuple(layer.heads for layer in self.layers)

    @property
    def ffn(self) -> tuple[int, ...]:
        return tuple(layer.ffn for layer in self.layers)


def read_metadata(model: Any) -> dict[str, Any] | None:
    """Return our metadata block of an ONNX ModelProto, or None when the file is not ours."""
    for prop in model.metadata_props:
        if prop.key == ONNX_META_KEY:
            try:
                body = json.loads(prop.value)
            except json.JSONDecodeError:
                return None
            if isinstance(body, dict) and body.get("schema") == ONNX_META_SCHEMA:
                return body
    return None


def stamp_metadata(model: Any, body: dict[str, Any]) -> None:
    """Write our metadata block into an ONNX ModelProto (replacing an older one)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != ONNX_META_KEY]
    del model.metadata_props[:]
    for key, value in keep:
        model.metadata_props.add(key=key, value=value)
    doc = {"schema": ONNX_META_SCHEMA, "version": ONNX_META_VERSION, **body}
    model.metadata_props.add(key=ONNX_META_KEY, value=json.dumps(doc, sort_keys=True))


def _topological(graph: Any) -> list[Any]:
    """Return graph nodes in a dependency order (ONNX requires one; we do not trust it blindly)."""
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    deps = [{producers[i] for i in node.input if i in producers} for node in graph.node]
    order, done, pending = [], set(), list(range(len(graph.node)))
    while pending:
        rest = [i for i in pending if not deps[i] <= done]
        ready = [i for i in pending if deps[i] <= done]
        if not ready:
            raise ValueError("graph has a cycle")
        order.extend(ready)
        done.update(ready)
        pending = rest
    return [graph.node[i] for i in order]


def _constants(graph: Any) -> dict[str, Any]:
    """Return the values of initializers and Constant nodes by tensor name."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _reshape_heads(node: Any, producers: dict[str, Any], constants: dict[str, Any]) -> tuple[int, int] | None:
    """Return (heads, head_size) of a Q/K/V Reshape to [B, S, h, d], or None."""
    import numpy as np

    shape = constants.get(node.input[1]) if len(node.input) > 1 else None
    if shape is None:
        concat = producers.get(node.input[1])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            return None
        parts = [constants.get(i) for i in concat.input[2:]]
        if any(p is None or np.size(p) != 1 for p in parts):
            return None
        shape = [0, 0] + [int(np.reshape(p, -1)[0]) for p in parts]
    shape = [int(v) for v in np.reshape(shape, -1)]
    if len(shape) == 4 and shape[2] > 0 and shape[3] > 0:
        return shape[2], shape[3]
    return None


def _numel(init: Any) -> int:
    """Return the element count of an initializer."""
    numel = 1
    for d in init.dims:
        numel *= int(d)
    return numel


def analyse_onnx(model: Any) -> OnnxGraphInfo:
    """Return per-layer heads, FFN widths and parameter counts read from a BERT classifier graph.

    Raises ValueError when the graph does not have the structure of a BERT encoder.
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    constants = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    nodes = _topological(graph)
    level: dict[str, int] = {}
    segment_of: dict[int, int] = {}
    ln_nodes = []
    for node in nodes:
        seg = max((level.get(i, 0) for i in node.input if i), default=0)
        segment_of[id(node)] = seg
        out_level = seg + 1 if node.op_type in LN_OPS else seg
        if node.op_type in LN_OPS:
            ln_nodes.append(node)
        for out in node.output:
            level[out] = out_level
    if len(ln_nodes) % 2 == 0:  # one LayerNorm: every layer was removed
        raise ValueError(f"found {len(ln_nodes)} LayerNorm nodes; a BERT encoder has 1 + 2 per layer")
    num_layers = (len(ln_nodes) - 1) // 2
    # The encoder's width is the last LayerNorm's: the embedding LayerNorm is narrower under
    # ELECTRA's projected embeddings.
    scales = [inits.get(ln.input[LN_OPS[ln.op_type]]) for ln in (ln_nodes[0], ln_nodes[-1])]
    if any(scale is None or len(scale.dims) != 1 for scale in scales):
        raise ValueError("a LayerNorm has no constant scale")
    hidden, embedding_width = int(scales[1].dims[0]), int(scales[0].dims[0])

    # Each initializer belongs to the earliest segment that consumes it.
    owner: dict[str, int] = {}
    by_segment: dict[int, list[Any]] = {}
    for node in nodes:
        seg = segment_of[id(node)]
        by_segment.setdefault(seg, []).append(node)
        for name in node.input:
            if name in inits:
                owner[name] = min(owner.get(name, seg), seg)
    params = Counter()
    quantized = False
    for name, seg in owner.items():
        init = inits[name]
        if init.data_type in _INT8_TYPES and len(init.dims) == 2:
            quantized = True
        if init.data_type in _FLOAT_TYPES and len(init.dims) >= 1:
            params[seg] += _numel(init)

    def weight_of(node: Any) -> Any:
        index = 1
        if node.op_type == "Gemm" and node.input[0] in inits:
            index = 0
        name = node.input[index] if len(node.input) > index else ""
        source = producers.get(name)
        if name not in inits and source is not None and source.op_type == "DequantizeLinear":
            name = source.input[0]  # static QDQ: the int8 table behind its DequantizeLinear
        init = inits.get(name)
        return init if init is not None and len(init.dims) == 2 else None

    if embedding_width != hidden:  # the embeddings' projection (and its bias) belongs to the embeddings
        consumers: dict[str, list[Any]] = {}
        for node in nodes:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        for node in consumers.get(ln_nodes[0].output[0], []):  # the MatMul right after the embedding LayerNorm
            weight = weight_of(node) if node.op_type in ("MatMul", "Gemm") else None
            if weight is None or int(weight.dims[0]) != embedding_width:
                continue
            moved = [weight.name] + [i for n in consumers.get(node.output[0], []) if n.op_type == "Add"
                                     for i in n.input if i in inits and len(inits[i].dims) == 1]
            for name in moved:
                if owner.get(name) == 1 and inits[name].data_type in _FLOAT_TYPES:
                    params[1] -= _numel(inits[name])
                    params[0] += _numel(inits[name])
                owner[name] = 0

    head_size = None
    layers = []
    for layer in range(num_layers):
        attn_nodes, ffn_nodes = by_segment.get(1 + 2 * layer, []), by_segment.get(2 + 2 * layer, [])
        attention = [n for n in attn_nodes if n.op_type in ATTENTION_OPS]
        heads, num_heads_attr = 0, None
        if attention:
            if len(attention) != 1:
                raise ValueError(f"layer {layer} has {len(attention)} Attention nodes")
            node = attention[0]
            num_heads_attr = next(int(a.i) for a in node.attribute if a.name == "num_heads")
            qkv = [int(a) for a in next((a.ints for a in node.attribute if a.name == "qkv_hidden_sizes"), [])]
            weight = inits.get(node.input[1])
            width = qkv[0] if qkv else (int(weight.dims[1]) // 3 if weight is not None else 0)
            heads = num_heads_attr
            if heads and width % heads == 0:
                head_size = head_size or width // heads
        else:
            widths = [int(w.dims[1]) for w in map(weight_of, attn_nodes) if w is not None and w.dims[0] == hidden]
            shapes = [s for s in (_reshape_heads(n, producers, constants) for n in attn_nodes
                                  if n.op_type == "Reshape") if s]
            if widths:
                if shapes:
                    heads, head_size = shapes[0][0], head_size or shapes[0][1]
                elif head_size:
                    heads = widths[0] // head_size
                else:
                    raise ValueError(f"layer {layer}: cannot tell the head count of width {widths[0]}")
        ffn_widths = [int(w.dims[1]) for w in map(weight_of, ffn_nodes) if w is not None and w.dims[0] == hidden]
        layers.append(OnnxLayer(heads=heads, ffn=ffn_widths[0] if ffn_widths else 0,
                                attention_num_heads=num_heads_attr, attn_params=params[1 + 2 * layer],
                                ffn_params=params[2 + 2 * layer]))
    ops = Counter(node.op_type for node in graph.node)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxGraphInfo(hidden=hidden, head_size=head_size, layers=tuple(layers), embedding_params=params[0],
                         head_params=params[1 + 2 * num_layers], op_counts={k: ops.get(k, 0) for k in REPORTED_OPS},
                         quantized=quantized, opset=int(opset), metadata=read_metadata(model) or {})


def load_onnx(path: Path) -> Any:
    """Return the ModelProto of ``path``; a file that is not ONNX is an InputError."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # DecodeError, OSError: the file is not a readable ONNX model
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__}); pass a .onnx file "
                         "written by sensibert export") from None


def read_ours(path: Path) -> tuple[Any, OnnxGraphInfo]:
    """Return (ModelProto, graph info) of an ONNX file written by sensibert export."""
    model = load_onnx(path)
    if read_metadata(model) is None:
        raise InputError(f"{path}: not a sensibert ONNX model (no '{ONNX_META_KEY}' metadata); "
                         "pass a model.onnx written by sensibert export")
    try:
        info = analyse_onnx(model)
    except ValueError as exc:
        raise InputError(f"{path}: not a BERT classifier graph sensibert can read ({exc}); "
                         "re-export it with sensibert export") from None
    return model, info


# ---------------------------------------------------------------- reports

def _layer_reports(shape: Any, seq_len: int, onnx_layers: tuple[OnnxLayer, ...] | None = None,
                   fp32: bool = True) -> tuple[LayerReport, ...]:
    from deploy.latency_table import graph_layers
    from toolchain.costs import layer_flops, layer_params

    in_graph = {i: at for at, (i, _, _) in enumerate(graph_layers(shape.heads, shape.ffn))}  # removed layers: absent
    out = []
    for i in range(shape.num_layers):
        extra = {}
        if onnx_layers is not None:
            layer = onnx_layers[in_graph[i]] if i in in_graph else None
            extra = {"attention_num_heads": layer.attention_num_heads if layer else None,
                     "onnx_params": ((layer.attn_params + layer.ffn_params) if layer else 0) if fp32 else None}
        out.append(LayerReport(index=i, heads=shape.heads[i], ffn=shape.ffn[i],
                               params=sum(layer_params(shape, i).values()),
                               flops=layer_flops(shape, i, 1, seq_len), **extra))
    return tuple(out)


def _inspect_checkpoint(path: Path, seq_len: int) -> InspectReport:
    from toolchain.costs import encoder_params, shape_from_config, total_flops, total_params
    from toolchain.masks import MaskSet
    from toolchain.models import WEIGHT_FILES, read_model_config, resolve_model_dir

    resolve_model_dir(str(path))
    from transformers import AutoConfig

    import toolchain.modeling  # noqa: F401  registers sensibert

    from toolchain.families import TRIMMED_MODEL_TYPE, canonical_view

    config = AutoConfig.from_pretrained(str(path))
    shape = shape_from_config(canonical_view(config))
    notes = []
    if (path / "masks.json").is_file() and config.model_type != TRIMMED_MODEL_TYPE:
        masks = MaskSet.load(path / "masks.json")
        if len(masks.heads) == shape.num_layers:
            shape = shape.with_units(masks.heads, masks.ffn)
            notes.append("masked model: dense on disk; units shown are those masks.json keeps "
                         "(run sensibert shrink to remove the rest)")
    weights = next(path / w for w in WEIGHT_FILES if (path / w).is_file())
    return InspectReport(path=path, kind="checkpoint", model_type=str(read_model_config(path).get("model_type")),
                         precision=str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
                                       or "float32").replace("torch.", ""),
                         seq_len=seq_len, hidden=shape.hidden, head_size=shape.head_size,
                         layers=_layer_reports(shape, seq_len), total_params=total_params(shape),
                         encoder_params=encoder_params(shape), total_flops=total_flops(shape, 1, seq_len),
                         file_size_bytes=weights.stat().st_size, notes=tuple(notes))


def shape_from_metadata(meta: dict[str, Any], heads: tuple[int, ...], ffn: tuple[int, ...]) -> Any:
    """Return the EncoderShape of an exported model: graph-read units, metadata-held fixed parts."""
    from toolchain.costs import EncoderShape

    try:
        return EncoderShape(hidden=int(meta["hidden"]), head_size=int(meta["head_size"]), heads=heads, ffn=ffn,
                            vocab_size=int(meta["vocab_size"]), max_positions=int(meta["max_positions"]),
                            type_vocab_size=int(meta["type_vocab_size"]), num_labels=int(meta["num_labels"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"sensibert metadata is incomplete ({exc}); re-export the model with "
                         "sensibert export") from None


def _inspect_onnx(path: Path, seq_len: int) -> InspectReport:
    from deploy.latency_table import graph_layers
    from toolchain.costs import encoder_params, total_flops, total_params

    _, info = read_ours(path)
    meta = info.metadata
    notes = []
    named = [(int(h), int(f)) for h, f in zip(meta.get("heads") or [], meta.get("ffn") or [])]
    in_graph = [(h, f) for _, h, f in graph_layers([h for h, _ in named], [f for _, f in named])]
    if in_graph == list(zip(info.heads, info.ffn)):  # the metadata's shape, its removed layers included
        shape = shape_from_metadata(meta, tuple(h for h, _ in named), tuple(f for _, f in named))
    else:
        shape = shape_from_metadata(meta, info.heads, info.ffn)
        notes.append(f"graph shapes (heads {list(info.heads)}, FFN {list(info.ffn)}) differ from the metadata "
                     f"(heads {meta.get('heads')}, FFN {meta.get('ffn')})")
    fp32 = not info.quantized
    if fp32 and info.encoder_params != encoder_params(shape):
        notes.append(f"encoder initializers hold {info.encoder_params} parameters; costs.py expects "
                     f"{encoder_params(shape)}")
    return InspectReport(path=path, kind="onnx", model_type=str(meta.get("model_type", "sensibert")),
                         precision="int8" if info.quantized else "fp32", seq_len=seq_len, hidden=shape.hidden,
                         head_size=shape.head_size, layers=_layer_reports(shape, seq_len, info.layers, fp32),
                         total_params=total_params(shape), encoder_params=encoder_params(shape),
                         total_flops=total_flops(shape, 1, seq_len), file_size_bytes=path.stat().st_size,
                         op_counts={k: v for k, v in info.op_counts.items() if v}, notes=tuple(notes))


def inspect(path: str | Path, seq_len: int = 128) -> InspectReport:
    """Return the per-layer report of a checkpoint directory or a sensibert .onnx file.

    Example:
        >>> inspect("out/onnx/model.onnx", seq_len=64).encoder_params   # doctest: +SKIP
    """
    path = Path(path)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise InputError(f"seq_len must be a positive number of tokens, got {seq_len!r}")
    if path.is_dir() and (path / "model.onnx").is_file():  # an artifact (it has a config.json too, for HF loaders)
        raise InputError(f"{path} is an exported artifact folder; pass one of its files, e.g. {path / 'model.onnx'}")
    if path.is_dir():
        return _inspect_checkpoint(path, seq_len)
    if path.is_file():
        return _inspect_onnx(path, seq_len)
    raise InputError(f"{path}: no such file or directory; pass a model directory or a .onnx file")


def format_table(report: InspectReport) -> str:
    """Return the report as a fixed-width text table (what the CLI prints)."""
    onnx = report.kind == "onnx"
    head = (f"{report.path} ({report.kind}, {report.model_type}, {report.precision}), "
            f"FLOPs at batch 1 x {report.seq_len}")
    cols = ["layer", "heads", "ffn", "params", "GFLOPs"] + (["attn num_heads", "onnx params"] if onnx else [])
    rows = []
    for layer in report.layers:
        row = [str(layer.index), str(layer.heads), str(layer.ffn), f"{layer.params:,}", f"{layer.flops / 1e9:.4f}"]
        if onnx:
            row += ["-" if layer.attention_num_heads is None else str(layer.attention_num_heads),
                    "-" if layer.onnx_params is None else f"{layer.onnx_params:,}"]
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    lines.append(f"encoder params {report.encoder_params:,}; total params {report.total_params:,}; "
                 f"total GFLOPs {report.total_flops / 1e9:.4f}; file {report.file_size_bytes / 1e6:.2f} MB")
    if report.op_counts:
        lines.append("ops: " + ", ".join(f"{k} {v}" for k, v in report.op_counts.items()))
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
