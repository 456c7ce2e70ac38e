"""What the run's stages hand each other, and what the report and the sweep read.

Each stage's own result is the JSON body ``book.Stages`` records in ``state.json`` (so a
resumed run gets it back unchanged); these records group those bodies into the units the
closed loop, the report and the benchmarks consume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Delivered:
    """One masked model shrunk, exported, scored on ONNX and measured (``deliver.deliver``)."""

    export: dict[str, Any]                  # files, sizes, hashes, parity, op counts, int8 variant
    onnx_accuracy: dict[str, float]         # the task's metric per precision
    onnx_scores: dict[str, dict[str, float]]  # every score per precision (e.g. MNLI's mismatched split)
    data: dict[str, Any] | None             # what was scored (for a resumed report)
    bench: dict[str, dict[str, Any]]        # measurement per precision

    @property
    def shipped(self) -> str:
        """The precision the artifact ships: int8 when its int8 file passed the gate, else fp32."""
        return "int8" if "int8" in self.export["models"] else "fp32"

    @property
    def int8_refused(self) -> list[dict[str, str]]:
        """The int8 variants refused by their gate, in the order tried (empty when none was)."""
        return list(self.export.get("int8_refused") or [])

    def to_dict(self) -> dict[str, Any]:
        return {"export": self.export, "onnx_accuracy": self.onnx_accuracy, "onnx_scores": self.onnx_scores,
                "data": self.data, "bench": self.bench}


@dataclass(frozen=True)
class DenseModel:
    """The dense baseline: fine-tuned with the run's recipe, or the fine-tuned --model adopted."""

    plan: dict[str, Any]
    finetune: dict[str, Any]
    masked_dir: str                          # relative to --out
    delivered: Delivered


@dataclass(frozen=True)
class Attempt:
    """One pass of the closed loop: budget → plan → trimmed model → delivered → device check."""

    attempt: int
    folder: str                              # relative to --out
    budget: dict[str, Any]
    plan: dict[str, Any]
    finetune: dict[str, Any]
    delivered: Delivered
    check: dict[str, Any]
    keep: float | None = None                # the sweep's keep fraction

    @property
    def met(self) -> bool:
        return bool(self.check["latency_ok"] and self.check["memory_ok"])
