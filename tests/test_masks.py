"""Masks: the cubic schedule, the ramp lifecycle (nested sets, frozen masked units), forward masking."""

from __future__ import annotations

import pytest
import torch

from toolchain.errors import InputError
from toolchain.families import encoder_layers, layer_parts
from toolchain.masks import (MaskRamp, MaskSet, RampConfig, attach_masks, cubic_schedule, get_importance,
                             importance_methods, ramp_end_step, unit_weight_norms)


# ---------------------------------------------------------------- cubic_schedule

def test_cubic_schedule_start_ramp_end_and_after():
    assert cubic_schedule(0, 100, 0.3, 12, 4) == 12
    assert cubic_schedule(30, 100, 0.3, 12, 4) == 4        # end of ramp: 30% of 100 steps
    assert cubic_schedule(29, 100, 0.3, 12, 4) == 5        # one step before: 4 + ceil(8·(1/30)³)
    assert cubic_schedule(75, 100, 0.3, 12, 4) == 4
    assert cubic_schedule(100, 100, 0.3, 12, 4) == 4
    assert cubic_schedule(5, 100, 0.3, 12, 4) == 9         # 4 + ceil(8·(25/30)³ = 4.63)
    assert ramp_end_step(100, 0.3) == 30 and ramp_end_step(10, 0.25) == 3


def test_cubic_schedule_is_monotone_and_front_loaded():
    counts = [cubic_schedule(s, 200, 0.3, 37, 9) for s in range(201)]
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert counts[0] == 37 and counts[60] == 9 and min(counts) == 9
    # cubic: half of the units are gone well before half of the ramp
    assert counts[15] < (37 + 9) / 2


def test_cubic_schedule_edges():
    assert cubic_schedule(0, 100, 0.0, 12, 3) == 3           # no ramp: final at once
    assert cubic_schedule(0, 0, 0.3, 12, 3) == 3             # no steps at all
    assert [cubic_schedule(s, 10, 1.0, 4, 4) for s in range(11)] == [4] * 11
    assert cubic_schedule(9, 10, 1.0, 4, 0) >= 1 and cubic_schedule(10, 10, 1.0, 4, 0) == 0
    with pytest.raises(ValueError):
        cubic_schedule(0, 10, 1.5, 4, 2)
    with pytest.raises(ValueError):
        cubic_schedule(0, 10, 0.3, 4, 5)


def test_importance_registry_lists_choices():
    assert set(importance_methods()) >= {"fisher", "norm"}
    with pytest.raises(InputError, match="choose one of: fisher, norm"):
        get_importance("fishr")
    with pytest.raises(InputError, match="unknown importance"):
        RampConfig(importance="fishr")
    with pytest.raises(InputError):
        RampConfig(ramp_fraction=-0.1)


# ---------------------------------------------------------------- helpers

def unit_slices(model, layer: int, kind: str, unit: int) -> list[tuple[torch.Tensor, tuple]]:
    """Return (parameter, index) pairs of every weight that belongs to one head or neuron."""
    lay = encoder_layers(model)[layer]
    if kind == "attn":
        d = lay.attention.self.attention_head_size
        rows = slice(unit * d, (unit + 1) * d)
        att = lay.attention.self
        out = [(lin.weight, (rows, slice(None))) for lin in (att.query, att.key, att.value)]
        out += [(lin.bias, (rows,)) for lin in (att.query, att.key, att.value)]
        return out + [(lay.attention.output.dense.weight, (slice(None), rows))]
    return [(lay.intermediate.dense.weight, (unit, slice(None))), (lay.intermediate.dense.bias, (unit,)),
            (lay.output.dense.weight, (slice(None), unit))]


def batch(seed: int = 0, n: int = 8, length: int = 11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[: n // 2, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}


def masked_units(masks: MaskSet) -> list[tuple[int, str, int]]:
    out = []
    for i, (heads, ffn) in enumerate(zip(masks.kept_heads, masks.kept_ffn)):
        out += [(i, "attn", h) for h in range(masks.num_heads) if h not in heads]
        out += [(i, "ffn", n) for n in range(masks.ffn_size) if n not in ffn]
    return out


# ---------------------------------------------------------------- forward masking

def test_masked_units_contribute_nothing(tiny_bert):
    masks = MaskSet.from_lists(4, 37, [[0, 2], []], [list(range(0, 37, 3)), [1, 5, 8]])
    handle = attach_masks(tiny_bert, masks)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        before = tiny_bert(**inputs).logits.clone()
        g = torch.Generator().manual_seed(3)
        for layer, kind, unit in masked_units(masks):
            for param, idx in unit_slices(tiny_bert, layer, kind, unit):
                param[idx] += torch.randn(param[idx].shape, generator=g)
        after = tiny_bert(**inputs).logits
        assert torch.equal(before, after)
        # a kept unit does matter, so the comparison above can fail
        for param, idx in unit_slices(tiny_bert, 0, "attn", 2):
            param[idx] += 1.0
        assert not torch.allclose(tiny_bert(**inputs).logits, before)
    handle.remove()


def test_a_layer_left_with_no_heads_and_no_neurons_is_the_identity(tiny_bert):
    """Step 11: such a layer passes its input on (so the exporter may drop it); a layer with
    either kind of unit left still computes, and setting the masks back brings the layer back."""
    inputs = {k: v for k, v in batch().items() if k != "labels"}

    def hidden(masks):
        handle.set(masks)
        with torch.no_grad():
            return tiny_bert(**inputs, output_hidden_states=True).hidden_states

    handle = attach_masks(tiny_bert, MaskSet.dense(2, 4, 37))
    removed = hidden(MaskSet.from_lists(4, 37, [[0, 2], []], [[1, 5], []]))
    assert torch.equal(removed[2], removed[1]) and not torch.equal(removed[1], removed[0])
    assert handle.removed == [False, True]
    for heads, ffn in (([[0, 2], [3]], [[1, 5], []]), ([[0, 2], []], [[1, 5], [7]])):
        kept = hidden(MaskSet.from_lists(4, 37, heads, ffn))
        assert not torch.allclose(kept[2], kept[1])
    assert not torch.allclose(hidden(MaskSet.dense(2, 4, 37))[2], removed[2])
    handle.remove()


def test_handle_refuses_masks_of_another_shape(tiny_bert):
    with pytest.raises(InputError, match="layers"):
        attach_masks(tiny_bert, MaskSet.dense(3, 4, 37))
    with pytest.raises(InputError, match="heads"):
        attach_masks(tiny_bert, MaskSet.dense(2, 6, 37))


# ---------------------------------------------------------------- the ramp lifecycle

def run_ramp(model, importance: str, steps: int = 8, weight_decay: float = 0.1, check=None):
    """Drive a MaskRamp by hand (as the Trainer callback does); return the masks after each step."""
    ramp = MaskRamp(heads=(2, 1), ffn=(20, 9), config=RampConfig(ramp_fraction=0.5, importance=importance))
    model.train()
    ramp.attach(model, total_steps=steps)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    history = [ramp.masks]
    for step in range(steps):
        loss = model(**batch(step)).loss
        loss.backward()
        ramp.before_step()
        if check:
            check("grads", ramp)
        opt.step()
        ramp.apply()
        if check:
            check("weights", ramp)
        opt.zero_grad()
        ramp.update(step + 1)
        history.append(ramp.masks)
    return ramp, history


@pytest.mark.parametrize("importance", importance_methods())  # every registered method
def test_ramp_reaches_plan_with_nested_masks(tiny_bert, importance):
    ramp, history = run_ramp(tiny_bert, importance)
    assert history[0].heads == (4, 4) and history[0].ffn == (37, 37)
    assert history[-1].heads == (2, 1) and history[-1].ffn == (20, 9)
    assert history[4] == history[-1]                      # fixed after 50% of 8 steps
    for prev, cur in zip(history, history[1:]):           # once masked, always masked
        for a, b in zip(prev.kept_heads + prev.kept_ffn, cur.kept_heads + cur.kept_ffn):
            assert set(b) <= set(a)
    counts = [sum(m.heads) + sum(m.ffn) for m in history]
    assert counts[1] < counts[0]                          # the ramp starts at the first step
    final = ramp.detach()
    assert final == history[-1]


def test_masked_units_get_zero_grad_and_keep_their_weights(tiny_bert):
    frozen: dict[tuple, torch.Tensor] = {}
    seen = {"grads": 0, "weights": 0}

    def check(phase, ramp):
        for unit in masked_units(ramp.masks):
            for k, (param, idx) in enumerate(unit_slices(tiny_bert, *unit)):
                if phase == "grads":
                    assert torch.count_nonzero(param.grad[idx]) == 0
                    seen["grads"] += 1
                else:
                    key = unit + (k,)
                    if key in frozen:  # masked before this step: unchanged by AdamW momentum and decay
                        assert torch.equal(param[idx], frozen[key])
                        seen["weights"] += 1
                    frozen[key] = param[idx].detach().clone()

    start = {n: p.detach().clone() for n, p in tiny_bert.named_parameters()}
    ramp, history = run_ramp(tiny_bert, "fisher", check=check)
    assert seen["grads"] > 0 and seen["weights"] > 0
    # kept units did train (so the equality above is not vacuous)
    lay0 = encoder_layers(tiny_bert)[0]
    kept_head = history[-1].kept_heads[0][0]
    d = lay0.attention.self.attention_head_size
    q = lay0.attention.self.query.weight
    assert not torch.equal(q[kept_head * d:(kept_head + 1) * d],
                           start["bert.encoder.layer.0.attention.self.query.weight"][kept_head * d:(kept_head + 1) * d])
    ramp.detach()


def test_without_apply_adamw_would_move_masked_units(tiny_bert):
    """The restore step is needed: AdamW's momentum and weight decay move units with zero gradient."""
    ramp = MaskRamp(heads=(1, 1), ffn=(10, 10), config=RampConfig(ramp_fraction=0.0, importance="norm"))
    tiny_bert.train()
    ramp.attach(tiny_bert, total_steps=4)  # ramp 0: the plan from step 0
    opt = torch.optim.AdamW(tiny_bert.parameters(), lr=1e-2, weight_decay=0.1)
    unit = masked_units(ramp.masks)[0]
    param, idx = unit_slices(tiny_bert, *unit)[0]
    before = param[idx].detach().clone()
    tiny_bert(**batch()).loss.backward()
    opt.step()
    assert not torch.equal(param[idx], before)   # weight decay moved it
    ramp.apply()
    assert torch.equal(param[idx], before)       # restored
    ramp.detach()


def test_norm_importance_drops_the_weakest_head(tiny_bert):
    lay = encoder_layers(tiny_bert)[1]
    with torch.no_grad():
        for param, idx in unit_slices(tiny_bert, 1, "attn", 2):
            param[idx] *= 1e-3
    norms = unit_weight_norms(layer_parts(tiny_bert)[1], "attn")
    assert norms.shape == (4,) and int(norms.argmin()) == 2
    d = lay.attention.self.attention_head_size
    manual = sum(float((p[idx].detach() ** 2).sum()) for p, idx in unit_slices(tiny_bert, 1, "attn", 0)) ** 0.5
    assert norms[0].item() == pytest.approx(manual, rel=1e-5)
    assert d == 8
    ramp = MaskRamp(heads=(4, 3), ffn=(37, 37), config=RampConfig(ramp_fraction=0.0, importance="norm"))
    ramp.attach(tiny_bert, total_steps=1)
    assert ramp.masks.kept_heads[1] == (0, 1, 3)
    ramp.detach()


def test_ramp_is_deterministic(tiny_bert):
    state = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    ramp, first = run_ramp(tiny_bert, "fisher")
    ramp.detach()
    tiny_bert.load_state_dict(state)
    ramp, second = run_ramp(tiny_bert, "fisher")
    ramp.detach()
    assert first == second


def test_lifecycle_guards(tiny_bert):
    ramp = MaskRamp(heads=(2, 1), ffn=(20, 9))
    with pytest.raises(RuntimeError, match="not attached"):
        ramp.update(1)
    ramp.attach(tiny_bert, total_steps=10)
    with pytest.raises(RuntimeError, match="already attached"):
        ramp.attach(tiny_bert, total_steps=10)
    ramp.detach()
    with pytest.raises(InputError, match="layers"):
        MaskRamp(heads=(2, 1, 1), ffn=(20, 9, 9)).attach(tiny_bert, total_steps=10)
    with pytest.raises(InputError, match="keeps 5 heads"):
        MaskRamp(heads=(5, 1), ffn=(20, 9)).attach(tiny_bert, total_steps=10)
    # detached: dense again, no hooks left
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    assert all(not lay.attention.output.dense._forward_pre_hooks for lay in encoder_layers(tiny_bert))
    assert all(p._backward_hooks is None or not p._backward_hooks for p in tiny_bert.parameters())
    tiny_bert(**inputs)


def test_masks_of_version_1_load_unless_they_empty_a_layer(tmp_path):
    """Version-1 models computed an emptied layer as its two LayerNorms; today it is skipped, so
    such a file is refused with one line, while any other version-1 file means what it meant."""
    import json

    for name, masks in (("kept", MaskSet.from_lists(4, 37, [[0], []], [[1], [2]])),
                        ("emptied", MaskSet.from_lists(4, 37, [[0], []], [[1], []]))):
        path = masks.save(tmp_path / f"{name}.json")
        assert json.loads(path.read_text())["version"] == 2 and MaskSet.load(path) == masks
        doc = json.loads(path.read_text())
        path.write_text(json.dumps({**doc, "version": 1}))
        if name == "kept":
            assert MaskSet.load(path) == masks
        else:
            with pytest.raises(InputError, match=r"layer 1\b.*fine-tune it again"):
                MaskSet.load(path)
