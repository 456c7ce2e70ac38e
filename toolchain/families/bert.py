"""BERT (and every checkpoint with ``model_type: bert``, MiniLM included): the reference layout.

The trimmed model's parameter names are BERT's, so the state dict maps unchanged.
"""

from __future__ import annotations

from toolchain.families.base import Family, register


class Bert(Family):
    name = "bert"
    model_types = ("bert",)
    base_prefix = "bert"


BERT = register(Bert())
