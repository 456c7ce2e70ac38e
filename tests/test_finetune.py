"""Budgeted fine-tuning: output directory, masks equal to the plan, best-checkpoint rule, bad inputs, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolchain.cli import main
from toolchain.costs import shape_from_config
from toolchain.errors import InputError
from toolchain.finetune import FinetuneConfig, finetune, load_masked, read_metrics
from toolchain.families import encoder_layers
from toolchain.masks import MaskSet
from toolchain.models import model_hash
from toolchain.plan import Plan, architecture_of

HEADS, FFN = (2, 1), (20, 9)
FAST = dict(batch_size=8, eval_batch_size=16, logging_steps=2, lr=1e-3, progress=False)

POS = ["good", "great", "brilliant", "fun", "best"]
NEG = ["bad", "awful", "boring", "dull", "worst"]


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = int(torch.randint(0, 2, (1,), generator=g))
        word = (POS if label else NEG)[int(torch.randint(0, 5, (1,), generator=g))]
        subject = ["the movie", "the film", "it", "the plot", "the story"][i % 5]
        rows.append((f"{subject} was {'very ' * (i % 3)}{word}", label))
    return rows


def tokenised(tokenizer, rows):
    from datasets import Dataset

    enc = tokenizer([s for s, _ in rows], truncation=True, max_length=32)
    return Dataset.from_dict({**enc, "labels": [lab for _, lab in rows]})


@pytest.fixture(scope="module")
def data(tiny_bert_dir):
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    return tokenised(tok, sentences(64, 1)), tokenised(tok, sentences(24, 2)), DataCollatorWithPadding(tok)


def fresh_model(path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(str(path), attn_implementation="eager")


def make_plan(model, heads=HEADS, ffn=FFN, model_hash_: str = "") -> Plan:
    shape = shape_from_config(model.config)
    return Plan(model_hash=model_hash_, architecture=architecture_of(shape), heads=tuple(heads),
                ffn=tuple(ffn), allocation="uniform")


def test_finetune_writes_complete_output_with_plan_masks(tiny_bert_dir, data, tmp_path):
    train, dev, collator = data
    model = fresh_model(tiny_bert_dir)
    plan = make_plan(model)
    out = tmp_path / "ft"
    res = finetune(model, plan, train, dev, collator, FinetuneConfig(epochs=2, **FAST), out,
                   provenance={"data_hash": "d" * 64, "model_hash": "m" * 64, "task": "toy"})
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "masks.json", "plan.json", "metrics.json", "train_log.jsonl",
            "tokenizer.json", "vocab.txt"} <= names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]      # no checkpoints or temp dirs left
    masks = MaskSet.load(out / "masks.json")
    assert masks.heads == HEADS and masks.ffn == FFN and masks == res.masks
    assert Plan.load(out / "plan.json") == plan
    metrics = read_metrics(out / "metrics.json")
    assert [e["epoch"] for e in metrics["dev_accuracy"]] == [1.0, 2.0]
    assert all(0.0 <= e["accuracy"] <= 1.0 and e["masks_final"] for e in metrics["dev_accuracy"])
    assert metrics["best"]["accuracy"] == max(e["accuracy"] for e in metrics["dev_accuracy"]) == res.best_accuracy
    assert metrics["steps"] == res.steps == 16                     # 64 rows / 8 per batch × 2 epochs
    assert metrics["data_hash"] == "d" * 64 and metrics["model_hash"] == "m" * 64
    assert metrics["settings"]["ramp_fraction"] == 0.3 and metrics["settings"]["world_size"] == 1
    assert "torch" in metrics["package_versions"] and metrics["wall_time_s"] > 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    events = [r for r in log if r.get("event") == "masks"]
    assert events[-1]["heads"] == list(HEADS) and events[-1]["ffn"] == list(FFN)
    assert max(e["step"] for e in events) <= 5                     # ramp over 30% of 16 steps
    assert any("loss" in r for r in log) and any("eval_accuracy" in r for r in log)

    # reloaded with its masks, the directory computes what the in-memory masked model computes
    reloaded, handle = load_masked(out)
    assert handle.masks == masks
    batch = collator([dev[i] for i in range(6)])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, model(**batch).logits, atol=1e-6)
    # and the masked units really are out: perturbing a masked head changes nothing
    gone = next(h for h in range(4) if h not in masks.kept_heads[1])
    d = encoder_layers(reloaded)[1].attention.self.attention_head_size
    with torch.no_grad():
        before = reloaded(**batch).logits.clone()
        encoder_layers(reloaded)[1].attention.self.value.weight[gone * d:(gone + 1) * d] += 5.0
        assert torch.equal(reloaded(**batch).logits, before)


def test_best_checkpoint_is_never_taken_mid_ramp(tiny_bert_dir, data, tmp_path):
    """With the ramp over all steps, epoch 1 ends mid-ramp and cannot be the kept model."""
    train, dev, collator = data
    model = fresh_model(tiny_bert_dir)
    res = finetune(model, make_plan(model), train, dev, collator,
                   FinetuneConfig(epochs=2, ramp_fraction=1.0, importance="norm", **FAST), tmp_path / "ft",
                   validation=dev.select(range(12)))
    metrics = read_metrics(tmp_path / "ft" / "metrics.json")
    assert [e["masks_final"] for e in metrics["selection"]["per_epoch"]] == [False, True]
    assert metrics["best"]["epoch"] == 2.0 and res.best_epoch == 2.0
    assert MaskSet.load(tmp_path / "ft" / "masks.json").heads == HEADS


class Spy(torch.utils.data.Dataset):
    """A split that records every row read, in order, under its name (the Trainer reads any
    torch Dataset; the rows are the real tokenised ones)."""

    def __init__(self, ds, name: str, log: list) -> None:
        self.ds, self.name, self.log, self.column_names = ds, name, log, ds.column_names

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        if not isinstance(i, str):  # a row (the input checks read a column's values, no row)
            self.log.append(self.name)
        return self.ds[i]


def test_validation_chooses_the_epoch_and_dev_is_read_once_after(tiny_bert_dir, data, tmp_path):
    """Selection reads the validation split only: the dev split is read exactly once, after the
    last training and validation row, and the kept epoch is the best validation score."""
    from transformers import AutoTokenizer

    train, dev, collator = data
    validation = tokenised(AutoTokenizer.from_pretrained(str(tiny_bert_dir)), sentences(20, 7))
    log: list[str] = []
    model = fresh_model(tiny_bert_dir)
    res = finetune(model, make_plan(model), Spy(train, "train", log), Spy(dev, "dev", log), collator,
                   FinetuneConfig(epochs=3, ramp_fraction=0.2, importance="norm", **FAST), tmp_path / "ft",
                   validation=Spy(validation, "validation", log))
    reads = list(log)
    first_dev = reads.index("dev")
    assert "validation" in reads[:first_dev] and "train" in reads[:first_dev]
    assert set(reads[first_dev:]) == {"dev"} and reads.count("dev") == len(dev)
    metrics = read_metrics(tmp_path / "ft" / "metrics.json")
    per_epoch = metrics["selection"]["per_epoch"]
    assert metrics["selection"]["split"] == "validation" and len(per_epoch) == 3
    best = max((e for e in per_epoch if e["masks_final"]), key=lambda e: e["accuracy"])
    assert metrics["best"]["epoch"] == best["epoch"] == res.best_epoch
    assert [e["epoch"] for e in metrics["dev_accuracy"]] == [best["epoch"]] and metrics["eval_samples"] == len(dev)


def test_without_validation_the_last_checkpoint_is_kept(tiny_bert_dir, data, tmp_path):
    train, dev, collator = data
    model = fresh_model(tiny_bert_dir)
    res = finetune(model, make_plan(model), train, dev, collator,
                   FinetuneConfig(epochs=3, ramp_fraction=0.2, importance="norm", **FAST), tmp_path / "ft")
    metrics = read_metrics(tmp_path / "ft" / "metrics.json")
    assert metrics["selection"] == {"split": None, "kept": "last checkpoint"}
    assert res.best_epoch == 3.0 and res.best_accuracy == res.dev_accuracy[-1] and len(res.dev_accuracy) == 3


def test_distillation_changes_the_loss(tiny_bert_dir, data, tmp_path):
    train, dev, collator = data
    losses = {}
    for name, teacher in (("plain", None), ("distil", fresh_model(tiny_bert_dir))):
        model = fresh_model(tiny_bert_dir)
        finetune(model, make_plan(model), train, dev, collator, FinetuneConfig(epochs=1, **FAST),
                 tmp_path / name, teacher=teacher)
        log = [json.loads(x) for x in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in log if "loss" in r]
        assert read_metrics(tmp_path / name / "metrics.json")["settings"]["distill"] == (teacher is not None)
    assert losses["plain"] != losses["distil"]


def test_finetune_is_deterministic(tiny_bert_dir, data, tmp_path):
    train, dev, collator = data
    results = []
    for name in ("a", "b"):
        model = fresh_model(tiny_bert_dir)
        results.append(finetune(model, make_plan(model), train, dev, collator, FinetuneConfig(epochs=1, **FAST),
                                tmp_path / name))
    assert results[0].masks == results[1].masks and results[0].dev_accuracy == results[1].dev_accuracy


@pytest.mark.parametrize("case", ["labels", "empty", "architecture", "range", "teacher"])
def test_verb_refuses_bad_input_and_writes_nothing(tiny_bert_dir, data, tmp_path, case):
    from datasets import Dataset
    from transformers import BertForSequenceClassification

    from conftest import tiny_config

    train, dev, collator = data
    model = fresh_model(tiny_bert_dir)
    plan, teacher = make_plan(model), None
    if case == "labels":
        train = Dataset.from_dict({**train.to_dict(), "labels": [5] * len(train)})
        message = r"labels span \[5, 5\] but the model has 2"
    elif case == "empty":
        train = train.select([])
        message = "training split is empty"
    elif case == "architecture":
        plan = make_plan(BertForSequenceClassification(tiny_config(hidden_size=48)))
        message = "another architecture"
    elif case == "range":
        plan = make_plan(model, heads=(2, 7))
        message = "outside"
    else:
        teacher = BertForSequenceClassification(tiny_config(num_labels=3, vocab_size=model.config.vocab_size))
        message = "teacher has 3 labels"
    with pytest.raises(InputError, match=message):
        finetune(model, plan, train, dev, collator, FinetuneConfig(epochs=1, **FAST), tmp_path / "out",
                 teacher=teacher)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- CLI


def write_sst2(folder: Path, train_rows, dev_rows) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train_rows), ("dev.tsv", dev_rows)):
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, lab in rows))
    return folder


@pytest.fixture(scope="module")
def cli_inputs(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data_dir = write_sst2(root / "SST-2", sentences(48, 3), sentences(16, 4))
    model = fresh_model(tiny_bert_dir)
    plan_path = make_plan(model, model_hash_=model_hash(tiny_bert_dir)).save(root / "plan.json")
    return {"root": root, "data": data_dir, "plan": plan_path}


def cli_args(tiny_bert_dir, inputs, out, *extra):
    return ["finetune", "--model", str(tiny_bert_dir), "--task", "sst2", "--data-dir", str(inputs["data"]),
            "--plan", str(inputs["plan"]), "--out", str(out), "--epochs", "1", "--batch-size", "8",
            "--no-progress", *extra]


def test_validation_split_is_carved_from_train_disjoint_by_sentence(tiny_bert_dir, cli_inputs):
    """The validation rows come out of the training rows (none of the eval split), and no
    sentence is on both sides; the eval split is the one without validation, row for row."""
    from collections import Counter

    from toolchain.models import load_tokenizer
    from toolchain.tasks import load_task_data

    tok = load_tokenizer(tiny_bert_dir)
    plain = load_task_data("sst2", tok, data_dir=str(cli_inputs["data"]), max_length=32)
    data = load_task_data("sst2", tok, data_dir=str(cli_inputs["data"]), max_length=32, validation_fraction=0.25)
    rows = {name: [tuple(x) for x in ds["input_ids"]] for name, ds in
            (("train", data.train), ("validation", data.validation), ("all", plain.train))}
    assert data.eval["input_ids"] == plain.eval["input_ids"]
    assert not set(rows["train"]) & set(rows["validation"]) and rows["validation"]
    assert Counter(rows["train"]) + Counter(rows["validation"]) == Counter(rows["all"])
    assert data.validation_record["by"] == "sentence" and data.validation_record["validation_rows"] == len(data.validation)
    assert len(data.train_texts) == len(data.train)


def test_cli_finetune_validation_fraction(tiny_bert_dir, cli_inputs, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(cli_args(tiny_bert_dir, cli_inputs, out, "--validation-fraction", "0.25", "--epochs", "2")) == 0
    assert "chosen on validation" in capsys.readouterr().out
    metrics = read_metrics(out / "metrics.json")
    assert metrics["selection"]["split"] == "validation" and metrics["validation"]["fraction"] == 0.25
    bad = tmp_path / "bad"
    assert main(cli_args(tiny_bert_dir, cli_inputs, bad, "--validation-fraction", "1.0")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --validation-fraction 1.0 leaves no training data") and not bad.exists()


def test_cli_finetune_writes_output(tiny_bert_dir, cli_inputs, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(cli_args(tiny_bert_dir, cli_inputs, out, "--importance", "norm", "--lr", "1e-3")) == 0
    assert "wrote" in capsys.readouterr().out
    assert MaskSet.load(out / "masks.json").ffn == FFN
    metrics = read_metrics(out / "metrics.json")
    assert metrics["task"] == "sst2" and metrics["model_hash"] == model_hash(tiny_bert_dir)
    assert len(metrics["data_hash"]) == 64 and metrics["settings"]["importance"] == "norm"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {"0": "negative", "1": "positive"}


def bad_plan(tiny_bert_dir, root: Path, kind: str) -> Path:
    model = fresh_model(tiny_bert_dir)
    path = root / f"plan_{kind}.json"
    if kind == "hash":
        make_plan(model, model_hash_="0" * 64).save(path)
    elif kind == "architecture":
        plan = make_plan(model)
        arch = {**plan.architecture, "num_layers": 3}
        Plan(model_hash="", architecture=arch, heads=(1, 1, 1), ffn=(9, 9, 9), allocation="uniform").save(path)
    elif kind == "malformed":
        path.write_text(json.dumps({"schema": "sensibert.plan", "version": 1, "heads": [1, 1]}))
    elif kind == "range":
        make_plan(model, heads=(2, 7)).save(path)
    return path


def test_cli_plan_of_another_checkpoint_with_the_same_architecture_applies(tiny_bert_dir, cli_inputs, tmp_path):
    """A plan binds an architecture, not a checkpoint: one made from the fine-tuned model's sensitivity
    applies to the pre-trained weights (the teacher-first run relies on it)."""
    inputs = dict(cli_inputs)
    inputs["plan"] = bad_plan(tiny_bert_dir, tmp_path, "hash")
    out = tmp_path / "ft"
    assert main(cli_args(tiny_bert_dir, inputs, out)) == 0
    assert MaskSet.load(out / "masks.json").ffn == FFN


@pytest.mark.parametrize("kind,message", [("architecture", "another architecture"),
                                          ("malformed", "malformed plan"), ("range", "outside"),
                                          ("labels", "unknown label"), ("empty", "no rows"),
                                          ("importance", "choose one of")])
def test_cli_bad_input_one_line_exit_2_nothing_written(tiny_bert_dir, cli_inputs, tmp_path, capsys, kind, message):
    inputs = dict(cli_inputs)
    extra: list[str] = []
    if kind in ("hash", "architecture", "malformed", "range"):
        inputs["plan"] = bad_plan(tiny_bert_dir, tmp_path, kind)
    elif kind == "labels":
        inputs["data"] = write_sst2(tmp_path / "SST-2", [("the film was good", 2)] * 4, [("it was bad", 0)])
    elif kind == "empty":
        inputs["data"] = write_sst2(tmp_path / "SST-2", [], [("it was bad", 0)])
    else:
        extra = ["--importance", "fishr"]
    out = tmp_path / "out"
    assert main(cli_args(tiny_bert_dir, inputs, out, *extra)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# ---------------------------------------------------------------- several processes

@pytest.mark.parametrize("teacher", [False, True], ids=["plain", "teacher-first"])
def test_torchrun_two_cpu_processes(tiny_bert_dir, tiny_finetuned_dir, cli_inputs, tmp_path, teacher):
    """The same CLI under torchrun (2 processes, gloo, DDP): one output, masks equal to the plan; the
    teacher-first step too (warm start from a fine-tuned model, distilled from it, logits + hidden states)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    model = tiny_finetuned_dir if teacher else tiny_bert_dir
    extra = ["--teacher", str(tiny_finetuned_dir), "--distill-hidden", "1"] if teacher else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "toolchain", *cli_args(model, cli_inputs, out, *extra)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = MaskSet.load(out / "masks.json")
    assert masks.heads == HEADS and masks.ffn == FFN
    metrics = read_metrics(out / "metrics.json")
    assert metrics["settings"]["world_size"] == 2 and metrics["settings"]["effective_batch_size"] == 8
    assert metrics["settings"]["distill"] is teacher
    assert metrics["steps"] == 6                                   # 48 rows / global batch 8
    assert proc.stdout.count("wrote ") == 1                        # the main process reports once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
