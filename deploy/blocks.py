"""One encoder sub-layer (attention or FFN) as a stand-alone ONNX model, for timing.

A trimmed BERT's latency is the sum of its sub-layers, and each sub-layer's cost depends on
its own width (heads or neurons) through the fused kernels onnxruntime runs. ``block_model``
builds exactly the node pattern sensibert's fused export ships for one sub-layer (fp32:
Attention / MatMul / BiasGelu / Add / LayerNormalization; int8: what onnxruntime's dynamic
per-channel quantisation makes of it), so a device can time each width without a full model.

Like the matmul probe (deploy/calibrate.py) the graph is serialised here by hand, because
``deploy`` may not depend on the ``onnx`` package; the test suite checks it with ``onnx.checker``.
"""

from __future__ import annotations

import struct

from deploy.calibrate import _FLOAT, _INT8, _bytes, _int, _str, _tensor, _varint
from deploy.errors import InputError

KINDS = ("attn", "ffn")
PRECISIONS = ("fp32", "int8")
EPSILON = 1e-12  # BERT's layer_norm_eps, as the export's LayerNormalization carries it
_UINT8, _INT32 = 2, 6  # onnx.proto TensorProto.DataType
_MS = "com.microsoft"
_SEED = 0
_STD = 0.02  # BERT's initializer_range: weights of a realistic magnitude
_QMAX = 63  # 7-bit weights (reduce_range): see the AVX2 saturation note in calibrate.probe_model


# ---------------------------------------------------------------- protobuf pieces calibrate.py lacks


def _sint(field: int, value: int) -> bytes:
    """A varint field that may be negative (int64 two's complement, 10 bytes), e.g. axis=-1."""
    return _varint(field << 3) + _varint(value & 0xFFFFFFFFFFFFFFFF)


def _node(op: str, inputs: list[str], outputs: list[str], name: str, *, domain: str = "",
          ints: dict[str, int] | None = None, floats: dict[str, float] | None = None) -> bytes:
    """A NodeProto with integer and float attributes and an operator domain (com.microsoft ops)."""
    body = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    body += _str(3, name) + _str(4, op)
    for key, value in (ints or {}).items():  # AttributeProto.i = 3, type INT = 2
        body += _bytes(5, _str(1, key) + _sint(3, value) + _int(20, 2))
    for key, value in (floats or {}).items():  # AttributeProto.f = 2 (fixed32), type FLOAT = 1
        body += _bytes(5, _str(1, key) + _varint(2 << 3 | 5) + struct.pack("<f", value) + _int(20, 1))
    if domain:
        body += _str(7, domain)
    return body


def _value_info(name: str, dtype: int, dims: tuple[int | str, ...]) -> bytes:
    """A ValueInfoProto whose dims may be symbolic (a str: dim_param), as the export's batch/seq are."""
    shape = b"".join(_bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    return _str(1, name) + _bytes(2, _bytes(1, _int(1, dtype) + _bytes(2, shape)))


def _opset(domain: str, version: int) -> bytes:
    return _bytes(8, _str(1, domain) + _int(2, version))


# ---------------------------------------------------------------- the block


def check_block_args(kind: str, units: int, hidden: int, head_size: int, precision: str) -> None:
    """Raise InputError (one line) for arguments no block can be built from."""
    if kind not in KINDS:
        raise InputError(f"unknown block kind {kind!r}; choose one of {', '.join(KINDS)}")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose fp32 or int8")
    for label, value, low in (("units", units, 0), ("hidden", hidden, 1), ("head_size", head_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{label} must be a whole number ≥ {low}, got {value!r}")


def block_weights(kind: str, units: int, hidden: int, head_size: int) -> dict:
    """Return the block's float weights (numpy), seeded, so the bytes are the same on every machine.

    Keys: attn: w_qkv [hidden, 3A], b_qkv [3A], w_o [A, hidden], b_o; ffn: w_1 [hidden, units],
    b_1, w_2 [units, hidden], b_2; both: gamma, beta [hidden]. A = units * head_size.
    The test suite builds its numpy reference from these.
    """
    import numpy as np

    check_block_args(kind, units, hidden, head_size, "fp32")
    rng = np.random.default_rng(_SEED)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * _STD).astype(np.float32)

    width = units * head_size if kind == "attn" else units
    if kind == "attn":
        w = {"w_qkv": normal(hidden, 3 * width), "b_qkv": normal(3 * width),
             "w_o": normal(width, hidden), "b_o": normal(hidden)}
    else:
        w = {"w_1": normal(hidden, width), "b_1": normal(width),
             "w_2": normal(width, hidden), "b_2": normal(hidden)}
    w["gamma"] = (1.0 + normal(hidden)).astype(np.float32)
    w["beta"] = normal(hidden)
    return w


def quantize_columns(weight) -> tuple:
    """Return (int8 weight, float32 scale per column): symmetric 7-bit, as dynamic per-channel
    quantisation with reduce_range stores a weight (zero point 0)."""
    import numpy as np

    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / _QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale), -_QMAX - 1, _QMAX).astype(np.int8)
    return q, scale


def block_model(kind: str, units: int, hidden: int, head_size: int, precision: str) -> bytes:
    """Return the serialised ONNX model of one encoder sub-layer as the fused export ships it.

    Inputs ``X`` float [batch, seq, hidden] (and ``mask`` int32 [batch, seq] for attention, the
    raw 2-D mask the export keeps); output ``Y``. ``units`` is heads (attn) or neurons (ffn);
    0 gives the trimmed layer's LayerNorm(X + b). int8 quantises every weight matmul dynamically,
    per output column, while BiasGelu, Add and LayerNormalization stay float, as in the artifacts.
    """
    check_block_args(kind, units, hidden, head_size, precision)
    w = block_weights(kind, units, hidden, head_size)
    int8 = precision == "int8"
    nodes: list[bytes] = []
    inits: list[bytes] = []

    def init(name: str, array, dtype: int = _FLOAT) -> str:
        inits.append(_tensor(name, dtype, tuple(array.shape), array.tobytes()))
        return name

    def matmul(x: str, key: str, out: str) -> None:
        """fp32 MatMul, or DynamicQuantizeLinear → MatMulInteger → Cast → Mul by X_scale·W_scale[N]."""
        import numpy as np

        weight = w[key]
        if not int8:
            nodes.append(_node("MatMul", [x, init(key, weight)], [out], f"{key}_matmul"))
            return
        q, scale = quantize_columns(weight)
        n = weight.shape[1]
        init(f"{key}_q", q, _INT8)
        init(f"{key}_zero", np.zeros(n, np.int8), _INT8)
        init(f"{key}_scale", scale)
        nodes.extend([
            _node("DynamicQuantizeLinear", [x], [f"{x}_q{key}", f"{x}_scale{key}", f"{x}_zero{key}"],
                  f"{key}_quantize"),
            _node("MatMulInteger", [f"{x}_q{key}", f"{key}_q", f"{x}_zero{key}", f"{key}_zero"],
                  [f"{key}_int"], f"{key}_matmul"),
            _node("Cast", [f"{key}_int"], [f"{key}_float"], f"{key}_cast", ints={"to": _FLOAT}),
            _node("Mul", [f"{x}_scale{key}", f"{key}_scale"], [f"{key}_rescale"], f"{key}_scale_mul"),
            _node("Mul", [f"{key}_float", f"{key}_rescale"], [out], f"{key}_rescale_mul")])

    bias_key = "b_o" if kind == "attn" else "b_2"
    if units == 0:
        # A trimmed sub-layer computes bias + input_tensor (toolchain/modeling.py): one Add.
        nodes.append(_node("Add", [init(bias_key, w[bias_key]), "X"], ["pre_norm"], "bias_residual"))
    else:
        if kind == "attn":
            import numpy as np

            width = 3 * units * head_size
            if int8:
                q, scale = quantize_columns(w["w_qkv"])
                qkv_inputs = ["X_q", init("w_qkv_q", q, _INT8), init("b_qkv", w["b_qkv"]), "X_scale",
                              init("w_qkv_scale", scale), "mask", "X_zero",
                              init("w_qkv_zero", np.zeros(width, np.int8), _INT8)]
                nodes.append(_node("DynamicQuantizeLinear", ["X"], ["X_q", "X_scale", "X_zero"], "qkv_quantize"))
                nodes.append(_node("QAttention", qkv_inputs, ["context"], "attention", domain=_MS,
                                   ints={"num_heads": units}))
            else:
                nodes.append(_node("Attention", ["X", init("w_qkv", w["w_qkv"]), init("b_qkv", w["b_qkv"]), "mask"],
                                   ["context"], "attention", domain=_MS, ints={"num_heads": units}))
            matmul("context", "w_o", "projected")
            nodes.append(_node("Add", ["projected", init("b_o", w["b_o"])], ["biased"], "bias"))
        else:
            matmul("X", "w_1", "up")
            nodes.append(_node("BiasGelu", ["up", init("b_1", w["b_1"])], ["gelu"], "bias_gelu", domain=_MS))
            matmul("gelu", "w_2", "down")
            nodes.append(_node("Add", ["down", init("b_2", w["b_2"])], ["biased"], "bias"))
        nodes.append(_node("Add", ["biased", "X"], ["pre_norm"], "residual"))
    nodes.append(_node("LayerNormalization", ["pre_norm", init("gamma", w["gamma"]), init("beta", w["beta"])],
                       ["Y"], "layer_norm", ints={"axis": -1}, floats={"epsilon": EPSILON}))

    inputs = [_value_info("X", _FLOAT, ("batch", "seq", hidden))]
    if kind == "attn":
        inputs.append(_value_info("mask", _INT32, ("batch", "seq")))
    output = _value_info("Y", _FLOAT, ("batch", "seq", hidden))
    graph = (b"".join(_bytes(1, nd) for nd in nodes) + _str(2, f"block_{kind}_{units}_{precision}")
             + b"".join(_bytes(5, t) for t in inits) + b"".join(_bytes(11, i) for i in inputs)
             + _bytes(12, output))
    # IR 8 is the first that opset 17 allows; onnxruntime reads it everywhere opset 17 runs.
    return (_int(1, 8) + _str(2, "sensibert-deploy") + _bytes(7, graph)
            + _opset("", 17) + _opset(_MS, 1))


def block_inputs(hidden: int, batch: int, seq: int, *, kind: str = "attn") -> dict:
    """Return a seeded feed for timing a block: ``X`` float32 [batch, seq, hidden] and, for
    attention, ``mask`` int32 all ones (no padding: the kernels' cost does not depend on it).

    ``kind="ffn"`` leaves ``mask`` out, because onnxruntime refuses a feed naming an input the
    model does not have.
    """
    import numpy as np

    if kind not in KINDS:
        raise InputError(f"unknown block kind {kind!r}; choose one of {', '.join(KINDS)}")
    for label, value in (("hidden", hidden), ("batch", batch), ("seq", seq)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{label} must be a whole number ≥ 1, got {value!r}")
    rng = np.random.default_rng(1)
    feed = {"X": rng.standard_normal((batch, seq, hidden)).astype(np.float32)}
    if kind == "attn":
        feed["mask"] = np.ones((batch, seq), np.int32)
    return feed
