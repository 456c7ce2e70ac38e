"""DistilBERT: BERT's post-LayerNorm block under other names, no token types, ReLU head.

Its config says ``dim``, ``n_heads``, ``hidden_dim``, ``n_layers`` and ``activation`` for BERT's
``hidden_size``, ``num_attention_heads``, ``intermediate_size``, ``num_hidden_layers`` and
``hidden_act``; a layer is ``attention.{q,k,v,out}_lin``, ``sa_layer_norm``, ``ffn.lin1/lin2``
and ``output_layer_norm``; the classifier is ``pre_classifier`` → ReLU → ``classifier`` on [CLS].
The trimmed model has no token-type embedding (``type_vocab_size: 0``) and no token_type_ids input.
"""

from __future__ import annotations

from typing import Any

from toolchain.families.base import Family, LayerParts, register

CONFIG_NAMES = {"dim": "hidden_size", "n_heads": "num_attention_heads", "hidden_dim": "intermediate_size",
                "n_layers": "num_hidden_layers", "activation": "hidden_act", "dropout": "hidden_dropout_prob",
                "attention_dropout": "attention_probs_dropout_prob", "seq_classif_dropout": "classifier_dropout"}
LAYER_NAMES = (("attention.q_lin.", "attention.self.query."), ("attention.k_lin.", "attention.self.key."),
               ("attention.v_lin.", "attention.self.value."), ("attention.out_lin.", "attention.output.dense."),
               ("sa_layer_norm.", "attention.output.LayerNorm."), ("ffn.lin1.", "intermediate.dense."),
               ("ffn.lin2.", "output.dense."), ("output_layer_norm.", "output.LayerNorm."))
LAYER_NORM_EPS = 1e-12  # DistilBERT's LayerNorms (not in its config)


class DistilBert(Family):
    name = "distilbert"
    model_types = ("distilbert",)
    base_prefix = "distilbert"
    pooler_act = "relu"
    head_renames = (("pre_classifier.", "bert.pooler.dense."),)

    def layers(self, model: Any) -> Any:
        return self.base(model).transformer.layer

    def parts(self, layer: Any) -> LayerParts:
        att = layer.attention
        return LayerParts(att.q_lin, att.k_lin, att.v_lin, att.out_lin, layer.ffn.lin1, layer.ffn.lin2,
                          att.n_heads, att.dim // att.n_heads)

    def has_pooler(self, model: Any) -> bool:
        return hasattr(model, "pre_classifier")

    def canonical_config(self, config: dict[str, Any]) -> dict[str, Any]:
        body = super().canonical_config(config)
        for old, new in CONFIG_NAMES.items():
            if old in body:
                body[new] = body.pop(old)
        body.update(type_vocab_size=0, layer_norm_eps=LAYER_NORM_EPS)
        return body

    def canonical_key(self, key: str) -> str:
        prefix = "distilbert.transformer.layer."
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            for old, new in LAYER_NAMES:
                if rest.startswith(old):
                    return f"bert.encoder.layer.{index}.{new}{rest[len(old):]}"
        return super().canonical_key(key)


DISTILBERT = register(DistilBert())
