"""Stage 2: allocate() meets the budget (never over, within one unit), each allocation's shape, the
plan artifact, every bad input, and `sensibert plan`."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

from toolchain import costs
from toolchain.budget import Budget, budget_from_flops, budget_from_keep, budget_from_params
from toolchain.costs import EncoderShape
from toolchain.errors import InfeasibleBudget, InputError
from toolchain.plan import ALLOCATIONS, Plan, PlanConfig, allocate
from toolchain.sensitivity import Sensitivity, group_keys

# the allocations priced by the budget's caps; "latency" needs a measured table (tests/test_latency_table.py)
CAP_ALLOCATIONS = sorted(set(ALLOCATIONS) - {"latency"})
MINILM = EncoderShape(hidden=384, head_size=32, heads=(12,) * 6, ffn=(1536,) * 6, vocab_size=30522,
                      max_positions=512, type_vocab_size=2, num_labels=2)
TINY = EncoderShape(hidden=32, head_size=8, heads=(4, 4), ffn=(37, 37), vocab_size=99, max_positions=64,
                    type_vocab_size=2, num_labels=2)


def make_sens(shape: EncoderShape, scores=None, importance=None, seed: int = 0, model_hash: str = "a" * 64):
    rng = random.Random(seed)
    keys = group_keys(shape.num_layers)
    if scores is None:
        scores = {k: rng.random() for k in keys}
    if importance is None:
        importance = {k: tuple(rng.random() for _ in range(shape.heads[int(k[5:].split(".")[0])] if k.endswith("attn")
                                                      else shape.ffn[int(k[5:].split(".")[0])]))
                      for k in keys}
    return Sensitivity(method="density", settings={}, shape=shape, scores=dict(scores), importance=importance,
                       importance_kind="weight_norm", model_hash=model_hash, data_hash="d" * 64, task="sst2")


def unit_costs(shape: EncoderShape, budget: Budget) -> dict[str, tuple[int, int]]:
    """(params, FLOPs) of one unit of each kind, from the cost model (not from the allocator)."""
    out = {}
    for kind in ("attn", "ffn"):
        one = shape.with_units([1 if kind == "attn" else 0] * shape.num_layers,
                               [1 if kind == "ffn" else 0] * shape.num_layers)
        out[kind] = (costs.trimmable_params(one) // shape.num_layers,
                     costs.encoder_flops(one, budget.batch, budget.seq_len) // shape.num_layers)
    return out


def fits(shape: EncoderShape, budget: Budget, heads, ffn) -> bool:
    kept = shape.with_units(heads, ffn)
    ok_params = budget.max_trimmable_params is None or costs.trimmable_params(kept) <= budget.max_trimmable_params
    ok_flops = budget.max_encoder_flops is None or \
        costs.encoder_flops(kept, budget.batch, budget.seq_len) <= budget.max_encoder_flops
    return ok_params and ok_flops


def allowed(size: int, step: int, min_keep: float) -> list[int]:
    return sorted(a for a in set(range(0, size + 1, step)) | {size} if a >= math.ceil(min_keep * size - 1e-9))


def assert_meets_budget(plan: Plan, shape: EncoderShape, budget: Budget, config: PlanConfig) -> None:
    """Never over either cap; no group can take its next allowed step; counts are allowed counts."""
    heads, ffn = list(plan.heads), list(plan.ffn)
    assert fits(shape, budget, heads, ffn), f"plan {heads} {ffn} exceeds the budget"
    for layer in range(shape.num_layers):
        levels_h = allowed(shape.heads[layer], 1, config.min_keep)
        levels_f = allowed(shape.ffn[layer], config.round_to, config.min_keep)
        assert heads[layer] in levels_h and ffn[layer] in levels_f
        if heads[layer] < shape.heads[layer]:
            more = heads.copy()
            more[layer] = levels_h[levels_h.index(heads[layer]) + 1]
            assert not fits(shape, budget, more, ffn), f"layer {layer} could keep one more head"
        if ffn[layer] < shape.ffn[layer]:
            more = ffn.copy()
            more[layer] = levels_f[levels_f.index(ffn[layer]) + 1]
            assert not fits(shape, budget, heads, more), f"layer {layer} could keep more neurons"


def random_case(seed: int):
    rng = random.Random(seed)
    layers = rng.randint(1, 4)
    head_size = rng.choice([4, 8, 16])
    heads_n, ffn_n = rng.randint(1, 6), rng.randint(3, 70)
    shape = EncoderShape(hidden=head_size * heads_n, head_size=head_size, heads=(heads_n,) * layers,
                         ffn=(ffn_n,) * layers, vocab_size=50, max_positions=128, type_vocab_size=2, num_labels=2)
    scores = {k: (0.0 if rng.random() < 0.15 else rng.random() ** 2) for k in group_keys(layers)}
    sens = make_sens(shape, scores=scores, seed=seed)
    seq = rng.choice([8, 32, 128])
    dense_p = costs.trimmable_params(shape)
    dense_f = costs.encoder_flops(shape, 1, seq)
    kind = rng.choice(["params", "flops", "both"])
    p_cap = int(dense_p * rng.uniform(0.0, 1.0)) if kind != "flops" else None
    f_cap = int(dense_f * rng.uniform(0.0, 1.0)) if kind != "params" else None
    budget = Budget(max_trimmable_params=p_cap, max_encoder_flops=f_cap, seq_len=seq)
    config = dict(min_keep=rng.choice([0.0, 0.0, 0.1, 0.3]), round_to=rng.choice([1, 1, 4, 8]))
    return shape, sens, budget, config


def expected_error(shape, budget, config):
    """Return the error class the budget must raise, from the cost model, or None."""
    heads = [allowed(h, 1, config.min_keep)[0] for h in shape.heads]
    ffn = [allowed(f, config.round_to, config.min_keep)[0] for f in shape.ffn]
    if not fits(shape, budget, heads, ffn):
        return InfeasibleBudget
    dense = (costs.trimmable_params(shape), costs.encoder_flops(shape, budget.batch, budget.seq_len))
    if all(cap is None or d < cap for cap, d in zip((budget.max_trimmable_params, budget.max_encoder_flops), dense)):
        return InputError
    return None


def test_every_allocation_is_tested():
    assert sorted(ALLOCATIONS) == ["balanced", "global", "latency", "proportional", "uniform"], \
        "a new allocation needs its tests here"


@pytest.mark.parametrize("allocation", ["balanced", "proportional"])
def test_allocation_never_starves_a_group_below_what_its_score_warrants(allocation):
    """Property on random heavy-tailed scores: every group keeps at least (s_g/s_top)^γ of the share the
    top-scored group of its kind keeps (γ = 0.5 for balanced, 1 for proportional, run's default; up to
    rounding and the fill of what rounding frees: three units), and within a kind a higher score never
    keeps fewer units (same slack)."""
    from toolchain.plan import BALANCE_EXPONENT

    exponent = BALANCE_EXPONENT if allocation == "balanced" else 1.0
    for seed in range(300):
        rng = random.Random(seed)
        layers = rng.randint(2, 6)
        shape = EncoderShape(hidden=64, head_size=8, heads=(8,) * layers, ffn=(rng.randint(32, 160),) * layers,
                             vocab_size=50, max_positions=128, type_vocab_size=2, num_labels=2)
        # positive scores up to three orders of magnitude apart, as Fisher gives
        scores = {k: 10 ** rng.uniform(-3, 0) for k in group_keys(layers)}
        sens = make_sens(shape, scores=scores, seed=seed)
        keep = rng.uniform(0.15, 0.9)
        plan = allocate(sens, shape, budget_from_keep(shape, keep), PlanConfig(allocation=allocation))
        for kind, units, size in (("attn", plan.heads, shape.heads[0]), ("ffn", plan.ffn, shape.ffn[0])):
            keys = [f"layer{i}.{kind}" for i in range(layers)]
            top = max(range(layers), key=lambda i: scores[keys[i]])
            for i in range(layers):
                warranted = (scores[keys[i]] / scores[keys[top]]) ** exponent * units[top] / size
                assert units[i] / size >= min(1.0, warranted) - 3.0 / size - 1e-9, (seed, keys[i], plan.heads,
                                                                                     plan.ffn)
                for j in range(layers):
                    if scores[keys[i]] > scores[keys[j]]:
                        assert units[i] >= units[j] - 3, (seed, keys[i], keys[j], plan.heads, plan.ffn)


def test_global_never_drops_a_unit_worth_more_than_one_it_keeps():
    """Property on random scores and importances: under global allocation no dropped unit has a higher
    importance per unit of cost than a kept unit (the marginal loss per cost is equalised), up to the
    one step that did not fit."""
    from toolchain.plan import Caps, build_groups

    for seed in range(200):
        shape, sens, budget, cfg = random_case(seed)
        config = PlanConfig(allocation="global", min_keep=0.0, round_to=1)
        if expected_error(shape, budget, config) is not None:
            continue
        plan = allocate(sens, shape, budget, config)
        groups = build_groups(sens, shape, budget, config)
        caps = Caps((budget.max_trimmable_params, budget.max_encoder_flops))
        kept_values, dropped = [], []
        for g in groups:
            count = (plan.heads if g.kind == "attn" else plan.ffn)[g.layer]
            ranked = sorted(g.importance, reverse=True)
            price = caps.weight(g)
            kept_values += [v / price for v in ranked[:count]]
            dropped += [(v / price, g) for v in ranked[count:]]
        if not kept_values or not dropped:
            continue
        worst_kept = min(kept_values)
        # a better dropped unit is only allowed where taking it would not have fitted
        for value, g in dropped:
            if value > worst_kept + 1e-12:
                units = [(plan.heads if h.kind == "attn" else plan.ffn)[h.layer] for h in groups]
                units[groups.index(g)] += 1
                assert not caps.fits(caps.totals(groups, units)), (seed, g.key)


def test_balanced_tempers_what_proportional_collapses():
    """One group scored 100× below the rest: proportional leaves it ~1% of its units, balanced ~10%
    ((1/100)^0.5 of the others' share), and both keep the others alike."""
    scores = {k: (0.01 if k == "layer5.ffn" else 1.0) for k in group_keys(MINILM.num_layers)}
    sens = make_sens(MINILM, scores=scores)
    budget = budget_from_keep(MINILM, 0.5)
    prop = allocate(sens, MINILM, budget, PlanConfig(allocation="proportional"))
    bal = allocate(sens, MINILM, budget, PlanConfig(allocation="balanced"))
    assert prop.ffn[5] < 20
    assert bal.ffn[5] == pytest.approx(0.1 * bal.ffn[0], abs=2)
    assert len(set(bal.ffn[:5])) == 1 and max(bal.heads) - min(bal.heads) <= 1


@pytest.mark.parametrize("allocation", CAP_ALLOCATIONS)
def test_plan_never_exceeds_the_budget_and_is_within_one_unit(allocation):
    checked = 0
    for seed in range(150):
        shape, sens, budget, cfg = random_case(seed)
        config = PlanConfig(allocation=allocation, **cfg)
        error = expected_error(shape, budget, config)
        if error is not None:
            with pytest.raises(error):
                allocate(sens, shape, budget, config)
            continue
        plan = allocate(sens, shape, budget, config)
        assert_meets_budget(plan, shape, budget, config)
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("allocation", CAP_ALLOCATIONS)
@pytest.mark.parametrize("budget", [budget_from_keep(MINILM, 0.5), budget_from_keep(MINILM, 0.31),
                                    budget_from_flops(MINILM, 1_000_000_000, 128),
                                    Budget(max_trimmable_params=8_000_000, max_encoder_flops=1_500_000_000)],
                         ids=["keep0.5", "keep0.31", "flops1G", "both"])
@pytest.mark.parametrize("round_to", [1, 16])
def test_minilm_budgets(allocation, budget, round_to):
    config = PlanConfig(allocation=allocation, round_to=round_to)
    plan = allocate(make_sens(MINILM), MINILM, budget, config)
    assert_meets_budget(plan, MINILM, budget, config)
    if round_to == 16:
        assert all(f % 16 == 0 or f == 1536 for f in plan.ffn)


def test_uniform_gives_equal_ratios():
    sens = make_sens(MINILM, scores={k: float(i + 1) for i, k in enumerate(group_keys(6))})
    for keep in (0.25, 0.5, 0.8):
        plan = allocate(sens, MINILM, budget_from_keep(MINILM, keep), PlanConfig(allocation="uniform"))
        assert max(plan.heads) - min(plan.heads) <= 1 and max(plan.ffn) - min(plan.ffn) <= 1
        head_ratio, ffn_ratio = sum(plan.heads) / 72, sum(plan.ffn) / (6 * 1536)
        assert abs(head_ratio - keep) <= 1 / 12 and abs(ffn_ratio - keep) <= 1 / 12


def test_proportional_follows_the_scores():
    scores = {}
    for layer in range(6):
        scores[f"layer{layer}.attn"] = 0.2 + 0.1 * layer
        scores[f"layer{layer}.ffn"] = 0.2 + 0.1 * layer
    plan = allocate(make_sens(MINILM, scores=scores), MINILM, budget_from_keep(MINILM, 0.4), PlanConfig())
    assert list(plan.ffn) == sorted(plan.ffn) and plan.ffn[5] > plan.ffn[0] + 300
    assert list(plan.heads) == sorted(plan.heads) and plan.heads[5] > plan.heads[0] + 2
    # unclipped groups keep r·s_g/mean(s) of their units (± the few the rounding of heads moves)
    assert plan.ffn[3] / plan.ffn[0] == pytest.approx(scores["layer3.ffn"] / scores["layer0.ffn"], rel=0.03)


def test_proportional_min_keep_is_a_floor():
    scores = {k: (1.0 if k == "layer0.ffn" else 0.01) for k in group_keys(6)}
    plan = allocate(make_sens(MINILM, scores=scores), MINILM, budget_from_keep(MINILM, 0.33),
                    PlanConfig(min_keep=0.2))
    assert plan.ffn[0] == 1536
    assert all(h >= math.ceil(0.2 * 12) for h in plan.heads) and all(f >= math.ceil(0.2 * 1536) for f in plan.ffn)


def test_global_keeps_the_most_important_units():
    importance = {k: tuple([0.1] * (12 if k.endswith("attn") else 1536)) for k in group_keys(6)}
    importance["layer2.ffn"] = tuple([5.0] * 1536)
    importance["layer4.attn"] = tuple([500.0] * 12)
    sens = make_sens(MINILM, importance=importance)
    plan = allocate(sens, MINILM, budget_from_keep(MINILM, 0.3), PlanConfig(allocation="global"))
    assert plan.ffn[2] == 1536 and plan.heads[4] == 12


def test_zero_scores_fall_back_to_uniform():
    sens = make_sens(TINY, scores={k: 0.0 for k in group_keys(2)})
    a = allocate(sens, TINY, budget_from_keep(TINY, 0.5), PlanConfig())
    b = allocate(sens, TINY, budget_from_keep(TINY, 0.5), PlanConfig(allocation="uniform"))
    assert (a.heads, a.ffn) == (b.heads, b.ffn)


@pytest.mark.parametrize("allocation", CAP_ALLOCATIONS)
def test_allocation_is_deterministic(allocation):
    config = PlanConfig(allocation=allocation, round_to=8, min_keep=0.1)
    budget = Budget(max_trimmable_params=6_000_000, max_encoder_flops=2_000_000_000)
    plans = [allocate(make_sens(MINILM, seed=3), MINILM, budget, config) for _ in range(2)]
    assert plans[0] == plans[1] and json.dumps(plans[0].to_dict()) == json.dumps(plans[1].to_dict())


def test_plan_records_cost_binding_headroom_and_hashes(tmp_path):
    sens = make_sens(MINILM)
    budget = Budget(max_trimmable_params=9_000_000, max_encoder_flops=1_200_000_000, seq_len=64, batch=2)
    plan = allocate(sens, MINILM, budget, PlanConfig())
    kept = MINILM.with_units(plan.heads, plan.ffn)
    assert plan.cost["trimmable_params"] == costs.trimmable_params(kept)
    assert plan.cost["encoder_params"] == costs.encoder_params(kept)
    assert plan.cost["total_params"] == costs.total_params(kept)
    assert plan.cost["encoder_flops"] == costs.encoder_flops(kept, 2, 64)
    assert (plan.cost["seq_len"], plan.cost["batch"]) == (64, 2)
    fractions = {n: plan.headroom[n]["headroom_fraction"] for n in ("params", "flops")}
    assert plan.binding == min(fractions, key=fractions.get)
    assert plan.headroom["params"]["headroom"] == 9_000_000 - plan.cost["trimmable_params"] >= 0
    assert plan.headroom["flops"]["headroom"] == 1_200_000_000 - plan.cost["encoder_flops"] >= 0
    assert plan.sensitivity_hash == sens.content_hash() and plan.model_hash == sens.model_hash
    assert plan.architecture == {"num_layers": 6, "hidden": 384, "head_size": 32, "num_heads": 12, "ffn_size": 1536}
    assert plan.settings == {"allocation": "proportional", "min_keep": 0.0, "round_to": 1, "cost_model": "flops"}
    assert Plan.load(plan.save(tmp_path / "plan.json")) == plan
    only_params = allocate(sens, MINILM, budget_from_keep(MINILM, 0.5), PlanConfig())
    assert only_params.binding == "params" and only_params.headroom["flops"]["cap"] is None


def test_budget_equal_to_dense_keeps_everything():
    plan = allocate(make_sens(TINY), TINY, budget_from_keep(TINY, 1.0), PlanConfig())
    assert plan.heads == TINY.heads and plan.ffn == TINY.ffn


# ---------------------------------------------------------------- bad input

def test_budget_below_the_smallest_allowed_model():
    with pytest.raises(InfeasibleBudget, match=r"smallest model --min-keep 0.5 allows needs"):
        allocate(make_sens(TINY), TINY, budget_from_keep(TINY, 0.3), PlanConfig(min_keep=0.5))


def test_budget_above_the_dense_model():
    budget = budget_from_params(TINY, costs.total_params(TINY) + 1)
    with pytest.raises(InputError, match="above the dense model"):
        allocate(make_sens(TINY), TINY, budget, PlanConfig())


def test_unknown_allocation_lists_the_choices():
    with pytest.raises(InputError, match=r"unknown allocation 'greedy'; choose one of: balanced, global, latency, proportional, uniform"):
        allocate(make_sens(TINY), TINY, budget_from_keep(TINY, 0.5), PlanConfig(allocation="greedy"))


def test_sensitivity_of_another_architecture():
    other = EncoderShape(hidden=32, head_size=8, heads=(4, 4, 4), ffn=(37, 37, 37), vocab_size=99,
                         max_positions=64, type_vocab_size=2)
    with pytest.raises(InputError, match="another architecture"):
        allocate(make_sens(other), TINY, budget_from_keep(TINY, 0.5), PlanConfig())


@pytest.mark.parametrize("kwargs, flag", [({"min_keep": 1.5}, "--min-keep"), ({"min_keep": -0.1}, "--min-keep"),
                                          ({"round_to": 0}, "--round-to")])
def test_plan_config_rejects_bad_values(kwargs, flag):
    with pytest.raises(InputError, match=flag):
        PlanConfig(**kwargs)


def test_allocate_needs_no_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from toolchain.budget import budget_from_keep\n"
            "from toolchain.plan import allocate, PlanConfig\n"
            "from tests.test_plan import make_sens, TINY\n"
            "print(allocate(make_sens(TINY), TINY, budget_from_keep(TINY, 0.5), PlanConfig()).heads)")
    from conftest import REPO

    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("(")


# ---------------------------------------------------------------- CLI

@pytest.fixture
def sens_file(tmp_path):
    return make_sens(TINY).save(tmp_path / "sensitivity.json")


def test_cli_plan_writes_the_plan(sens_file, tmp_path, capsys):
    from toolchain.cli import main

    out = tmp_path / "out" / "plan.json"
    assert main(["plan", "--sensitivity", str(sens_file), "--keep", "0.5", "--round-to", "4", "--out", str(out)]) == 0
    plan = Plan.load(out)
    doc = json.loads(out.read_text())
    assert (doc["schema"], doc["version"]) == ("sensibert.plan", 1)
    budget = budget_from_keep(TINY, 0.5)
    assert_meets_budget(plan, TINY, budget, PlanConfig(round_to=4))
    assert plan.settings == {"allocation": "proportional", "min_keep": 0.0, "round_to": 4, "cost_model": "flops",
                             "precision": "fp32"}
    assert plan.budget["source"] == {"kind": "keep", "keep": 0.5}
    assert plan.sensitivity_hash == Sensitivity.load(sens_file).content_hash()
    printed = capsys.readouterr().out
    assert "params binds" in printed and "flops: no cap" in printed and printed.count("/4") == 2


def test_cli_plan_with_flops_params_and_profile(sens_file, tmp_path):
    from toolchain.cli import main

    out = tmp_path / "plan.json"
    flops = costs.total_flops(TINY, 1, 32) // 2
    assert main(["plan", "--sensitivity", str(sens_file), "--flops", str(flops), "--seq-len", "32",
                 "--allocation", "uniform", "--out", str(out)]) == 0
    plan = Plan.load(out)
    assert plan.binding == "flops" and plan.cost["seq_len"] == 32 and plan.allocation == "uniform"
    assert plan.cost["total_flops"] <= flops
    assert main(["plan", "--sensitivity", str(sens_file), "--params", f"{costs.total_params(TINY) - 3000}",
                 "--allocation", "global", "--out", str(out)]) == 0
    assert Plan.load(out).cost["total_params"] <= costs.total_params(TINY) - 3000
    # the tiny model fits any real device: the profile's budget is the dense model itself
    assert main(["plan", "--sensitivity", str(sens_file), "--profile", "rpi4-4gb", "--precision", "int8",
                 "--seq-len", "64", "--out", str(out)]) == 0
    plan = Plan.load(out)
    assert (plan.heads, plan.ffn) == (TINY.heads, TINY.ffn) and plan.budget["source"]["profile"] == "rpi4-4gb"
    assert plan.settings["precision"] == "int8"


def test_cli_plan_checks_the_model(tiny_bert_dir, tmp_path, capsys):
    from toolchain.cli import main
    from toolchain.models import dir_shape, model_hash

    _, shape = dir_shape(str(tiny_bert_dir), 2)
    out = tmp_path / "plan.json"
    good = make_sens(shape, model_hash=model_hash(tiny_bert_dir)).save(tmp_path / "good.json")
    assert main(["plan", "--sensitivity", str(good), "--keep", "0.5", "--model", str(tiny_bert_dir),
                 "--out", str(out)]) == 0
    assert Plan.load(out).model_hash == model_hash(tiny_bert_dir)
    out.unlink()
    bad = make_sens(shape, model_hash="f" * 64).save(tmp_path / "bad.json")
    assert main(["plan", "--sensitivity", str(bad), "--keep", "0.5", "--model", str(tiny_bert_dir),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "ffffffffffff but --model is" in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv, match", [
    (["--flops", "1G"], "error: --flops 1000000000 needs --seq-len"),
    (["--params", "1G"], "error: the budget is above the dense model"),
    (["--params", "1k"], "error: --params 1000 is below the untrimmed parts"),
    (["--keep", "0.2", "--min-keep", "0.6"], "error: the budget allows"),
    (["--keep", "1.5"], "error: --keep 1.5 is out of range"),
    (["--keep", "0.5", "--allocation", "greedy"], "error: unknown allocation 'greedy'; choose one of"),
    (["--keep", "0.5", "--round-to", "0"], "error: argument --round-to: must be a positive whole number"),
    (["--keep", "0.5", "--model", "/nonexistent/model"], "error: model directory"),
], ids=["flops-no-seq", "above-dense", "below-fixed", "below-min-keep", "keep-range", "allocation",
        "round-to", "model-missing"])
def test_cli_plan_bad_input_is_one_error_line(sens_file, tmp_path, capsys, argv, match):
    from toolchain.cli import main

    out = tmp_path / "plan.json"
    try:
        code = main(["plan", "--sensitivity", str(sens_file), "--out", str(out)] + argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(match) and "\n" not in err     # argparse's usage errors too
    assert not out.exists()


def test_cli_plan_malformed_sensitivity(tmp_path, capsys):
    from toolchain.cli import main

    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"schema": "sensibert.sensitivity", "version": 1, "method": "density"}))
    assert main(["plan", "--sensitivity", str(bad), "--keep", "0.5", "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: malformed sensitivity file") and "\n" not in err
