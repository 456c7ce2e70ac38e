"""The trimmed model class: per-layer shapes, empty sub-layers, Auto registration, parameter counts."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from toolchain.costs import encoder_params, layer_params, shape_from_config, total_params


def _trimmed(heads, ffn, layers=None, seed=0):
    from toolchain.modeling import SensiBertConfig, SensiBertForSequenceClassification

    config = SensiBertConfig.from_dense(tiny_config(num_hidden_layers=layers or len(heads)), heads, ffn)
    config.architectures = ["SensiBertForSequenceClassification"]
    torch.manual_seed(seed)
    model = SensiBertForSequenceClassification(config).eval()
    with torch.no_grad():  # non-zero biases, so that b_o and b_2 of empty sub-layers matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _batch(seed=1, batch=3, seq=11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 90, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    types = torch.zeros_like(ids)
    types[2, 5:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def test_layers_have_their_own_shapes():
    model = _trimmed([0, 3, 4], [37, 0, 5])
    layers = model.bert.encoder.layer
    assert [l.attention.self.num_attention_heads for l in layers] == [0, 3, 4]
    assert [l.attention.self.query.out_features for l in layers] == [0, 24, 32]
    assert [l.attention.output.dense.in_features for l in layers] == [0, 24, 32]
    assert [l.intermediate.dense.out_features for l in layers] == [37, 0, 5]
    assert [l.output.dense.in_features for l in layers] == [37, 0, 5]
    assert all(l.attention.self.attention_head_size == 8 for l in layers)


def test_parameter_count_equals_costs():
    model = _trimmed([0, 3, 4], [37, 0, 5])
    shape = shape_from_config(model.config)
    assert shape.heads == (0, 3, 4) and shape.ffn == (37, 0, 5) and shape.num_labels == 2
    assert total_params(shape) == sum(p.numel() for p in model.parameters())
    for i, layer in enumerate(model.bert.encoder.layer):
        assert sum(p.numel() for p in layer.parameters()) == sum(layer_params(shape, i).values())
    assert encoder_params(shape) == sum(p.numel() for p in model.bert.encoder.parameters())


def test_layer_without_heads_is_layernorm_of_input_plus_output_bias():
    model = _trimmed([0], [4])
    layer = model.bert.encoder.layer[0]
    x = torch.randn(2, 5, 32)
    out, probs = layer.attention(x)
    expected = layer.attention.output.LayerNorm(x + layer.attention.output.dense.bias)
    assert probs is None
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert layer.attention.output.dense.bias.abs().sum() > 0  # the bias is kept and is not trivial


def test_layer_without_neurons_is_layernorm_of_input_plus_output_bias():
    model = _trimmed([2], [0])
    layer = model.bert.encoder.layer[0]
    x = torch.randn(2, 5, 32)
    attn, _ = layer.attention(x)
    out, _ = layer(x)
    torch.testing.assert_close(out, layer.output.LayerNorm(attn + layer.output.dense.bias), rtol=0, atol=0)


def test_auto_classes_round_trip(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    import toolchain.modeling as modeling

    model = _trimmed([0, 1, 4], [3, 0, 37])
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, modeling.SensiBertConfig)
    assert config.heads_per_layer == [0, 1, 4] and config.ffn_per_layer == [3, 0, 37]
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(again) is modeling.SensiBertForSequenceClassification
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is modeling.SensiBertModel
    assert sum(p.numel() for p in base.parameters()) == sum(p.numel() for p in model.bert.parameters())


def test_padding_does_not_change_real_tokens():
    model = _trimmed([2, 0], [0, 9])
    batch = _batch()
    short = {k: v[1:2, :6] for k, v in batch.items()}
    with torch.no_grad():
        padded = model(**batch).logits[1]
        alone = model(**short).logits[0]
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-6)


def test_trains_with_dropout_and_empty_sublayers():
    from toolchain.modeling import SensiBertConfig, SensiBertForSequenceClassification

    config = SensiBertConfig.from_dense(tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
                                       [0, 2], [5, 0])
    model = SensiBertForSequenceClassification(config).train()
    out = model(**_batch(), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.bert.encoder.layer[0].attention.output.dense.bias.grad is not None


@pytest.mark.parametrize("kwargs, match", [
    (dict(heads_per_layer=[4], ffn_per_layer=[37, 37]), "heads_per_layer has 1 entries"),
    (dict(heads_per_layer=[4, -1], ffn_per_layer=[37, 37]), "heads_per_layer must be >= 0"),
    (dict(heads_per_layer=[4, 4], ffn_per_layer=[37, -2]), "ffn_per_layer must be >= 0"),
])
def test_config_rejects_bad_lists(kwargs, match):
    from toolchain.modeling import SensiBertConfig

    with pytest.raises(ValueError, match=match):
        SensiBertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, **kwargs)


def test_config_defaults_are_dense():
    from toolchain.modeling import SensiBertConfig

    config = SensiBertConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=32, intermediate_size=37)
    assert config.heads_per_layer == [4, 4, 4] and config.ffn_per_layer == [37, 37, 37]


def test_head_mask_is_refused():
    model = _trimmed([2], [3])
    with pytest.raises(ValueError, match="head_mask"):
        model(**_batch(), head_mask=torch.ones(1, 4))
