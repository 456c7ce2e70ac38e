"""Sensitivity-guided mixed precision: which matmuls of an int8 graph stay fp32.

Sensi-BERT's idea applied to quantisation: not every matmul suffers equally from int8. Each
candidate's harm is *measured* on task inputs (calibration inputs from the training split, never
dev): with every other candidate quantised, how much closer to the fp32 graph's outputs do the
int8 outputs come when this one node stays fp32 (leave-one-out)? The nodes that help most per
multiply-accumulate are kept fp32 until a latency allowance is spent, a share of the quantised
matmuls' MACs (an fp32 matmul runs at a fraction of int8 speed, so the share bounds the slowdown).

The probes' choice is then checked on *other* training inputs (``validate``): the mixed graph is
kept only where it follows the fp32 graph better than plain per-channel int8 does (more outputs
with the same prediction: a label, or a QA window's answer span; then less KL); elsewhere the
shipped graph is per-channel. Leave-one-out gains do not add up exactly, and on a few models the
chosen set agreed worse than none (bench/int8_accuracy.py: the per-model row).

``probe``, ``compare`` and ``validate`` do the measuring (onnxruntime sessions over real graphs);
``choose``, ``output_error``, ``agreement`` and ``closest`` are pure arithmetic. The export's choice
of a smoothed variant's α among several uses the same check (``compare``, ``closest``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deploy.int8 import DYNAMIC_OPS
from deploy.qa import span_candidates
from toolchain.errors import InputError
from toolchain.parity import QA_OUTPUTS

DEFAULT_FP32_SHARE = 0.10   # of the quantised matmuls' MACs: chosen on validation (bench/int8_accuracy.py)
PROBE_INPUTS = 64           # calibration inputs each probe runs (batch 1, their own lengths)
VALIDATION_INPUTS = 1000    # other training inputs on which the probes' choice must beat per-channel


@dataclass(frozen=True)
class NodeProbe:
    """One candidate: its weight's MACs per token and the error removed by keeping it fp32."""

    name: str
    op_type: str
    macs: int
    gain: float          # output error with all quantised minus error with this node fp32

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "macs": self.macs, "gain": self.gain}


def check_share(share: float) -> None:
    """Refuse an fp32 allowance outside [0, 1] (one line with the fix)."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise InputError(f"int8 fp32 share {share!r} is out of range; choose a fraction of the quantised "
                         "matmuls' MACs in [0, 1], e.g. 0.05")


def output_error(reference: Sequence[dict[str, np.ndarray]], candidate: Sequence[dict[str, np.ndarray]]) -> float:
    """Mean KL divergence of the candidate's softmax from the reference's, over every output row
    (classification logits, QA start and end logits alike): what moves a prediction, so inputs
    near a decision boundary weigh most. A one-wide output (regression) counts its squared error."""
    total, rows = 0.0, 0
    for ref, cand in zip(reference, candidate):
        for key, r in ref.items():
            r, c = r.astype(np.float64), cand[key].astype(np.float64)
            if r.shape[-1] == 1:
                total += float(np.sum((r - c) ** 2))
            else:
                lp, lq = _log_softmax(r), _log_softmax(c)
                total += float(np.sum(np.exp(lp) * (lp - lq)))
            rows += int(np.prod(r.shape[:-1]))
    return total / max(rows, 1)


def agreement(reference: Sequence[dict[str, np.ndarray]], candidate: Sequence[dict[str, np.ndarray]],
              feeds: Sequence[dict[str, np.ndarray]] | None = None) -> float:
    """Share of predictions the candidate makes as the reference does: each output row's argmax (a
    label), or for a QA model (start and end logits, with the ``feeds`` that made them) each window's
    answer span, chosen as deploy chooses it. A QA start or end token judged alone counts changes no
    answer shows (a start moving among tokens the best span does not use) and misses the ones it does
    (start and end each barely kept, the span swapped for a close runner-up)."""
    same, rows = 0, 0
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        if set(QA_OUTPUTS) <= set(ref):
            context = _context(feeds[i] if feeds is not None else {}, ref[QA_OUTPUTS[0]].shape)
            for row in range(context.shape[0]):
                same += int(answer_span(ref, row, context[row]) == answer_span(cand, row, context[row]))
                rows += 1
            continue
        for key, r in ref.items():
            same += int(np.sum(r.argmax(axis=-1) == cand[key].argmax(axis=-1)))
            rows += int(np.prod(r.shape[:-1]))
    return same / max(rows, 1)


def answer_span(outputs: dict[str, np.ndarray], row: int, context: np.ndarray) -> tuple[int, int] | None:
    """Return the (start, end) tokens of the best answer span of one window (deploy's rule), or None
    when no span is valid."""
    start, end = (outputs[name][row] for name in QA_OUTPUTS)
    spans = span_candidates(start, end, context)
    return max(spans, key=lambda c: c[0])[1:] if spans else None


def _context(feed: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Return which tokens of a QA batch may hold the answer: attended tokens of the second segment
    (``token_type_ids`` 1), never the first or the last attended one (special tokens). A row with no
    second segment (a family without segments, or type ids all 0) counts every attended token: an
    empty context would find no span in either graph and call every row agreeing."""
    attended = np.asarray(feed.get("attention_mask", np.ones(shape)), dtype=bool).reshape(shape)
    types = feed.get("token_type_ids")
    context = attended & (np.asarray(types).reshape(shape) == 1) if types is not None else attended.copy()
    for row in range(shape[0]):
        if not context[row].any():
            context[row] = attended[row]
        kept = np.flatnonzero(attended[row])
        if kept.size:
            context[row, kept[[0, -1]]] = False
    return context


def closest(scores: dict[str, dict[str, float]]) -> str:
    """Return the name of the graph that follows fp32 best on validation inputs: the most agreement,
    then the least KL (``{"agreement", "kl"}`` each). A tie keeps the graph listed first (per-channel
    before mixed: the faster one; the first α named)."""
    return max(scores, key=lambda name: (scores[name]["agreement"], -scores[name]["kl"]))


def compare(fp32: Path, graphs: dict[str, Path], feeds: Sequence[dict[str, np.ndarray]],
            progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, float]]:
    """Measure each int8 graph of ``graphs`` against fp32 on ``feeds`` (training inputs that neither
    calibrated nor probed); return each one's agreement and KL, in the order given. ``progress``
    hears (graphs run, graphs to run), fp32 included."""
    tell = progress or (lambda done, total: None)
    reference = _run(fp32, feeds)
    tell(1, len(graphs) + 1)
    scores = {}
    for done, (name, path) in enumerate(graphs.items(), start=2):
        outputs = _run(path, feeds)
        scores[name] = {"agreement": agreement(reference, outputs, feeds), "kl": output_error(reference, outputs)}
        tell(done, len(graphs) + 1)
    return scores


def validate(fp32: Path, per_channel: Path, mixed: Path, feeds: Sequence[dict[str, np.ndarray]]
             ) -> dict[str, Any]:
    """Measure both int8 graphs against fp32 on ``feeds`` (training inputs the probes did not see);
    return each one's agreement and KL and whether the mixed graph is kept."""
    scores = compare(fp32, {"per_channel": per_channel, "mixed": mixed}, feeds)
    return {"inputs": len(feeds), **scores, "kept_mixed": closest(scores) == "mixed"}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def choose(probes: Sequence[NodeProbe], share: float) -> tuple[str, ...]:
    """Return the nodes to keep fp32: most gain per MAC first, only nodes whose gain is positive,
    while their MACs stay within ``share`` of all candidates' MACs (a node that does not fit is
    skipped and smaller ones are still tried). Ties break by name, so the choice is reproducible."""
    check_share(share)
    allowance = share * sum(p.macs for p in probes)
    kept, spent = [], 0
    for p in sorted(probes, key=lambda p: (-p.gain / max(p.macs, 1), p.name)):
        if p.gain > 0 and spent + p.macs <= allowance:
            kept.append(p.name)
            spent += p.macs
    return tuple(sorted(kept))


def weighted_nodes(model: Any, ops: Sequence[str] = DYNAMIC_OPS) -> list[Any]:
    """Return, in graph order, the nodes of ``ops`` that multiply an activation (input 0) by a 2-D
    weight initializer (input 1): the nodes whose weights int8 stores, and whose inputs smoothing
    divides. ``Attention`` is onnxruntime's fused attention (input 1 the packed QKV weight)."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type in ops and len(n.input) > 1 and n.input[1] in inits
            and len(inits[n.input[1]].dims) == 2 and n.input[0] not in inits]


def node_costs(model: Any, names: Sequence[str]) -> dict[str, tuple[str, int]]:
    """Return each named node's (op type, MACs per token): the numel of its weight initializer."""
    inits = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    return {name: (by_name[name].op_type, max((inits.get(i, 0) for i in by_name[name].input), default=0))
            for name in names}


def check_nodes(names: Sequence[str], candidates: Sequence[str]) -> None:
    """Refuse a mixed-precision plan naming a node the graph does not quantise."""
    missing = [n for n in names if n not in set(candidates)]
    if missing:
        shown = ", ".join(list(candidates)[:6]) + (", ..." if len(candidates) > 6 else "")
        raise InputError(f"the int8 fp32 nodes {', '.join(missing)} are not quantisable nodes of this graph; "
                         f"name nodes it has ({shown}), as export.json's int8.probes lists them")


def _run(path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Run an ONNX file on each feed (one thread, so probes do not fight a benchmark's cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    results = []
    for feed in feeds:
        values = session.run(outputs, {k: v for k, v in feed.items() if k in names})
        results.append(dict(zip(outputs, values)))
    return results


def probe(fp32: Path, quantize: Callable[[Sequence[str], Path], None], costs: dict[str, tuple[str, int]],
          feeds: Sequence[dict[str, np.ndarray]], work: Path,
          progress: Callable[[int, int], None] | None = None) -> tuple[float, list[NodeProbe]]:
    """Measure the leave-one-out gain of every candidate of ``costs`` (``node_costs``); return
    (the error with all quantised, the probes).

    ``quantize(keep_fp32, dst)`` writes the int8 graph of ``fp32`` with the named nodes left fp32.
    """
    if not feeds:
        raise InputError("mixed precision measures each matmul's int8 error on calibration inputs and got "
                         "none; pass --calibration-data FILE, or use sensibert run (training inputs)")
    work.mkdir(parents=True, exist_ok=True)
    reference = _run(fp32, feeds)

    def error(keep: Sequence[str]) -> float:
        dst = work / "probe.onnx"
        quantize(keep, dst)
        value = output_error(reference, _run(dst, feeds))
        dst.unlink()
        return value

    base = error(())
    probes = []
    for i, (name, (op_type, macs)) in enumerate(costs.items()):
        probes.append(NodeProbe(name, op_type, macs, base - error((name,))))
        if progress is not None:
            progress(i + 1, len(costs))
    return base, probes
