"""ELECTRA (the discriminator): BERT's layers behind embeddings of their own width.

Embeddings are ``embedding_size`` wide and ``embeddings_project`` maps them to the hidden size
when the two differ (ELECTRA-small: 128 → 256); the classifier head is BERT's pooler with GELU
in place of tanh (``classifier.dense`` → GELU → ``classifier.out_proj``).
"""

from __future__ import annotations

from typing import Any

from toolchain.families.base import Family, register


class Electra(Family):
    name = "electra"
    model_types = ("electra",)
    base_prefix = "electra"
    pooler_act = "gelu"
    head_renames = (("classifier.dense.", "bert.pooler.dense."), ("classifier.out_proj.", "classifier."))

    def canonical_config(self, config: dict[str, Any]) -> dict[str, Any]:
        body = super().canonical_config(config)
        size = int(config.get("embedding_size") or config["hidden_size"])
        body["embedding_size"] = None if size == int(config["hidden_size"]) else size
        return body


ELECTRA = register(Electra())
