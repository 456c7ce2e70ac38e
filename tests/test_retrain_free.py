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
    # the least-squares optimum is asserted exactly on a known system
    # (test_least_squares_scales_are_the_least_squares_solution); here, that the whole model's
    # reconstruction is lower, not merely not worse
    assert sum(e["after"] for e in res.reconstruction.values()) < sum(
        e["before"] for e in res.reconstruction.values())
    plan = Plan.load(tmp_path / "rf" / "plan.json")
    assert plan.cost["trimmable_params"] <= budget.max_trimmable_params
    assert masks.heads == plan.heads and masks.ffn == plan.ffn
    metrics = json.loads((tmp_path / "rf" / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["mode"] == "retrain-free"


def test_retrain_free_changes_no_weight_but_the_kept_units_scales(tiny_finetuned_dir, data, tmp_path):
    """No gradient step: only W_o and W_2 columns of kept units change (by a scale each)."""
    from toolchain.budget import budget_from_keep
    from toolchain.models import load_teacher
    from toolchain.sensitivity import model_shape

    before = {k: v.clone() for k, v in load_teacher(tiny_finetuned_dir, LABELS).state_dict().items()}
    model = load_teacher(tiny_finetuned_dir, LABELS)
    retrain_free(model, budget_from_keep(model_shape(model), 0.6), data.train, data.eval, data.collator,
                 RetrainFreeConfig(samples=64, batch_size=8), tmp_path / "rf")
    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all(k.endswith(("attention.output.dense.weight", "output.dense.weight")) for k in changed)
    for key in changed:
        ratio = after[key] / before[key]
        per_column = ratio.std(dim=0)
        assert float(per_column.nan_to_num(0).max()) < 1e-4  # one scale per column


def test_budget_the_search_cannot_meet(tiny_finetuned_dir, data, tmp_path):
    from toolchain.budget import Budget
    from toolchain.models import load_teacher
    from toolchain.plan import PlanConfig

    model = load_teacher(tiny_finetuned_dir, LABELS)
    with pytest.raises((InfeasibleBudget, InputError), match="budget"):
        retrain_free(model, Budget(max_trimmable_params=-1, max_encoder_flops=None), data.train, data.eval,
                     data.collator, RetrainFreeConfig(samples=16), tmp_path / "rf")
    assert not (tmp_path / "rf").exists()
    assert PlanConfig  # the search is the registered allocation of that name
    with pytest.raises(InputError, match="unknown allocation"):
        RetrainFreeConfig(allocation="nope")
    with pytest.raises(InputError, match="samples"):
        RetrainFreeConfig(samples=0)


# ---------------------------------------------------------------- sensibert run --no-finetune

FAST = ["--task", "sst2", "--max-train-samples", "64", "--max-eval-samples", "32", "--bench-runs", "3",
        "--max-length", "32", "--keep", "0.5", "--precision", "int8", "--sensitivity-steps", "4",
        "--calibration-samples", "64"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SENSIBERT_DATA_DIR"}
    return subprocess.run([sys.executable, "-m", "toolchain", "run", *args], capture_output=True, text=True,
                          timeout=900, env=env)


def test_run_no_finetune_end_to_end(tiny_finetuned_dir, tmp_path):
    import numpy as np
    import onnxruntime as ort

    from deploy.manifest import read_manifest
    from toolchain.modeling import SensiBertForSequenceClassification  # noqa: F401  registers the type

    out = tmp_path / "out"
    result = _run("--model", str(tiny_finetuned_dir), "--no-finetune", "--out", str(out), *FAST)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["mode"]["mode"] == "retrain-free"
    assert "retraining-free" in (out / "report.md").read_text()
    state = json.loads((out / "state.json").read_text())["stages"]
    assert "dense/adopt" in state and "dense/finetune" not in state  # the fine-tuned input is the dense model
    # one Fisher pass: the mode's own, no separate analysis or plan stage; the report shows that analysis
    assert "analyze" not in state and "attempt-1/plan" not in state and "attempt-1/retrain-free" in state
    own = json.loads((out / "attempt-1" / "finetuned" / "sensitivity.json").read_text())
    assert report["sensitivity"]["scores"] == own["scores"] and own["settings"]["retrain_free"]["samples"] > 0
    plan = json.loads((out / "attempt-1" / "finetuned" / "plan.json").read_text())
    assert plan["cost"]["trimmable_params"] <= plan["budget"]["max_trimmable_params"]
    export = state["attempt-1/export"]["result"]
    assert export["encoder_params_onnx"] == export["encoder_params_expected"] == report["after"]["encoder_params"]
    assert report["after"]["heads"] == plan["heads"] and report["after"]["ffn"] == plan["ffn"]
    # logits parity of the ONNX fp32 file against the shrunk PyTorch model, as export checks it
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    trimmed = out / "attempt-1" / "trimmed"
    model = AutoModelForSequenceClassification.from_pretrained(str(trimmed)).eval()
    tok = AutoTokenizer.from_pretrained(str(trimmed))
    enc = tok(["the movie was great", "it was not very good at all"], padding=True, return_tensors="np")
    artifact = Path(report["artifact"])
    read_manifest(artifact)
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    onnx_logits = session.run(None, {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0]
    with torch.no_grad():
        torch_logits = model(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4


def test_no_finetune_on_a_pretrained_encoder_is_refused(tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    result = _run("--model", str(tiny_bert_dir), "--no-finetune", "--out", str(out), *FAST)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --no-finetune needs a classifier already fine-tuned")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_teacher_with_other_vocabulary_is_refused_before_work(tiny_bert_dir, tmp_path):
    from transformers import BertForSequenceClassification

    from tests.conftest import tiny_config

    teacher = tmp_path / "teacher"
    BertForSequenceClassification(tiny_config(vocab_size=500)).save_pretrained(teacher)
    out = tmp_path / "out"
    result = _run("--model", str(tiny_bert_dir), "--teacher", str(teacher), "--out", str(out), *FAST)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: teacher vocabulary (500 tokens)")
    assert not out.exists() or not any(out.iterdir())


def test_fine_tuned_model_for_other_labels_is_refused_before_work(tiny_finetuned_dir, tmp_path):
    out = tmp_path / "out"
    result = _run("--model", str(tiny_finetuned_dir), "--task", "qnli", "--out", str(out), *FAST[2:])
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: model ") and "fine-tuned for labels" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
