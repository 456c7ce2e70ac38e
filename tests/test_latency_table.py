"""The latency-aware allocation against measured tables (never over budget; a whole block goes
only when that is cheapest), the CLI around it, and the latency model against a measurement.
The tables themselves: tests/test_deploy_latency_table.py."""

from __future__ import annotations

import json
import random

import pytest

from deploy.errors import InputError
from test_deploy_latency_table import _table
from deploy.latency_table import LatencyTable, predict
from toolchain.costs import EncoderShape


# ---------------------------------------------------------------- the latency allocation

SHAPE = EncoderShape(hidden=32, head_size=8, heads=(4, 4, 4), ffn=(37, 37, 37), vocab_size=99, max_positions=64,
                     type_vocab_size=2, num_labels=2)


def _sensitivity(rng: random.Random):
    from toolchain.sensitivity import Sensitivity, group_keys

    keys = group_keys(SHAPE.num_layers)
    importance = {k: tuple(rng.random() for _ in range(4 if k.endswith("attn") else 37)) for k in keys}
    return Sensitivity(method="fisher", settings={}, shape=SHAPE, scores={k: sum(v) for k, v in importance.items()},
                       importance=importance, importance_kind="fisher", model_hash="m", data_hash="d", task="sst2")


def _random_table(rng: random.Random) -> LatencyTable:
    """A table with a fixed cost per block call and a cost per unit, both random (noisy, not always monotone)."""
    attn_fixed, ffn_fixed = rng.uniform(0.05, 0.5), rng.uniform(0.05, 0.5)
    attn = {0: rng.uniform(0.0, 0.05)} | {h: attn_fixed + h * rng.uniform(0.01, 0.1) for h in range(1, 5)}
    ffn = {0: rng.uniform(0.0, 0.05)} | {n: ffn_fixed + n * rng.uniform(0.001, 0.01) for n in (1, 8, 16, 32, 37)}
    return _table(attn, ffn, fixed={16: rng.uniform(0.1, 1.0), 64: rng.uniform(1.0, 2.0)})


def _plan(sens, table, max_ms, seq=16, allocation="latency"):
    from toolchain.budget import budget_from_keep
    from toolchain.plan import LatencyBudget, PlanConfig, allocate

    budget = budget_from_keep(SHAPE, 1.0, seq_len=seq)
    return allocate(sens, SHAPE, budget, PlanConfig(allocation=allocation, cost_model="latency"),
                    latency=LatencyBudget(table, max_ms, seq))


@pytest.mark.parametrize("allocation", ["latency", "proportional", "balanced", "uniform"])
def test_latency_priced_allocations_never_exceed_their_budget_on_random_tables(allocation):
    from toolchain.errors import InfeasibleBudget

    rng = random.Random(0)
    checked = 0
    for _ in range(60):
        table, sens = _random_table(rng), _sensitivity(rng)
        dense = predict(table, SHAPE.heads, SHAPE.ffn, 16)
        smallest = predict(table, [0] * 3, [0] * 3, 16)
        max_ms = rng.uniform(smallest * 0.9, dense * 0.99)
        try:
            plan = _plan(sens, table, max_ms, allocation=allocation)
        except InfeasibleBudget as exc:
            assert max_ms < smallest and "smallest achievable latency" in str(exc)
            continue
        got = predict(table, plan.heads, plan.ffn, 16)
        assert got <= max_ms + 1e-9
        assert plan.cost["predicted_latency_ms"] == pytest.approx(got, abs=1e-3)
        assert plan.binding == "latency" and plan.cost["latency_model"]["cost_model"] == "latency table"
        checked += 1
    assert checked > 40


def test_a_block_goes_whole_only_when_that_is_cheaper_per_unit_of_importance():
    from toolchain.sensitivity import Sensitivity, group_keys

    # FFN blocks: a large fixed cost per call, a small cost per neuron. Layer 2's FFN matters
    # little (cheap to lose whole), layer 0's a lot: removing layer 2's block saves its fixed cost.
    attn = {0: 0.0, 1: 0.2, 2: 0.3, 3: 0.4, 4: 0.5}
    ffn = {0: 0.0, 1: 1.0, 8: 1.05, 16: 1.1, 32: 1.2, 37: 1.25}
    table = _table(attn, ffn, fixed={16: 0.5, 64: 0.5})
    keys = group_keys(3)
    importance = {k: (1.0,) * 4 for k in keys if k.endswith("attn")}
    importance |= {"layer0.ffn": (1.0,) * 37, "layer1.ffn": (1.0,) * 37, "layer2.ffn": (0.01,) * 37}
    sens = Sensitivity(method="fisher", settings={}, shape=SHAPE, scores={k: sum(v) for k, v in importance.items()},
                       importance=importance, importance_kind="fisher", model_hash="m", data_hash="d", task="sst2")
    dense = predict(table, SHAPE.heads, SHAPE.ffn, 16)
    plan = _plan(sens, table, dense - 1.0)  # must save a full FFN block's worth
    assert plan.ffn[2] == 0, plan.ffn                # the unimportant block is removed whole ...
    assert plan.ffn[0] == 37 and plan.ffn[1] == 37   # ... rather than thinning the important ones
    # a small saving comes from thinning (whole blocks would lose far more importance per ms)
    plan = _plan(sens, table, dense - 0.05)
    assert all(f > 0 for f in plan.ffn) and all(h > 0 for h in plan.heads)


def test_latency_budget_below_the_fixed_cost_names_the_smallest_latency():
    from toolchain.errors import InfeasibleBudget

    rng = random.Random(1)
    table, sens = _random_table(rng), _sensitivity(rng)
    smallest = predict(table, [0] * 3, [0] * 3, 16)
    with pytest.raises(InfeasibleBudget, match=f"{smallest:.3f} ms"):
        _plan(sens, table, smallest * 0.5)


def test_proportional_priced_by_latency_keeps_its_shares_and_spends_the_budget():
    """Under a latency table, proportional keeps the FLOPs plan's ordering of groups (a higher
    score never keeps a smaller share) and leaves no group a step it could still afford."""
    from deploy.latency_table import predict as table_predict

    rng = random.Random(3)
    table, sens = _random_table(rng), _sensitivity(rng)
    dense = predict(table, SHAPE.heads, SHAPE.ffn, 16)
    smallest = predict(table, [0] * 3, [0] * 3, 16)
    cap = smallest + 0.6 * (dense - smallest)
    plan = _plan(sens, table, cap, allocation="proportional")
    assert plan.allocation == "proportional" and plan.settings["cost_model"] == "latency"
    units = {f"layer{i}.attn": h for i, h in enumerate(plan.heads)} | {f"layer{i}.ffn": f for i, f in enumerate(plan.ffn)}
    assert table_predict(table, plan.heads, plan.ffn, 16) <= cap + 1e-9
    for i in range(3):  # one more head or neuron anywhere no longer fits
        if plan.heads[i] < 4:
            heads = list(plan.heads)
            heads[i] += 1
            assert table_predict(table, heads, plan.ffn, 16) > cap
    assert units  # every group is in the plan


def test_latency_allocation_needs_a_table_and_the_table_only_the_latency_allocation():
    from toolchain.budget import budget_from_keep
    from toolchain.plan import LatencyBudget, PlanConfig, allocate

    rng = random.Random(2)
    table, sens = _random_table(rng), _sensitivity(rng)
    with pytest.raises(InputError, match="latency table"):
        allocate(sens, SHAPE, budget_from_keep(SHAPE, 0.5), PlanConfig(allocation="latency"))
    with pytest.raises(InputError, match="latency table"):
        allocate(sens, SHAPE, budget_from_keep(SHAPE, 0.5), PlanConfig(allocation="proportional"),
                 latency=LatencyBudget(table, 1.0, 16))
    with pytest.raises(InputError, match="latency table"):
        allocate(sens, SHAPE, budget_from_keep(SHAPE, 0.5), PlanConfig(cost_model="latency"))
    with pytest.raises(InputError, match="fixed price per unit"):
        PlanConfig(allocation="global", cost_model="latency")
    with pytest.raises(InputError, match="--cost-model"):
        PlanConfig(cost_model="watts")
    assert PlanConfig(allocation="latency").cost_model == "latency"


# ---------------------------------------------------------------- calibrate, profiles show, plan (CLI)

def _host_copy(tmp_path, table: bool = False):
    """Return a copy of the host profile, with its latency table beside it or without one."""
    import shutil

    import yaml

    from deploy.profile import known_profiles

    shipped = known_profiles()["host"]
    doc = yaml.safe_load(shipped.read_text())
    if table:
        shutil.copy2(shipped.parent / doc["compute"]["latency_table"], tmp_path / doc["compute"]["latency_table"])
    else:
        doc["compute"].pop("latency_table", None)
    src = tmp_path / "host.yaml"
    src.write_text(yaml.safe_dump(doc, sort_keys=False))
    return src


def _tiny_sensitivity_file(tmp_path):
    rng = random.Random(3)
    path = tmp_path / "sensitivity.json"
    _sensitivity(rng).save(path)
    return path


def test_calibrate_writes_a_table_the_profile_names_and_plan_uses(tmp_path, capsys):
    from deploy.cli import main as deploy_main
    from deploy.latency_table import profile_tables
    from deploy.profile import load_profile
    from toolchain.cli import main

    out = tmp_path / "host.calibrated.yaml"
    assert deploy_main(["calibrate", "--profile", str(_host_copy(tmp_path)), "--latency-table", "--width", "32,8,37",
                        "--seq-lens", "8,16", "--table-runs", "2", "--runs", "2", "--out", str(out)]) == 0
    assert "latency table" in capsys.readouterr().out
    profile = load_profile(out)
    tables = profile_tables(profile)
    assert set(tables) == {"fp32", "int8"} and tables["int8"].grid["attn"] == (0, 1, 2, 3, 4)
    assert tables["int8"].runtime["intra_op_threads"] == 1 and tables["int8"].tag == "[M]"
    assert main(["profiles", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "latency table [M] int8: hidden 32, head size 8" in shown
    plan_path = tmp_path / "plan.json"
    sens = _tiny_sensitivity_file(tmp_path)
    dense_ms = predict(tables["int8"], SHAPE.heads, SHAPE.ffn, 16)
    smallest_ms = predict(tables["int8"], [0] * 3, [0] * 3, 16)
    assert smallest_ms <= dense_ms  # measured rows are monotone: removing units never adds time
    target = smallest_ms + 0.5 * (dense_ms - smallest_ms)
    assert main(["plan", "--sensitivity", str(sens), "--profile", str(out), "--allocation", "latency",
                 "--seq-len", "16", "--latency-ms", f"{target:.6f}", "--out", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    assert plan["binding"] == "latency" and plan["cost"]["predicted_latency_ms"] <= target + 1e-3


def test_calibrate_and_plan_refuse_bad_latency_settings(tmp_path, capsys):
    from deploy.cli import main as deploy_main
    from toolchain.cli import main

    host = _host_copy(tmp_path)
    assert deploy_main(["calibrate", "--profile", str(host), "--latency-table", "--width", "32,7,37"]) == 2
    assert "not a multiple of head size" in capsys.readouterr().err
    assert deploy_main(["calibrate", "--profile", str(host), "--latency-table", "--seq-lens", "8,x"]) == 2
    assert "--seq-lens" in capsys.readouterr().err
    sens = _tiny_sensitivity_file(tmp_path)
    assert main(["plan", "--sensitivity", str(sens), "--keep", "0.5", "--allocation", "latency",
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "pass --profile" in capsys.readouterr().err
    assert main(["plan", "--sensitivity", str(sens), "--profile", str(host), "--allocation", "latency",
                 "--seq-len", "16", "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "has no latency table" in err and not (tmp_path / "p.json").exists()


@pytest.mark.slow
def test_latency_model_predicts_a_trimmed_artifact_from_a_table_and_the_dense_artifact(tmp_path):
    """The table is measured on blocks, its fixed cost on the dense artifact; the trimmed artifact's
    time is then a prediction. Tiny models are mostly per-call overhead (tenths of a millisecond)
    and timings on a shared 2-core host are noisy, so the tolerance is wide (within a factor of
    two): bench/latency_model.py holds the real numbers on MiniLM."""
    import sys

    import torch

    from deploy.latency_table import artifact_ms, calibrate_table
    from deploy.profile import known_profiles, load_profile
    from deploy.session import session_settings
    from toolchain.export import ExportConfig, export
    from toolchain.masks import MaskSet, attach_masks
    from toolchain.models import load_classifier, load_tokenizer
    from toolchain.shrink import shrink

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_families import build_family_dir

    encoder = build_family_dir("bert", tmp_path / "encoder")
    arts = {}
    for name, masks in (("dense", MaskSet.dense(2, 4, 37)),
                        ("trimmed", MaskSet.from_lists(4, 37, [[0, 1], [2]], [list(range(9)), list(range(30))]))):
        model = load_classifier(encoder, 2, id2label={0: "negative", 1: "positive"}).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        attach_masks(model, masks)
        small = shrink(model, masks)
        small.save_pretrained(tmp_path / name)
        load_tokenizer(encoder).save_pretrained(tmp_path / name)
        arts[name] = tmp_path / f"{name}-onnx"
        export(tmp_path / name, arts[name], ExportConfig(optimize=True, quantize="int8", task="sst2", seq_len=32))
    profile = load_profile(known_profiles()["host"])
    tables = calibrate_table(profile, tmp_path / "t.latency.json", artifact=str(arts["dense"]), seq_lens=(8, 32),
                             runs=15, progress=False)
    table = tables["int8"]
    assert table.fixed_from == str(arts["dense"]) and set(table.fixed_ms) == {8, 32} and table.scale == {}
    measured = artifact_ms(arts["trimmed"], "int8", session_settings(profile.runtime), [32], runs=50)[32]
    predicted = predict(table, [2, 1], [9, 30], 32)
    assert measured / 2 <= predicted <= 2 * measured, (predicted, measured)
