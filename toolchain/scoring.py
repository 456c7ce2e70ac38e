"""How eval predictions become scores: the contract between a task and the stages that score.

A task (``toolchain.tasks``) hands a ``Scorer`` to the trainer (``toolchain.finetune``) and to
the retraining-free mode, which call it without knowing the task. This module sits below both
so that neither imports the other: it knows no task and no stage. ``accuracy_scorer`` is the
classifiers' metric and the stages' default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scorer:
    """How a task scores eval predictions: ``fn(predictions, label_ids) -> {name: value}``, with
    ``metric`` the primary name (it selects the checkpoint)."""

    metric: str
    fn: Any


def accuracy_scorer() -> Scorer:
    """Return the classifiers' scorer: accuracy of the argmax label."""
    import numpy as np

    def fn(predictions: Any, label_ids: Any) -> dict[str, float]:
        logits = predictions[0] if isinstance(predictions, tuple) else predictions
        return {"accuracy": float((np.argmax(logits, axis=-1) == label_ids).mean())}
    return Scorer("accuracy", fn)


__all__ = ["Scorer", "accuracy_scorer"]
