"""Step 6: distillation (logits + hidden states), teacher checks, task-aware sensitivity, and the
teacher-first `sensibert run` (warm start from the dense fine-tuned model, a teacher, the mode in the report)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_config
from toolchain.errors import InputError
from toolchain.finetune import FinetuneConfig, finetune, hidden_distill_loss, layer_map
from toolchain.plan import Plan, architecture_of

FAST = dict(batch_size=8, eval_batch_size=16, logging_steps=2, lr=2e-3, progress=False)


@pytest.fixture(scope="module")
def data(tiny_bert_dir):
    from toolchain.tasks import load_task_data
    from toolchain.models import load_tokenizer

    return load_task_data("sst2", load_tokenizer(tiny_bert_dir), max_length=32, max_train_samples=96,
                          max_eval_samples=24)


def student(path):
    from toolchain.models import load_classifier

    return load_classifier(path, 2, seed=1, id2label={0: "negative", 1: "positive"})


def trim_plan(model, heads=(2, 2), ffn=(20, 11)) -> Plan:
    from toolchain.sensitivity import model_shape

    shape = model_shape(model)
    return Plan(model_hash="", architecture=architecture_of(shape), heads=heads, ffn=ffn, allocation="uniform")


def kl_to_teacher(model, teacher, dataset, collator) -> float:
    from toolchain.sensitivity import _model_inputs_only

    rows = _model_inputs_only(dataset)
    batch = collator([rows[i] for i in range(len(rows))])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        s, t = model(**batch).logits, teacher(**batch).logits
    return float(torch.nn.functional.kl_div(s.log_softmax(-1), t.softmax(-1), reduction="batchmean"))


def test_student_kl_to_the_teacher_falls(tiny_bert_dir, tiny_finetuned_dir, data, tmp_path):
    from toolchain.masks import attach_masks
    from toolchain.models import load_teacher

    teacher = load_teacher(tiny_finetuned_dir, ("negative", "positive"))
    model = student(tiny_bert_dir)
    plan = trim_plan(model)
    before = kl_to_teacher(model, teacher, data.train, data.collator)
    res = finetune(model, plan, data.train, data.eval, data.collator,
                   FinetuneConfig(epochs=2, distill_alpha=1.0, ramp_fraction=0.0, **FAST), tmp_path / "ft",
                   teacher=teacher)
    attach_masks(model, res.masks)
    after = kl_to_teacher(model, teacher, data.train, data.collator)
    assert after < 0.5 * before, (before, after)


def test_hidden_distill_loss_is_relative_and_ignores_padding():
    torch.manual_seed(0)
    t = tuple(torch.randn(2, 5, 8) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pairs = layer_map(2, 2)
    assert pairs == [(1, 1), (2, 2)]
    assert float(hidden_distill_loss(t, t, mask, pairs)) == 0.0
    s = tuple(x * 1.1 for x in t)  # 10% off everywhere: relative squared error 0.01 per layer
    assert float(hidden_distill_loss(s, t, mask, pairs)) == pytest.approx(0.01, rel=1e-5)
    padded = tuple(x.clone() for x in s)
    for x in padded:
        x[0, 3:] = 100.0  # padding positions do not count
    assert float(hidden_distill_loss(padded, t, mask, pairs)) == pytest.approx(0.01, rel=1e-5)
    assert layer_map(3, 6) == [(1, 2), (2, 4), (3, 6)]


def test_hidden_term_changes_training(tiny_bert_dir, tiny_finetuned_dir, data, tmp_path):
    from toolchain.models import load_teacher

    teacher = load_teacher(tiny_finetuned_dir, ("negative", "positive"))
    losses = {}
    for weight in (0.0, 1.0):
        model = student(tiny_bert_dir)
        finetune(model, trim_plan(model), data.train, data.eval, data.collator,
                 FinetuneConfig(epochs=1, distill_hidden=weight, **FAST), tmp_path / f"h{weight}", teacher=teacher)
        log = [json.loads(x) for x in (tmp_path / f"h{weight}" / "train_log.jsonl").read_text().splitlines()]
        losses[weight] = [r["loss"] for r in log if "loss" in r]
    assert losses[0.0] != losses[1.0]


@pytest.mark.parametrize("change, message", [
    ({"vocab_size": 120}, "teacher vocabulary"),
    ({"num_labels": 3}, "teacher has 3 labels"),
    ({"hidden_size": 48, "num_attention_heads": 4}, "teacher hidden size 48"),
])
def test_mismatched_teacher_is_refused_and_nothing_written(tiny_bert_dir, data, tmp_path, change, message):
    from transformers import BertForSequenceClassification

    vocab = student(tiny_bert_dir).config.vocab_size
    teacher = BertForSequenceClassification(tiny_config(**{"vocab_size": vocab, **change}))
    model = student(tiny_bert_dir)
    with pytest.raises(InputError, match=message):
        finetune(model, trim_plan(model), data.train, data.eval, data.collator, FinetuneConfig(epochs=1, **FAST),
                 tmp_path / "ft", teacher=teacher)
    assert not (tmp_path / "ft").exists()


def test_teacher_with_other_labels_is_refused(tiny_finetuned_dir):
    from toolchain.models import load_teacher

    with pytest.raises(InputError, match=r"fine-tuned for labels \['negative', 'positive'\].*entailment"):
        load_teacher(tiny_finetuned_dir, ("entailment", "not_entailment", "contradiction"))
    with pytest.raises(InputError, match="fine-tuned for labels"):
        load_teacher(tiny_finetuned_dir, ("not_entailment", "entailment"))


def test_fisher_on_a_trained_head_differs_from_a_random_head(tiny_bert_dir, tiny_finetuned_dir, data):
    from toolchain.models import load_classifier
    from toolchain.sensitivity import SensitivityConfig, analyse

    config = SensitivityConfig(method="fisher", steps=6, batch_size=16)
    labels = {0: "negative", 1: "positive"}
    random_head = analyse(load_classifier(tiny_bert_dir, 2, id2label=labels), data.train, data.collator, config)
    trained = analyse(load_classifier(tiny_finetuned_dir, 2, id2label=labels), data.train, data.collator, config)
    diffs = [abs(random_head.scores[k] - trained.scores[k]) / max(random_head.scores[k], trained.scores[k])
             for k in random_head.scores]
    assert max(diffs) > 0.1, diffs
    ranks = {k: [sorted(range(len(v)), key=lambda i: -v[i]) for v in (random_head.importance[k], trained.importance[k])]
             for k in random_head.importance if k.endswith("ffn")}
    assert any(a != b for a, b in ranks.values())  # the units' order moves too


def test_fine_tuned_model_with_other_labels_is_refused(tiny_finetuned_dir):
    from toolchain.models import load_classifier

    with pytest.raises(InputError, match="fine-tuned for labels"):
        load_classifier(tiny_finetuned_dir, 3, id2label={0: "entailment", 1: "neutral", 2: "contradiction"})


@pytest.mark.parametrize("flags, expected", [
    ({}, {"method": "fisher", "allocation": "proportional"}),          # teacher-first (bench: docs/accuracy.md)
    ({"teacher": "none"}, {"method": "density", "allocation": "proportional"}),  # the paper's mode
    ({"finetune": False}, {"method": "fisher", "allocation": "global"}),         # retraining-free (Kwon et al.)
    ({"allocation": "global"}, {"method": "fisher", "allocation": "global"}),    # a flag wins over the mode
])
def test_each_mode_has_its_measured_defaults(flags, expected):
    from toolchain.pipeline import RunConfig

    assert RunConfig(out="unused", **flags).defaults() == expected


def test_span_distillation_loss_falls_and_ignores_padding():
    """QA distillation: T²·KL between the start and end distributions of a tiny QA student and teacher
    (plus the hidden-state term) falls over a few optimiser steps; padded positions take no part."""
    from transformers import BertForQuestionAnswering

    from toolchain.finetune import distill_kl

    torch.manual_seed(0)
    teacher = BertForQuestionAnswering(tiny_config()).eval()
    torch.manual_seed(1)
    model = BertForQuestionAnswering(tiny_config())
    ids = torch.randint(5, 99, (6, 20))
    mask = torch.ones_like(ids)
    mask[:3, 14:] = 0  # three padded rows
    with torch.no_grad():
        t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    pairs = layer_map(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        loss = distill_kl(out, t_out, mask, temperature=2.0) + hidden_distill_loss(
            out.hidden_states, t_out.hidden_states, mask, pairs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    # the teacher's logits at padded positions do not move the loss
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        noisy = type(t_out)(start_logits=t_out.start_logits.clone(), end_logits=t_out.end_logits.clone())
        noisy.start_logits[:3, 14:] += 50.0
        noisy.end_logits[:3, 14:] -= 50.0
        assert float(distill_kl(out, noisy, mask, 2.0)) == pytest.approx(float(distill_kl(out, t_out, mask, 2.0)),
                                                                          rel=1e-6)
