"""The trimmed BERT: every encoder layer has its own head count and FFN width.

A stock ``BertConfig`` holds one head count and one FFN width for all layers, and transformers
5.x dropped ``pruned_heads``; so a physically trimmed model needs its own config and classes
(shared/docs/FINDINGS.md, "Exporting a model with uneven per-layer shapes"). Parameter names
are BERT's (``bert.encoder.layer.3.attention.self.query.weight`` ...), so a trimmed checkpoint
is a BERT checkpoint with smaller tensors, and ``masks.encoder_layers`` works on it.

One architecture serves every family (toolchain/families): the encoder layers of BERT,
RoBERTa/XLM-R, ELECTRA and DistilBERT compute the same block, so only the embeddings (RoBERTa's
position offset, ELECTRA's narrower embeddings and projection, DistilBERT's missing token types)
and the activation of the classifier head's dense layer are config fields. A BERT source keeps
BERT's own embedding and pooler modules, so its trimmed model and graph are what they always were.

A layer with 0 heads keeps b_o and the attention LayerNorm and computes LayerNorm(x + b_o); a
layer with 0 neurons keeps b_2 and its LayerNorm and computes LayerNorm(x + b_2). A layer with
neither is removed: it has no module and no parameter, passes its input on, and so is absent
from the exported graph. That is what the masked model computes (toolchain/masks.py), and it
keeps parameter counts equal to toolchain/costs.py.

Attention reshapes with the layer's explicit head count (never -1): onnxruntime's fuser reads
each layer's head count from that Reshape constant (research/anchors.md §0 item 4).

Importing this module registers model_type ``sensibert`` with the Auto classes.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Sequence

import torch
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          BertConfig)
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.bert.modeling_bert import (BertEmbeddings, BertForQuestionAnswering,
                                                    BertForSequenceClassification,
                                                    BertPooler, BertPreTrainedModel)

from deploy.latency_table import layer_removed

MODEL_TYPE = "sensibert"


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """Return nn.Linear, quiet about zero-width layers (a trimmed-away sub-layer keeps its bias)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features)


class SensiBertConfig(BertConfig):
    """A BertConfig with per-layer ``heads_per_layer`` and ``ffn_per_layer``.

    ``num_attention_heads`` and ``intermediate_size`` keep the dense model's values: the head
    size stays ``hidden_size // num_attention_heads`` and costs.py reads the lists.
    """

    model_type = MODEL_TYPE

    def __init__(self, heads_per_layer: Optional[Sequence[int]] = None,
                 ffn_per_layer: Optional[Sequence[int]] = None, family: str = "bert", pooler_act: str = "tanh",
                 position_offset: Optional[int] = None, embedding_size: Optional[int] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.family = family                    # the dense source's family (toolchain/families)
        self.pooler_act = pooler_act            # tanh (BERT, RoBERTa), gelu (ELECTRA), relu (DistilBERT)
        self.position_offset = position_offset  # RoBERTa: positions count from pad_token_id + 1
        self.embedding_size = embedding_size    # ELECTRA: embeddings narrower than hidden_size
        layers = self.num_hidden_layers
        self.heads_per_layer = ([int(h) for h in heads_per_layer] if heads_per_layer is not None
                                else [self.num_attention_heads] * layers)
        self.ffn_per_layer = ([int(f) for f in ffn_per_layer] if ffn_per_layer is not None
                              else [self.intermediate_size] * layers)
        for name, values in (("heads_per_layer", self.heads_per_layer), ("ffn_per_layer", self.ffn_per_layer)):
            if len(values) != layers:
                raise ValueError(f"{name} has {len(values)} entries but num_hidden_layers is {layers}")
            if any(v < 0 for v in values):
                raise ValueError(f"{name} must be >= 0, got {values}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")

    @property
    def bert_embeddings(self) -> bool:
        """True when BERT's own embedding module computes this model's embeddings."""
        return self.position_offset is None and not self.embedding_size and self.type_vocab_size > 0

    @classmethod
    def from_dense(cls, config: Any, heads: Sequence[int], ffn: Sequence[int]) -> "SensiBertConfig":
        """Return the trimmed config of a dense model's config of any family (every other setting kept)."""
        from toolchain.families import canonical_config

        body = canonical_config(config)
        for key in ("model_type", "architectures", "pruned_heads", "heads_per_layer", "ffn_per_layer",
                    "transformers_version", "_attn_implementation_autoset"):
            body.pop(key, None)
        out = cls(heads_per_layer=list(heads), ffn_per_layer=list(ffn), **body)
        out._attn_implementation = "eager"
        return out


class SensiBertEmbeddings(nn.Module):
    """Word + (token-type) + position embeddings and LayerNorm for the families BERT's module
    does not cover: RoBERTa's positions from the ids, ELECTRA's width, DistilBERT's no token types."""

    def __init__(self, config: SensiBertConfig) -> None:
        super().__init__()
        width = config.embedding_size or config.hidden_size
        self.offset = config.position_offset
        self.word_embeddings = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, width, padding_idx=self.offset)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, width)
                                      if config.type_vocab_size > 0 else None)
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Optional[torch.Tensor] = None, token_type_ids: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        seq = embeddings.shape[1]
        if position_ids is None:
            if self.offset is not None and input_ids is not None:  # RoBERTa: padding keeps position `pad`
                real = input_ids.ne(self.offset).int()
                position_ids = (torch.cumsum(real, dim=1).type_as(real) * real).long() + self.offset
            else:
                start = 0 if self.offset is None else self.offset + 1
                position_ids = torch.arange(start, start + seq, device=embeddings.device).unsqueeze(0)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class SensiBertPooler(nn.Module):
    """Dense + activation on the first token: BERT's pooler with the family's activation."""

    def __init__(self, config: SensiBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.pooler_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class SensiBertSelfAttention(nn.Module):
    """Multi-head self-attention with ``num_heads`` heads of the config's head size (eager)."""

    def __init__(self, config: SensiBertConfig, num_heads: int) -> None:
        super().__init__()
        self.num_attention_heads = num_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = num_heads * self.attention_head_size
        self.query = _linear(config.hidden_size, self.all_head_size)
        self.key = _linear(config.hidden_size, self.all_head_size)
        self.value = _linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _split(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        # The explicit head count is what the ORT fuser reads; the sequence axis may stay -1.
        return x.view(batch, -1, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                output_attentions: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        batch = hidden_states.shape[0]
        query = self._split(self.query(hidden_states), batch)
        key = self._split(self.key(hidden_states), batch)
        value = self._split(self.value(hidden_states), batch)
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
        context = context.view(context.size()[:-2] + (self.all_head_size,))
        return context, (probs if output_attentions else None)


class SensiBertSelfOutput(nn.Module):
    """W_o, dropout, residual and LayerNorm (W_o has ``width`` input columns, maybe 0)."""

    def __init__(self, config: SensiBertConfig, width: int) -> None:
        super().__init__()
        self.dense = _linear(width, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


def _bias_residual(sublayer_output: nn.Module, input_tensor: torch.Tensor) -> torch.Tensor:
    """Return LayerNorm(dropout(b) + x): a sub-layer with no units left (W·0 + b = b)."""
    bias = sublayer_output.dense.bias
    if sublayer_output.training:  # dropout sees the broadcast bias, as in the masked model
        return sublayer_output.LayerNorm(sublayer_output.dropout(bias.expand_as(input_tensor)) + input_tensor)
    return sublayer_output.LayerNorm(bias + input_tensor)


class SensiBertAttention(nn.Module):
    """Attention block of one layer; with 0 heads it is LayerNorm(x + b_o)."""

    def __init__(self, config: SensiBertConfig, num_heads: int) -> None:
        super().__init__()
        self.self = SensiBertSelfAttention(config, num_heads)
        self.output = SensiBertSelfOutput(config, self.self.all_head_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                output_attentions: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.self.num_attention_heads == 0:
            return _bias_residual(self.output, hidden_states), None
        context, probs = self.self(hidden_states, attention_mask, output_attentions)
        return self.output(context, hidden_states), probs


class SensiBertIntermediate(nn.Module):
    """W_1 and the activation, ``width`` neurons."""

    def __init__(self, config: SensiBertConfig, width: int) -> None:
        super().__init__()
        self.dense = _linear(config.hidden_size, width)
        act = config.hidden_act
        self.intermediate_act_fn = ACT2FN[act] if isinstance(act, str) else act

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class SensiBertOutput(SensiBertSelfOutput):
    """W_2 (``width`` input columns), dropout, residual and LayerNorm."""


class SensiBertLayer(nn.Module):
    """One encoder layer with its own head count and FFN width; with neither, the identity."""

    def __init__(self, config: SensiBertConfig, num_heads: int, ffn_width: int) -> None:
        super().__init__()
        self.removed = layer_removed(num_heads, ffn_width)
        if self.removed:  # no module, no parameter: nothing of it reaches the graph
            return
        self.attention = SensiBertAttention(config, num_heads)
        self.intermediate = SensiBertIntermediate(config, ffn_width)
        self.output = SensiBertOutput(config, ffn_width)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                output_attentions: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.removed:
            return hidden_states, None
        attention_output, probs = self.attention(hidden_states, attention_mask, output_attentions)
        if self.intermediate.dense.out_features == 0:
            return _bias_residual(self.output, attention_output), probs
        return self.output(self.intermediate(attention_output), attention_output), probs


class SensiBertEncoder(nn.Module):
    """The stack of per-layer-shaped encoder layers."""

    def __init__(self, config: SensiBertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(SensiBertLayer(config, h, f)
                                   for h, f in zip(config.heads_per_layer, config.ffn_per_layer))

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                output_attentions: bool = False, output_hidden_states: bool = False) -> BaseModelOutput:
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        for layer in self.layer:
            hidden_states, probs = layer(hidden_states, attention_mask, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attn += (probs,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden, attentions=all_attn)


class SensiBertPreTrainedModel(BertPreTrainedModel):
    """Shared init and loading behaviour; attention is always eager (our own kernel)."""

    config: SensiBertConfig
    config_class = SensiBertConfig
    base_model_prefix = "bert"
    _supports_sdpa = False
    _supports_flash_attn = False
    _supports_flex_attn = False


class SensiBertModel(SensiBertPreTrainedModel):
    """A BERT encoder whose layers have per-layer head counts and FFN widths."""

    _no_split_modules = ["BertEmbeddings", "SensiBertLayer"]

    def __init__(self, config: SensiBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.config = config
        self.embeddings = BertEmbeddings(config) if config.bert_embeddings else SensiBertEmbeddings(config)
        width = config.embedding_size or config.hidden_size
        self.embeddings_project = nn.Linear(width, config.hidden_size) if width != config.hidden_size else None
        self.encoder = SensiBertEncoder(config)
        pooler = BertPooler if config.pooler_act == "tanh" else SensiBertPooler
        self.pooler = pooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _prune_heads(self, heads_to_prune: Any) -> None:
        raise NotImplementedError("a sensibert model is already trimmed; shrink the masked model again instead")

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                head_mask: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None, **kwargs: Any) -> Any:
        if head_mask is not None:
            raise ValueError("head_mask is not supported by sensibert models: masked heads are removed")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
            input_shape = input_ids.size()
        else:
            input_shape = inputs_embeds.size()[:-1]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        embedding_output = self.embeddings(input_ids=input_ids, position_ids=position_ids,
                                           token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)
        if self.embeddings_project is not None:
            embedding_output = self.embeddings_project(embedding_output)
        if attention_mask is None:
            attention_mask = torch.ones(input_shape, device=device)
        # (1 - mask) * finfo.min, [B, 1, 1, S]: the pattern BERT exports and ORT's fuser expects.
        extended = self.get_extended_attention_mask(attention_mask, input_shape)
        encoded = self.encoder(embedding_output, extended, output_attentions, output_hidden_states)
        sequence_output = encoded.last_hidden_state
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        if not return_dict:
            extra = tuple(v for v in (encoded.hidden_states, encoded.attentions) if v is not None)
            return (sequence_output, pooled_output) + extra
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output, pooler_output=pooled_output,
            hidden_states=encoded.hidden_states, attentions=encoded.attentions)


class SensiBertForSequenceClassification(SensiBertPreTrainedModel, BertForSequenceClassification):
    """BERT's sequence classifier (same head, loss and forward) on a SensiBertModel."""

    def __init__(self, config: SensiBertConfig) -> None:
        SensiBertPreTrainedModel.__init__(self, config)  # not BertForSequenceClassification's: no dense BertModel
        self.num_labels = config.num_labels
        self.config = config
        self.bert = SensiBertModel(config)
        dropout = (config.classifier_dropout if config.classifier_dropout is not None
                   else config.hidden_dropout_prob)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()


class SensiBertForQuestionAnswering(SensiBertPreTrainedModel, BertForQuestionAnswering):
    """BERT's extractive QA model (start/end logits per token, same loss) on a SensiBertModel."""

    def __init__(self, config: SensiBertConfig) -> None:
        SensiBertPreTrainedModel.__init__(self, config)  # not BertForQuestionAnswering's: no dense BertModel
        self.num_labels = config.num_labels
        self.config = config
        self.bert = SensiBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()


AutoConfig.register(MODEL_TYPE, SensiBertConfig, exist_ok=True)
AutoModel.register(SensiBertConfig, SensiBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(SensiBertConfig, SensiBertForSequenceClassification, exist_ok=True)
AutoModelForQuestionAnswering.register(SensiBertConfig, SensiBertForQuestionAnswering, exist_ok=True)
