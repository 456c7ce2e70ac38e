"""Stage 1: sensitivity scorers on a tiny BERT, the sensitivity.json artifact, the heatmap and `sensibert analyze`."""

from __future__ import annotations

import json

import pytest

from toolchain.errors import InputError
from toolchain.sensitivity import (SCORERS, Sensitivity, SensitivityConfig, analyse, group_keys,
                                   weight_norm_importance)

SENTENCES = [("the movie was good", 1), ("the film was bad", 0), ("great fun", 1),
             ("awful boring film", 0), ("not very good", 0), ("a very great movie", 1),
             ("the plot is dull", 0), ("brilliant actors", 1)] * 4
GROUPS = ["layer0.attn", "layer0.ffn", "layer1.attn", "layer1.ffn"]


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(tiny_bert_dir))


@pytest.fixture(scope="module")
def train_data(tokenizer):
    """A tokenised dataset shaped like toolchain.tasks' (a text column left in on purpose) and its collator."""
    import datasets
    from transformers import DataCollatorWithPadding

    ds = datasets.Dataset.from_dict({"sentence": [s for s, _ in SENTENCES], "labels": [y for _, y in SENTENCES]})
    ds = ds.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=16), batched=True)
    return ds, DataCollatorWithPadding(tokenizer)


@pytest.fixture
def model(tiny_bert_dir):
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification.from_pretrained(str(tiny_bert_dir), attn_implementation="eager").eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _trimmable_weights(model, layer, kind):
    block = model.bert.encoder.layer[layer]
    if kind == "attn":
        a = block.attention
        return [a.self.query.weight, a.self.key.weight, a.self.value.weight, a.output.dense.weight]
    return [block.intermediate.dense.weight, block.output.dense.weight]


def test_every_scorer_is_tested():
    assert sorted(SCORERS) == ["density", "fisher"], "a new scorer needs its tests here"


@pytest.mark.parametrize("method", sorted(SCORERS))
def test_analyse_scores_every_group_and_leaves_the_model_alone(model, train_data, method):
    import torch

    ds, collator = train_data
    before = _state(model)
    cfg = SensitivityConfig(method=method, steps=4, batch_size=8, mask_interval=2)
    sens = analyse(model, ds, collator, cfg, model_hash="m" * 64, data_hash="d" * 64, task="sst2")
    assert list(sens.scores) == GROUPS
    assert {k: len(v) for k, v in sens.importance.items()} == {"layer0.attn": 4, "layer0.ffn": 37,
                                                               "layer1.attn": 4, "layer1.ffn": 37}
    assert all(v >= 0 for vals in sens.importance.values() for v in vals)
    assert (sens.method, sens.model_hash, sens.data_hash, sens.task) == (method, "m" * 64, "d" * 64, "sst2")
    assert sens.settings == cfg.to_dict() and sens.wall_time_s >= 0 and "torch" in sens.package_versions
    assert sens.shape.heads == (4, 4) and sens.shape.ffn == (37, 37) and sens.shape.num_labels == 2
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "analyse must not change the model's weights"
    again = analyse(model, ds, collator, cfg, model_hash="m" * 64, data_hash="d" * 64, task="sst2")
    assert again.scores == sens.scores and again.importance == sens.importance, "same seed, same result"


def test_density_keeps_the_global_fraction(model, train_data):
    ds, collator = train_data
    sens = analyse(model, ds, collator, SensitivityConfig(density=0.3, steps=4, batch_size=8, mask_interval=2))
    sizes = {key: sum(w.numel() for w in _trimmable_weights(model, int(key[5]), key.split(".")[1]))
             for key in GROUPS}
    kept = sum(sens.scores[k] * sizes[k] for k in GROUPS) / sum(sizes.values())
    assert kept == pytest.approx(0.3, abs=1e-3)
    assert all(0 <= sens.scores[k] <= 1 for k in GROUPS)
    assert sens.importance_kind == "weight_norm"
    assert sens.details["final_kept"] == sens.scores and set(sens.details["initial_kept"]) == set(GROUPS)


def test_density_ranks_a_group_with_large_weights_as_sensitive(model, train_data):
    import torch

    with torch.no_grad():
        for w in _trimmable_weights(model, 1, "ffn"):
            w.mul_(10.0)
    ds, collator = train_data
    sens = analyse(model, ds, collator, SensitivityConfig(density=0.3, steps=4, batch_size=8, mask_interval=2))
    assert sens.scores["layer1.ffn"] > 0.8
    assert max(sens.scores[k] for k in GROUPS if k != "layer1.ffn") < 0.2


def test_weight_norm_importance_matches_the_unit_weights(model):
    import torch

    shape = analyse.__globals__["model_shape"](model)
    imp = weight_norm_importance(model, shape)
    q, k, v, o = _trimmable_weights(model, 1, "attn")
    d = shape.head_size
    att = model.bert.encoder.layer[1].attention.self
    biases = [m.bias[2 * d:3 * d] for m in (att.query, att.key, att.value)]  # removed with the head
    head2 = torch.cat([q[2 * d:3 * d].flatten(), k[2 * d:3 * d].flatten(), v[2 * d:3 * d].flatten(),
                       o[:, 2 * d:3 * d].flatten(), *biases])
    assert imp["layer1.attn"][2] == pytest.approx(float(head2.detach().double().norm()), rel=1e-6)
    w1, w2 = _trimmable_weights(model, 0, "ffn")
    neuron5 = torch.cat([w1[5], w2[:, 5], model.bert.encoder.layer[0].intermediate.dense.bias[5:6]])
    assert imp["layer0.ffn"][5] == pytest.approx(float(neuron5.detach().double().norm()), rel=1e-6)


def test_fisher_scores_a_unit_that_matters_above_one_that_does_not(model, train_data):
    import torch

    block0, block1 = model.bert.encoder.layer
    with torch.no_grad():
        block0.output.dense.weight[:, 7] = 0.0                       # neuron 7 of layer 0 feeds nothing
        block1.attention.output.dense.weight[:, 16:24] = 0.0         # head 2 of layer 1 (head size 8)
    ds, collator = train_data
    sens = analyse(model, ds, collator, SensitivityConfig(method="fisher", steps=6, batch_size=8))
    ffn0, attn1 = sens.importance["layer0.ffn"], sens.importance["layer1.attn"]
    assert ffn0[7] == 0.0 and min(v for i, v in enumerate(ffn0) if i != 7) > 0
    assert attn1[2] == 0.0 and min(v for i, v in enumerate(attn1) if i != 2) > 0
    assert sum(sens.scores.values()) == pytest.approx(1.0)
    assert sens.importance_kind == "fisher"
    assert sens.details["group_importance"]["layer0.ffn"] == pytest.approx(sum(ffn0))


def test_fisher_reads_the_data_once_at_most(model, train_data):
    """32 rows in batches of 8 are 4 batches, however many --steps are asked for."""
    ds, collator = train_data
    assert analyse(model, ds, collator, SensitivityConfig(method="fisher", steps=50, batch_size=8)).details[
        "batches"] == 4
    assert analyse(model, ds, collator, SensitivityConfig(method="fisher", steps=3, batch_size=8)).details[
        "batches"] == 3


def test_missing_hashes_are_computed_from_the_inputs(model, train_data):
    ds, collator = train_data
    cfg = SensitivityConfig(method="fisher", steps=1, batch_size=4)
    a = analyse(model, ds, collator, cfg)
    b = analyse(model, ds.select(range(8)), collator, cfg)
    assert len(a.model_hash) == 64 and a.model_hash == b.model_hash
    assert len(a.data_hash) == 64 and a.data_hash != b.data_hash


def test_unknown_method_lists_the_choices(model, train_data):
    with pytest.raises(InputError, match=r"unknown sensitivity method 'taylor'; choose one of: density, fisher"):
        analyse(model, *train_data, SensitivityConfig(method="taylor"))


@pytest.mark.parametrize("kwargs, flag", [({"density": 1.0}, "--density"), ({"density": 0}, "--density"),
                                          ({"steps": 0}, "--steps"), ({"batch_size": -1}, "--batch-size"),
                                          ({"learning_rate": 0.0}, "--learning-rate")])
def test_config_rejects_bad_values(kwargs, flag):
    with pytest.raises(InputError, match=flag):
        SensitivityConfig(**kwargs)


def test_trimmed_model_is_refused(train_data):
    import torch
    from transformers import BertForSequenceClassification

    from conftest import tiny_config

    torch.manual_seed(0)
    m = BertForSequenceClassification(tiny_config(vocab_size=120))
    m.prune_heads({0: [1]})
    with pytest.raises(InputError, match="dense model"):
        analyse(m, *train_data, SensitivityConfig(method="fisher", steps=1))


# ---------------------------------------------------------------- the artifact

def _sens(**overrides):
    from toolchain.costs import EncoderShape

    shape = EncoderShape(hidden=32, head_size=8, heads=(4, 4), ffn=(37, 37), vocab_size=99, max_positions=64,
                         type_vocab_size=2, num_labels=2)
    body = dict(method="density", settings={"density": 0.5}, shape=shape,
                scores={k: 0.1 * (i + 1) for i, k in enumerate(group_keys(2))},
                importance={k: tuple(float(j) for j in range(4 if k.endswith("attn") else 37))
                            for k in group_keys(2)},
                importance_kind="weight_norm", model_hash="a" * 64, data_hash="b" * 64, task="sst2")
    body.update(overrides)
    return Sensitivity(**body)


def test_sensitivity_round_trip(tmp_path):
    sens = _sens()
    path = sens.save(tmp_path / "sensitivity.json")
    doc = json.loads(path.read_text())
    assert (doc["schema"], doc["version"]) == ("sensibert.sensitivity", 1)
    assert doc["scores"]["layer1.ffn"] == pytest.approx(0.4) and len(doc["importance"]["layer0.ffn"]) == 37
    loaded = Sensitivity.load(path)
    assert loaded == sens and loaded.content_hash() == sens.content_hash()
    assert _sens(scores={**sens.scores, "layer0.ffn": 0.25}).content_hash() != sens.content_hash()


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["scores"].pop("layer1.attn"), "groups missing"),
    (lambda d: d["scores"].update({"layer0.ffn": -1.0}), "must be finite and >= 0"),
    (lambda d: d["importance"].update({"layer0.attn": [1.0, 2.0]}), "has 2 unit importances"),
    (lambda d: d.update({"bogus": 1}), "unknown keys"),
    (lambda d: d.pop("shape"), "malformed sensitivity file"),
    (lambda d: d.update({"version": 7}), "version 7 is not supported"),
    (lambda d: d.update({"schema": "sensibert.plan"}), "expected a sensibert.sensitivity file"),
], ids=["missing-group", "negative-score", "wrong-length", "unknown-key", "no-shape", "version", "schema"])
def test_malformed_sensitivity_files_are_one_line_errors(tmp_path, mutate, match):
    path = _sens().save(tmp_path / "s.json")
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=match) as info:
        Sensitivity.load(path)
    assert "\n" not in str(info.value)


def test_check_model_names_both_hashes():
    sens = _sens()
    sens.check_model("a" * 64)
    with pytest.raises(InputError, match="aaaaaaaaaaaa but --model is cccccccccccc"):
        sens.check_model("c" * 64)


def test_heatmap_is_a_png(tmp_path):
    from toolchain.plots import sensitivity_heatmap

    out = sensitivity_heatmap(_sens(), tmp_path / "sensitivity.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sensitivity.png"], "no temp file left behind"


# ---------------------------------------------------------------- CLI

def test_cli_analyze_writes_sensitivity_and_heatmap(tiny_bert_dir, tmp_path, capsys, monkeypatch):
    from toolchain.cli import main
    from toolchain.models import model_hash

    monkeypatch.delenv("SENSIBERT_DATA_DIR", raising=False)  # the demo set: same data on every machine
    out = tmp_path / "sens" / "sensitivity.json"
    code = main(["analyze", "--model", str(tiny_bert_dir), "--task", "sst2", "--method", "fisher",
                 "--steps", "3", "--batch-size", "4", "--max-train-samples", "24", "--max-length", "32",
                 "--out", str(out)])
    assert code == 0
    sens = Sensitivity.load(out)
    assert sens.model_hash == model_hash(tiny_bert_dir) and len(sens.data_hash) == 64
    assert sens.task == "sst2" and sens.settings["steps"] == 3 and sens.details["train_rows"] == 24
    assert list(sens.scores) == GROUPS
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "layer" in printed and "wrote" in printed


@pytest.mark.parametrize("argv, match", [
    (["--method", "taylor"], "error: unknown sensitivity method 'taylor'; choose one of: density, fisher"),
    (["--density", "1.5"], "error: --density 1.5 is out of range"),
    (["--task", "nope"], "error: unknown task"),
])
def test_cli_analyze_bad_input_is_one_error_line(tiny_bert_dir, tmp_path, capsys, argv, match):
    from toolchain.cli import main

    args = ["analyze", "--model", str(tiny_bert_dir), "--task", "sst2", "--out", str(tmp_path / "s.json")] + argv
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(match) and "\n" not in err
    assert not (tmp_path / "s.json").exists()
