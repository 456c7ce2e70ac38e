"""Budget arithmetic: hand-checked cases for each constraint, and infeasibility."""

from __future__ import annotations

import copy

import pytest
import yaml

from deploy.profile import known_profiles, profile_from_dict
from tests.conftest import tiny_config
from toolchain import costs
from toolchain.budget import budget_from_flops, budget_from_keep, budget_from_params, derive_budget
from toolchain.costs import shape_from_config
from toolchain.errors import InfeasibleBudget, InputError

# Tiny classifier (H 32, 4 heads of 8, FFN 37, vocab 99, 64 positions, 2 types, 2 labels):
# embeddings (99+64+2)·32 + 2·32 = 5344; per layer attention 4·32·32+3·32+32 = 4224,
# FFN 2·32·37+37+32 = 2437, LayerNorms 128; pooler 1056; classifier 66; total 20044.
# Trimmable per layer: 4 heads × (4·32·8+3·8) + 37 × (2·32+1) = 4192 + 2405 = 6597; fixed 6850.
SHAPE = shape_from_config(tiny_config(), num_labels=2)


def test_tiny_shape_hand_counts():
    assert costs.total_params(SHAPE) == 20044
    assert costs.trimmable_params(SHAPE) == 2 * 6597
    assert costs.fixed_params(SHAPE) == 6850


def _profile(**changes):
    doc = yaml.safe_load(known_profiles()["rpi4-4gb"].read_text())
    doc = copy.deepcopy(doc)
    doc["budget"]["load_transient_bytes"] = 1  # hand-checked cases below: the run, not the load, binds
    for dotted, value in changes.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return profile_from_dict(doc, "test-profile")


def test_memory_binds_hand_checked():
    # activations at B=1, S=16: attention 16·(32 + 4·32) + 2·4·16² = 4608 values = 18432 bytes.
    # memory for the model 344440 × 0.5 = 172220; − overhead 100000 − 18432 = 53788 weight bytes;
    # − fixed 6850·4 = 27400 → 26388 bytes = 6597 trimmable fp32 params = half of 13194.
    p = _profile(**{"hardware.ram_available_bytes": 344440, "budget.model_memory_fraction": 0.5,
                    "budget.runtime_overhead_bytes": 100000, "budget.resident_factor.fp32": 1.0,
                    "budget.seq_len": 16, "runtime.precision": "fp32"})
    b = derive_budget(p, SHAPE)
    assert b.activation_bytes == 18432
    assert b.max_weight_bytes == 53788
    assert b.keep_memory == pytest.approx(0.5)
    assert b.max_params == 6850 + 6597
    assert b.binding == "memory" and b.feasible and b.keep == pytest.approx(0.5)
    assert b.to_budget().max_trimmable_params == 6597


def test_session_load_transient_can_bind_hand_checked():
    # memory 172220 − overhead 100000 = 72220; a 40000-byte load transient leaves 32220 weight bytes,
    # less than the run's 53788: minus fixed 27400 → 4820 bytes = 1205 trimmable fp32 params.
    p = _profile(**{"hardware.ram_available_bytes": 344440, "budget.model_memory_fraction": 0.5,
                    "budget.runtime_overhead_bytes": 100000, "budget.resident_factor.fp32": 1.0,
                    "budget.load_transient_bytes": 40000, "budget.seq_len": 16, "runtime.precision": "fp32"})
    b = derive_budget(p, SHAPE)
    assert b.max_weight_bytes == 32220
    assert b.to_budget().max_trimmable_params == 1205


def test_latency_binds_hand_checked():
    # encoder FLOPs at S=16: per layer 8·16·32·32 + 4·16²·32 + 4·16·32·37 = 239616, two layers 479232;
    # pooler + classifier 2·32·32 + 2·32·2 = 2176. A budget of 2176 + 479232/4 = 121984 FLOPs keeps 25%.
    p = _profile(**{"compute.sustained_gflops_fp32": 0.121984, "budget.latency_target_ms": 1.0,
                    "budget.seq_len": 16, "runtime.precision": "fp32"})
    b = derive_budget(p, SHAPE)
    assert b.dense_flops == 479232 + 2176
    assert b.max_flops == pytest.approx(121984, abs=1)
    assert b.keep_latency == pytest.approx(0.25, abs=1e-5)
    assert b.binding == "latency" and b.keep == pytest.approx(0.25, abs=1e-5)
    assert b.to_budget().max_encoder_flops == pytest.approx(479232 / 4, abs=1)


def test_int8_allows_more_params_than_fp32():
    p = _profile(**{"hardware.ram_available_bytes": 344440, "budget.runtime_overhead_bytes": 100000,
                    "budget.seq_len": 16})
    fp32, int8 = derive_budget(p, SHAPE, precision="fp32"), derive_budget(p, SHAPE, precision="int8")
    assert int8.keep_memory > fp32.keep_memory


def test_infeasible_when_fixed_parts_do_not_fit():
    p = _profile(**{"hardware.ram_available_bytes": 250000, "budget.runtime_overhead_bytes": 100000,
                    "budget.seq_len": 16})
    b = derive_budget(p, SHAPE, precision="fp32")
    assert not b.feasible
    with pytest.raises(InfeasibleBudget, match="untrimmed parts alone need 0.01M parameters"):
        b.to_budget()


@pytest.mark.parametrize("kwargs", [{"seq_len": 0}, {"seq_len": 65}, {"latency_ms": 0}, {"latency_ms": -3}])
def test_out_of_range_flags(kwargs):
    with pytest.raises(InputError, match="out of range"):
        derive_budget(_profile(**{"budget.seq_len": 16}), SHAPE, **kwargs)


def test_explicit_budgets():
    assert budget_from_keep(SHAPE, 0.5).max_trimmable_params == 6597
    assert budget_from_params(SHAPE, 6850 + 100).max_trimmable_params == 100
    assert budget_from_flops(SHAPE, 2176 + 1000, seq_len=16).max_encoder_flops == 1000
    with pytest.raises(InfeasibleBudget):
        budget_from_params(SHAPE, 6849)
    with pytest.raises(InputError):
        budget_from_keep(SHAPE, 1.5)
