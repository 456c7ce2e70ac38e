"""The cost model against real torch models: exact parameter counts, FLOPs within 2%."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, BertForSequenceClassification, BertModel

from tests.conftest import tiny_config
from toolchain import costs
from toolchain.costs import shape_from_config


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("overrides", [{}, {"num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 6,
                                            "intermediate_size": 51, "num_labels": 3}])
def test_params_exact_on_random_classifiers(overrides):
    config = tiny_config(**overrides)
    model = BertForSequenceClassification(config)
    assert costs.total_params(shape_from_config(config, num_labels=config.num_labels)) == _numel(model)


def test_params_exact_after_head_pruning():
    config = tiny_config()
    model = BertForSequenceClassification(config)
    model.prune_heads({0: [1, 2], 1: [0, 1, 2]})
    assert costs.total_params(shape_from_config(model.config, num_labels=2)) == _numel(model)


def test_params_exact_on_packaged_minilm(minilm_dir):
    model = BertModel.from_pretrained(minilm_dir)
    shape = shape_from_config(model.config, num_labels=0)
    assert shape.heads == (12,) * 6 and shape.ffn == (1536,) * 6
    assert costs.total_params(shape) == _numel(model) == 22_713_216


def test_unit_costs_match_removal():
    shape = shape_from_config(tiny_config(), num_labels=2)
    one_less_head = shape.with_units((3, 4), shape.ffn)
    one_less_neuron = shape.with_units(shape.heads, (37, 36))
    assert costs.total_params(shape) - costs.total_params(one_less_head) == costs.unit_params(shape, "attn")
    assert costs.total_params(shape) - costs.total_params(one_less_neuron) == costs.unit_params(shape, "ffn")
    assert costs.trimmable_params(shape) + costs.fixed_params(shape) == costs.total_params(shape)


def _counted_flops(model, batch: int, seq: int) -> int:
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops()


@pytest.mark.parametrize("seq", [16, 64, 128, 512])
def test_flops_within_two_percent_of_torch_counter_minilm(minilm_dir, seq):
    config = AutoConfig.from_pretrained(minilm_dir)
    model = BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    predicted = costs.total_flops(shape_from_config(config, num_labels=0), 1, seq)
    assert predicted == pytest.approx(_counted_flops(model, 1, seq), rel=0.02)


@pytest.mark.parametrize("seq", [16, 33, 128])
def test_flops_within_two_percent_on_pruned_tiny_classifier(seq):
    config = tiny_config(max_position_embeddings=256, num_labels=3)
    config._attn_implementation = "eager"  # the SDPA kernel hides its matmuls from the counter
    model = BertForSequenceClassification(config).eval()
    model.prune_heads({0: [3], 1: [0, 2]})
    predicted = costs.total_flops(shape_from_config(model.config, num_labels=3), 2, seq)
    assert predicted == pytest.approx(_counted_flops(model, 2, seq), rel=0.02)


def test_memory_estimate_parts():
    shape = shape_from_config(tiny_config(), num_labels=2)
    est = costs.memory_estimate(shape, "fp32", 1, 16, resident_factor=1.5, overhead_bytes=1000)
    assert est.weight_bytes == costs.total_params(shape) * 4
    assert est.total_bytes == int(est.weight_bytes * 1.5) + est.activation_bytes + 1000
    loading = costs.memory_estimate(shape, "fp32", 1, 16, resident_factor=1.5, overhead_bytes=1000,
                                    load_transient_bytes=10**6)
    assert loading.total_bytes == loading.load_peak_bytes == 1000 + est.weight_bytes + 10**6
    int8 = costs.weight_bytes(shape, "int8")
    assert costs.total_params(shape) < int8 < est.weight_bytes
    assert costs.activation_bytes(shape, 1, 64) > costs.activation_bytes(shape, 1, 16)


@pytest.mark.parametrize("batch, seq", [(1, 7), (3, 128)])
def test_flops_polynomial_equals_total_flops(batch, seq):
    shape = shape_from_config(tiny_config(), num_labels=2).with_units((3, 0), (37, 5))
    poly = costs.flops_polynomial(shape)
    assert batch * (poly["per_token"] * seq + poly["per_token_pair"] * seq ** 2 + poly["per_sequence"]) \
        == costs.total_flops(shape, batch, seq)


def test_a_layer_with_no_heads_and_no_neurons_costs_nothing():
    """It is removed whole (Step 11): not even its biases and LayerNorms stay, while a layer with
    one head left keeps them (6·H beyond the head); budgets still count them as fixed."""
    shape = shape_from_config(tiny_config(num_hidden_layers=3))
    emptied = shape.with_units([4, 0, 2], [37, 0, 5])
    one_head = shape.with_units([4, 1, 2], [37, 0, 5])
    assert costs.layer_params(emptied, 1) == {"attn": 0, "ffn": 0, "layernorm": 0}
    assert costs.total_params(one_head) - costs.total_params(emptied) == costs.unit_params(shape, "attn") + 6 * 32
    assert costs.layer_flops(emptied, 1, 1, 16) == 0
    for precision in ("fp32", "int8"):  # what no unit owns: the same for any plan until a layer goes (6·H fp32)
        assert costs.fixed_weight_bytes(one_head, precision) == costs.fixed_weight_bytes(shape, precision) \
            == costs.fixed_weight_bytes(emptied, precision) + 6 * 32 * 4
