"""Model families: everything sensibert knows about one encoder architecture, in one module each.

A family (as optimum's per-model-type OnnxConfig) says where a checkpoint's attention and FFN
weights live (``parts``: the Q, K, V, W_o, W_1 and W_2 Linear modules of a layer, its head
count and head size), how its config reads in BERT's terms (``canonical_config``: what the cost
model and the trimmed model are built from), and how its state dict maps onto the trimmed
model's BERT-named parameters (``canonical_state``). The trimmed model itself is one
architecture for every family (``toolchain.modeling``, model_type ``sensibert``): the encoder
layers of BERT, RoBERTa/XLM-R, ELECTRA and DistilBERT compute the same post-LayerNorm block;
what differs (embeddings, the classifier head's activation) is a field of its config.

Masking, sensitivity, retraining-free scaling, teacher distillation and shrink all reach a
model's layers through ``family_of(model)``, never through attribute paths of their own.

Add a family: write ``toolchain/families/<name>.py`` with a ``Family`` subclass and
``register(...)`` it, then import the module here.
"""

from __future__ import annotations

from toolchain.families import bert, distilbert, electra, roberta  # noqa: F401  (each registers itself)
from toolchain.families.base import (TRIMMED_MODEL_TYPE, Family, LayerParts, canonical_config, canonical_view,
                                     check_tokenizer, encoder_layers, family_of, forward_inputs, get_family,
                                     layer_parts, register, supported)

__all__ = ["TRIMMED_MODEL_TYPE", "Family", "LayerParts", "canonical_config", "canonical_view", "check_tokenizer",
           "encoder_layers", "family_of", "forward_inputs", "get_family", "layer_parts", "register", "supported"]
