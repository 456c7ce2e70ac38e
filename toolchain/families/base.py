"""The family interface, its registry and the helpers every stage reaches layers through."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from toolchain.errors import InputError

TRIMMED_MODEL_TYPE = "sensibert"


@dataclass(frozen=True)
class LayerParts:
    """The trimmable Linear modules of one encoder layer, with its head layout."""

    query: Any
    key: Any
    value: Any
    attn_out: Any   # W_o: its input columns are the heads' slices
    ffn_in: Any     # W_1: its output rows are the neurons
    ffn_out: Any    # W_2: its input columns are the neurons
    num_heads: int
    head_size: int

    @property
    def attn(self) -> list[Any]:
        return [self.query, self.key, self.value, self.attn_out]

    @property
    def ffn(self) -> list[Any]:
        return [self.ffn_in, self.ffn_out]


class Family:
    """Per-family knowledge. The defaults are BERT's module layout (RoBERTa and ELECTRA share it)."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    base_prefix: str = ""            # attribute of the task model holding the encoder (model.bert ...)
    pooler_act: str = "tanh"         # activation of the classifier head's dense layer on [CLS]
    head_renames: tuple[tuple[str, str], ...] = ()  # native head keys -> trimmed model's keys

    # -- where the weights live

    def base(self, model: Any) -> Any:
        """Return the encoder model inside a task model (or the model itself when it is one)."""
        return getattr(model, self.base_prefix, model)

    def layers(self, model: Any) -> Any:
        """Return the ``nn.ModuleList`` of encoder layers."""
        return self.base(model).encoder.layer

    def parts(self, layer: Any) -> LayerParts:
        """Return the trimmable modules of one layer."""
        att = layer.attention.self
        return LayerParts(att.query, att.key, att.value, layer.attention.output.dense,
                          layer.intermediate.dense, layer.output.dense,
                          att.num_attention_heads, att.attention_head_size)

    def has_pooler(self, model: Any) -> bool:
        """Return True when the model has a dense layer on [CLS] before its classifier."""
        if hasattr(model, "qa_outputs"):
            return False
        return getattr(self.base(model), "pooler", None) is not None or hasattr(model, "classifier")

    # -- the config in BERT's terms

    def canonical_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Return ``config`` (a config.json dict) with BERT's field names and the trimmed model's
        family fields (``family``, ``pooler_act``, ``position_offset``, ``embedding_size``)."""
        body = dict(config)
        body.update(family=self.name, pooler_act=self.pooler_act, position_offset=None,
                    embedding_size=None)
        return body

    # -- the state dict in the trimmed model's names

    def canonical_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Return the state dict with the trimmed model's (BERT's) parameter names."""
        return {self.canonical_key(key): value for key, value in state.items()}

    def canonical_key(self, key: str) -> str:
        for old, new in self.head_renames:
            if key.startswith(old):
                return new + key[len(old):]
        if self.base_prefix and key.startswith(self.base_prefix + "."):
            return "bert." + key[len(self.base_prefix) + 1:]
        return key


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """File ``family`` under each of its model types."""
    for model_type in family.model_types:
        _FAMILIES[model_type] = family
    return family


def supported() -> tuple[str, ...]:
    """Return the model types sensibert trims (the trimmed type itself not included)."""
    return tuple(sorted(_FAMILIES))


def get_family(model_type: str | None, where: str = "model") -> Family:
    """Return the family of a model type; an unknown one is one line naming the supported types."""
    if model_type == TRIMMED_MODEL_TYPE:
        raise InputError(f"{where} is already trimmed (model_type {TRIMMED_MODEL_TYPE!r}); pass the dense model "
                         "it was trimmed from")
    if model_type not in _FAMILIES:
        raise InputError(f"{where}: model_type {model_type!r} is not supported; sensibert trims these encoder "
                         f"families: {', '.join(supported())}; pass a model of one of them")
    return _FAMILIES[model_type]


def family_of(model_or_config: Any) -> Family:
    """Return the family of a torch model, a transformers config, or a config.json dict.

    A trimmed (``sensibert``) model is reached through BERT's layout, which it has."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type == TRIMMED_MODEL_TYPE:
        return _FAMILIES["bert"]
    return get_family(model_type)


def canonical_config(config: Any) -> dict[str, Any]:
    """Return a config (object or dict) in BERT's terms; a trimmed config is already."""
    body = config if isinstance(config, dict) else config.to_dict()
    if body.get("model_type") == TRIMMED_MODEL_TYPE:
        return dict(body)
    return family_of(body).canonical_config(body)


def canonical_view(config: Any) -> SimpleNamespace:
    """Return a config (object or dict) in BERT's terms as attributes, with BERT's defaults for
    what a config.json may leave out: what ``costs.shape_from_config`` reads."""
    body = canonical_config(config)
    labels = len(body.get("id2label") or {}) or int(body.get("num_labels", 2))
    return SimpleNamespace(**{"pruned_heads": {}, "type_vocab_size": 2, **body, "num_labels": labels})


def encoder_layers(model: Any) -> Any:
    """Return the ``nn.ModuleList`` of encoder layers of any supported task model or encoder."""
    return family_of(model).layers(model)


def layer_parts(model: Any) -> list[LayerParts]:
    """Return the trimmable modules of every layer of ``model``."""
    family = family_of(model)
    return [family.parts(layer) for layer in family.layers(model)]


@functools.lru_cache(maxsize=None)
def _forward_names(cls: type) -> frozenset[str] | None:
    params = inspect.signature(cls.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return frozenset(params)


def forward_inputs(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """Return the entries of ``batch`` that ``model.forward`` takes (DistilBERT has no token types)."""
    names = _forward_names(type(model))
    return dict(batch) if names is None else {k: v for k, v in batch.items() if k in names}


def check_tokenizer(tokenizer: Any, config: dict[str, Any], where: str) -> None:
    """Raise InputError when a tokenizer cannot be the model's: ids beyond its vocabulary, or a
    padding id that is not the model's (a BERT tokenizer beside a RoBERTa model, say)."""
    body = canonical_config(config)
    vocab = int(body.get("vocab_size") or 0)
    fix = "save the model's own tokenizer (tokenizer.json or vocab files) into the directory"
    if vocab and len(tokenizer) > vocab:
        raise InputError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}; "
                         f"the tokenizer belongs to another model; {fix}")
    pad = body.get("pad_token_id")
    if pad is not None and tokenizer.pad_token_id is not None and int(pad) != tokenizer.pad_token_id:
        raise InputError(f"{where}: the tokenizer pads with id {tokenizer.pad_token_id} but the model "
                         f"({body.get('family', body.get('model_type'))}) pads with {pad}; the tokenizer belongs "
                         f"to another model; {fix}")

