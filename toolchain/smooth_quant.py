"""SmoothQuant-style scale migration (Xiao et al. 2023) for the int8 variants ``static-smooth`` and
``dynamic-smooth``.

A static int8 graph gives each MatMul input one calibrated range. A few activation channels far
louder than the rest (BERT's LayerNorm outputs have them) stretch that range and leave the other
channels a handful of levels. Migration divides input channel j by s_j and multiplies row j of the
weight by s_j: the product is unchanged in exact arithmetic, while the activation's channels come
closer together and the weight, quantised per output column, takes on the difference.
s_j = max|X_j|^α / max|W_j|^(1−α), from calibration inputs; α = 0.5 balances the two sides.

In a post-LayerNorm BERT the LayerNorm output also feeds the residual sum, so the division cannot
be folded into the LayerNorm's γ (it would change the residual): it is an explicit Mul before the
MatMuls that read the tensor, one per tensor and shared by every weighted MatMul reading it, which
the quantiser leaves fp32 (a few elementwise multiplies per layer). onnxruntime's own SmoothQuant
option needs Intel Neural Compressor; this is the part of it we use, on our graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from deploy.int8 import STATIC_OPS

DEFAULT_ALPHA = 0.5
SCALE_RANGE = (1e-4, 1e4)  # no channel's scale leaves this: a silent channel must not blow up a weight row


def migration_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Return one scale per input channel, act^α / w^(1−α) (1 where either side is silent).

    Dividing the activation by it and multiplying the weight row by it leaves both at
    act^(1−α)·w^α per channel: at α = 0.5 the two ranges meet at sqrt(act·w)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    act, w = np.asarray(act_max, np.float64), np.asarray(weight_max, np.float64)
    live = (act > 0) & (w > 0)
    scales = np.ones_like(act)
    scales[live] = act[live] ** alpha / w[live] ** (1.0 - alpha)
    return np.clip(scales, *SCALE_RANGE).astype(np.float32)


def channel_spread(maxima: np.ndarray) -> float:
    """Return the loudest channel's max over the median channel's: how much of one int8 range
    the quiet channels are left."""
    return float(np.max(maxima)) / max(float(np.median(maxima)), 1e-12)


def weighted_matmuls(model: Any, ops: Sequence[str] = STATIC_OPS) -> dict[str, list[Any]]:
    """Return {activation tensor: the nodes of ``ops`` that multiply it by a 2-D weight initializer}.

    ``Attention`` (onnxruntime's fused attention: input 0 times the packed [hidden, 3·hidden] QKV
    weight, input 1) counts where the int8 variant quantises it, as the dynamic ones do (QAttention);
    the static variants leave it fp32, so smoothing its input would only add a Mul."""
    from toolchain.mixed_precision import weighted_nodes

    groups: dict[str, list[Any]] = {}
    for node in weighted_nodes(model, ops):
        groups.setdefault(node.input[0], []).append(node)
    return groups


def intermediate_values(model: Any, tensors: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]
                        ) -> Iterator[list[np.ndarray]]:
    """Yield, per feed, the values of ``tensors`` (any named tensors of the graph) as the graph
    computes them, read by running it with the tensors as extra outputs and no graph rewriting."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in present)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for feed in feeds:
        yield session.run(list(tensors), {k: v for k, v in feed.items() if k in names})


def activation_maxima(model: Any, tensors: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]
                      ) -> dict[str, np.ndarray]:
    """Return each tensor's per-channel (last axis) max |x| over every token of ``feeds``."""
    maxima: dict[str, np.ndarray] = {}
    for values in intermediate_values(model, tensors, feeds):
        for tensor, value in zip(tensors, values):
            per_channel = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            maxima[tensor] = per_channel if tensor not in maxima else np.maximum(maxima[tensor], per_channel)
    return maxima


def smooth(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]], alpha: float = DEFAULT_ALPHA,
           ops: Sequence[str] = STATIC_OPS, maxima: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Write ``src`` with the input of every weighted node of ``ops`` smoothed (an fp32 graph
    computing the same function) to ``dst``; return what the artifact records of it. ``maxima``:
    ``activation_maxima`` of ``feeds`` where already measured (several α of one graph share it)."""
    import onnx
    from onnx import numpy_helper

    if not feeds:
        raise ValueError("smoothing needs calibration inputs")
    model = onnx.load(str(src))
    groups = weighted_matmuls(model, ops)
    if maxima is None:
        maxima = activation_maxima(model, list(groups), feeds)
    inits = {i.name: i for i in model.graph.initializer}
    value_info = {v.name: v for v in model.graph.value_info}
    inserted: dict[str, Any] = {}  # the name of the first MatMul reading a tensor -> its Mul
    spread = []
    for i, (tensor, nodes) in enumerate(groups.items()):
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        scales = migration_scales(maxima[tensor], np.max([np.abs(w).max(axis=1) for w in weights], axis=0), alpha)
        smoothed = f"{tensor}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scales).astype(np.float32),
                                                               f"{tensor}_smooth_inverse_scale"))
        inserted[nodes[0].name] = onnx.helper.make_node("Mul", [tensor, f"{tensor}_smooth_inverse_scale"], [smoothed],
                                                        name=f"sensibert_smooth_{i}")
        if tensor in value_info:
            typed = onnx.ValueInfoProto()
            typed.CopyFrom(value_info[tensor])
            typed.name = smoothed
            model.graph.value_info.append(typed)
        for node, weight in zip(nodes, weights):
            name = f"{node.input[1]}_smoothed"
            model.graph.initializer.append(numpy_helper.from_array((weight * scales[:, None]).astype(weight.dtype),
                                                                   name))
            node.input[0], node.input[1] = smoothed, name
        spread.append((channel_spread(maxima[tensor]), channel_spread(maxima[tensor] / scales)))
    nodes = []
    for node in model.graph.node:  # each Mul right before the first MatMul that reads it: still topological
        if node.name in inserted:
            nodes.append(inserted[node.name])
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(dst))
    return {"alpha": alpha, "ops": list(ops), "tensors": len(groups), "matmuls": sum(len(n) for n in groups.values()),
            "calibration_inputs": len(feeds),
            # the loudest channel over the median one, of each smoothed input: what the int8 range must span
            "channel_spread_before": round(float(np.median([b for b, _ in spread])), 2) if spread else None,
            "channel_spread_after": round(float(np.median([a for _, a in spread])), 2) if spread else None}
