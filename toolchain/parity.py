"""Does an artifact compute what its source computes? Logits compared on real tokenised text.

Every check runs on real sentences (single sentences and sentence pairs, so token types 0 and 1
both occur) padded to a fixed length, at the nominal sequence length and at an odd one (19),
so padding, masking and shape handling are all exercised. Checks are collected and reported
together: ``raise_on_failure`` raises one ``ParityError`` naming every failed output with its
max abs difference, tolerance and input shape (after optimum's ``validate_model_outputs``).

Tolerances live here, one per precision: fp32 artifacts must match to ``FP32_ATOL``; int8
artifacts are judged by predicted-label agreement, since their logits differ by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from toolchain.errors import ParityError

FP32_ATOL = 1e-4
INT8_MIN_AGREEMENT = 0.5  # below chance for two classes: something is broken, not just rounding
ODD_SEQ_LEN = 19
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# Varied lengths so that, padded to 19 or 128, some rows are padded and some truncated.
SENTENCES = (
    "it was great.",
    "the movie is not very good, and the plot was boring.",
    "what a brilliant film!",
    "dull.",
    "the actors did their best, but the story was the worst i have seen in a long time and "
    "nobody in the city could love it.",
    "who is the capital question?",
    "i hate it",
    "fun, fun, fun: the best movie of the year, and the actors love it too.",
)
PAIRS = (
    ("what is the capital of france?", "paris is the capital of france."),
    ("is the film good?", "not at all; the plot was awful."),
    ("where is the river?", "the river is in the city."),
    ("why?", "because it was fun and the story was great, the best story of all."),
)


@dataclass(frozen=True)
class OutputCheck:
    """One comparison of one output at one input shape."""

    name: str
    input_shape: tuple[int, int]
    max_abs_diff: float
    tolerance: float | None  # fp32: max abs; None where labels are judged instead
    label_agreement: float
    min_agreement: float | None
    passed: bool

    def describe(self) -> str:
        """Return the one-line account used in errors and reports."""
        shape = "x".join(str(d) for d in self.input_shape)
        text = f"{self.name} at input {shape}: max abs diff {self.max_abs_diff:.3g}"
        if self.tolerance is not None:
            text += f" (tolerance {self.tolerance:g})"
        text += f", label agreement {self.label_agreement:.1%}"
        if self.min_agreement is not None:
            text += f" (minimum {self.min_agreement:.0%})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape), "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance, "label_agreement": self.label_agreement,
                "min_agreement": self.min_agreement, "passed": self.passed}


@dataclass(frozen=True)
class ParityReport:
    """All checks of one artifact against its reference."""

    artifact: str
    precision: str
    checks: tuple[OutputCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=0.0)

    @property
    def label_agreement(self) -> float:
        """Return the lowest agreement over all checks."""
        return min((c.label_agreement for c in self.checks), default=1.0)

    def failures(self) -> list[str]:
        return [f"{self.artifact} ({self.precision}) {c.describe()}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "precision": self.precision, "passed": self.passed,
                "max_abs_diff": self.max_abs_diff, "label_agreement": self.label_agreement,
                "checks": [c.to_dict() for c in self.checks]}


def sample_inputs(tokenizer: Any, seq_len: int, padding_side: str = "right") -> dict[str, np.ndarray]:
    """Return one int64 batch of real text padded (or truncated) to ``seq_len``, pairs included."""
    kwargs = dict(padding="max_length", truncation=True, max_length=seq_len, return_tensors="np",
                  return_token_type_ids=True, return_attention_mask=True)
    side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        single = tokenizer(list(SENTENCES), **kwargs)
        pairs = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], **kwargs)
    finally:
        tokenizer.padding_side = side
    return {name: np.concatenate([single[name], pairs[name]]).astype(np.int64) for name in INPUT_NAMES}


def check_batches(tokenizer: Any, nominal: int, max_positions: int) -> list[dict[str, np.ndarray]]:
    """Return the batches every artifact is checked on: nominal and odd (19) lengths, right-padded,
    and the odd length left-padded (a mask that is not a prefix: what a sequence-length mask
    shortcut would get wrong)."""
    odd = min(ODD_SEQ_LEN, max_positions)
    lengths = sorted({min(nominal, max_positions), odd})
    return [sample_inputs(tokenizer, n) for n in lengths] + [sample_inputs(tokenizer, odd, padding_side="left")]


def _padding(batch: dict[str, np.ndarray]) -> str:
    """Return "/left-pad" for a batch padded on the left, else ""."""
    return "/left-pad" if bool((batch["attention_mask"][:, 0] == 0).any()) else ""


CLASSIFIER_OUTPUTS = ("logits",)
QA_OUTPUTS = ("start_logits", "end_logits")


def output_names(model: Any) -> tuple[str, ...]:
    """Return the outputs an artifact of ``model`` has: logits, or start and end logits (QA)."""
    return QA_OUTPUTS if hasattr(model, "qa_outputs") else CLASSIFIER_OUTPUTS


def _real_tokens(name: str, values: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Zero the per-token outputs of padding: no answer can lie there, and implementations may
    differ on it (a fused attention kernel need not compute padded rows as PyTorch does)."""
    if name in QA_OUTPUTS:
        return np.where(inputs["attention_mask"] > 0, values, 0.0)
    return values


def torch_outputs(model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return the outputs of a torch task model (eval mode, no grad) as float64 numpy, by name."""
    import torch

    from toolchain.families import forward_inputs

    with torch.no_grad():
        out = model(**forward_inputs(model, {k: torch.from_numpy(v) for k, v in inputs.items()}))
    return {n: _real_tokens(n, getattr(out, n).double().numpy(), inputs) for n in output_names(model)}


def torch_logits(model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Return the logits of a torch classifier (eval mode, no grad) as float64 numpy."""
    return torch_outputs(model, inputs)["logits"]


def onnx_outputs(session: Any, inputs: dict[str, np.ndarray], names: Sequence[str],
                 rows: int | None = None) -> dict[str, np.ndarray]:
    """Return named outputs of an onnxruntime session, feeding only the inputs the graph declares,
    ``rows`` inputs per call (default: all in one; ``deploy.predict.rows_per_call`` says how
    deploy/ runs a precision)."""
    declared = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in inputs.items() if k in declared}
    total = len(next(iter(feed.values())))
    rows = rows or total
    parts = [session.run(list(names), {k: v[i:i + rows] for k, v in feed.items()}) for i in range(0, total, rows)]
    return {n: _real_tokens(n, np.concatenate([np.asarray(p[j], dtype=np.float64) for p in parts]), inputs)
            for j, n in enumerate(names)}


def onnx_logits(session: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Return the logits of an onnxruntime session, feeding only the inputs the graph declares."""
    return onnx_outputs(session, inputs, CLASSIFIER_OUTPUTS)["logits"]


def compare(name: str, reference: np.ndarray, candidate: np.ndarray, *, atol: float | None = None,
            min_agreement: float | None = None, input_shape: tuple[int, int] = (0, 0)) -> OutputCheck:
    """Return one check: max abs difference and predicted-label agreement, against the limits set."""
    if reference.shape != candidate.shape:
        return OutputCheck(f"{name} (shape {candidate.shape} vs {reference.shape})", input_shape,
                           float("inf"), atol, 0.0, min_agreement, False)
    diff = float(np.max(np.abs(reference - candidate))) if reference.size else 0.0
    agreement = float(np.mean(reference.argmax(-1) == candidate.argmax(-1))) if reference.size else 1.0
    passed = bool(np.isfinite(candidate).all())
    if atol is not None:
        passed = passed and diff <= atol
    if min_agreement is not None:
        passed = passed and agreement >= min_agreement
    return OutputCheck(name, input_shape, diff, atol, agreement, min_agreement, passed)


def check_torch(reference: Any, candidate: Any, batches: Sequence[dict[str, np.ndarray]], *,
                artifact: str, atol: float = FP32_ATOL) -> ParityReport:
    """Return the parity of two torch task models (masked vs shrunk) over ``batches``, every output."""
    checks = []
    for b in batches:
        ref, got = torch_outputs(reference, b), torch_outputs(candidate, b)
        checks += [compare(n + _padding(b), ref[n], got[n], atol=atol, input_shape=tuple(b["input_ids"].shape))
                   for n in ref]
    return ParityReport(artifact, "fp32", tuple(checks))


def check_onnx(path: Path, references: Sequence[dict[str, np.ndarray]], batches: Sequence[dict[str, np.ndarray]], *,
               precision: str, atol: float | None = None, min_agreement: float | None = None,
               artifact: str | None = None) -> ParityReport:
    """Return the parity of an ONNX file against reference outputs (``torch_outputs``), under
    three ORT graph levels, each input run as deploy/ runs that precision (int8: one per call).

    Checked with onnxruntime's own graph optimisations off, fully on, and on as deploy/ runs
    them (``DISABLED_OPTIMIZERS`` skipped), because ORT's runtime fusions read head counts too.
    """
    import onnxruntime as ort

    from deploy.predict import rows_per_call
    from deploy.session import DISABLED_OPTIMIZERS

    checks = []
    for level_name, level, disabled in (("ort-basic", ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ()),
                                        ("ort-all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ()),
                                        ("deploy", ort.GraphOptimizationLevel.ORT_ENABLE_ALL, DISABLED_OPTIMIZERS)):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=list(disabled))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            checks.append(OutputCheck(f"logits/{level_name} (session failed: {str(exc).splitlines()[0]})",
                                      (0, 0), float("inf"), atol, 0.0, min_agreement, False))
            continue
        for ref, batch in zip(references, batches):
            shape = tuple(batch["input_ids"].shape)
            try:
                got = onnx_outputs(session, batch, list(ref), rows_per_call(precision, len(batch["input_ids"])))
            except Exception as exc:
                checks.append(OutputCheck(f"{'/'.join(ref)}/{level_name} (run failed: {str(exc).splitlines()[0]})",
                                          shape, float("inf"), atol, 0.0, min_agreement, False))
                continue
            checks += [compare(f"{n}/{level_name}{_padding(batch)}", ref[n], got[n], atol=atol,
                               min_agreement=min_agreement, input_shape=shape) for n in ref]
    return ParityReport(artifact or Path(path).name, precision, tuple(checks))


def raise_on_failure(reports: Iterable[ParityReport], fix: str, extra: Sequence[str] = ()) -> None:
    """Raise one ParityError listing every failed check of every report (and ``extra`` failures
    found by other checks); do nothing if all passed."""
    failures = [f for r in reports for f in r.failures()] + list(extra)
    if failures:
        raise ParityError(f"{len(failures)} check(s) failed: " + "; ".join(failures) + f"; {fix}")
