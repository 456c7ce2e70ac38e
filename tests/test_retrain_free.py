"""Step 6: the retraining-free mode: mask rearrangement, least-squares scales, the verb, and
`sensibert run --no-finetune` end to end on a tiny random BERT, with its bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolchain.errors import InfeasibleBudget, InputError
from toolchain.retrain_free import (RetrainFreeConfig, fisher_increase, greedy_removal, rearrange, retrain_free,
                                    solve_scales)

LABELS = ("negative", "positive")


@pytest.fixture(scope="module")
def data(tiny_bert_dir):
    from toolchain.tasks import load_task_data
    from toolchain.models import load_tokenizer

    return load_task_data("sst2", load_tokenizer(tiny_bert_dir), max_length=32, max_train_samples=128,
                          max_eval_samples=32)


def test_least_squares_scales_are_the_least_squares_solution():
    """Against numpy's lstsq on explicit contributions: same scales, same error."""
    import numpy as np

    rng = np.random.default_rng(0)
    contributions = rng.normal(size=(6, 200))          # 6 units, 200 output values
    target = contributions.sum(axis=0)
    A = torch.tensor(contributions @ contributions.T)
    r = A.sum(dim=1)
    total = float(A.sum())
    kept = [0, 2, 3, 5]
    scales, before, after = solve_scales(A, r, total, kept, ridge=0.0)
    expected, *_ = np.linalg.lstsq(contributions[kept].T, target, rcond=None)
    assert scales.numpy() == pytest.approx(expected, rel=1e-8)
    residual = target - contributions[kept].T @ expected
    assert after == pytest.approx(float(residual @ residual) / float(target @ target), rel=1e-8)
    removed = contributions[[1, 4]].sum(axis=0)
    assert before == pytest.approx(float(removed @ removed) / float(target @ target), rel=1e-8)
    assert after < before


def test_greedy_rearrangement_accounts_for_interactions():
    """Unit 0 is the cheapest alone; unit 1 cancels it (g1 ≈ −2·g0), unit 2 adds to it (g2 ≈ 2·g0) and is a
    little cheaper alone than 1. The diagonal choice removes {0, 2} (the two smallest g²); the greedy
    removal, which prices the pair, removes {0, 1} at a fraction of the loss increase."""
    torch.manual_seed(0)
    b = torch.randn(64, dtype=torch.float64)
    noise = 0.01 * torch.randn(64, 2, dtype=torch.float64)
    grads = torch.stack([b, -2 * b + noise[:, 0], 1.98 * b + noise[:, 1],
                         10 * torch.randn(64, dtype=torch.float64), 10 * torch.randn(64, dtype=torch.float64)], dim=1)
    squares = grads.pow(2).sum(dim=0)
    assert sorted(range(5), key=lambda i: float(squares[i]))[:2] == [0, 2]
    greedy = greedy_removal(grads, 2)
    assert sorted(greedy) == [0, 1]
    assert fisher_increase(grads, greedy) < 0.2 * fisher_increase(grads, [0, 2])
    from toolchain.masks import MaskSet

    diagonal = MaskSet.from_lists(1, 5, [[0]], [[1, 3, 4]])  # removes 0 and 2
    heads = torch.zeros(64, 1, 1, dtype=torch.float64)
    out, swapped = rearrange(diagonal, heads, grads.unsqueeze(1))
    assert out.kept_ffn == ((2, 3, 4),) and swapped == 1


def test_retrain_free_lowers_every_layers_reconstruction_error(tiny_finetuned_dir, data, tmp_path):
    from toolchain.budget import budget_from_keep
    from toolchain.masks import MaskSet
    from toolchain.models import load_teacher
    from toolchain.plan import Plan
    from toolchain.sensitivity import model_shape

    model = load_teacher(tiny_finetuned_dir, LABELS)
    shape = model_shape(model)
    budget = budget_from_keep(shape, 0.5)
    res = retrain_free(model, budget, data.train, data.eval, data.collator,
                       RetrainFreeConfig(samples=96, batch_size=4), tmp_path / "rf")
    assert set(res.reconstruction) == {"layer0.attn", "layer0.ffn", "layer1.attn", "layer1.ffn"}
    masks = MaskSet.load(tmp_path / "rf" / "masks.json")
    for key, err in res.reconstruction.items():
        layer, kind = int(key[5]), key.split(".")[1]
        kept = masks.kept_heads[layer] if kind == "attn" else masks.kept_ffn[layer]
        full = shape.heads[layer] if kind == "attn" else shape.ffn[layer]
        assert 0 <= err["after"] <= err["before"] + 1e-12, key
        if len(kept) < full:  # a trimmed group: the dense output is not reachable exactly, but nearer
            assert 0 < err["after"] < err["before"], key
        else:                 # nothing removed: scale 1 already reproduces the layer
            assert err["before"] < 1e-9, key
    # how much lower depends on the trained fixture (11% on one machine, 7% and 1.7% on CI's, whose BLAS
    # reductions train a different toy): a threshold on it is not a property of the fit. That the fit is
    # the least-squares optimum is asserted exactly on a known system (test_least_squares_scales_are_the_least_squares_solution); here,
    # that the whole model's reconstruction is lower, not merely not worse
    assert sum(e["after"] for e in res.reconstruction.values()) < sum(
        e["before"] for e in res.reconstruction.values())
