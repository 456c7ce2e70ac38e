"""deploy.blocks: one encoder sub-layer as valid ONNX that computes what a BERT sub-layer computes.

The reference reads the weights back out of the model's initializers, so it checks the graph's
wiring (Q/K/V and head layout, bias and residual, LayerNorm) independently of how they were made.
The shipped weights are small (std 0.02), which makes attention nearly uniform; each model is
also run with its weight matrices amplified, so a wrong head split or softmax scale would show.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from deploy.blocks import block_inputs, block_model
from deploy.errors import InputError
from deploy.session import open_session

HIDDEN, HEAD = 32, 8
SHAPES = ((1, 5), (1, 19), (2, 5), (2, 19))
AMPLIFY = 10.0  # std 0.02 → 0.2: attention scores of order 1, softmax far from uniform
_erf = np.vectorize(math.erf, otypes=[np.float64])

OPS = {
    ("attn", "fp32"): ["Attention", "MatMul", "Add", "Add", "LayerNormalization"],
    ("attn", "int8"): ["DynamicQuantizeLinear", "QAttention",
                       "DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul",
                       "Add", "Add", "LayerNormalization"],
    ("ffn", "fp32"): ["MatMul", "BiasGelu", "MatMul", "Add", "Add", "LayerNormalization"],
    ("ffn", "int8"): ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul", "BiasGelu",
                      "DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul",
                      "Add", "Add", "LayerNormalization"],
}
CASES = [(k, p, u) for k in ("attn", "ffn") for p in ("fp32", "int8") for u in (0, 1, 3)]


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The initializers as float64; int8 weights dequantised (W_q · per-column scale, zero point 0)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for name, value in inits.items():
        if name.endswith("_q"):
            base = name[:-2]
            assert not inits[f"{base}_zero"].any() and inits[f"{base}_zero"].shape == (value.shape[1],)
            assert value.min() >= -64 and value.max() <= 63  # 7-bit: no u8×s8 pair overflow on AVX2
            out[base] = value.astype(np.float64) * inits[f"{base}_scale"].astype(np.float64)
        elif not name.endswith(("_zero", "_scale")):
            out[name] = value.astype(np.float64)
    return out


def _layer_norm(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _reference(kind: str, units: int, w: dict, x: np.ndarray, scale: float | None = None) -> np.ndarray:
    """One BERT sub-layer in numpy: LayerNorm(x + sublayer(x) + b); mask all ones."""
    x = x.astype(np.float64)
    if kind == "attn":
        bias = w["b_o"]
        if units:
            a = units * HEAD
            qkv = x @ w["w_qkv"] + w["b_qkv"]
            b, s, _ = x.shape

            def heads(m):  # [B, S, A] → [B, heads, S, head_size]
                return m.reshape(b, s, units, HEAD).transpose(0, 2, 1, 3)

            q, k, v = heads(qkv[..., :a]), heads(qkv[..., a:2 * a]), heads(qkv[..., 2 * a:])
            scores = q @ k.transpose(0, 1, 3, 2) * (1 / math.sqrt(HEAD) if scale is None else scale)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, a)
            bias = context @ w["w_o"] + bias
    else:
        bias = w["b_2"]
        if units:
            up = x @ w["w_1"] + w["b_1"]
            bias = (0.5 * up * (1 + _erf(up / math.sqrt(2)))) @ w["w_2"] + bias
    return _layer_norm(x + bias, w["gamma"], w["beta"])


def _amplified(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every weight matrix (fp32) or per-column weight scale (int8) times AMPLIFY."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    targets = {f"{m}{suffix}" for m in ("w_qkv", "w_o", "w_1", "w_2") for suffix in ("", "_scale")}
    for i, tensor in enumerate(copy.graph.initializer):
        if tensor.name in targets:
            array = numpy_helper.to_array(tensor) * np.float32(AMPLIFY)
            copy.graph.initializer[i].CopyFrom(numpy_helper.from_array(array.astype(np.float32), tensor.name))
    return copy


def _check_outputs(kind, precision, units, model: onnx.ModelProto) -> None:
    session = open_session(model.SerializeToString(), None, 1)
    w = _weights(model)
    for batch, seq in SHAPES:
        feed = block_inputs(HIDDEN, batch, seq, kind=kind)
        (y,) = session.run(None, feed)
        assert y.shape == (batch, seq, HIDDEN) and y.dtype == np.float32
        ref = _reference(kind, units, w, feed["X"])
        err = np.abs(y - ref).max()
        if precision == "fp32":
            assert err < 1e-4, (batch, seq, err)
        else:
            assert err < 0.03 * np.abs(ref).max(), (batch, seq, err)


@pytest.mark.parametrize("kind,precision,units", CASES)
def test_block_is_valid_onnx_with_the_shipped_ops_and_computes_the_sublayer(kind, precision, units):
    data = block_model(kind, units, HIDDEN, HEAD, precision)
    assert data == block_model(kind, units, HIDDEN, HEAD, precision)  # seeded: same bytes every call
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import} == {"": 17, "com.microsoft": 1}
    ops = [n.op_type for n in model.graph.node]
    assert ops == (["Add", "LayerNormalization"] if units == 0 else OPS[kind, precision])
    for node in model.graph.node:
        assert node.domain == ("com.microsoft" if node.op_type in ("Attention", "QAttention", "BiasGelu") else "")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Attention", "QAttention"):
            assert attrs == {"num_heads": units} and node.input[5 if precision == "int8" else 3] == "mask"
        if node.op_type == "LayerNormalization":
            assert attrs["axis"] == -1 and attrs["epsilon"] == pytest.approx(1e-12)
    names = [i.name for i in model.graph.input]
    assert names == (["X", "mask"] if kind == "attn" else ["X"])
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims[0] == ["batch", "seq", HIDDEN] and dims[1:] in ([], [["batch", "seq"]])
    _check_outputs(kind, precision, units, model)
    if units:
        _check_outputs(kind, precision, units, _amplified(model))


def test_amplified_attention_tells_a_wrong_scale_apart():
    """The amplified check has teeth: a softmax without 1/sqrt(head_size) is far outside 1e-4."""
    model = _amplified(onnx.load_from_string(block_model("attn", 3, HIDDEN, HEAD, "fp32")))
    feed = block_inputs(HIDDEN, 2, 19)
    (y,) = open_session(model.SerializeToString(), None, 1).run(None, feed)
    assert np.abs(y - _reference("attn", 3, _weights(model), feed["X"], scale=1.0)).max() > 1e-2


def test_weights_are_realistic_and_int8_shares_them():
    fp32 = _weights(onnx.load_from_string(block_model("ffn", 3, HIDDEN, HEAD, "fp32")))
    int8 = _weights(onnx.load_from_string(block_model("ffn", 3, HIDDEN, HEAD, "int8")))
    assert 0.01 < fp32["w_1"].std() < 0.04
    assert np.abs(int8["w_1"] - fp32["w_1"]).max() <= np.abs(fp32["w_1"]).max(0).max() / 63 / 2 + 1e-7


def test_block_inputs_are_seeded_and_fit_the_block():
    feed = block_inputs(HIDDEN, 2, 7)
    assert feed["X"].shape == (2, 7, HIDDEN) and feed["X"].dtype == np.float32
    assert feed["mask"].dtype == np.int32 and (feed["mask"] == 1).all()
    assert np.array_equal(feed["X"], block_inputs(HIDDEN, 2, 7)["X"])
    assert set(block_inputs(HIDDEN, 1, 3, kind="ffn")) == {"X"}


@pytest.mark.parametrize("args,message", [
    (("mlp", 1, 32, 8, "fp32"), r"unknown block kind 'mlp'"),
    (("attn", 1, 32, 8, "fp16"), r"unknown precision 'fp16'"),
    (("ffn", -1, 32, 8, "fp32"), r"units must be a whole number ≥ 0, got -1"),
    (("attn", 1, 0, 8, "fp32"), r"hidden must be a whole number ≥ 1, got 0"),
    (("attn", 1, 32, 0, "int8"), r"head_size must be a whole number ≥ 1, got 0"),
    (("attn", 1.5, 32, 8, "fp32"), r"units must be a whole number"),
])
def test_bad_arguments_are_refused_in_one_line(args, message):
    with pytest.raises(InputError, match=message) as info:
        block_model(*args)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="seq must be a whole number ≥ 1"):
        block_inputs(32, 1, 0)
