"""Stage 2 output: the plan, i.e. how many heads and FFN neurons each layer keeps.

``Plan`` is what ``sensibert plan`` writes (plan.json) and what fine-tuning enforces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.artifacts import read_json, write_json
from toolchain.costs import EncoderShape
from toolchain.errors import InputError

PLAN_SCHEMA = "sensibert.plan"
PLAN_VERSION = 1


def architecture_of(shape: EncoderShape) -> dict[str, int]:
    """Return the dense architecture a plan applies to (what must match at fine-tuning)."""
    return {"num_layers": shape.num_layers, "hidden": shape.hidden, "head_size": shape.head_size,
            "num_heads": max(shape.heads), "ffn_size": max(shape.ffn)}


@dataclass(frozen=True)
class Plan:
    """Units to keep per layer, with the budget it meets and what it costs."""

    model_hash: str
    architecture: dict[str, int]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    allocation: str
    budget: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    binding: str = ""
    headroom: dict[str, Any] = field(default_factory=dict)
    sensitivity_hash: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["heads"], doc["ffn"] = list(self.heads), list(self.ffn)
        return doc

    def save(self, path: str | Path) -> Path:
        """Write plan.json atomically."""
        return write_json(path, PLAN_SCHEMA, PLAN_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read plan.json; a malformed file is an InputError naming it."""
        body = read_json(path, PLAN_SCHEMA, PLAN_VERSION)
        try:
            body["heads"], body["ffn"] = tuple(body["heads"]), tuple(body["ffn"])
            plan = cls(**body)
        except (KeyError, TypeError) as exc:
            raise InputError(f"{path}: malformed plan ({exc}); regenerate it with sensibert plan") from None
        if len(plan.heads) != plan.architecture.get("num_layers") or len(plan.ffn) != len(plan.heads):
            raise InputError(f"{path}: malformed plan (per-layer lists do not match num_layers); "
                             "regenerate it with sensibert plan")
        return plan

    def check_architecture(self, shape: EncoderShape, origin: str = "plan") -> None:
        """Raise InputError when the plan was made for another architecture than ``shape``."""
        have = architecture_of(shape)
        if have != self.architecture:
            diff = ", ".join(f"{k} {self.architecture.get(k)} vs {v}" for k, v in have.items()
                             if self.architecture.get(k) != v)
            raise InputError(f"{origin} was made for another architecture ({diff}); "
                             "make a plan for this model with sensibert plan")
