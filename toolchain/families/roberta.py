"""RoBERTa and XLM-RoBERTa: BERT's layers; positions count from ``pad_token_id + 1``.

RoBERTa numbers the positions of real tokens ``pad + 1, pad + 2, ...`` and gives padding the
position ``pad`` (computed from the input ids), has a single token type, and classifies with
``classifier.dense`` → tanh → ``classifier.out_proj`` on ``<s>``: BERT's pooler and classifier
under other names, which is what the trimmed model uses.
"""

from __future__ import annotations

from typing import Any

from toolchain.families.base import Family, register


class Roberta(Family):
    name = "roberta"
    model_types = ("roberta", "xlm-roberta")
    base_prefix = "roberta"
    head_renames = (("classifier.dense.", "bert.pooler.dense."), ("classifier.out_proj.", "classifier."))

    def canonical_config(self, config: dict[str, Any]) -> dict[str, Any]:
        body = super().canonical_config(config)
        body["position_offset"] = int(config.get("pad_token_id", 1))
        return body


ROBERTA = register(Roberta())
